"""The sandbox's bulk imports: ``POST /activities/contacts_json_import`` and ``GET /activities/{id}``.

Shaped as the vendor spec shapes them (``ContactsJsonImport`` in, ``ActivityImport`` out) and
stricter where the vendor is lenient, so our tests notice what production would hide:
- a body of 4,000,000 bytes or more is refused (413); the vendor silently imports only the first
  4 MB and drops the rest. "4 MB" is read as the smaller 4,000,000 so a client that splits at
  4 MiB is caught too;
- a property ``JsonImportContact`` does not define, a string over its maxLength, more than 25
  ``cf:`` keys, or a ``cf:`` field the account does not have is a 400 for the whole request;
- an empty ``import_data`` is a 400 (the spec sets no minimum; sending one is a client bug).
Rows with a bad email address or no email become ``activity_errors`` (the spec types them as
plain strings: "line N (import_data[N-1]): …"); the other rows are imported. ⚠ Constant
Contact's support says the real service does not list invalid rows in the response, so a client
must not rely on these messages being there; counts in ``status`` are the safer signal.

The activity advances on each poll: ``initialized`` in the 201, ``processing`` until the
``polls_to_complete``-th ``GET``, then ``completed`` (or ``failed`` when a fault asked for it).
Contacts change only when it completes, as an asynchronous job's would.
"""

import json
import re
import threading
import uuid
from typing import Any

from . import custom_fields
from .contacts import UUID_RE, ContactsApi, iso
from .faults import Faults

MAX_BYTES = 4_000_000
MAX_CONTACTS = 40_000
MAX_CUSTOM_FIELDS = 25
MAX_QUEUED = 1_000  # "You exceeded 1,000 queued activities for this user account" (429)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_ANNIVERSARY = re.compile(r"^(\d{1,2}[/-]\d{1,2}[/-]\d{4}|\d{4}[/-]\d{1,2}[/-]\d{1,2})$")
# JsonImportContact's string properties with their maxLength (the spec spells "home country" with a space)
# fmt: off
_FIELDS = {
    "email": 50, "first_name": 50, "last_name": 50, "job_title": 50, "company_name": 50, "anniversary": 10,
    "phone": 50, "home_phone": 50, "work_phone": 50, "mobile_phone": 50, "other_phone": 50,
    "street": 255, "street2": 255, "city": 50, "state": 50, "zip": 50, "country": 50,
    "home_street": 255, "home_street2": 255, "home_city": 50, "home_state": 50, "home_zip": 50, "home country": 50,
    "work_street": 255, "work_street2": 255, "work_city": 50, "work_state": 50, "work_zip": 50, "work_country": 50,
    "other_street": 255, "other_street2": 255, "other_city": 50, "other_state": 50, "other_zip": 50,
    "other_country": 50, "sms_number": 16, "sms_consent_date": 16,
}
# fmt: on
# stored under the names sign_up_form uses, so a contact looks the same whichever lane it came by
_STORED_AS = {"phone": "phone_number"}


def _bad(status: int, message: str, key: str = "json.field.invalid") -> tuple[int, list]:
    return status, [{"error_key": key, "error_message": message}]


class Imports:
    def __init__(self, contacts: ContactsApi, faults: Faults, polls_to_complete: int = 2):
        self.contacts, self.faults = contacts, faults
        self.polls_to_complete = polls_to_complete
        self.activities: dict[str, dict] = {}  # activity_id -> {"public": ActivityImport, "rows": …, "polls": n}
        self._lock = threading.Lock()

    def create(self, raw: bytes) -> tuple[int, object]:
        """``POST /activities/contacts_json_import`` (raw body already past auth and content type)."""
        if len(raw) >= MAX_BYTES:
            why = f"the payload is {len(raw)} bytes; it must be under 4 MB ({MAX_BYTES} bytes)"
            return _bad(413, why, "payload.too.large")
        try:
            body = json.loads(raw)
        except ValueError:
            return _bad(400, "malformed JSON", "json.parse.error")
        problems = _validate(body, self.contacts.custom_fields)
        if problems:
            return 400, [{"error_key": "json.field.invalid", "error_message": p} for p in problems]
        unknown = self.contacts.unknown_lists(body["list_ids"])
        if unknown:
            return _bad(404, f"list {unknown[0]} was not found", "contacts.api.not_found")
        now = self.contacts.clock()
        activity_id = str(uuid.uuid4())
        counts = ("person_count", "error_count", "correctable_count", "cannot_add_to_list_count")
        status = {"items_total_count": len(body["import_data"]), **dict.fromkeys(counts, 0)}
        public: dict[str, Any] = {"activity_id": activity_id, "state": "initialized"}
        stamp = iso(now)
        public |= {"created_at": stamp, "updated_at": stamp, "percent_done": 0, "activity_errors": [], "status": status}
        public["_links"] = {"self": {"href": f"/v3/activities/{activity_id}"}}
        with self._lock:
            queued = sum(a["public"]["state"] in ("initialized", "processing") for a in self.activities.values())
            if queued >= MAX_QUEUED:
                return _bad(429, "You exceeded 1,000 queued activities for this user account.", "too_many_requests")
            self.activities[activity_id] = {
                "public": public,
                "rows": body["import_data"],
                "list_ids": body["list_ids"],
                "polls": 0,
                "fail": self.faults.take_import_failure(),
            }
            return 201, _copy(public)

    def get(self, activity_id: str) -> tuple[int, object]:
        """``GET /activities/{id}``: each poll moves the activity on (see the module docstring)."""
        now = self.contacts.clock()
        with self._lock:
            activity = self.activities.get(activity_id)
            if activity is None:
                return _bad(404, f"activity {activity_id} was not found", "activities.api.not_found")
            public = activity["public"]
            if public["state"] in ("initialized", "processing"):
                activity["polls"] += 1
                public["started_at"] = public.get("started_at") or iso(now)
                public["updated_at"] = iso(now)
                if activity["polls"] < max(1, self.polls_to_complete):
                    public["state"] = "processing"
                    public["percent_done"] = 100 * activity["polls"] // max(1, self.polls_to_complete)
                elif activity["fail"]:
                    public["state"] = "failed"  # nothing imported: a failed job leaves the contacts as they were
                    public["activity_errors"].append("the import job failed to complete (injected)")
                else:
                    activity.get("complete", self._complete)(activity)
                    public.update(state="completed", percent_done=100, completed_at=iso(now))
                if public["state"] != "processing":
                    activity["rows"] = []  # done with them: a 50,000-row bench need not keep every body
            return 200, _copy(public)

    def add(self, public: dict, **state: Any) -> tuple[int, object]:
        """Queue another kind of activity (list_activities.py): ``state["complete"](activity)`` runs
        on the poll that completes it. 429 past 1,000 queued activities, as for imports."""
        with self._lock:
            queued = sum(a["public"]["state"] in ("initialized", "processing") for a in self.activities.values())
            if queued >= MAX_QUEUED:
                return _bad(429, "You exceeded 1,000 queued activities for this user account.", "too_many_requests")
            self.activities[public["activity_id"]] = {
                "public": public,
                "rows": [],
                "polls": 0,
                "fail": self.faults.take_import_failure(),
                **state,
            }
            return 201, _copy(public)

    def view(self) -> list[dict]:
        with self._lock:
            return [_copy(a["public"]) for a in self.activities.values()]

    def _complete(self, activity: dict) -> None:
        status, errors = activity["public"]["status"], activity["public"]["activity_errors"]
        good = []
        for n, row in enumerate(activity["rows"]):
            email, where = row.get("email"), f"line {n + 1} (import_data[{n}])"
            if not email:
                why = "has no email address"
                if row.get("sms_number"):
                    why = "has only an sms_number (the sandbox models email contacts only)"
                errors.append(f"{where}: the contact {why}")
            elif not _EMAIL.match(email):
                errors.append(f"{where}: {email!r} is not a valid email address")
            elif row.get("anniversary") and not _ANNIVERSARY.match(row["anniversary"]):
                errors.append(f"{where}: anniversary {row['anniversary']!r} is not a valid date")
            else:
                good.append(row)
                continue
            status["correctable_count"] += 1  # the spec's "correctable errors": bad email, date, no email
        status["person_count"] = len(good)
        status["items_completed_count"] = len(activity["rows"])
        status["cannot_add_to_list_count"] = apply(self.contacts, good, activity["list_ids"])


def apply(api: ContactsApi, rows: list[dict], list_ids: list[str]) -> int:
    """Import ``rows`` into the sandbox's contacts; returns how many could not join the lists.

    - new contact: ``permission_to_send = implicit``, ``opt_in_source = Account`` (the spec);
    - existing contact: only the properties sent change; its permission stays as it is
      (implicit, explicit, pending_confirmation, not_set, temp_hold: the import guide says
      "permission_to_send is not changed for any existing contacts");
    - unsubscribed contact: stays unsubscribed and is *not* added to the lists. The spec's
      ``cannot_add_to_list_count`` is "the number of previously unsubscribed contacts in the
      import - they cannot be added to a list", and support says they remain unsubscribed;
    - deleted contact: revived (deleted_at cleared, permission implicit, lists added). The vendor
      does not say what an import does to a deleted contact; this is the pessimistic reading, so
      a client that relies on import leaving deleted contacts alone fails here first.
    """
    refused = 0
    now = api.clock()
    with api.lock:
        ids = {name: f["custom_field_id"] for name, f in api.custom_fields.items()}
        for row in rows:
            key = row["email"].lower()
            props = {_STORED_AS.get(k, k): v for k, v in row.items() if k != "email" and not k.startswith("cf:")}
            customs = [
                {"custom_field_id": ids[k[3:]], "value": v} for k, v in row.items() if k[3:] in ids and k[:3] == "cf:"
            ]
            contact = api.contacts.get(key)
            if contact is None:
                contact = {
                    "contact_id": str(uuid.uuid4()),
                    "list_memberships": [],
                    "created": now,
                    "permission_to_send": "implicit",
                    "opt_in_source": "Account",
                    "create_source": "Account",
                }
                api.contacts[key] = contact
            elif contact.get("deleted_at"):
                contact.pop("deleted_at")
                contact["permission_to_send"] = "implicit"
            contact.update(props)
            custom_fields.merge(contact, customs)
            contact["email_address"], contact["updated"] = key, now
            if contact["permission_to_send"] == "unsubscribed":
                refused += 1
                continue
            contact["list_memberships"] += [i for i in list_ids if i not in contact["list_memberships"]]
    return refused


def _validate(body, known_fields: dict) -> list[str]:
    if not isinstance(body, dict):
        return ["the request body must be a JSON object (ContactsJsonImport)"]
    problems = [
        f"'{k}' is not a property of ContactsJsonImport"
        for k in body
        if k not in ("import_data", "list_ids", "sms_permission_to_send")
    ]
    lists = body.get("list_ids")
    if not isinstance(lists, list) or not 1 <= len(lists) <= 50 or not all(_is_uuid(i) for i in lists):
        problems.append("list_ids is required and must hold 1 to 50 list ids (UUIDs)")
    if body.get("sms_permission_to_send", "not_set") not in ("explicit", "not_set"):
        problems.append("sms_permission_to_send must be explicit or not_set")
    rows = body.get("import_data")
    if not isinstance(rows, list) or not rows:
        return problems + ["import_data is required and must hold at least one contact"]
    if len(rows) > MAX_CONTACTS:
        return problems + [f"import_data holds {len(rows)} contacts; at most {MAX_CONTACTS} are allowed"]
    for n, row in enumerate(rows):
        problems += [f"import_data[{n}]: {p}" for p in _row_problems(row, known_fields)]
        if len(problems) >= 20:  # enough to fix the client; the rest would only repeat it
            break
    return problems


def _row_problems(row, known_fields: dict) -> list[str]:
    if not isinstance(row, dict):
        return ["each contact must be a JSON object (JsonImportContact)"]
    problems, custom = [], [k for k in row if k.startswith("cf:")]
    for key, value in row.items():
        if key.startswith("cf:"):
            if key[3:] not in known_fields:
                problems.append(f"custom field {key[3:]!r} does not exist in the account")
            if not isinstance(value, str) or len(value) > 255:
                problems.append(f"'{key}' must be a string of at most 255 characters")
        elif key in ("birthday_month", "birthday_day"):
            top = 12 if key == "birthday_month" else 31
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                problems.append(f"{key} must be an integer from 1 to {top}")
        elif key not in _FIELDS:
            problems.append(f"'{key}' is not a property of JsonImportContact")
        elif not isinstance(value, str) or len(value) > _FIELDS[key]:
            problems.append(f"{key} must be a string of at most {_FIELDS[key]} characters")
    if len(custom) > MAX_CUSTOM_FIELDS:
        problems.append(f"{len(custom)} custom fields; a contact can carry at most {MAX_CUSTOM_FIELDS}")
    if ("birthday_month" in row) != ("birthday_day" in row):
        problems.append("birthday_month and birthday_day must be sent together")
    return problems


def _is_uuid(value) -> bool:
    return isinstance(value, str) and bool(UUID_RE.match(value))


def _copy(public: dict) -> dict:
    return {
        **public,
        "activity_errors": list(public["activity_errors"]),
        "status": dict(public["status"]),
        "_links": {"self": dict(public["_links"]["self"])},
    }
