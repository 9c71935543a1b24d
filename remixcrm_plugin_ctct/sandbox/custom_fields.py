"""The sandbox's custom fields: ``GET /contact_custom_fields`` and the checks of the properties that
carry them and the other mapped fields (``custom_fields`` and ``street_address`` on
``sign_up_form``; ``cf:<name>`` on imports is checked in activities.py).

Shaped as the vendor spec shapes them (``CustomFields``: ``custom_fields`` and ``_links.next``;
``limit`` 1–100, default 50) and strict: an unknown ``custom_field_id``, more than 50 custom
fields, a value over 255 characters, a ``street_address`` without a valid ``kind`` or one
birthday part without the other is a 400. Custom fields are put in place with
``ContactsApi.seed_custom_field``, as an admin would create them in Settings → Custom Fields.
"""

import base64
import json
import re
import uuid

MAX_PER_SIGN_UP = 50  # ContactCreateOrUpdateInput.custom_fields maxItems
VALUE_MAX = 255
PAGE_MAX = 100
_ADDRESS = {"kind": None, "street": 255, "city": 50, "state": 50, "postal_code": 50, "country": 50}
_KINDS = ("home", "work", "other")
_ANNIVERSARY = re.compile(r"^(\d{1,2}[/-]\d{1,2}[/-]\d{4}|\d{4}[/-]\d{1,2}[/-]\d{1,2})$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def make_field(label: str, field_type: str, now: str) -> dict:
    """A ``CustomField`` as Constant Contact answers it: its name is the label with blanks as underscores."""
    return {
        "custom_field_id": str(uuid.uuid4()),
        "label": label,
        "name": label.replace(" ", "_"),
        "type": field_type,
        "created_at": now,
        "updated_at": now,
    }


def page(fields: list[dict], params: dict) -> tuple[int, dict | list]:
    """One page of ``GET /contact_custom_fields`` (``limit``, then our own ``cursor`` in the next link)."""
    unknown = set(params) - {"limit", "cursor"}
    if unknown:
        return _bad(f"{sorted(unknown)[0]} is not a parameter of GET /contact_custom_fields")
    offset = 0
    if params.get("cursor"):
        try:
            cursor = json.loads(base64.urlsafe_b64decode(params["cursor"].encode()))
            offset, limit = int(cursor["offset"]), int(cursor["limit"])
        except (ValueError, KeyError, TypeError):
            return _bad("cursor is not valid")
    else:
        try:
            limit = int(params.get("limit", 50))
        except ValueError:
            limit = 0
    if not 1 <= limit <= PAGE_MAX:
        return _bad(f"limit must be from 1 to {PAGE_MAX}")
    answer: dict = {"custom_fields": [dict(f) for f in fields[offset : offset + limit]]}
    if offset + limit < len(fields):
        cursor = base64.urlsafe_b64encode(json.dumps({"offset": offset + limit, "limit": limit}).encode()).decode()
        answer["_links"] = {"next": {"href": f"/v3/contact_custom_fields?cursor={cursor}"}}
    return 200, answer


def sign_up_problems(body: dict, known_ids: set[str]) -> list[str]:
    """What ``sign_up_form`` refuses in the mapped properties of ``body``."""
    problems = []
    customs = body.get("custom_fields", [])
    if not isinstance(customs, list) or len(customs) > MAX_PER_SIGN_UP:
        problems.append(f"custom_fields must be an array of at most {MAX_PER_SIGN_UP} custom fields")
        customs = []
    for n, item in enumerate(customs):
        if not isinstance(item, dict) or set(item) - {"custom_field_id", "value"}:
            problems.append(f"custom_fields[{n}] must be an object with custom_field_id and value only")
            continue
        field_id, value = item.get("custom_field_id"), item.get("value")
        if not isinstance(field_id, str) or not _UUID.match(field_id):
            problems.append(f"custom_fields[{n}].custom_field_id must be a UUID")
        elif field_id not in known_ids:
            problems.append(f"custom_fields[{n}]: custom field {field_id} does not exist in the account")
        if not isinstance(value, str) or len(value) > VALUE_MAX:
            problems.append(f"custom_fields[{n}].value must be a string of at most {VALUE_MAX} characters")
    address = body.get("street_address")
    if address is not None:
        if not isinstance(address, dict) or address.get("kind") not in _KINDS or set(address) - set(_ADDRESS):
            problems.append(f"street_address must be an object with kind one of {_KINDS} and the spec's parts")
        else:
            problems += [
                f"street_address.{k} must be a string of at most {limit} characters"
                for k, limit in _ADDRESS.items()
                if limit and k in address and (not isinstance(address[k], str) or len(address[k]) > limit)
            ]
    problems += date_problems(body)
    return problems


def date_problems(row: dict) -> list[str]:
    """The birthday and anniversary rules both endpoints share."""
    problems = []
    for key, top in (("birthday_month", 12), ("birthday_day", 31)):
        value = row.get(key)
        if key in row and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top):
            problems.append(f"{key} must be an integer from 1 to {top}")
    if ("birthday_month" in row) != ("birthday_day" in row):
        problems.append("birthday_month and birthday_day must be sent together")
    anniversary = row.get("anniversary")
    if anniversary is not None and (not isinstance(anniversary, str) or not _ANNIVERSARY.match(anniversary)):
        problems.append("anniversary must be a date such as 2006-11-15 or 11/15/2006")
    return problems


def merge(contact: dict, values: list[dict]) -> None:
    """Constant Contact appends custom fields to a contact's, a new value replacing the old one."""
    kept = {f["custom_field_id"]: f["value"] for f in contact.get("custom_fields", [])}
    kept.update((f["custom_field_id"], f["value"]) for f in values)
    contact["custom_fields"] = [{"custom_field_id": k, "value": v} for k, v in kept.items()]


def _bad(message: str) -> tuple[int, list]:
    return 400, [{"error_key": "query.param.invalid", "error_message": message}]
