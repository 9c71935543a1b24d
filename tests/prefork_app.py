"""A tiny RemixCRM stand-in for a real prefork server: ``gunicorn prefork_app:app``.

It loads the plugin as RemixCRM does (the installed ``remixcrm`` entry point, through
``make_plugin_manager``) and fires its hooks from request handlers:

- ``POST /client``: the JSON body is the client record; an optional ``"lead"`` key (the lead
  record) makes it ``on_lead_converted(lead, client)`` instead of ``on_client_created(client)``.
  Answers 200 with ``X-Hook-Us`` (microseconds the hook call took, in this worker) and
  ``X-Pid`` (the worker that fired it).
- ``GET /pid``: ``X-Pid`` only (which worker answers).

The plugin reads its own variables (``REMIXCRM_CONFIG``, ``REMIXCRM_DATA_DIR``).
``PREFORK_APP_AT_IMPORT``: a JSON list of clients fired while this module is imported — with
``gunicorn --preload`` that is in the master, before the fork, as a host that creates clients at
start-up would. ``PREFORK_APP_LOG``: a level name; the plugin's log lines go to stderr (gunicorn's
log) with the pid. Used by tests/test_prefork.py and bench/prefork.py.
"""

import json
import logging
import os
import time

from remixcrm_plugin_ctct.hookspecs import make_plugin_manager

if os.environ.get("PREFORK_APP_LOG"):
    logging.basicConfig(
        level=os.environ["PREFORK_APP_LOG"].upper(),
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
    )

pm = make_plugin_manager()


def fire(client: dict) -> float:
    """Fire the hook for ``client`` (a copy is taken); returns the hook call's microseconds."""
    client = dict(client)
    lead = client.pop("lead", None)
    started = time.perf_counter_ns()
    if lead is not None:
        pm.hook.on_lead_converted(lead=lead, client=client)
    else:
        pm.hook.on_client_created(client=client)
    return (time.perf_counter_ns() - started) / 1000


for _client in json.loads(os.environ.get("PREFORK_APP_AT_IMPORT") or "[]"):
    fire(_client)


def app(environ, start_response):
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
    headers = [("X-Pid", str(os.getpid())), ("Content-Length", "0")]
    if path == "/pid" and method == "GET":
        start_response("200 OK", headers)
        return [b""]
    if path != "/client" or method != "POST":
        start_response("404 Not Found", headers)
        return [b""]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    try:
        client = json.loads(environ["wsgi.input"].read(length) if length else b"")
    except ValueError:
        client = None
    if not isinstance(client, dict):
        start_response("400 Bad Request", headers)
        return [b""]
    took = fire(client)
    start_response("200 OK", headers + [("X-Hook-Us", f"{took:.1f}")])
    return [b""]
