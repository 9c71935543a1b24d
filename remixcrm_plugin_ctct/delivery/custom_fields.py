"""Custom field names (as the fields mapping has them) to Constant Contact's ids and names.

``sign_up_form`` wants a ``custom_field_id``, the import a ``cf:<name>`` with the field's exact
name. Both come from ``GET /contact_custom_fields`` (each page one request through
:mod:`.api_calls`), kept per process and API for ``TTL`` seconds, and asked again when a name is
not there (at most once per ``MISSING_RECHECK``: an admin creating the field is seen soon, a
name that stays wrong costs one request a minute, not one per contact).

A mapped field Constant Contact does not have: the contact is sent *without* it, with one ERROR
per name and process naming the fix. Holding the contact back until someone creates the field
would keep them off the list for a typo; the value is not lost for good either, as every later
event of that client carries it again.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, NamedTuple

from .. import config, forksafe

log = logging.getLogger("remixcrm_plugin_ctct")

MAX_PAGES = 10  # 100 a page, and an account has at most 100: more pages mean a loop in the links


class Field(NamedTuple):
    custom_field_id: str
    name: str  # Constant Contact's unique name: what an import's "cf:<name>" must say
    label: str
    type: str


class Known(NamedTuple):
    fields: dict[str, Field]  # by name, and by label where no name has that text
    at: float


def index(found: Iterable[dict]) -> dict[str, Field]:
    """The account's custom fields by name, then by label, then both lower-cased (a mapping may
    say "custom:Plan" for a field named "plan"): the most exact spelling wins."""
    fields = []
    for f in found:
        field_id, name = f.get("custom_field_id"), f.get("name") or f.get("label")
        if isinstance(field_id, str) and isinstance(name, str) and name:
            fields.append(Field(field_id, name, str(f.get("label") or name), str(f.get("type") or "")))
    by: dict[str, Field] = {}
    for spelling in (0, 1, 2, 3):  # name, label, name lower-cased, label lower-cased
        for field in fields:
            text = field.name if spelling % 2 == 0 else field.label
            by.setdefault(text.lower() if spelling >= 2 else text, field)
    return by


def lookup(known: dict[str, Field], name: str) -> Field | None:
    return known.get(name) or known.get(name.lower())


def fetch(call: Callable[[Callable[[Any], Any]], Any]) -> dict[str, Field]:
    """Every custom field of the account, page by page. Raises ApiError (and what ``call`` raises)."""
    found: list[dict] = []
    path: str | None = None
    for _ in range(MAX_PAGES):
        page, path = call(partial(_page, path=path))
        found += page
        if path is None:
            break
    return index(found)


def _page(client: Any, path: str | None) -> tuple[list[dict], str | None]:
    return client.custom_fields_page(path)


class CustomFields:
    TTL = 600.0  # seconds: a field renamed or deleted in Constant Contact is noticed this soon
    MISSING_RECHECK = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._known: dict[str, Known] = {}  # api_base_url -> what it answered last
        self._said: set[tuple[str, str]] = set()  # (api, name) already logged as missing
        self._lock = threading.Lock()
        self._fetching = threading.Lock()
        forksafe.after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held them at the fork
        self._fetching = threading.Lock()

    def resolve(self, names: Iterable[str], settings: config.Settings, call, who: str) -> dict[str, Field]:
        """{name: Field} for those of ``names`` the account has; the others are logged (once)
        and left out. Raises ApiError when the fields cannot be read (the send fails as its own
        request would have, and is tried again)."""
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return {}
        api = settings.api_base_url
        known = self._current(api, wanted)
        if known is None:
            with self._fetching:  # one thread asks; the others wait for its answer instead of asking too
                known = self._current(api, wanted)
                if known is None:
                    known = Known(fetch(call), self.clock())
                    with self._lock:
                        self._known[api] = known
        found = {}
        for name in wanted:
            field = lookup(known.fields, name)
            if field is not None:
                found[name] = field
                continue
            with self._lock:
                first = (api, name) not in self._said
                self._said.add((api, name))
            if first:
                log.error(
                    "%s: Constant Contact has no custom field %r; sent without it (and so is every contact "
                    "until it exists). Fix: create it in Constant Contact (Contacts → Settings → Custom Fields), "
                    "or correct the name in [%s.fields]; `remixcrm-ctct check` lists what is missing",
                    who,
                    name,
                    config.SECTION,
                )
        return found

    def _current(self, api: str, wanted: list[str]) -> Known | None:
        """What is known of ``api``, or None when it must be asked (again)."""
        now = self.clock()
        with self._lock:
            known = self._known.get(api)
        if known is None or now - known.at > self.TTL:
            return None
        if now - known.at > self.MISSING_RECHECK and any(lookup(known.fields, n) is None for n in wanted):
            return None
        return known

    def forget(self) -> None:
        with self._lock:
            self._known.clear()
            self._said.clear()
