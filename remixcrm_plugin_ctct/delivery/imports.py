"""One bulk import, start to finish: ``POST /activities/contacts_json_import``, then polls of
``GET /activities/{id}`` (backing off, bounded) until the activity is ``completed`` or has
failed; its ``activity_errors`` are mapped back to the contacts they name.

Every request (the import and each poll) goes through the caller's ``call``: one rate-governor
turn each, counted against the day's quota.
"""

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ..ctct.client import ApiError
from ..ctct.redact import upstream_text

DONE, FAILED_STATES = "completed", ("failed", "cancelled", "timed_out")
_INDEX = re.compile(r"import_data\[(\d+)\]")
_LINE = re.compile(r"\bline (\d+)\b", re.IGNORECASE)
_EMAIL = re.compile(r"[^\s'\"<>(),;:\[\]]+@[^\s'\"<>(),;:\[\]]+")


class ImportFailed(Exception):
    """The activity did not complete (failed, cancelled, timed out, or still running when our
    patience ran out). Nothing can be assumed imported: the contacts are sent again later, which
    is harmless (an import only adds to the list and updates the properties sent)."""


class Stopped(Exception):
    """The worker is stopping: the polls end, the rows go back (the next run imports them again)."""


class Imported(NamedTuple):
    activity_id: str
    errors: dict[int, str]  # index in the batch -> Constant Contact's words about that contact
    unplaced: list[str]  # errors that name no contact of the batch
    counts: dict  # the activity's ``status`` (items_total_count, person_count, error_count, …)


class Importer:
    # seconds between polls: quick first (the sandbox and small imports finish at once), then
    # backing off; the last one repeats until TIMEOUT
    POLL_DELAYS: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
    TIMEOUT = 900.0  # seconds of polling before an activity is treated as failed

    def __init__(self, wait: Callable[[float], bool], clock: Callable[[], float]):
        self.wait, self.clock = wait, clock  # wait(seconds) -> True when stopping

    def run(self, body: bytes, emails: Sequence[str], call: Callable[[Callable[[Any], dict]], dict]) -> Imported:
        """Import ``body`` (whose ``import_data[n]`` has the email ``emails[n]``). Raises ApiError
        (of the import, or a poll's 401/403), ImportFailed or Stopped; plus what
        ``call`` raises (no token, quota used up)."""
        activity = self.follow(call(lambda c: c.import_contacts(body)), call)
        activity_id = activity["activity_id"]
        errors, unplaced = place_errors(activity.get("activity_errors") or [], emails)
        counts = activity.get("status")
        counts = counts if isinstance(counts, dict) else {}
        return Imported(activity_id, errors, unplaced, counts)

    def follow(self, activity: dict, call: Callable[[Callable[[Any], dict]], dict], what: str = "import") -> dict:
        """Poll the activity a POST answered with until it is ``completed``; returns it then.
        Raises ImportFailed (it failed, or outlasted TIMEOUT), Stopped, or a poll's ApiError that
        no retry fixes."""
        activity_id = activity.get("activity_id")
        if not isinstance(activity_id, str) or not activity_id:
            raise ImportFailed(f"Constant Contact accepted the {what} but named no activity to follow")
        started = self.clock()
        n = 0
        while activity.get("state") != DONE:
            state = activity.get("state")
            if state in FAILED_STATES:
                raise ImportFailed(f"{what} activity {activity_id} {state}: {_words(activity)}")
            if self.clock() - started > self.TIMEOUT:
                raise ImportFailed(f"{what} activity {activity_id} still {state} after {self.TIMEOUT:.0f} s")
            if self.wait(self.POLL_DELAYS[min(n, len(self.POLL_DELAYS) - 1)]):
                raise Stopped()
            n += 1
            try:
                activity = call(lambda c: c.get_activity(activity_id))
            except ApiError as e:
                if e.status in (401, 403):  # about our token or privileges: the caller pauses
                    raise
                if e.status is not None and e.status < 500 and e.status not in (408, 429):
                    # the import was accepted; only its poll is refused (an activity not found yet,
                    # say): never the contacts' fault, so neither a dead row nor a split and resend
                    raise ImportFailed(f"import activity {activity_id} cannot be followed: {e}") from None
                # a poll that failed in passing: the activity goes on without us; ask again
        return {**activity, "activity_id": activity_id}


def place_errors(messages: list, emails: Sequence[str]) -> tuple[dict[int, str], list[str]]:
    """Each message (Constant Contact's words, kept with emails masked) to the contact it names:
    by an email address of the batch in it, else by
    ``import_data[n]``, else by ``line N`` (1-based). The rest name no contact we can tell."""
    index = {email.lower(): n for n, email in reversed(list(enumerate(emails)))}
    placed: dict[int, str] = {}
    unplaced: list[str] = []
    for message in messages:
        text = message if isinstance(message, str) else str(message)
        n = next((index[e.lower()] for e in _EMAIL.findall(text) if e.lower() in index), None)
        if n is None and (found := _INDEX.search(text)):
            n = int(found.group(1))
        elif n is None and (found := _LINE.search(text)):
            n = int(found.group(1)) - 1
        safe = upstream_text(text)  # placed by the raw words, kept and logged with emails masked
        if n is not None and 0 <= n < len(emails):
            placed[n] = f"{placed[n]}; {safe}" if n in placed else safe
        else:
            unplaced.append(safe)
    return placed, unplaced


def _words(activity: dict) -> str:
    errors = activity.get("activity_errors") or []
    return upstream_text("; ".join(str(e) for e in errors[:3])) or "no reason given"
