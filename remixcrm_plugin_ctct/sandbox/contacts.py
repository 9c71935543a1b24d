"""The sandbox's contacts and lists, with ``sign_up_form`` as Constant Contact documents it.

Stricter than the real service in one way: a body field that ``ContactCreateOrUpdateInput``
does not define is a 400 here, so we notice if we ever send one.
"""

import re
import threading
import uuid

SEEDED_LIST_ID = "1d0c1bd5-7e5a-4d0e-9b64-5ad1c4b3f001"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
# ContactCreateOrUpdateInput's string fields we model, with maxLength from the vendor spec
_LIMITS = {"email_address": 50, "first_name": 50, "last_name": 50, "job_title": 50, "company_name": 50, "phone_number": 25}
_OTHER_SCHEMA_FIELDS = {"list_memberships", "custom_fields", "anniversary", "birthday_month", "birthday_day", "street_address", "sms_channel"}


class ContactsApi:
    def __init__(self):
        self.lists = {SEEDED_LIST_ID: {"list_id": SEEDED_LIST_ID, "name": "RemixCRM clients"}}
        self.contacts: dict[str, dict] = {}  # lower-cased email -> contact
        self.sign_ups: list[dict] = []  # every accepted sign_up_form body, in order
        self._lock = threading.Lock()

    def members(self, list_id: str = SEEDED_LIST_ID) -> list[dict]:
        with self._lock:
            return [dict(c) for c in self.contacts.values() if list_id in c["list_memberships"]]

    def find(self, email: str = "", include_deleted: bool = False) -> list[dict]:
        """``GET /contacts?email=…[&status=all]`` in Constant Contact's shape (email_address is an
        object carrying permission_to_send); deleted contacts only with ``status=all``."""
        email = email.lower()
        with self._lock:
            found = [c for k, c in self.contacts.items() if (not email or k == email) and (include_deleted or not c.get("deleted_at"))]
            return [_api_shape(c) for c in found]

    def seed_contact(self, email: str, permission_to_send: str = "explicit", deleted: bool = False, list_id: str | None = None) -> dict:
        """Put a contact in place as if it had a history: ``unsubscribed``, or deleted."""
        with self._lock:
            contact = {"contact_id": str(uuid.uuid4()), "email_address": email, "list_memberships": [list_id] if list_id else [],
                       "permission_to_send": permission_to_send}
            if deleted:
                contact["deleted_at"] = "2026-01-01T00:00:00Z"
            self.contacts[email.lower()] = contact
            return dict(contact)

    def delete_list(self, list_id: str) -> None:
        with self._lock:
            self.lists[list_id]["deleted_at"] = "2026-01-01T00:00:00Z"

    def get_list(self, list_id: str) -> dict | None:
        with self._lock:
            found = self.lists.get(list_id)
            if found is None:
                return None
            count = sum(1 for c in self.contacts.values() if list_id in c["list_memberships"])
            return {**found, "membership_count": count}

    def sign_up(self, body) -> tuple[int, object]:
        problems = validate(body)
        if problems:
            return 400, [{"error_key": "json.field.invalid", "error_message": p} for p in problems]
        unknown = [l for l in body["list_memberships"] if l not in self.lists]
        if unknown:
            return 404, [{"error_key": "contacts.api.not_found", "error_message": f"list {unknown[0]} was not found"}]
        with self._lock:
            self.sign_ups.append(body)
            key = body["email_address"].lower()
            existing = self.contacts.get(key)
            contact = existing or {"contact_id": str(uuid.uuid4()), "list_memberships": []}
            contact.update({k: v for k, v in body.items() if k != "list_memberships"})
            contact["list_memberships"] += [l for l in body["list_memberships"] if l not in contact["list_memberships"]]
            contact["permission_to_send"] = "explicit"  # what the real endpoint does, even after an unsubscribe
            contact.pop("deleted_at", None)  # and it restores a deleted contact
            self.contacts[key] = contact
        return (200 if existing else 201), {"contact_id": contact["contact_id"], "action": "updated" if existing else "created"}


def validate(body) -> list[str]:
    if not isinstance(body, dict):
        return ["the request body must be a JSON object"]
    problems = [f"'{k}' is not a property of ContactCreateOrUpdateInput" for k in body if k not in _LIMITS and k not in _OTHER_SCHEMA_FIELDS]
    lists = body.get("list_memberships")
    if not isinstance(lists, list) or not 1 <= len(lists) <= 50 or not all(isinstance(l, str) and _UUID.match(l) for l in lists):
        problems.append("list_memberships must hold 1 to 50 list ids (UUIDs)")
    if not body.get("email_address"):
        problems.append("email_address is required")
    for key, limit in _LIMITS.items():
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            problems.append(f"{key} must be a string of at most {limit} characters")
    return problems


def _api_shape(contact: dict) -> dict:
    shaped = {k: v for k, v in contact.items() if k not in ("email_address", "permission_to_send")}
    shaped["email_address"] = {"address": contact["email_address"], "permission_to_send": contact.get("permission_to_send", "explicit")}
    return shaped
