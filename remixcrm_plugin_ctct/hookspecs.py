"""The RemixCRM hook contract, declared with pluggy.

RemixCRM owns these specs; this copy lets tests, the demo and RemixCRM developers validate
plugins with ``PluginManager.check_pending()``. ``hookspecs.md`` documents every hook, and
``tests/test_hookspecs.py`` fails when the two disagree.
"""

import sys

import pluggy

PROJECT_NAME = "remixcrm"  # pluggy project name and entry-point group

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def on_client_created(client):
    """Called after a new client record is committed; returns nothing and never blocks."""


@hookspec
def on_lead_converted(lead, client):
    """Called after a lead became a client; ``client`` is the new client record."""


@hookspec
def email_marketing_opt_outs(since):
    """Optional, called by the host when it likes (its scheduler): the opt-outs the email
    provider recorded after ``since``, as a list of dicts with ``client_id``, ``email``,
    ``opted_out_at``, ``source`` and ``recorded_at`` (pass the newest ``recorded_at`` back as
    the next ``since``). Never raises, never blocks; pluggy collects one list per plugin."""


def make_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager set up as RemixCRM sets one up: specs added, entry points loaded."""
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(sys.modules[__name__])
    if load_entry_points:
        pm.load_setuptools_entrypoints(PROJECT_NAME)
    return pm
