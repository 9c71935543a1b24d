"""``[email_marketing.constant_contact.fields]``: which client key fills which Constant Contact field.

    [email_marketing.constant_contact.fields]
    address_line1 = "street"        # a standard field both sign_up_form and the import accept
    date_of_birth = "birthday"      # a date: its month and day become birthday_month / birthday_day
    plan = "custom:Plan"            # a custom field, by its name in Constant Contact

Unlike the other keys, a bad entry here does not pause sending: that entry is ignored, with one
ERROR naming it and the fix, and every client still reaches its list with everything else. A
typo in one mapping must not keep every new client off the list.
"""

import re
from typing import Any

from .messages import SECTION, show

FIELDS = f"{SECTION}.fields"
# the standard fields both sign_up_form (street_address.*) and JsonImportContact (street, city,
# state, zip, country) define, with the smaller maxLength of the two; stored under these names
ADDRESS = {"street": 255, "city": 50, "state": 50, "postal_code": 50, "country": 50}
DATES = ("birthday", "birthday_month", "birthday_day", "anniversary")
STANDARD = (*ADDRESS, *DATES)
ALIASES = {"zip": "postal_code"}  # JsonImportContact's name for the same field
CUSTOM = "custom:"
CUSTOM_NAME_MAX = 50  # CustomField.name's maxLength
MAX_ENTRIES = 100  # an account has at most 100 custom fields; a longer table is a mistake
# a client key is read as record[key] or record.key: a plain name only (no "_private", no dunder)
_CLIENT_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]+")
_FIX = "fix or remove the entry in RemixCRM's config.toml"

FieldMap = tuple[tuple[str, str], ...]  # ((client key, target), ...): target in STANDARD or "custom:<name>"


def parse(value: Any, problems: list[str]) -> FieldMap:
    """The mapping, in the table's order; each bad entry is left out, with one problem naming it
    and the fix appended to ``problems`` (these do not make the config invalid: see the docstring)."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        problems.append(
            f'{FIELDS} must be a table ([{FIELDS}] with lines such as plan = "custom:Plan"; got {show(value)}); '
            "no client field is mapped until it is"
        )
        return ()
    found: list[tuple[str, str]] = []
    taken: dict[str, str] = {}  # target -> client key
    for key, raw in value.items():
        if len(found) >= MAX_ENTRIES:
            problems.append(
                f"{FIELDS} has more than {MAX_ENTRIES} entries (an account holds at most 100 custom fields); "
                f"the entries after {show(found[-1][0])} are ignored: {_FIX}"
            )
            break
        target = _target(key, raw, problems)
        if target is None:
            continue
        clash = _clash(target, taken)
        if clash is not None:
            problems.append(
                f"{FIELDS}.{_name(key)} = {show(raw)} fills the same Constant Contact field as "
                f"{show(clash)}; ignored: map each field from one client key only"
            )
            continue
        taken[target] = key
        found.append((key, target))
    months = [t for t in taken if t in ("birthday_month", "birthday_day")]
    if len(months) == 1:
        problems.append(
            f"{FIELDS}.{_name(taken[months[0]])}: Constant Contact takes birthday_month and birthday_day only "
            'together; ignored: map both, or map a date to "birthday"'
        )
        found = [f for f in found if f[1] != months[0]]
    return tuple(found)


def _target(key: Any, raw: Any, problems: list[str]) -> str | None:
    if not isinstance(key, str) or not _CLIENT_KEY.fullmatch(key):
        problems.append(
            f"{FIELDS}: the key {show(key)} is not a client field name (letters, digits, _ and -, starting with "
            f"a letter, at most 64); ignored: {_FIX}"
        )
        return None
    wanted = ", ".join(f'"{t}"' for t in STANDARD)
    if not isinstance(raw, str):
        problems.append(
            f'{FIELDS}.{key} must be a quoted string such as "custom:Plan" or one of {wanted} '
            f"(got {show(raw)}); ignored"
        )
        return None
    text = raw.strip()
    if text.lower().startswith(CUSTOM):
        name = text[len(CUSTOM) :].strip()
        if not name or len(name) > CUSTOM_NAME_MAX or not _PRINTABLE.fullmatch(name):
            problems.append(
                f"{FIELDS}.{key} = {show(raw)}: a custom field's name has 1 to {CUSTOM_NAME_MAX} characters "
                "without line breaks (its name in Constant Contact → Contacts → Settings → Custom Fields); ignored"
            )
            return None
        return CUSTOM + name
    standard = ALIASES.get(text.lower(), text.lower())
    if standard in STANDARD:
        return standard
    problems.append(
        f'{FIELDS}.{key} = {show(raw)} is not a field the plugin can fill: use "custom:<name>" for a custom '
        f"field, or one of {wanted}; ignored"
    )
    return None


def _clash(target: str, taken: dict[str, str]) -> str | None:
    """The client key already filling ``target`` (or a part of it), if any."""
    if target.startswith(CUSTOM):
        lowered = target.lower()
        return next((k for t, k in taken.items() if t.lower() == lowered), None)
    if target in taken:
        return taken[target]
    # "birthday" fills both parts, so it clashes with either; the two parts fill different fields
    # (mapped together from two keys is the way "map both" asks for)
    parts = ("birthday_month", "birthday_day")
    if target == "birthday":
        return next((taken[t] for t in parts if t in taken), None)
    if target in parts:
        return taken.get("birthday")
    return None


def _name(key: str) -> str:
    return key if _CLIENT_KEY.fullmatch(key) else show(key)


def custom_names(field_map: FieldMap) -> list[str]:
    return [t[len(CUSTOM) :] for _, t in field_map if t.startswith(CUSTOM)]
