"""One event as every part of the plugin knows it: the hook writes it to the journal, the fold
merges it into the outbox, delivery turns it back into a :class:`payload.Contact`.

``to_record``/``from_record`` are the only places that know the record's JSON shape:
``{"email", "client_id", "event", "fields", "at", "seq", "email_opt_in" (absent when unknown)}``.
``at`` (wall clock at hook time) and ``seq`` (a per-process counter, the tie-break for equal
``at``) order a client's events across processes, whenever each journal gets folded.
"""

import itertools
import json
from typing import Any, NamedTuple

from . import fieldmap, payload

# The journal line's JSON, built once: json.dumps with these options makes a new encoder on every
# call, and the hook pays for it (several µs hot, tens cold). C's one-shot encoder without cycle
# markers is reusable; it is CPython's own, with the plain encoder as the fallback.
_PLAIN = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_make_encoder = getattr(json.encoder, "c_make_encoder", None)
if _make_encoder is not None:
    _c_encode = _make_encoder(None, _PLAIN.default, json.encoder.encode_basestring, None, ":", ",", False, False, True)

    def _dumps(obj: dict) -> str:
        return "".join(_c_encode(obj, 0))
else:  # pragma: no cover - another interpreter

    def _dumps(obj: dict) -> str:
        return _PLAIN.encode(obj)


# One counter per process: a forked child goes on counting from the parent's value, which keeps
# its own events in order (events of different processes with equal ``at`` have no order to
# keep), so no reset is needed.
_seq = itertools.count(1)


class Event(NamedTuple):
    """A NamedTuple, not a dataclass: one is built per hook call (see payload.Contact)."""

    client_id: str
    email: str
    event: str
    fields: dict
    email_opt_in: bool | None
    at: float
    seq: int = 0  # records from before ``seq`` existed count as 0

    @classmethod
    def of(cls, contact: payload.Contact, event: str, at: float) -> "Event":
        """The event ``event`` of ``contact`` at ``at``, numbered in this process's order."""
        return cls(contact.client_id, contact.email, event, contact.fields, contact.email_opt_in, at, next(_seq))

    def to_record(self) -> dict[str, Any]:
        # "email" first: the journal finds the start of a record by it (journal_lines.RECORD_START)
        found: dict[str, Any] = {
            "email": self.email,
            "client_id": self.client_id,
            "event": self.event,
            "fields": self.fields,
            "at": self.at,
            "seq": self.seq,
        }
        if self.email_opt_in is not None:
            found["email_opt_in"] = self.email_opt_in
        return found

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Event":
        return cls(
            str(record["client_id"]),
            record["email"],
            record["event"],
            record.get("fields") or {},
            record.get("email_opt_in"),
            record.get("at", 0.0),
            record.get("seq", 0),
        )

    def encode(self) -> bytes:
        """One journal line: valid UTF-8 whatever the strings hold (payload already replaced lone
        surrogates; this is the last guard, since a line that cannot be encoded could not be kept)."""
        text = _dumps(self.to_record()) + "\n"
        try:
            return text.encode()
        except UnicodeEncodeError:
            return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()

    def to_contact(self) -> payload.Contact:
        return payload.Contact(self.client_id, self.email, self.fields, self.email_opt_in)


def to_contact(client_id: str, state: dict[str, Any]) -> payload.Contact:
    """The contact to push from an outbox row: its client and the newest known state of its
    email (``{"email", "fields", "email_opt_in"}``, as the fold merged it)."""
    return payload.Contact(client_id, state["email"], state.get("fields", {}), state.get("email_opt_in"))


# --- the hook's fast path -------------------------------------------------------------------
# Most clients are a plain dict of short ASCII strings with a yes, a no-opinion (None) or no
# email_opt_in at all. For them the hook writes its line straight from the dict: no Contact, no
# Event, no record dict; about half the Python work of the general path, which matters because
# the hook runs in the host's request with its caches cold (bench/prefork.py). Anything else
# (another type, non-ASCII text, a value to cut, a "no", a field map, a lead) answers None and
# takes the general path, which also says what was wrong. tests/test_record.py proves both
# write the same bytes.
_encode_text = json.encoder.encode_basestring  # what _dumps uses for a str with ensure_ascii=False
_is_email = payload.EMAIL_PATTERN.match
_TEXT = tuple((f'"{body}":', key, limit) for body, (key, limit) in payload.TEXT_FIELDS.items())
_INT_BOUND = 1 << 63  # an int id this small is shown by str() as the general path shows it


def plain_line(event: str, client: object, at: float) -> bytes | None:
    """The journal line of ``event`` (a hook's own name) for ``client`` at ``at``, exactly as
    ``Event.of(payload.contact_from_client(client), ...).encode()`` writes it (with the event
    marker in the fields), or None when ``client`` is not the plain case."""
    if type(client) is not dict:
        return None
    get = client.get
    client_id, email, opt_in = get("id"), get("email"), get("email_opt_in")
    if not (opt_in is None or opt_in is True) or type(email) is not str:
        return None
    if type(client_id) is int and -_INT_BOUND < client_id < _INT_BOUND:
        client_id = str(client_id)
    elif type(client_id) is not str or len(client_id) > payload.ID_MAX or not client_id.isascii():
        return None
    email = email.strip()
    if not email or len(email) > payload.EMAIL_MAX or not email.isascii() or not _is_email(email):
        return None
    fields = []
    for field, key, limit in _TEXT:
        value = get(key)
        if value is None:
            continue
        if type(value) is not str:
            return None
        value = value.strip()
        if not value:
            continue
        if len(value) > limit or not value.isascii():
            return None
        fields.append(field + _encode_text(value))
    stamp = repr(at)
    fields.append(f'"{fieldmap.EVENT}{event}":{stamp}')
    consent = "" if opt_in is None else ',"email_opt_in":true'
    head = f'{{"email":{_encode_text(email)},"client_id":{_encode_text(client_id)},"event":"{event}","fields":{{'
    return f'{head}{",".join(fields)}}},"at":{stamp},"seq":{next(_seq)}{consent}}}\n'.encode()
