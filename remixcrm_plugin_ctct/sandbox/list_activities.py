"""The sandbox's ``POST /activities/remove_list_memberships``: an activity like an import's.

``ListActivityRemoveContacts`` in, ``ActivityListsMembership`` (201) out; polled with ``GET
/activities/{id}``, it completes on the same poll an import would, and only then do the contacts
leave the lists. Only list memberships change: permission to send, deletion and every other
property stay as they were (removing someone from a list unsubscribes nobody).

Strict where the vendor is vague: of the ``source`` properties (mutually exclusive) only
``contact_ids`` is modelled, up to 500 of them; ``list_ids`` holds 1 to 50 existing lists (the
spec prints ``maxItems: 0`` for both, its descriptions say 500 and 50); anything else is a 400
(``exclude`` applies only to sources the sandbox does not model).
"""

import json
import uuid
from collections.abc import Callable

from .contacts import UUID_RE, ContactsApi, iso

MAX_CONTACTS = 500
MAX_LISTS = 50
_SOURCES = ("list_ids", "contact_ids", "all_active_contacts", "engagement_level", "tag_ids")


def create_removal(raw: bytes, api: ContactsApi, queue: Callable[..., tuple[int, object]]) -> tuple[int, object]:
    """Validate the body; queue the activity with ``queue`` (``Imports.add``)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return _bad(400, "malformed JSON", "json.parse.error")
    problems = _problems(body)
    if problems:
        return 400, [{"error_key": "json.field.invalid", "error_message": p} for p in problems]
    unknown = api.unknown_lists(body["list_ids"])
    if unknown:
        return _bad(404, f"list {unknown[0]} was not found", "contacts.api.not_found")
    stamp = iso(api.clock())
    activity_id = str(uuid.uuid4())
    contact_ids, list_ids = body["source"]["contact_ids"], body["list_ids"]
    public = {
        "activity_id": activity_id,
        "state": "initialized",
        "created_at": stamp,
        "updated_at": stamp,
        "percent_done": 0,
        "activity_errors": [],
        "status": {"items_total_count": len(contact_ids), "items_completed_count": 0, "list_count": len(list_ids)},
        "_links": {"self": {"href": f"/v3/activities/{activity_id}"}},
    }

    def complete(activity: dict) -> None:
        with api.lock:
            for contact in api.contacts.values():
                if contact["contact_id"] in contact_ids:
                    contact["list_memberships"] = [i for i in contact["list_memberships"] if i not in list_ids]
        activity["public"]["status"]["items_completed_count"] = len(contact_ids)

    return queue(public, kind="remove_list_memberships", complete=complete)


def _problems(body: object) -> list[str]:
    if not isinstance(body, dict):
        return ["the request body must be a JSON object (ListActivityRemoveContacts)"]
    problems = [
        f"'{k}' is not a property of ListActivityRemoveContacts"
        for k in body
        if k not in ("source", "list_ids", "exclude")
    ]
    if "exclude" in body:
        problems.append("exclude applies only to the list_ids and all_active_contacts sources (not modelled here)")
    lists = body.get("list_ids")
    if not isinstance(lists, list) or not 1 <= len(lists) <= MAX_LISTS or not all(_uuid(i) for i in lists):
        problems.append(f"list_ids is required and must hold 1 to {MAX_LISTS} list ids (UUIDs)")
    source = body.get("source")
    if not isinstance(source, dict) or len(source) != 1 or next(iter(source)) not in _SOURCES:
        problems.append(f"source must hold exactly one of {', '.join(_SOURCES)}")
        return problems
    if "contact_ids" not in source:
        problems.append("the sandbox models only source.contact_ids")
        return problems
    ids = source["contact_ids"]
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_CONTACTS or not all(_uuid(i) for i in ids):
        problems.append(f"source.contact_ids must hold 1 to {MAX_CONTACTS} contact ids (UUIDs)")
    return problems


def _uuid(value: object) -> bool:
    return isinstance(value, str) and bool(UUID_RE.match(value))


def _bad(status: int, message: str, key: str) -> tuple[int, list]:
    return status, [{"error_key": key, "error_message": message}]
