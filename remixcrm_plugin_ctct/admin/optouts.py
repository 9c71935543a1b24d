"""``remixcrm-ctct optouts [--since DATE] [--json | --csv]``: who opted out in Constant Contact,
with the RemixCRM client we pushed with that email — for admins and scripts.

Emails are printed in full: this is the admin's own data on their terminal (or in their
script's pipe), like an export, not a log line. Notes about freshness go to stderr so that
``--json`` and ``--csv`` stay parseable.
"""

import csv
import datetime as dt
import json
import sqlite3
import sys
from collections.abc import Callable

from .. import opt_outs
from . import api

Say = Callable[[str], None]
COLUMNS = ("recorded_at", "opted_out_at", "email", "client_id", "source")


def iso(epoch: float) -> str:
    """Microseconds kept: ``recorded_at`` passed back as ``--since`` must be exact."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")


def run(say: Say, since_text: str | None, form: str = "table", sync: bool = True, note: Say | None = None) -> int:
    note = note or (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        since = opt_outs.parse_since(since_text)
    except opt_outs.BadSince as e:
        note(f"✗ --since: {e}")
        return 2
    try:
        found = api.opt_outs(since, sync=sync)
    except sqlite3.Error as e:
        note(f"✗ the outbox file {api.outbox_path()} cannot be read ({e}); its opt-outs cannot be shown")
        return 1
    if found.sync_problem:
        synced = iso(found.synced_at) if found.synced_at is not None else "never"
        note(f"note: could not bring the opt-outs up to date: {found.sync_problem}; showing them as of {synced}")
    rows = [
        {
            "recorded_at": iso(o.recorded_at),
            "opted_out_at": iso(o.opted_out_at),
            "email": o.email,
            "client_id": o.client_id,
            "source": o.source,
        }
        for o in found.entries
    ]
    if form == "json":
        say(json.dumps(rows, indent=2, ensure_ascii=False))
    elif form == "csv":
        writer = csv.DictWriter(_Lines(say), fieldnames=COLUMNS, lineterminator="")
        writer.writeheader()
        writer.writerows(rows)
    else:
        _table(say, rows, since_text)
    return 0


class _Lines:
    """A file-like ``say``: csv writes one row per call."""

    def __init__(self, say: Say):
        self.say = say

    def write(self, text: str) -> None:
        self.say(text)


def _table(say: Say, rows: list[dict], since_text: str | None) -> None:
    after = f" recorded after {since_text}" if since_text else ""
    if not rows:
        say(f"no opt-outs{after}")
        return
    say(f"{len(rows)} opt-out(s){after}, oldest recorded first:")
    say(f"  {'opted out (UTC)':<20} {'email':<32} {'client':<12} {'by':<8} recorded (pass to --since)")
    for r in rows:
        client = r["client_id"] if r["client_id"] is not None else "-"
        source = {"Contact": "person", "Account": "account"}.get(r["source"] or "", r["source"] or "-")
        say(f"  {r['opted_out_at'][:19]:<20} {r['email']:<32} {client:<12} {source:<8} {r['recorded_at']}")
