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
from collections.abc import Callable, Sequence

from .. import config, payload
from ..ctct.client import ApiError
from . import import_batches
from .api_calls import ApiCalls
from .imports import Importer, ImportFailed
from .sign_up import Result
from .suppression import SuppressionCheck

log = logging.getLogger("remixcrm_plugin_ctct")

IMPORTED = "imported"
_SPLIT = (400, 413)  # about the request's content: some contact in it, or its size


class Importing:
    def __init__(self, calls: ApiCalls, suppression: SuppressionCheck, clock: Callable[[], float]):
        self.calls, self.suppression, self.clock = calls, suppression, clock

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
        except ApiError as e:
            return [Result("failed", error=e)] * len(contacts)
        todo = []
        for n, contact in enumerate(contacts):
            why = suppressed.get(contact.email.lower())
            if why is not None:
                results[n] = Result("skipped", outcome=why)
            elif settings.dry_run:
                row = json.dumps(import_batches.import_contact(contact._asdict()))
                results[n] = Result("dry_run", outcome=f"would import: POST /activities/contacts_json_import {row}")
            else:
                todo.append(n)
        items = [(n, import_batches.import_contact(contacts[n]._asdict())) for n in todo]
        failure: Result | None = None
        for keys, body in import_batches.batches(items, settings.list_id):
            if failure is None:
                failure = self._import(keys, body, settings.list_id, contacts, results, call, wait)
            if failure is not None:  # the API is down or refuses us: the rest need not try
                for n in keys:
                    results[n] = results[n] or failure  # (a half that got through keeps its result)
        return [r if r is not None else Result("failed", error=_unknown()) for r in results]

    def _import(self, keys: list[int], body: bytes, list_id: str, contacts, results: list, call, wait) -> Result | None:
        """Fill in ``results`` for ``keys``; a failure of the request as a whole is also returned."""
        emails = [contacts[n].email for n in keys]
        try:
            done = Importer(wait, self.clock).run(body, emails, call)
        except ImportFailed as e:
            return Result("failed", error=ApiError(None, "import_failed", str(e)))
        except ApiError as e:
            if e.status not in _SPLIT:
                return Result("failed", error=e)
            if len(keys) == 1:
                results[keys[0]] = Result("failed", error=e)
                return None
            half = len(keys) // 2
            for part in (keys[:half], keys[half:]):
                items = [(n, import_batches.import_contact(contacts[n]._asdict())) for n in part]
                for sub_keys, sub_body in import_batches.batches(items, list_id):
                    failure = self._import(sub_keys, sub_body, list_id, contacts, results, call, wait)
                    if failure is not None:
                        return failure
            return None
        for i, n in enumerate(keys):
            if i in done.errors:
                # Constant Contact's words about this contact: resending the same data cannot help
                results[n] = Result("failed", error=ApiError(400, "import.row_rejected", done.errors[i]))
            else:
                results[n] = Result(IMPORTED, outcome=f"{IMPORTED} (activity {done.activity_id})")
        for text in done.unplaced:
            log.warning("import activity %s reported an error naming no contact we sent: %s", done.activity_id, text)
        log.info(
            "imported %d contact(s) into list %s (activity %s, %d rejected)",
            len(keys) - len(done.errors),
            list_id,
            done.activity_id,
            len(done.errors),
        )
        return None


def _unknown() -> ApiError:
    return ApiError(None, "not_sent", "the import of this contact did not run (see the log)")
