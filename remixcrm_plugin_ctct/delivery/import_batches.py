"""From contacts to ``contacts_json_import`` bodies: one ``JsonImportContact`` per contact, packed
into requests of at most 40,000 contacts and under 4 MB. Pure functions, no I/O.

The field names are ``JsonImportContact``'s in the vendor's OpenAPI document; the stored fields
are ``sign_up_form``'s (``payload.TEXT_FIELDS``, and the mapped ones: see fieldmap.py), which
differ in a few names (``phone``, ``zip``, ``cf:<name>``). A request joins one set of lists
(``list_ids``), so contacts are grouped by the lists they join before they are packed.
Constant Contact imports only the first 4 MB of a larger body and drops the rest *silently*,
so the size is measured on the exact bytes sent, with room to spare.
"""

import json
from collections.abc import Mapping, Sequence
from typing import TypeVar

from .. import fieldmap
from ..payload import TEXT_FIELDS

T = TypeVar("T")

MAX_CONTACTS = 40_000
MAX_BYTES = 3_900_000  # under "4 MB" however it is read (4,000,000 or 4 MiB), with room to spare
_RENAMED = {"phone_number": "phone"}  # sign_up_form's name -> JsonImportContact's


def import_contact(contact: dict, custom_names: Mapping[str, str] | None = None) -> dict:
    """``JsonImportContact`` for a stored contact ({"email", "fields"}): its email and the fields
    the schema defines (``custom_names``: custom field name as mapped -> its name in Constant Contact)."""
    fields = contact.get("fields") or {}
    row = {"email": contact["email"], **{_RENAMED.get(k, k): fields[k] for k in TEXT_FIELDS if k in fields}}
    row.update(fieldmap.import_fields(fields, custom_names or {}))
    return row


def _body(rows: list[dict], list_ids: Sequence[str]) -> bytes:
    return json.dumps({"import_data": rows, "list_ids": list(list_ids)}, separators=(",", ":")).encode()


def batches(
    items: Sequence[tuple[T, dict]],
    list_ids: str | Sequence[str],
    max_contacts: int = MAX_CONTACTS,
    max_bytes: int = MAX_BYTES,
) -> list[tuple[list[T], bytes]]:
    """``items`` (key, JsonImportContact) packed in order into bodies of at most ``max_contacts``
    contacts and ``max_bytes`` bytes, each with the keys of its contacts, in the same order
    (``import_data[n]`` is ``keys[n]``: that is how an activity's errors find their row)."""
    if isinstance(list_ids, str):
        list_ids = [list_ids]
    out: list[tuple[list[T], bytes]] = []
    overhead = len(_body([], list_ids))
    keys: list[T] = []
    rows: list[dict] = []
    size = overhead
    for key, row in items:
        row_size = len(json.dumps(row, separators=(",", ":")).encode()) + 1  # + its comma
        if rows and (len(rows) >= max_contacts or size + row_size > max_bytes):
            out.append((keys, _body(rows, list_ids)))
            keys, rows, size = [], [], overhead
        keys.append(key)
        rows.append(row)
        size += row_size
    if rows:
        out.append((keys, _body(rows, list_ids)))
    return out
