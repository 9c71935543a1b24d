"""Lists that follow the client: which lists a push joins, and leaving lists on conversion.

Each event carries its kind (``event:client_created``, ``event:lead_converted`` in its fields,
see fieldmap.py); the lists are read from the config at send time, so a corrected list id also
reaches events already waiting (and ``retry --dead``). A row joins the lists of *all* its own
events: a conversion coalesced with the creation of the same email joins both lists, and leaves
``remove_from_list_ids``. A row without a kind (a backfill, an event recorded before lists
followed events) joins ``list_id``.

Leaving a list is ``POST /activities/remove_list_memberships`` with the contact's id, after the
push (which answers with the id; the import lane looks it up), polled like an import. Only list
memberships change: nobody is unsubscribed, nobody deleted (reversible writes only). A removal
that fails in passing fails the row, which is sent again as a whole (joining again is harmless);
one Constant Contact refuses for good (a list deleted since) is logged with the fix, and the
push stands.
"""

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .. import config, fieldmap
from ..ctct.client import ApiError
from . import retry_policy
from .imports import Importer, ImportFailed

log = logging.getLogger("remixcrm_plugin_ctct")

CHUNK = 500  # ListActivityRemoveContacts.source.contact_ids: "up to 500"
# the one-by-one lane waits this long for a removal to complete (its activity is small); past it
# the activity is left to run: Constant Contact accepted it
SIGN_UP_PATIENCE = 30.0


def targets(fields: Mapping, settings: config.Settings) -> tuple[list[str], list[str]]:
    """(the lists to join, the lists to leave) for a contact's stored fields as in force for its row."""
    kinds = fieldmap.event_kinds(fields)
    joins = []
    if "client_created" in kinds:
        joins.append(settings.client_created_list_id or settings.list_id)
    if "lead_converted" in kinds:
        joins.append(settings.lead_converted_list_id or settings.list_id)
    joins = list(dict.fromkeys(joins or [settings.list_id]))
    leaves = []
    if "lead_converted" in kinds:
        lowered = {j.lower() for j in joins}
        leaves = [i for i in settings.remove_from_list_ids if i.lower() not in lowered]
    return joins, leaves


def shown(list_ids: Sequence[str]) -> str:
    return ", ".join(list_ids)


class Removal:
    """Removes contacts (by id) from lists, one activity per 500 contacts, each followed to its end."""

    def __init__(self, wait: Callable[[float], bool], clock: Callable[[], float], patience: float | None = None):
        self.importer = Importer(wait, clock)
        if patience is not None:
            self.importer.TIMEOUT = patience
        self.patience = patience

    def remove(self, contact_ids: Sequence[str], list_ids: Sequence[str], call: Callable[[Any], Any]) -> str | None:
        """None when done (or accepted and still running past our patience); else why it was
        refused for good (logged). Raises ApiError for a failure in passing (the caller retries),
        Stopped, and what ``call`` raises."""
        for start in range(0, len(contact_ids), CHUNK):
            chunk = list(contact_ids[start : start + CHUNK])
            try:
                activity = call(lambda c, ids=chunk: c.remove_list_memberships(ids, list(list_ids)))
                self.importer.follow(activity, call, "list removal")
            except ImportFailed as e:
                if self.patience is not None and "still" in str(e):
                    log.info("%s; left to run (Constant Contact accepted it)", e)
                    continue
                raise ApiError(None, "activity_failed", str(e)) from None
            except ApiError as e:
                if retry_policy.classify(e.status, e.error_key).action != retry_policy.DEAD:
                    raise
                log.error(
                    "could not remove %d contact(s) from list(s) %s: Constant Contact answered %s. They stay "
                    "in those lists. Fix: check remove_from_list_ids (run `remixcrm-ctct check`)",
                    len(chunk),
                    shown(list_ids),
                    e,
                )
                return f"not removed from list(s) {shown(list_ids)}: {e}"
        return None
