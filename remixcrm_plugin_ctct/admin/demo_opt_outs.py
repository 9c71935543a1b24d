"""The demo's last act: one opt-out flows back to RemixCRM, from the person's click in Constant
Contact (the sandbox) through the worker's opt-out poll to the host's call of the optional hook
``email_marketing_opt_outs``, with the client id and the watermark a host keeps."""

import time

from .. import runtime as dispatch
from ..sandbox import Sandbox

OPTS_OUT = (101, "ada@example.com")  # after delivery, this client unsubscribes by the link in a mail


def flows_back(say, sandbox: Sandbox, pm) -> bool:
    """One opt-out, from the person's click in Constant Contact to the host's hook call."""
    client_id, email = OPTS_OUT

    def ask(since):
        return [e for answer in pm.hook.email_marketing_opt_outs(since=since) for e in answer]

    known = ask(None)
    say(f"\nopt-outs back to RemixCRM (email_marketing_opt_outs): {len(known)} known so far")
    for e in known:
        say(f"  {_shown(e)}")
    watermark = known[-1]["recorded_at"] if known else None
    sandbox.api.unsubscribe(email)  # by the person (opt_out_source "Contact")
    say(f'  -- {email} clicks "unsubscribe" in a Constant Contact mail; the worker\'s next opt-out poll --')
    dispatch.runtime().optouts.run(time.time(), force=True)  # every optout_poll_minutes; now, for the demo
    found = ask(watermark)
    for e in found:
        say(f"  since={watermark.isoformat() if watermark else None}: {_shown(e)}")
    ok = [(e["client_id"], e["email"], e["source"]) for e in found] == [(str(client_id), email, "Contact")]
    say(f"  {'✓' if ok else '✗'} client {client_id}'s opt-out reached RemixCRM with its client id, by the person")
    return ok


def _shown(entry: dict) -> str:
    return (
        f"client {entry['client_id']}  {entry['email']}  opted out {entry['opted_out_at']:%Y-%m-%d %H:%M:%S} UTC"
        f"  by {entry['source']}  (recorded_at {entry['recorded_at'].isoformat()})"
    )
