"""The hookimpls RemixCRM loads through the ``remixcrm`` entry point.

Deliberately thin: each hook hands the record to :mod:`.intake` and returns. A hookimpl
that raised would abort the host's call and every other plugin's, so nothing escapes.
"""

import logging

from . import intake, opt_outs, runtime
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


@hookimpl(optionalhook=True)  # a host whose specs predate this hook still loads the plugin
def email_marketing_opt_outs(since):
    try:
        return opt_outs.handle_hook(since)
    except Exception as e:  # never raise into the host: it loses nothing, its watermark stays
        log.error("email_marketing_opt_outs failed inside the plugin (%s); answering []", type(e).__name__)
        log.debug("email_marketing_opt_outs failure", exc_info=True)
        return []


# What an earlier run left (a restart, a worker recycled after each request) starts flowing
# now, not at the next hook; two stat calls, and nothing at all when the data dir is empty.
runtime.resume_pending()
