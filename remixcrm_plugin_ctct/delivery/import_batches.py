"""From contacts to ``contacts_json_import`` bodies: one ``JsonImportContact`` per contact, packed
into requests of at most 40,000 contacts and under 4 MB. Pure functions, no I/O.

The field names are ``JsonImportContact``'s in the vendor's OpenAPI document; the stored fields
are ``sign_up_form``'s (``payload.TEXT_FIELDS``), which differ in one name only (``phone``).
Constant Contact imports only the first 4 MB of a larger body and drops the rest *silently*,
so the size is measured on the exact bytes sent, with room to spare.
"""

import json
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

MAX_CONTACTS = 40_000
MAX_BYTES = 3_900_000  # under "4 MB" however it is read (4,000,000 or 4 MiB), with room to spare
_RENAMED = {"phone_number": "phone"}  # sign_up_form's name -> JsonImportContact's


def import_contact(contact: dict) -> dict:
    """``JsonImportContact`` for a stored contact ({"email", "fields"}): its email and fields."""
    fields = contact.get("fields") or {}
    return {"email": contact["email"], **{_RENAMED.get(k, k): v for k, v in fields.items()}}


def _body(rows: list[dict], list_id: str) -> bytes:
    return json.dumps({"import_data": rows, "list_ids": [list_id]}, separators=(",", ":")).encode()


def batches(
    items: Sequence[tuple[T, dict]],
    list_id: str,
    max_contacts: int = MAX_CONTACTS,
    max_bytes: int = MAX_BYTES,
) -> list[tuple[list[T], bytes]]:
    """``items`` (key, JsonImportContact) packed in order into bodies of at most ``max_contacts``
    contacts and ``max_bytes`` bytes, each with the keys of its contacts, in the same order
    (``import_data[n]`` is ``keys[n]``: that is how an activity's errors find their row)."""
    out: list[tuple[list[T], bytes]] = []
    overhead = len(_body([], list_id))
    keys: list[T] = []
    rows: list[dict] = []
    size = overhead
    for key, row in items:
        row_size = len(json.dumps(row, separators=(",", ":")).encode()) + 1  # + its comma
        if rows and (len(rows) >= max_contacts or size + row_size > max_bytes):
            out.append((keys, _body(rows, list_id)))
            keys, rows, size = [], [], overhead
        keys.append(key)
        rows.append(row)
        size += row_size
    if rows:
        out.append((keys, _body(rows, list_id)))
    return out
