"""The hook's side: validate a client, record it durably in this process's journal, wake the
worker. Runs in the host's thread, so it does as little as possible and never raises.
"""

import logging
import time

from . import config, fieldmap, payload
from .runtime import runtime, watcher
from .store import journal

log = logging.getLogger("remixcrm_plugin_ctct")

FALLBACK_LOG_INTERVAL = 60.0  # seconds between "outbox not writable" errors
_fallback_logged_at = -FALLBACK_LOG_INTERVAL


def handle_event(event: str, client: object, lead: object | None = None) -> None:
    """Validate ``client`` and record its push; returns at once. Called by the hookimpls."""
    global _fallback_logged_at
    loaded = watcher().current()
    if loaded.status == config.INACTIVE:
        return
    contact = payload.contact_from_client(client, loaded.fields)
    if isinstance(contact, payload.Skipped):
        log.log(contact.level, "%s", contact.reason)
        return
    # which kind of event this was rides with the fields, stamped like them: the lists it joins
    # (and leaves) are chosen at send time from it, even once coalesced with other events
    now = time.time()  # the marker's value is the event's time: store/newest.py tells a row's own events by it
    contact.fields[fieldmap.EVENT + event] = now
    if lead is not None:  # the event names the lead in log lines: shown, so an odd id cannot forge one
        event = f"{event} from lead {payload.shown(payload.an_id(payload.read(lead, 'id'), contact.client_id))}"
    if contact.email_opt_in is False:
        # never sent; recorded all the same, so that a push still waiting for this email is
        # cancelled (the newest word on consent wins) and `status --client` can say why
        log.info("%s", payload.declined(contact.client_id))
    rt = runtime()
    to_process = loaded.sender == "process"
    rt.journal.hand_off = to_process  # this process never folds then: full journals are handed over
    try:
        rt.journal.append(journal.encode(contact, event, now))
    except OSError as e:  # disk full, read-only: keep it in memory (it moves to the outbox when it can)
        kept = rt.worker.submit_memory(journal.record(contact, event, now))
        now = time.monotonic()
        if now - _fallback_logged_at >= FALLBACK_LOG_INTERVAL:
            _fallback_logged_at = now
            log.error(
                "cannot write the outbox journal in %s (%s): client %s is %s; fix the disk or the folder's permissions",
                rt.journal.directory,
                e,
                payload.shown(contact.client_id),
                "kept in memory only" if kept else "dropped (memory is full)",
            )
        return
    if to_process:
        rt.starter.ensure()  # a look at the sender process's lock at most once a second
    else:
        rt.worker.wake()


def reset() -> None:
    """Forget the rate limit of the "not writable" error (tests, the demo)."""
    global _fallback_logged_at
    _fallback_logged_at = -FALLBACK_LOG_INTERVAL
