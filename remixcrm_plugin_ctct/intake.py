"""The hook's side: validate a client, record it durably in this process's journal, wake the
worker. Runs in the host's thread, so it does as little as possible and never raises.
"""

import json
import logging
import time

from . import config, fieldmap, payload, record
from .runtime import host_side, runtime, wake_threads, watcher
from .store import journal

log = logging.getLogger("remixcrm_plugin_ctct")

FALLBACK_LOG_INTERVAL = 60.0  # seconds between "outbox not writable" errors
_fallback_logged_at = -FALLBACK_LOG_INTERVAL


def handle_event(event: str, client: object, lead: object | None = None) -> None:
    """Validate ``client`` and record its push; returns at once. Called by the hookimpls."""
    loaded = watcher().current()
    if loaded.status == config.INACTIVE:
        return
    # the event's time: also the value of the marker naming the event in the fields, which
    # store/newest.py tells a row's own events by (the lists it joins are chosen at send time)
    now = time.time()
    line = None if lead is not None or loaded.fields else record.plain_line(event, client, now)
    if line is None:  # not a plain client (see record.plain_line): validated and mapped in full
        contact = payload.contact_from_client(client, loaded.fields)
        if isinstance(contact, payload.Skipped):
            log.log(contact.level, "%s", contact.reason)
            return
        contact.fields[fieldmap.EVENT + event] = now
        if lead is not None:  # the event names the lead in log lines: shown, so an odd id cannot forge one
            lead_id = payload.an_id(payload.read(lead, "id"), contact.client_id)
            event = f"{event} from lead {payload.shown(lead_id)}"
        if contact.email_opt_in is False:
            # never sent; recorded all the same, so that a push still waiting for this email is
            # cancelled (the newest word on consent wins) and `status --client` can say why
            log.info("%s", payload.declined(contact.client_id))
        line = journal.encode(contact, event, now)
    to_process = loaded.sender == "process"
    # only the journal and the sender's starter here: no store is opened in the host's request
    side = host_side()
    side.journal.hand_off = to_process  # this process never folds then: full journals are handed over
    try:
        side.journal.append(line)
    except OSError as e:  # disk full, read-only: keep it in memory (it moves to the outbox when it can)
        _keep_in_memory(line, e, side.journal.directory)
        return
    if to_process:
        side.starter.ensure()  # the sender process: a look at its lock at most once a second
    else:
        wake_threads()


def _keep_in_memory(line: bytes, error: OSError, directory) -> None:
    global _fallback_logged_at
    kept_record = json.loads(line)  # the line is the record (record.Event.to_record), as the fold would read it
    kept = runtime().worker.submit_memory(kept_record)
    now = time.monotonic()
    if now - _fallback_logged_at >= FALLBACK_LOG_INTERVAL:
        _fallback_logged_at = now
        log.error(
            "cannot write the outbox journal in %s (%s): client %s is %s; fix the disk or the folder's permissions",
            directory,
            error,
            payload.shown(kept_record["client_id"]),
            "kept in memory only" if kept else "dropped (memory is full)",
        )


def reset() -> None:
    """Forget the rate limit of the "not writable" error (tests, the demo)."""
    global _fallback_logged_at
    _fallback_logged_at = -FALLBACK_LOG_INTERVAL
