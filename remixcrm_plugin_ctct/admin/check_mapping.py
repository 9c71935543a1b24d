"""``check``'s lines about the lists that follow the client and the fields mapping: every configured
list exists and is not deleted (its name shown), every mapped custom field exists in the account
(its type shown), and the mapping keeps to the vendor's limits."""

from collections.abc import Callable
from typing import NamedTuple

from .. import config, fieldmap
from ..config import fields as field_config
from ..ctct import client
from ..delivery import custom_fields

OK, FAIL, WARN = "ok", "fail", "warn"
TEXT_TYPES = ("string", "text", "")  # a value sent as text is taken as it is
_CUSTOM_FIX = (
    "create it in Constant Contact (Contacts → Settings → Custom Fields) with this name, or correct the name "
    f"in [{config.SECTION}.fields]"
)


class Check(NamedTuple):  # admin.check.Check's shape (that module imports this one)
    name: str
    status: str
    detail: str
    fix: str = ""


def list_checks(settings: config.Settings, api: client.CtctClient) -> list[Check]:
    """One line per list besides ``list_id`` (which ``check`` shows first)."""
    wanted = [(key, getattr(settings, key)) for key in ("client_created_list_id", "lead_converted_list_id")]
    wanted += [("remove_from_list_ids", list_id) for list_id in settings.remove_from_list_ids]
    found = []
    for key, list_id in wanted:
        if not list_id:
            continue
        name = f"list {key}"
        fix = f"copy a live list's id from Constant Contact into {key} in [{config.SECTION}], or leave it out"
        try:
            answer = api.get_list(list_id)
        except client.ApiError as e:
            missing = e.status == 404
            found.append(Check(name, FAIL, f"no list {list_id} in this account" if missing else str(e), fix))
            continue
        title = answer.get("name", "?")
        if answer.get("deleted_at"):
            found.append(Check(name, FAIL, f"list {title!r} ({list_id}) was deleted on {answer['deleted_at']}", fix))
        else:
            found.append(Check(name, OK, f"{title!r} ({list_id}), {answer.get('membership_count', '?')} member(s)"))
    return found


def mapping_checks(loaded: config.LoadedConfig, call: Callable | None) -> list[Check]:
    """The mapping's own problems, then (``call``: a way to ask Constant Contact) each custom field."""
    found = [
        Check("field mapping", FAIL, warning, "fix or remove that entry; until then it is ignored")
        for warning in loaded.warnings
    ]
    names = field_config.custom_names(loaded.fields)
    if loaded.fields and not loaded.warnings:
        found.append(Check("field mapping", OK, f"{len(loaded.fields)} client key(s) mapped, {len(names)} custom"))
    for limit, lane in ((fieldmap.IMPORT_CUSTOM_MAX, "an import"), (fieldmap.SIGN_UP_CUSTOM_MAX, "sign_up_form")):
        if len(names) > limit:
            found.append(
                Check(
                    "custom field limit",
                    WARN,
                    f"{len(names)} custom fields mapped; {lane} takes {limit} per contact: the first {limit} are sent",
                    "map fewer custom fields",
                )
            )
            break
    if not names or call is None:
        return found
    try:
        known = custom_fields.fetch(call)
    except client.ApiError as e:
        return found + [Check("custom fields", FAIL, f"cannot read them: {e}", "run again later, or check the scopes")]
    for name in names:
        field = custom_fields.lookup(known, name)
        if field is None:
            found.append(Check(f"custom field {name!r}", FAIL, "not in this Constant Contact account", _CUSTOM_FIX))
        elif field.type.lower() not in TEXT_TYPES:
            found.append(
                Check(
                    f"custom field {name!r}",
                    WARN,
                    f"exists ({field.name}, type {field.type}); values are sent as text",
                    f"make sure the client key holds values a {field.type} field takes (a date as YYYY-MM-DD, "
                    "a number as digits, a choice as one of its choices)",
                )
            )
        else:
            found.append(Check(f"custom field {name!r}", OK, f"exists ({field.name}, type {field.type or 'text'})"))
    return found
