"""Every request a sandbox saw (method, path, query, body), and the rule they must keep: the
plugin makes only **reversible** writes to Constant Contact.

Allowed writes: ``POST /contacts/sign_up_form`` and the activities that only add or update
(``contacts_json_import``, ``add_list_memberships``, ``remove_list_memberships``). Anything else
that writes under ``/v3`` — a ``DELETE``, a ``PUT``/``PATCH`` (``PUT /contacts/{id}`` can
unsubscribe), ``contact_delete`` and the other activities, an unsubscribe endpoint, a body that
sets ``permission_to_send`` to ``unsubscribed`` — breaks it. The sandbox's own admin calls
(``/sandbox/…``, e.g. the person unsubscribing) and the authorization server are not Constant
Contact writes of ours.

With ``REMIXCRM_CTCT_SANDBOX_LOG`` set to a folder, each sandbox also appends its requests there
as JSON Lines (one file per sandbox), so a test suite can check sandboxes that ran in other
processes (the demo, gunicorn workers) too (tests/conftest.py does).
"""

import json
import os
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

LOG_DIR_ENV = "REMIXCRM_CTCT_SANDBOX_LOG"
KEEP = 200_000  # requests kept in memory per sandbox (a long `remixcrm-ctct sandbox` stays bounded)
ALLOWED_WRITES = frozenset(
    {
        "/v3/contacts/sign_up_form",
        "/v3/activities/contacts_json_import",
        "/v3/activities/add_list_memberships",
        "/v3/activities/remove_list_memberships",
    }
)
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class SeenRequest(NamedTuple):
    method: str
    path: str
    query: str
    body: bytes

    def params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query))

    def describe(self) -> str:
        body = self.body[:300].decode("utf-8", "replace") + ("…" if len(self.body) > 300 else "")
        return f"{self.method} {self.path}{'?' + self.query if self.query else ''} {body}".rstrip()


class RequestLog:
    """Thread-safe; ``list(log)`` is a snapshot, oldest first."""

    def __init__(self, keep: int = KEEP, directory: str | None = None):
        self._entries: deque[SeenRequest] = deque(maxlen=keep)
        self.dropped = 0  # entries pushed out of memory by ``keep`` (the file, if any, has them all)
        self._lock = threading.Lock()
        directory = os.environ.get(LOG_DIR_ENV) if directory is None else directory
        self.file = Path(directory, f"{os.getpid()}-{uuid.uuid4().hex}.jsonl") if directory else None

    def add(self, method: str, target: str, body: bytes = b"") -> None:
        url = urlsplit(target)
        entry = SeenRequest(method, url.path, url.query, body)
        with self._lock:
            if len(self._entries) == self._entries.maxlen:
                self.dropped += 1
            self._entries.append(entry)
            if self.file is not None:
                with open(self.file, "a", encoding="utf-8") as f:
                    f.write(json.dumps([method, url.path, url.query, body.decode("utf-8", "replace")]) + "\n")

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __iter__(self) -> Iterator[SeenRequest]:
        with self._lock:
            return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


def read_file(path: Path, offset: int = 0) -> tuple[list[SeenRequest], int]:
    """The requests one sandbox appended to ``path`` (see ``LOG_DIR_ENV``) from byte ``offset``
    on, and the offset after the last whole line (a line being written is read next time)."""
    found = []
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f:
            if not line.endswith(b"\n"):
                break
            offset += len(line)
            method, p, query, body = json.loads(line)
            found.append(SeenRequest(method, p, query, body.encode()))
    return found, offset


def irreversible(requests: Iterable[SeenRequest]) -> list[str]:
    """What in ``requests`` was not a reversible write to Constant Contact, each described in full."""
    return [f"{why}: {r.describe()}" for r in requests if (why := _why(r)) is not None]


def _why(r: SeenRequest) -> str | None:
    if r.method not in _WRITES or not r.path.startswith("/v3/"):
        return None  # reads, the sandbox's admin calls, the authorization server
    if r.method == "DELETE":
        return "a DELETE (only reversible writes are allowed)"
    if "unsubscribe" in r.path.lower() or "contact_delete" in r.path:
        return "an unsubscribe or delete endpoint"
    if r.method != "POST" or r.path not in ALLOWED_WRITES:
        return f"a write outside {sorted(ALLOWED_WRITES)}"
    if _unsubscribes(r.body):
        return "a body that sets permission_to_send = unsubscribed"
    return None


def _unsubscribes(body: bytes) -> bool:
    try:
        doc = json.loads(body or b"null")
    except ValueError:
        return b"unsubscribed" in body  # not JSON: whatever it says, it must not say that
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if str(item.get("permission_to_send", "")).lower() == "unsubscribed":
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
