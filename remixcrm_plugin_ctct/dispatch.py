"""Turns one hook event into one queued ``sign_up_form`` push, and logs how it ended.

The path of a client: hooks → config (is Constant Contact chosen, and how) → payload (what to
send) → sender (a background thread) → auth (which token) → api_client (HTTP). Everything here
runs in the host's thread except :func:`deliver`, which runs on a sender thread.
"""

import logging
import threading
import time
from functools import partial

from . import api_client, config, payload
from .auth import NeedsReauth, TokenManager, TokenUnavailable
from .holding import Holding
from .sender import BackgroundSender
from .token_store import TokenStore

log = logging.getLogger("remixcrm_plugin_ctct")

DROP_LOG_INTERVAL = 60.0  # seconds between "queue full" reports
TOKEN_RETRY_AFTER = 60.0  # seconds before clients held by a token-endpoint outage are tried again

_watcher = config.ConfigWatcher()
_sender: BackgroundSender | None = None
_tokens: TokenManager | None = None
_lock = threading.Lock()
_held = Holding()
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
        _held.add(contact, "the config is broken", _signature())
        return
    if _held and _held.due(_signature()):
        for waiting in _held.take():
            _submit(waiting, loaded.settings, "held")
    if lead is not None:
        event = f"{event} from lead {payload.read(lead, 'id')}"
    _submit(contact, loaded.settings, event)


def _signature() -> tuple:
    """What, when changed, may have fixed the reason clients are held: the config, the tokens."""
    return (_watcher.signature(), tokens().store.signature())


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


def deliver(contact: payload.Contact, settings: config.Settings, event: str) -> None:
    """Push one contact and log the outcome. Runs on a sender thread; never raises ApiError."""
    who = f"client {contact.client_id} ({payload.mask_email(contact.email)})"
    body = payload.sign_up_body(contact, settings.list_id)
    manager = tokens()
    try:
        token = manager.access_token(settings)
        try:
            result = api_client.CtctClient(settings.api_base_url, token).sign_up(body)
        except api_client.ApiError as e:
            if e.status != 401:
                raise
            # expired or revoked early: refresh once (or take another process's new token), resend once
            log.info("%s: Constant Contact rejected the access token (401); refreshing it and sending again", who)
            token = manager.after_unauthorized(settings, token)
            result = api_client.CtctClient(settings.api_base_url, token).sign_up(body)
    except NeedsReauth:
        _held.add(contact, "Constant Contact needs re-authorisation", _signature())
        return
    except TokenUnavailable as e:
        log.warning("%s waits: %s; trying again in %.0f s", who, e, TOKEN_RETRY_AFTER)
        _held.add(contact, "the token endpoint failed", _signature(), retry_after=TOKEN_RETRY_AFTER)
        return
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
        with _lock:
            if _sender is None:
                _sender = BackgroundSender()
    return _sender


def tokens() -> TokenManager:
    """This process's token manager, for the data dir in force when it was first needed."""
    global _tokens
    if _tokens is None:
        with _lock:
            if _tokens is None:
                _tokens = TokenManager(TokenStore(config.data_dir()))
    return _tokens


def flush(timeout: float = 5.0) -> bool:
    """Wait until every queued push is done (True) or ``timeout`` seconds passed (False)."""
    return _sender.flush(timeout) if _sender is not None else True


def reset(timeout: float = 5.0) -> None:
    """Drain and forget the sender, held clients, tokens and config cache (tests, the demo)."""
    global _sender, _tokens, _watcher, _dropped, _drop_logged_at
    with _lock:
        sender, _sender = _sender, None
    if sender is not None:
        sender.close(timeout)
    _held.clear()
    _tokens = None
    _watcher = config.ConfigWatcher()
    _dropped, _drop_logged_at = 0, -DROP_LOG_INTERVAL
