"""The hookimpls RemixCRM loads through the ``remixcrm`` entry point.

Deliberately thin: each hook hands the record to :mod:`.intake` and returns. A hookimpl
that raised would abort the host's call and every other plugin's, so nothing escapes.
"""

import logging

from . import intake, runtime
from .hookspecs import hookimpl

log = logging.getLogger("remixcrm_plugin_ctct")


@hookimpl
def on_client_created(client):
    try:
        intake.handle_event("client_created", client)
    except Exception:  # never raise into the host
        log.exception("on_client_created failed inside the plugin; the CRM is unaffected")


@hookimpl
def on_lead_converted(lead, client):
    try:
        intake.handle_event("lead_converted", client, lead=lead)
    except Exception:  # never raise into the host
        log.exception("on_lead_converted failed inside the plugin; the CRM is unaffected")


# What an earlier run left (a restart, a worker recycled after each request) starts flowing
# now, not at the next hook; two stat calls, and nothing at all when the data dir is empty.
runtime.resume_pending()
