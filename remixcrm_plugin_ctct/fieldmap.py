"""The mapped fields of a client (``[email_marketing.constant_contact.fields]``), at both ends.

At the hook (the client object is gone later), :func:`mapped` reads each mapped key and stores
its value under a name of our own in the event's ``fields``: the standard fields under their
``sign_up_form`` names (``street``, ``city``, ``state``, ``postal_code``, ``country``,
``birthday_month``, ``birthday_day``, ``anniversary``), a custom field as ``custom:<name>``.
The event's kind rides along as ``event:<kind>``, so the lists it joins survive coalescing
(see ``delivery/list_changes.py``). Values are checked against the vendor's limits there and
then, with a WARNING naming the client and the key.

At send time, :func:`sign_up_fields` and :func:`import_fields` turn what was stored into the
properties of ``ContactCreateOrUpdateInput`` and ``JsonImportContact``; anything stored under a
name neither knows is never sent. Pure functions, no I/O.
"""

import datetime as dt
import logging
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping

from .config.fields import ADDRESS, CUSTOM, CUSTOM_NAME_MAX, MAX_ENTRIES, FieldMap

log = logging.getLogger("remixcrm_plugin_ctct")

CUSTOM_VALUE_MAX = 255  # CreateOrUpdateContactCustomField.value and "cf:" maxLength
SIGN_UP_CUSTOM_MAX = 50  # ContactCreateOrUpdateInput.custom_fields maxItems
IMPORT_CUSTOM_MAX = 25  # "Each contact can contain up to 25 different custom fields" (JsonImportContact)
EVENT = "event:"
EVENT_KINDS = ("client_created", "lead_converted")
IMPORT_ADDRESS = {"street": "street", "city": "city", "state": "state", "postal_code": "zip", "country": "country"}
DATE_KEYS = ("birthday_month", "birthday_day", "anniversary")
# sign_up_form's accepted anniversary formats: MM/DD/YYYY, M/D/YYYY, YYYY/MM/DD, YYYY/M/D, YYYY-MM-DD,
# YYYY-M-D, M-D-YYYY, M-DD-YYYY
# (re.ASCII: str's \d also matches Arabic-Indic and other digits, which Constant Contact does not read)
_ANNIVERSARY = re.compile(r"\d{1,2}([/-])\d{1,2}\1\d{4}|\d{4}([/-])\d{1,2}\2\d{1,2}", re.ASCII)
# 1990-04-23, --04-23 (ISO without year)
_MONTH_DAY = re.compile(r"(?:\d{4}|-)-(\d{1,2})-(\d{1,2})(?:[T ].*)?", re.ASCII)
_DAY_OR_MONTH = re.compile(r"\d{1,2}", re.ASCII)


def mapped(get: Callable[[str], object], client_id: str, field_map: FieldMap, shown: Callable) -> dict:
    """The stored fields of the mapped client keys that have a value (``get`` never raises)."""
    found: dict = {}
    for key, target in field_map:
        value = get(key)
        if _absent(value):
            continue
        said = f"client {shown(client_id)}: {key}"
        if target.startswith(CUSTOM):
            text = _text(value, said, CUSTOM_VALUE_MAX)
            if text:
                found[target] = text
        elif target in ADDRESS:
            text = _text(value, said, ADDRESS[target])
            if text:
                found[target] = text
        elif target == "anniversary":
            found.update(_anniversary(value, said))
        elif target == "birthday":
            found.update(_birthday(value, said))
        else:
            found.update(_birthday_part(target, value, said))
    if ("birthday_month" in found) != ("birthday_day" in found):
        log.warning(
            "client %s: only one of birthday_month and birthday_day has a value; Constant Contact takes them "
            "only together, so neither is sent (fill both in RemixCRM)",
            shown(client_id),
        )
        found.pop("birthday_month", None)
        found.pop("birthday_day", None)
    return found


def _absent(value: object) -> bool:
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    try:
        return bool(value != value)  # NaN
    except Exception:  # pandas.NA (its truth raises), a numpy array: "no value" is the safe reading
        return True


def _text(value: object, said: str, limit: int) -> str | None:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", "replace")
    elif isinstance(value, str | numbers.Number | dt.date | dt.time):
        try:
            text = value.isoformat() if isinstance(value, dt.date | dt.time) else str(value)
        except Exception:  # an int of more than 4300 digits; a __str__ that raises
            text = None
    else:
        text = None
    if text is None:
        kind = type(value).__name__
        log.warning("%s is a %s, not text or a number; not sent (check the field in RemixCRM)", said, kind)
        return None
    text = _clean(text.strip())
    if len(text) > limit:
        log.warning("%s is %d characters, Constant Contact allows %d; sending it truncated", said, len(text), limit)
        text = text[:limit].rstrip()
    return text or None


def _clean(text: str) -> str:
    """Valid UTF-8 whatever the host stored (see payload.clean_text)."""
    if text.isascii():
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _anniversary(value: object, said: str) -> dict:
    if isinstance(value, dt.date):  # (a datetime is a date too)
        return {"anniversary": f"{value.year:04d}-{value.month:02d}-{value.day:02d}"}
    if isinstance(value, str):
        text = value.strip()[:32]
        head = text.split("T", 1)[0].split(" ", 1)[0]  # "2006-11-15T00:00:00": the date part
        if _ANNIVERSARY.fullmatch(head) and _real_date(head):
            return {"anniversary": head}
    log.warning(
        "%s is not a date Constant Contact takes as an anniversary (YYYY-MM-DD, MM/DD/YYYY and the like); not sent",
        said,
    )
    return {}


def _real_date(text: str) -> bool:
    parts = [int(p) for p in re.split(r"[/-]", text)]
    year, month, day = parts if parts[0] > 31 else (parts[2], parts[0], parts[1])
    try:
        dt.date(year, month, day)
    except ValueError:
        return False
    return True


def _birthday(value: object, said: str) -> dict:
    month = day = None
    if isinstance(value, dt.date):
        month, day = value.month, value.day
    elif isinstance(value, str) and (found := _MONTH_DAY.fullmatch(value.strip()[:40])):
        month, day = int(found.group(1)), int(found.group(2))
    if month is not None and day is not None and _month_day_ok(month, day):
        return {"birthday_month": month, "birthday_day": day}
    log.warning("%s is not a date (such as 1990-04-23); the birthday is not sent", said)
    return {}


def _month_day_ok(month: int, day: int) -> bool:
    try:
        dt.date(2000, month, day)  # a leap year: 29 February is a birthday
    except ValueError:
        return False
    return True


def _birthday_part(target: str, value: object, said: str) -> dict:
    top = 12 if target == "birthday_month" else 31
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DAY_OR_MONTH.fullmatch(value.strip()):  # (isdigit() takes "²", int() not)
        number = int(value.strip())
    if number is not None and 1 <= number <= top:
        return {target: number}
    log.warning("%s must be a whole number from 1 to %d for %s; not sent", said, top, target)
    return {}


def bounded(fields: dict, text_limits: Mapping[str, int]) -> dict:
    """What a journal line's ``fields`` may hold, cut to the limits the hook keeps (lines from
    older versions or other programs may break them): the text fields (``text_limits``), the
    mapped ones, and the event markers; anything else is dropped, never sent."""
    found: dict = {}
    customs = 0
    for key, value in fields.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, str):
            limit = text_limits.get(key) or ADDRESS.get(key)
            if key.startswith(CUSTOM) and 0 < len(key) - len(CUSTOM) <= CUSTOM_NAME_MAX and customs < MAX_ENTRIES:
                customs += 1
                limit = CUSTOM_VALUE_MAX
            elif key == "anniversary" and _ANNIVERSARY.fullmatch(value):
                limit = 10
            if limit:
                found[_clean(key)] = _clean(value)[:limit]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if key in ("birthday_month", "birthday_day") and isinstance(value, int) and 1 <= value <= 31:
                found[key] = value
            elif key.startswith(EVENT) and key[len(EVENT) :] in EVENT_KINDS and math.isfinite(value):
                found[key] = float(value)  # (finite: NaN is no JSON the outbox's SQL can read)
    return found


# --- at send time ---


def event_kinds(fields: Mapping) -> set[str]:
    """The kinds of the events whose markers are in ``fields`` (``client_created``, ``lead_converted``)."""
    return {k[len(EVENT) :] for k in fields if k.startswith(EVENT) and k[len(EVENT) :] in EVENT_KINDS}


def custom_values(fields: Mapping) -> dict[str, str]:
    """{custom field name: value}, in the order stored (the mapping's order)."""
    return {k[len(CUSTOM) :]: v for k, v in fields.items() if k.startswith(CUSTOM) and isinstance(v, str)}


def sign_up_fields(fields: Mapping, custom_ids: Mapping[str, str]) -> dict:
    """``street_address``, the birthday, ``anniversary`` and ``custom_fields`` (ids from
    ``custom_ids``: name -> custom_field_id; a name missing there is left out)."""
    body: dict = {}
    address = {k: fields[k] for k in ADDRESS if isinstance(fields.get(k), str)}
    if address:
        body["street_address"] = {"kind": "home", **address}  # kind is required; the import's default is home
    body.update(_dates(fields))
    customs = [
        {"custom_field_id": custom_ids[name], "value": value}
        for name, value in custom_values(fields).items()
        if name in custom_ids
    ]
    if customs:
        body["custom_fields"] = customs[:SIGN_UP_CUSTOM_MAX]
    return body


def import_fields(fields: Mapping, custom_names: Mapping[str, str]) -> dict:
    """The same as ``JsonImportContact`` properties: ``street``/``city``/…/``zip``, the dates, and
    ``cf:<name>`` (``custom_names``: name as mapped -> name in Constant Contact), at most 25."""
    row = {IMPORT_ADDRESS[k]: fields[k] for k in ADDRESS if isinstance(fields.get(k), str)}
    row.update(_dates(fields))
    customs = [(custom_names[n], v) for n, v in custom_values(fields).items() if n in custom_names]
    row.update((f"cf:{name}", value) for name, value in customs[:IMPORT_CUSTOM_MAX])
    return row


def _dates(fields: Mapping) -> dict:
    found = {k: fields[k] for k in DATE_KEYS if k in fields}
    if not (isinstance(found.get("birthday_month"), int) and isinstance(found.get("birthday_day"), int)):
        found.pop("birthday_month", None)
        found.pop("birthday_day", None)
    if not isinstance(found.get("anniversary"), str):
        found.pop("anniversary", None)
    return found


def over_limit(contacts: Iterable[Mapping], limit: int) -> int:
    """How many of ``contacts``' stored fields hold more than ``limit`` custom fields."""
    return sum(1 for fields in contacts if len(custom_values(fields)) > limit)
