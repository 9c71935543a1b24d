"""Turns one hook event into one queued ``sign_up_form`` push, and logs how it ended.

The path of a client: hooks → config (is Constant Contact chosen, and how) → payload (what to
send) → sender (a background thread) → api_client (HTTP). Everything here runs in the host's
thread except :func:`deliver`, which runs on a sender thread.
"""

import logging
import threading
import time
from collections import deque
from functools import partial

from . import api_client, config, payload
from .sender import BackgroundSender

log = logging.getLogger("remixcrm_plugin_ctct")

HOLD_LIMIT = 10_000  # contacts kept in memory while the config is broken
DROP_LOG_INTERVAL = 60.0  # seconds between "queue full" reports

_watcher = config.ConfigWatcher()
_sender: BackgroundSender | None = None
_sender_lock = threading.Lock()
_held: deque = deque()
_dropped = 0
_drop_logged_at = -DROP_LOG_INTERVAL


def handle_event(event: str, client, lead=None) -> None:
    """Validate ``client`` and queue its push; returns at once. Called by the hookimpls."""
    loaded = _watcher.current()
    if loaded.status == config.INACTIVE:
        return
    contact = payload.contact_from_client(client)
    if isinstance(contact, payload.Skipped):
        log.log(contact.level, "%s", contact.reason)
        return
    if loaded.status == config.INVALID:
        _hold(contact)
        return
    if _held:
        _release_held(loaded.settings)
    if lead is not None:
        event = f"{event} from lead {payload.read(lead, 'id')}"
    _submit(contact, loaded.settings, event)


def _submit(contact: payload.Contact, settings: config.Settings, event: str) -> None:
    global _dropped, _drop_logged_at
    sender = _get_sender()
    if sender.submit(partial(deliver, contact, settings, event)):
        return
    _dropped += 1
    now = time.monotonic()
    if now - _drop_logged_at >= DROP_LOG_INTERVAL:  # a flood of lines would not help anyone
        log.error(
            "send queue is full (%d sends waiting: Constant Contact is slow or down); %d client(s) not sent "
            "since the last report, the latest client %s", sender.queue_size, _dropped, contact.client_id,
        )
        _dropped, _drop_logged_at = 0, now


def _hold(contact: payload.Contact) -> None:
    # the config error was logged once by the watcher; keep the contact until it is fixed
    if len(_held) >= HOLD_LIMIT:
        dropped = _held.popleft()
        log.error("config still broken and %d clients held; dropping client %s", HOLD_LIMIT, dropped.client_id)
    _held.append(contact)
    log.debug("client %s held until the config is fixed (%d held)", contact.client_id, len(_held))


def _release_held(settings: config.Settings) -> None:
    count = 0
    while True:
        try:
            contact = _held.popleft()
        except IndexError:
            break
        _submit(contact, settings, "held")
        count += 1
    if count:
        log.info("config fixed: sending %d client(s) held while it was broken", count)


def deliver(contact: payload.Contact, settings: config.Settings, event: str) -> None:
    """Push one contact and log the outcome. Runs on a sender thread; never raises ApiError."""
    client = api_client.CtctClient(settings.api_base_url, settings.access_token)
    who = f"client {contact.client_id} ({payload.mask_email(contact.email)})"
    try:
        result = client.sign_up(payload.sign_up_body(contact, settings.list_id))
    except api_client.ApiError as e:
        _log_failure(who, e)
        return
    log.info(
        "%s %s contact %s in list %s (%s)", who, "created" if result.created else "updated",
        result.contact_id, settings.list_id, event,
    )


def _log_failure(who: str, e: api_client.ApiError) -> None:
    if e.transient:
        log.warning("%s not sent: %s; it is not retried in this release", who, e)
    elif e.fix:
        log.error("%s not sent: Constant Contact answered %s. Fix: %s", who, e, e.fix)
    else:
        log.error("%s not sent: Constant Contact answered %s", who, e)


def _get_sender() -> BackgroundSender:
    global _sender
    if _sender is None:
        with _sender_lock:
            if _sender is None:
                _sender = BackgroundSender()
    return _sender


def flush(timeout: float = 5.0) -> bool:
    """Wait until every queued push is done (True) or ``timeout`` seconds passed (False)."""
    return _sender.flush(timeout) if _sender is not None else True


def reset(timeout: float = 5.0) -> None:
    """Drain and forget the sender, the held contacts and the config cache (tests, demo)."""
    global _sender, _watcher, _dropped, _drop_logged_at
    with _sender_lock:
        sender, _sender = _sender, None
    if sender is not None:
        sender.close(timeout)
    _held.clear()
    _watcher = config.ConfigWatcher()
    _dropped, _drop_logged_at = 0, -DROP_LOG_INTERVAL
