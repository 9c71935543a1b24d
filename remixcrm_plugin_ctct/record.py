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

from . import payload

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
