"""The import lane: contacts whose consent RemixCRM never recorded go in through
``POST /activities/contacts_json_import`` — new contacts arrive with implicit permission, existing
ones keep theirs, unsubscribed ones stay unsubscribed — many per request (see :mod:`.imports`).

Each contact's fate comes back as the one-by-one lane's :class:`.sign_up.Result`, so the same
code files it in the outbox. A request refused as a whole for its content (400, 413) is split
in two and each half sent again, until the one contact at fault is found: one bad row never
costs the other 39,999 their delivery.
"""

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .. import config, fieldmap, payload
from ..ctct.client import ApiError
from . import import_batches, list_changes
from .api_calls import ApiCalls
from .custom_fields import CustomFields
from .imports import Importer, ImportFailed
from .sign_up import Result, warn_once
from .suppression import SuppressionCheck

log = logging.getLogger("remixcrm_plugin_ctct")

IMPORTED = "imported"
_SPLIT = (400, 413)  # about the request's content: some contact in it, or its size
NARROWING_SLACK = 8  # narrowing requests beyond two per halving level (two bad contacts found in full)


@dataclass
class _Send:
    """One :meth:`Importing.send`: what its imports (and the narrowing down of a refusal) share."""

    contacts: Sequence[payload.Contact]
    results: list  # Result | None per contact, filled in as the answers come
    call: Callable
    wait: Callable[[float], bool]
    names: dict  # custom field names as the account spells them
    narrowing_left: int  # requests the narrowing down of refusals may still spend (see _halves)

    def items(self, keys: list[int]) -> list[tuple[int, dict]]:
        return [(n, import_batches.import_contact(self.contacts[n]._asdict(), self.names)) for n in keys]


class Importing:
    def __init__(
        self,
        calls: ApiCalls,
        suppression: SuppressionCheck,
        clock: Callable[[], float],
        custom_fields: CustomFields | None = None,
    ):
        self.calls, self.suppression, self.clock = calls, suppression, clock
        self.custom_fields = custom_fields or CustomFields()
        self._said: set[str] = set()

    def send(
        self, contacts: Sequence[payload.Contact], settings: config.Settings, wait: Callable[[float], bool]
    ) -> list[Result]:
        """One Result per contact, in order. Raises NeedsReauth, TokenUnavailable, QuotaUsedUp or
        imports.Stopped (``wait(seconds)`` said the worker is stopping); API failures and failed
        activities come back in the Results (the same one for every contact they concern)."""
        results: list[Result | None] = [None] * len(contacts)
        call = self.calls.caller(settings, f"import of {len(contacts)} contact(s)")
        try:
            suppressed = self.suppression.why_not([c.email for c in contacts], settings, call)
            names = self._custom_names(contacts, settings, call)
        except ApiError as e:
            return [Result("failed", error=e)] * len(contacts)
        todo = []
        targets = [list_changes.targets(c.fields, settings) for c in contacts]
        for n, contact in enumerate(contacts):
            why = suppressed.get(contact.email.lower())
            if why is not None:
                results[n] = Result("skipped", outcome=why)
            elif settings.dry_run:
                row = json.dumps(import_batches.import_contact(contact._asdict(), names))
                joins, leaves = targets[n]
                then = f", then leave list(s) {list_changes.shown(leaves)}" if leaves else ""
                into = f" into list(s) {list_changes.shown(joins)}{then}"
                results[n] = Result(
                    "dry_run", outcome=f"would import: POST /activities/contacts_json_import {row}{into}"
                )
            else:
                todo.append(n)
        groups: dict[tuple[str, ...], list[int]] = {}  # a request joins one set of lists
        for n in todo:
            groups.setdefault(tuple(targets[n][0]), []).append(n)
        failure: Result | None = None
        budget = 2 * math.ceil(math.log2(len(todo) + 1)) + NARROWING_SLACK  # see _halves
        one = _Send(contacts, results, call, wait, names, budget)
        for lists, members in groups.items():
            for keys, body in import_batches.batches(one.items(members), lists):
                if failure is None:
                    failure = self._import(one, keys, body, lists)
                if failure is not None:  # the API is down or refuses us: the rest need not try
                    for n in keys:
                        results[n] = results[n] or failure  # (a half that got through keeps its result)
        self._leave_lists(contacts, targets, results, call, wait)
        return [r if r is not None else Result("failed", error=_unknown()) for r in results]

    def _custom_names(self, contacts: Sequence[payload.Contact], settings: config.Settings, call) -> dict[str, str]:
        """{custom field name as mapped: its name in Constant Contact} for every contact's fields."""
        wanted: dict[str, None] = {}
        for contact in contacts:
            values = fieldmap.custom_values(contact.fields)
            wanted.update(dict.fromkeys(values))
            if len(values) > fieldmap.IMPORT_CUSTOM_MAX:
                warn_once(
                    self._said,
                    "over",
                    "client %s has %d custom fields mapped; an import takes %d per contact: the first %d are sent "
                    "(this is said once; map fewer in [email_marketing.constant_contact.fields])",
                    payload.shown(contact.client_id),
                    len(values),
                    fieldmap.IMPORT_CUSTOM_MAX,
                    fieldmap.IMPORT_CUSTOM_MAX,
                )
        found = self.custom_fields.resolve(wanted, settings, call, f"import of {len(contacts)} contact(s)")
        return {name: field.name for name, field in found.items()}

    def _leave_lists(self, contacts, targets, results: list, call, wait) -> None:
        """Converted leads that were imported leave ``remove_from_list_ids``: their ids looked up
        (an import names none), then one removal per set of lists."""
        groups: dict[tuple[str, ...], list[int]] = {}
        for n, (_, leaves) in enumerate(targets):
            result = results[n]
            if leaves and result is not None and result.status == IMPORTED:
                groups.setdefault(tuple(leaves), []).append(n)
        removal = list_changes.Removal(wait, self.clock)
        for leaves, members in groups.items():
            try:
                ids: dict[int, str] = {}
                for n in members:
                    found = call(lambda c, email=contacts[n].email: c.find_contact(email))
                    if found and isinstance(found.get("contact_id"), str):
                        ids[n] = found["contact_id"]
                refused = removal.remove(list(ids.values()), leaves, call) if ids else None
            except ApiError as e:  # in passing: these rows are sent again, import and removal
                for n in members:
                    results[n] = Result("failed", error=e)
                continue
            said = refused or f"left list(s) {list_changes.shown(leaves)}"
            for n in members:
                results[n] = results[n]._replace(outcome=f"{results[n].outcome}; {said}")

    def _import(self, one: _Send, keys: list[int], body: bytes, list_ids: tuple[str, ...]) -> Result | None:
        """Fill in ``one.results`` for ``keys``; a failure of the request as a whole is also returned."""
        results = one.results
        emails = [one.contacts[n].email for n in keys]
        try:
            done = Importer(one.wait, self.clock).run(body, emails, one.call)
        except ImportFailed as e:
            return Result("failed", error=ApiError(None, "import_failed", str(e)))
        except ApiError as e:
            if e.status not in _SPLIT:
                return Result("failed", error=e)
            if len(keys) == 1:
                results[keys[0]] = Result("failed", error=e)
                return None
            return self._halves(one, keys, list_ids, e)
        unnamed = [n for i, n in enumerate(keys) if i not in done.errors]
        for i, n in enumerate(keys):
            if i in done.errors:
                # Constant Contact's words about this contact: resending the same data cannot help
                results[n] = Result("failed", error=ApiError(400, "import.row_rejected", done.errors[i]))
        not_imported = _not_imported(done.counts) - len(done.errors)
        if not_imported > 0 and unnamed and len(keys) > 1:
            # counted but not named (the service need not list them): which ones is unknown, so
            # halves are imported again (the same data again changes nothing) until the counts tell;
            # only an import of one contact says for sure (a count may be of errors, not contacts)
            log.info("import activity %s: %d not imported, not named: narrowing down", done.activity_id, not_imported)
            counted = ApiError(400, "import.row_rejected", f"activity {done.activity_id} counted it as not imported")
            return self._halves(one, unnamed, list_ids, counted)
        for n in unnamed:
            if not_imported > 0:
                why = f"activity {done.activity_id} counted it as not imported (invalid email address or data)"
                results[n] = Result("failed", error=ApiError(400, "import.row_rejected", why))
            else:
                results[n] = Result(IMPORTED, outcome=f"{IMPORTED} (activity {done.activity_id})", lists=list_ids)
        for text in done.unplaced:
            log.warning("import activity %s reported an error naming no contact we sent: %s", done.activity_id, text)
        log.info(
            "imported %d contact(s) into list(s) %s (activity %s, %d rejected)",
            len(keys) - len(done.errors),
            list_changes.shown(list_ids),
            done.activity_id,
            len(done.errors),
        )
        return None

    def _halves(self, one: _Send, keys: list[int], list_ids: tuple[str, ...], why: ApiError) -> Result | None:
        """``keys`` imported again in two requests (one, for a single contact): :meth:`_import` each.
        ``one.narrowing_left``: narrowing requests this send may still spend. A refusal that holds for every
        part (a field the account lacks, say) would otherwise cost two requests per contact — 80,000
        for one import, eight days of quota: once spent, what is not narrowed down ends dead with
        Constant Contact's words (`remixcrm-ctct retry --dead` after the fix)."""
        half = max(1, len(keys) // 2)
        for part in (keys[:half], keys[half:]):
            for sub_keys, sub_body in import_batches.batches(one.items(part), list_ids):
                if one.narrowing_left <= 0:
                    gave_up = ApiError(why.status, why.error_key, f"{why.error_message} (not narrowed down further)")
                    for n in sub_keys:
                        one.results[n] = one.results[n] or Result("failed", error=gave_up)
                    continue
                one.narrowing_left -= 1
                failure = self._import(one, sub_keys, sub_body, list_ids)
                if failure is not None:
                    return failure
        return None


def _not_imported(counts: dict) -> int:
    """Contacts of an activity that were not imported, by its ``status`` counts (the spec's
    non-correctable ``error_count`` and ``correctable_count``: bad email, date, no email)."""
    found = 0
    for name in ("error_count", "correctable_count"):
        value = counts.get(name)
        found += value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
    return found


def _unknown() -> ApiError:
    return ApiError(None, "not_sent", "the import of this contact did not run (see the log)")
