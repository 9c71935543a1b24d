"""What an upstream server says, made safe to log and store: no email, no token, no flood.

Constant Contact's error bodies may echo the address we sent (``… Ada.Lovelace@example.com is
invalid``), a proxy's text page may echo our headers (``Authorization: Bearer …``), and either
may be megabytes long or carry newlines that forge log lines. Every such text goes through
:func:`upstream_text` once, where it enters the plugin (``ApiError``, ``OAuthError``).

urllib3 logs every request line at DEBUG, query string included — ``GET /v3/contacts?email=…``
for each consent lookup; :func:`guard_urllib3` masks emails in its records. It is installed
with the first request (importing the plugin changes no logger).
"""

import logging
import re
import threading

from ..payload import mask_email

LIMIT = 300  # characters of upstream text kept

# as loose as the hook's own check (payload.EMAIL_PATTERN): any address we may send can be masked,
# also with non-ASCII or URL-encoded (%C3%AB) characters and RFC's ! ' # $ & * in its local part
_EMAIL = re.compile(
    r"([^\s@\"<>()\[\],;:/?=]+?)(@|%40)([^\s@\"'<>()\[\],;:/?=&.]+(?:\.[^\s@\"'<>()\[\],;:/?=&.]+)+)", re.IGNORECASE
)
_AUTH = re.compile(r"\b(bearer|basic)(\s+|%20|\+)[^\s\"',;&]+", re.IGNORECASE)
_SECRET_FIELD = re.compile(
    r"((?:access|refresh|id)_token|client_secret|password|code_verifier|device_code)"
    r"([\"']?\s*(?:=|:)\s*[\"']?)[^\s\"',;&]+",
    re.IGNORECASE,
)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
# long runs of token alphabet (base64url: no "/", so URLs stay readable) with letters and digits:
# JWTs, opaque tokens, keys
_TOKENISH = re.compile(
    r"(?<![A-Za-z0-9_\-.~+=])(?=[A-Za-z0-9_\-.~+=]*\d)(?=[A-Za-z0-9_\-.~+=]*[A-Za-z])"
    r"[A-Za-z0-9_\-.~+=]{32,}"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
REDACTED = "<redacted>"


def emails(text: str) -> str:
    """Every address (``@`` or URL-encoded ``%40``) masked as ``a***@example.com``."""
    return _EMAIL.sub(_mask, text)


def _mask(m: re.Match[str]) -> str:
    masked = mask_email(f"{m.group(1)}@{m.group(3)}")
    return masked.replace("@", m.group(2), 1)


def secrets(text: str) -> str:
    text = _AUTH.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SECRET_FIELD.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _TOKENISH.sub(lambda m: m.group(0) if _UUID.fullmatch(m.group(0)) else REDACTED, text)


def upstream_text(text: object, limit: int = LIMIT, known: tuple[str, ...] = ()) -> str:
    """``text`` from a server, fit for a log line and a status column: one line, no email,
    no token (nor any of the ``known`` secrets), at most ``limit`` characters."""
    text = str(text if text is not None else "")
    if len(text) > 4 * limit:  # bounded work; and a word cut in half (half an email) is dropped whole
        text = text[: 4 * limit].rsplit(None, 1)[0]
    text = _CONTROL.sub(" ", text).strip()
    for secret in known:
        if secret:
            text = text.replace(secret, REDACTED)
    text = emails(secrets(text))
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class _MaskFilter(logging.Filter):
    """Masks emails and tokens in a record's message and arguments, in place (it runs on the
    logger the record is made on, before any handler, ours or the host's, sees it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if isinstance(record.msg, str):
                record.msg = emails(secrets(record.msg))
            if isinstance(record.args, tuple):
                record.args = tuple(emails(secrets(a)) if isinstance(a, str) else a for a in record.args)
        except Exception:  # a filter must never stop a log record
            pass
        return True


_GUARDED = ("urllib3.connectionpool", "urllib3.util.retry")
_installed = False
_install_lock = threading.Lock()


def guard_urllib3() -> None:
    """Install the mask on urllib3's loggers that print URLs (once; cheap to call again)."""
    global _installed
    if _installed:
        return
    with _install_lock:
        if not _installed:
            for name in _GUARDED:
                logging.getLogger(name).addFilter(_MaskFilter())
            _installed = True
