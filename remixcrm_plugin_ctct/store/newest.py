"""The newest known state of one contact, merged from journal records in *event* order.

Journals of several processes are folded whenever their process (or whoever adopts a dead
process's journal) gets to it, so records arrive in any order. Each piece of a contact — its
email spelling, every field, the consent answer — carries the stamp ``(at, seq)`` of the event
that set it (``at``: wall time at the hook; ``seq``: that process's counter, the tie-break),
and a record only overwrites what is older than itself. The merge is commutative: any fold
order gives the same state, so a decline newer than a consent wins however late the consent
is folded.
"""

import json
import math
from typing import NamedTuple

Stamp = tuple[float, int]
EVENT_MARKER = "event:"  # fieldmap.EVENT (the store does not import the hook's side)
_NEVER: Stamp = (float("-inf"), -1)
BACKFILL = "backfill"  # lanes.BACKFILL: the event of `remixcrm-ctct backfill`'s records
# stamps["email_opt_in_by"] = BACKFILL: the consent in force came from a backfill file. It is
# history (perhaps older than an unsubscribe): kept so the backfill's own row may be imported,
# never consent for a row of a hook event that met it (coalesced, handed back, folded late)
OPT_IN_BY = "email_opt_in_by"


def stamp(record: dict) -> Stamp:
    """Records from before ``seq`` existed count as seq 0; a time or sequence that is not a
    finite number counts as the oldest (one odd line must not stop the fold)."""
    return (float(_number(record.get("at"), float)), int(_number(record.get("seq"), int)))


def _number(value: object, kind: type) -> float | int:
    try:
        found = kind(value)
    except (TypeError, ValueError, OverflowError):
        return kind(0)
    return found if math.isfinite(found) else kind(0)


class State(NamedTuple):
    contact: dict  # {"email": …, "fields": {…}, "email_opt_in": …(absent when unknown)}
    stamps: dict  # {"email": stamp, "fields": {name: stamp}, "email_opt_in": stamp}
    client_id: str  # of the newest event
    event: str
    at: float
    seq: int


def merge(state: State | None, record: dict) -> State:
    """``state`` with ``record`` merged in (``state`` is not changed)."""
    new = stamp(record)
    if state is None:
        state = State(
            {"email": record["email"], "fields": {}},
            {"email": _NEVER, "fields": {}},
            str(record["client_id"]),
            record["event"],
            *new,
        )
    contact: dict = {"email": state.contact["email"], "fields": dict(state.contact.get("fields", {}))}
    stamps: dict = {"email": _tuple(state.stamps.get("email")), "fields": dict(state.stamps.get("fields", {}))}
    if "email_opt_in" in state.contact:
        contact["email_opt_in"] = state.contact["email_opt_in"]
        stamps["email_opt_in"] = _tuple(state.stamps.get("email_opt_in"))
        if OPT_IN_BY in state.stamps:
            stamps[OPT_IN_BY] = state.stamps[OPT_IN_BY]
    if new >= stamps["email"]:  # equal stamps: the later fold wins, as before stamps existed
        contact["email"], stamps["email"] = record["email"], new
    for name, value in (record.get("fields") or {}).items():
        if new >= _tuple(stamps["fields"].get(name)):
            contact["fields"][name], stamps["fields"][name] = value, new
    opt_in = record.get("email_opt_in")
    if opt_in is not None:
        old = _tuple(stamps.get("email_opt_in"))
        # a tie between two processes' events: "no" wins, never a consent nobody can place in time
        if new > old or (new == old and opt_in is False):
            contact["email_opt_in"], stamps["email_opt_in"] = opt_in, new
            stamps.pop(OPT_IN_BY, None)
            if opt_in is True and record.get("event") == BACKFILL:
                stamps[OPT_IN_BY] = BACKFILL
    newest = (state.at, state.seq)
    if new >= newest:
        return State(contact, stamps, str(record["client_id"]), record["event"], *new)
    return State(contact, stamps, state.client_id, state.event, *newest)


def _tuple(found) -> Stamp:
    return _NEVER if found is None else (float(found[0]), int(found[1]))


def consent_in_force(contact: dict, stamps: str | None, created_at: float, event: str) -> dict:
    """``contact`` as a row of ``event`` may push it: a "yes" older than every event of the row was
    given for an earlier row, already pushed, and is used up. The person may have unsubscribed
    since (a link in a mail, which RemixCRM never hears of): an event without consent of its own
    is then looked up, never pushed on an old "yes" (sign_up_form re-subscribes). A backfill's
    "yes" is in force for a backfill row only (see OPT_IN_BY).

    So are the event markers (``event:<kind>`` in the fields, whose value is the event's time: see
    fieldmap.py): the lists a row joins and leaves are those of its own events, not of every event
    the email ever had (a list deleted since, or a conversion long done, must not follow every
    later push)."""
    fields = contact.get("fields")
    if fields and any(k.startswith(EVENT_MARKER) and not _in_row(v, created_at) for k, v in fields.items()):
        kept = {k: v for k, v in fields.items() if not k.startswith(EVENT_MARKER) or _in_row(v, created_at)}
        contact = {**contact, "fields": kept}
    if contact.get("email_opt_in") is not True or not stamps:
        return contact
    try:
        found = json.loads(stamps)
        given = float(found["email_opt_in"][0])
        by_backfill = found.get(OPT_IN_BY) == BACKFILL
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        given, by_backfill = float("-inf"), False  # when the "yes" was given is unknown: never a reason to push
    if given >= created_at and (event == BACKFILL or not by_backfill):
        return contact
    return {k: v for k, v in contact.items() if k != "email_opt_in"}


def renewed_markers(contact_json: str, created_at: float, now: float) -> str | None:
    """A revived row (``retry --dead``) starts again at ``now``: the newest state with the markers
    of that row's own events (time >= ``created_at``) moved to ``now``, so the lists they join and
    leave still count for it; None when nothing changes."""
    contact = json.loads(contact_json)
    fields = contact.get("fields") or {}
    renewed = {
        k: now if k.startswith(EVENT_MARKER) and isinstance(v, int | float) and v >= created_at else v
        for k, v in fields.items()
    }
    if renewed == fields:
        return None
    return json.dumps({**contact, "fields": renewed})


def _in_row(at: object, created_at: float) -> bool:
    """Whether the event of time ``at`` is one of the row's (a row is created at its oldest event's
    time; a marker without a usable time counts as the row's own, as before markers had one)."""
    if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at) or at <= 1:
        return True
    return at >= created_at
