"""The sandbox's contacts and lists, with ``sign_up_form`` as Constant Contact documents it.

Stricter than the real service where the real one is vague: a body field that
``ContactCreateOrUpdateInput`` does not define is a 400 here, so we notice if we ever send one.
Addresses are stored lower-cased, as Constant Contact stores them, and (``lowercase_lookups``,
on by default) ``GET /contacts?email=`` matches the stored address exactly, so a mixed-case query
finds nothing, as Constant Contact's staff describe: a client that forgets to lower-case its
lookups would re-subscribe people, and this is where we want to notice.
"""

import base64
import datetime as dt
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import custom_fields

SEEDED_LIST_ID = "1d0c1bd5-7e5a-4d0e-9b64-5ad1c4b3f001"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
# ContactCreateOrUpdateInput's string fields we model, with maxLength from the vendor spec
_LIMITS = dict(email_address=50, first_name=50, last_name=50, job_title=50, company_name=50, phone_number=25)
_OTHER_SCHEMA_FIELDS = {"list_memberships", "custom_fields", "anniversary", "birthday_month", "birthday_day"}
_OTHER_SCHEMA_FIELDS |= {"street_address", "sms_channel"}
# GET /contacts?status= values (the spec's enum); "active" is everyone not deleted and not opted out
STATUSES = {"all", "active", "deleted", "not_set", "pending_confirmation", "temp_hold", "unsubscribed"}
# GET /contacts's query parameters: the ones modelled here, the spec's others (refused: a client
# must not rely on a filter the sandbox ignores), and ``cursor``, which only our next links carry
_MODELLED_PARAMS = {"status", "email", "updated_after", "optout_after", "limit", "include", "include_count", "cursor"}
_UNMODELLED_PARAMS = {"lists", "segment_id", "tags", "updated_before", "created_after", "created_before"}
_UNMODELLED_PARAMS |= {"optout_before", "sms_status"}
_INCLUDES = {"custom_fields", "list_memberships", "phone_numbers", "street_addresses", "taggings", "notes"}


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _day(ts: float) -> str:
    # ContactResource.deleted_at is `format: date` in the spec ("2016-07-08"), not a date-time
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


class ContactsApi:
    def __init__(
        self, confirmed_opt_in: bool = False, lowercase_lookups: bool = True, clock: Callable[[], float] = time.time
    ):
        self.lists = {SEEDED_LIST_ID: {"list_id": SEEDED_LIST_ID, "name": "RemixCRM clients"}}
        self.contacts: dict[str, dict] = {}  # lower-cased email -> contact
        # CustomField by name (an import's "cf:<name>"); put in place with seed_custom_field
        self.custom_fields: dict[str, dict] = {}
        self.custom_field_reads = 0  # GET /contact_custom_fields answered (a client should cache them)
        self.sign_ups: list[dict] = []  # every accepted sign_up_form body, in order
        self.confirmed_opt_in = confirmed_opt_in  # the account's Confirmed Opt-In setting
        self.lowercase_lookups = lowercase_lookups
        self.clock = clock
        self.lock = threading.Lock()  # activities.py applies imports under it too

    def members(self, list_id: str = SEEDED_LIST_ID) -> list[dict]:
        with self.lock:
            return [dict(c) for c in self.contacts.values() if list_id in c["list_memberships"]]

    def find(self, email: str = "", include_deleted: bool = False, as_queried: bool = False) -> list[dict]:
        """Contacts in ``GET /contacts``'s shape (email_address an object carrying permission_to_send).
        From Python (tests, the demo) the email is matched case-blind; ``as_queried`` is the HTTP
        path, which matches only the stored lower-case address when ``lowercase_lookups`` is on."""
        params: dict[str, Any] = {"status": "all" if include_deleted else "", "limit": 500, "email": email}
        found: list[dict] = []
        page: Any = {"_links": {"next": {"href": ""}}}
        while "_links" in page:
            page = self.query(params, as_queried=as_queried)[1]
            found += page["contacts"]
            params = {"cursor": page.get("_links", {}).get("next", {}).get("href", "").partition("cursor=")[2]}
        return found

    def query(self, params: dict, as_queried: bool = True) -> tuple[int, dict | list]:
        """``GET /contacts`` with ``email``, ``status`` (csv), ``updated_after``, ``optout_after`` and
        paging as the spec has it: ``limit`` 1–500 (default 50), then ``_links.next.href`` carrying a
        ``cursor`` until the last page (a client that ignores it sees only the first 50)."""
        if as_queried:
            problem = _param_problem(params)
            if problem:
                return _bad_query(problem)
        if params.get("cursor"):
            try:
                params = json.loads(base64.urlsafe_b64decode(params["cursor"].encode()))
            except ValueError:
                return _bad_query("cursor is not valid")
        try:
            limit, offset = int(params.get("limit", 50)), int(params.get("offset", 0))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 500:
            return _bad_query("limit must be from 1 to 500")
        statuses = {s for s in (params.get("status") or "").split(",") if s}
        if statuses - STATUSES:
            return _bad_query(f"status must be among {sorted(STATUSES)}")
        email = params.get("email") or ""
        if not (as_queried and self.lowercase_lookups):
            email = email.lower()
        since = {}
        for key in ("updated_after", "optout_after"):
            if params.get(key):
                try:
                    since[key] = dt.datetime.fromisoformat(params[key].replace("Z", "+00:00")).timestamp()
                except ValueError:
                    return _bad_query(f"{key} must be an ISO-8601 date-time")
        with self.lock:
            found = [
                c
                for k, c in self.contacts.items()
                if (not email or k == email)
                and _status_matches(c, statuses)
                and c.get("updated", 0) > since.get("updated_after", -1)
                and ("optout_after" not in since or c.get("opt_out", -1) > since["optout_after"])
            ]
            answer = {"contacts": [_api_shape(c) for c in found[offset : offset + limit]], "contacts_count": len(found)}
        if offset + limit < len(found):
            cursor = base64.urlsafe_b64encode(json.dumps({**params, "offset": offset + limit}).encode()).decode()
            answer["_links"] = {"next": {"href": f"/v3/contacts?cursor={cursor}"}}
        return 200, answer

    def seed_contact(
        self, email: str, permission_to_send: str = "explicit", deleted: bool = False, list_id: str | None = None
    ) -> dict:
        """Put a contact in place as if it had a history: ``unsubscribed``, or deleted."""
        now = self.clock()
        with self.lock:
            contact = {
                "contact_id": str(uuid.uuid4()),
                "email_address": email.lower(),
                "list_memberships": [list_id] if list_id else [],
                "permission_to_send": permission_to_send,
                "created": now,
                "updated": now,
            }
            if permission_to_send == "unsubscribed":
                contact["opt_out"] = now
            if deleted:
                contact["deleted_at"] = _day(now)
            self.contacts[email.lower()] = contact
            return dict(contact)

    def seed_custom_field(self, label: str, field_type: str = "string") -> dict:
        """Create a custom field, as an admin does in Contacts → Settings → Custom Fields."""
        with self.lock:
            field = custom_fields.make_field(label, field_type, iso(self.clock()))
            self.custom_fields[field["name"]] = field
            return dict(field)

    def custom_fields_page(self, params: dict) -> tuple[int, dict | list]:
        """``GET /contact_custom_fields``."""
        with self.lock:
            self.custom_field_reads += 1
            fields = list(self.custom_fields.values())
        return custom_fields.page(fields, params)

    def custom_values(self, email: str) -> dict[str, str]:
        """{custom field name: value} of a contact (tests, the demo)."""
        with self.lock:
            contact = self.contacts.get(email.lower()) or {}
            names = {f["custom_field_id"]: name for name, f in self.custom_fields.items()}
            return {
                names.get(f["custom_field_id"], f["custom_field_id"]): f["value"]
                for f in contact.get("custom_fields", [])
            }

    def unsubscribe(self, email: str, source: str = "Contact") -> None:
        """The person opts out (a link in a mail; ``source`` "Account": someone in the account did).
        Like Constant Contact, this does not move ``updated_at``: only ``optout_after`` finds it, so
        a client watching updated_after alone misses it."""
        with self.lock:
            contact = self.contacts[email.lower()]
            contact["permission_to_send"], contact["opt_out"] = "unsubscribed", self.clock()
            contact["opt_out_source"] = source

    def delete(self, email: str) -> None:
        """The account deletes a contact. Per the spec a deleted contact's email_address carries
        ``opt_out_source`` and ``opt_out_date``; the sandbox also moves ``updated_at`` (the vendor
        does not say; a client must notice a deletion either way)."""
        with self.lock:
            contact, now = self.contacts[email.lower()], self.clock()
            contact["deleted_at"], contact["updated"] = _day(now), now
            if not contact.get("opt_out"):
                contact["opt_out"], contact["opt_out_source"] = now, "Account"

    def seed_list(self, name: str, list_id: str | None = None) -> str:
        """Create a list (as in Contacts → Lists); returns its id."""
        list_id = list_id or str(uuid.uuid4())
        with self.lock:
            self.lists[list_id] = {"list_id": list_id, "name": name}
        return list_id

    def delete_list(self, list_id: str) -> None:
        with self.lock:
            self.lists[list_id]["deleted_at"] = iso(self.clock())  # ContactList.deleted_at is a date-time

    def get_list(self, list_id: str) -> dict | None:
        with self.lock:
            found = self.lists.get(list_id)
            if found is None:
                return None
            count = sum(1 for c in self.contacts.values() if list_id in c["list_memberships"])
            return {**found, "membership_count": count}

    def unknown_lists(self, list_ids: list) -> list:
        return [i for i in list_ids if i not in self.lists]

    def sign_up(self, body) -> tuple[int, object]:
        problems = validate(body)
        if not problems:
            with self.lock:
                known = {f["custom_field_id"] for f in self.custom_fields.values()}
            problems = custom_fields.sign_up_problems(body, known)
        if problems:
            return 400, [{"error_key": "json.field.invalid", "error_message": p} for p in problems]
        unknown = self.unknown_lists(body["list_memberships"])
        if unknown:
            return 404, [{"error_key": "contacts.api.not_found", "error_message": f"list {unknown[0]} was not found"}]
        now = self.clock()
        with self.lock:
            self.sign_ups.append(body)
            key = body["email_address"].lower()
            existing = self.contacts.get(key)
            contact = existing or {
                "contact_id": str(uuid.uuid4()),
                "list_memberships": [],
                "created": now,
                "create_source": "Contact",
                "opt_in_source": "Contact",
            }
            contact.update({k: v for k, v in body.items() if k not in ("list_memberships", "custom_fields")})
            custom_fields.merge(contact, body.get("custom_fields", []))
            contact["email_address"], contact["updated"] = key, now
            contact["list_memberships"] += [i for i in body["list_memberships"] if i not in contact["list_memberships"]]
            if existing is None and self.confirmed_opt_in:
                contact["permission_to_send"] = "pending_confirmation"  # until the person clicks the confirmation mail
            else:
                contact["permission_to_send"] = "explicit"  # what the real endpoint does, even after an unsubscribe
            contact.pop("deleted_at", None)  # and it restores a deleted contact
            self.contacts[key] = contact
        return (200 if existing else 201), {
            "contact_id": contact["contact_id"],
            "action": "updated" if existing else "created",
        }


def validate(body) -> list[str]:
    if not isinstance(body, dict):
        return ["the request body must be a JSON object"]
    problems = [
        f"'{k}' is not a property of ContactCreateOrUpdateInput"
        for k in body
        if k not in _LIMITS and k not in _OTHER_SCHEMA_FIELDS
    ]
    lists = body.get("list_memberships")
    if (
        not isinstance(lists, list)
        or not 1 <= len(lists) <= 50
        or not all(isinstance(i, str) and UUID_RE.match(i) for i in lists)
    ):
        problems.append("list_memberships must hold 1 to 50 list ids (UUIDs)")
    if not body.get("email_address"):
        problems.append("email_address is required")
    for key, limit in _LIMITS.items():
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            problems.append(f"{key} must be a string of at most {limit} characters")
    return problems


def _bad_query(message: str) -> tuple[int, list]:
    return 400, [{"error_key": "query.param.invalid", "error_message": message}]


def _param_problem(params: dict) -> str | None:
    for key in params:
        if key in _UNMODELLED_PARAMS:
            return f"{key} is a parameter of GET /contacts that the sandbox does not model"
        if key not in _MODELLED_PARAMS:
            return f"{key} is not a parameter of GET /contacts"
    if params.get("cursor") and len(params) > 1:
        return "cursor comes alone: its next link carries every other parameter"
    includes = {i for i in (params.get("include") or "").split(",") if i}
    if includes - _INCLUDES:
        return f"include must be among {sorted(_INCLUDES)}"
    if params.get("include_count", "true") not in ("true", "false"):
        return "include_count must be true or false"
    return None


def _status_matches(contact: dict, statuses: set) -> bool:
    deleted = bool(contact.get("deleted_at"))
    if not statuses:
        return not deleted  # the default: every contact that is not deleted
    if "all" in statuses or (deleted and "deleted" in statuses):
        return True
    permission = contact.get("permission_to_send")
    if "active" in statuses and not deleted and permission in ("explicit", "implicit"):
        return True
    return not deleted and permission in statuses


def _api_shape(contact: dict) -> dict:
    hidden = ("email_address", "permission_to_send", "opt_in_source", "created", "updated", "opt_out", "opt_out_source")
    shaped = {k: v for k, v in contact.items() if k not in hidden}
    address = {"address": contact["email_address"], "permission_to_send": contact.get("permission_to_send", "explicit")}
    if contact.get("opt_in_source"):
        address["opt_in_source"] = contact["opt_in_source"]
    # "Displayed only if contact has been unsubscribed/opt-out" (the spec), and on deleted contacts;
    # a re-subscribed or revived contact's old opt-out is history, not shown
    if contact.get("opt_out") and (contact.get("permission_to_send") == "unsubscribed" or contact.get("deleted_at")):
        address["opt_out_date"] = iso(contact["opt_out"])
        address["opt_out_source"] = contact.get("opt_out_source", "Contact")
    shaped["email_address"] = address
    shaped["created_at"], shaped["updated_at"] = iso(contact.get("created", 0)), iso(contact.get("updated", 0))
    return shaped
