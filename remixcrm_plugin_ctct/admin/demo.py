"""``remixcrm-ctct demo``: the whole path, end to end, on the built-in sandbox.

Uses a throwaway config and data dir (never the user's), loads the plugin through its
installed entry point into a real ``pluggy.PluginManager`` as RemixCRM does, fires the hooks
for a few sample clients and shows what reached the sandbox list.
"""

import datetime as dt
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from .. import runtime as dispatch
from ..config import config_toml
from ..hookspecs import make_plugin_manager
from ..sandbox import SANDBOX_CLIENT_ID, SEEDED_LIST_ID, Sandbox
from ..store import outbox_admin
from . import demo_opt_outs

UNSUBSCRIBED = "lee@example.com"  # the sandbox knows this contact: it unsubscribed long ago

# (what it shows, hook, hook kwargs, expected: "explicit via sign_up_form", "implicit via import",
# "not sent" or "stays unsubscribed")
SAMPLES: list[tuple[str, str, dict, str]] = [
    (
        "new client",
        "on_client_created",
        {
            "client": {
                "id": 101,
                "email": "ada@example.com",
                "first_name": "Ada",
                "last_name": "Lovelace",
                "phone": "+44 20 7946 0001",
                "company": "Analytical Engines",
                "plan": "Gold",  # mapped to the custom field "Plan" ([….fields] plan = "custom:Plan")
                "email_opt_in": True,
            }
        },
        "explicit via sign_up_form",
    ),
    (
        "new client, consent unknown",
        "on_client_created",
        {
            "client": {
                "id": 102,
                "email": "  grace@example.org ",
                "first_name": "Grace",
                "last_name": "Hopper",
                "job_title": "Rear Admiral",
            }
        },
        "implicit via import",
    ),
    (
        "lead converted",
        "on_lead_converted",
        {
            "lead": {"id": 7},
            "client": {"id": 103, "email": "alan@example.net", "first_name": "Alan", "last_name": "Turing"},
        },
        "implicit via import",
    ),
    (
        "bad email",
        "on_client_created",
        {"client": {"id": 104, "email": "not-an-email", "first_name": "Nobody"}},
        "not sent",
    ),
    (
        "declined marketing",
        "on_client_created",
        {"client": {"id": 105, "email": "private@example.com", "first_name": "Pat", "email_opt_in": False}},
        "not sent",
    ),
    (
        "unsubscribed earlier",
        "on_client_created",
        {"client": {"id": 106, "email": "Lee@Example.com", "first_name": "Lee"}},
        "stays unsubscribed",
    ),
]


EXPIRE_AFTER = 2  # the sandbox expires the access token before this sample
CUSTOM_FIELD = "Plan"  # created in the sandbox, as an admin does in Contacts → Settings → Custom Fields


def run(out=sys.stdout, dry_run: bool = False) -> int:
    def say(text=""):
        print(text, file=out, flush=True)

    saved = {k: os.environ.get(k) for k in ("REMIXCRM_CONFIG", "REMIXCRM_DATA_DIR")}
    _show_plugin_log(out)
    try:
        with tempfile.TemporaryDirectory(prefix="remixcrm-ctct-demo-") as workdir:
            os.environ["REMIXCRM_CONFIG"] = str(Path(workdir, "config.toml"))
            os.environ["REMIXCRM_DATA_DIR"] = str(Path(workdir, "data"))
            dispatch.reset()
            return _run(say, dry_run)
    finally:
        dispatch.reset()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(say, dry_run: bool) -> int:
    with Sandbox(access_token=None) as sandbox:  # only tokens its authorization server issued
        sandbox.api.seed_contact(UNSUBSCRIBED, permission_to_send="unsubscribed")
        plan = sandbox.api.seed_custom_field(CUSTOM_FIELD)
        _write_config(Path(os.environ["REMIXCRM_CONFIG"]), sandbox, dry_run)
        say(f"sandbox Constant Contact at {sandbox.base_url}, list {SEEDED_LIST_ID}")
        say(
            f"throwaway config {os.environ['REMIXCRM_CONFIG']}"
            + (" (dry_run = true: no write call)" if dry_run else "")
        )
        say(f"the sandbox already knows {UNSUBSCRIBED}: unsubscribed long ago")
        say(f"custom field {CUSTOM_FIELD!r} ({plan['custom_field_id']}) is mapped from the client key 'plan'")
        pm = make_plugin_manager()
        if pm.get_plugin("constant_contact") is None:
            say("✗ the plugin's entry point was not found: is remixcrm-plugin-ctct installed in this Python?")
            return 1
        pm.check_pending()
        say("plugin loaded through entry point remixcrm:constant_contact\n")

        for n, (label, hook, kwargs, _) in enumerate(SAMPLES):
            if n == EXPIRE_AFTER:
                dispatch.flush(10)
                sandbox.authz.expire_all_access_tokens()
                say("  -- the sandbox expires the access token, as Constant Contact does after 24 h --")
            started = time.perf_counter_ns()
            getattr(pm.hook, hook)(**kwargs)
            took_us = (time.perf_counter_ns() - started) / 1000
            say(f"  {hook}({_describe(kwargs)}) returned in {took_us:,.0f} µs   [{label}]")
        drained = dispatch.flush(10, retries=True)
        say("" if drained else "✗ sends still running after 10 s")

        members = {c["email_address"].lower(): c for c in sandbox.members()}
        say(f"contacts in sandbox list ({len(members)}):")
        for c in members.values():
            name = f"{c.get('first_name', ''):<8} {c.get('last_name', ''):<10}"
            say(f"  {c['email_address']:<24} {name} {c['permission_to_send']:<9} {c['contact_id']}")
        ok = drained & (_dry_run_report(say, sandbox) if dry_run else _summary(say, sandbox, members))
        if not dry_run:
            ok &= _custom_field_report(say, sandbox, plan)
            ok &= demo_opt_outs.flows_back(say, sandbox, pm)
        # a dry run may need no request after the expiry (the import lane's dry run sends none)
        refreshed = sandbox.authz.token_calls in ((0, 1) if dry_run else (1,)) and sandbox.authz.invalid_grants == 0
        ok &= refreshed
        say(
            f"  {'✓' if refreshed else '✗'} token refreshed without a human: "
            f"{sandbox.authz.token_calls} refresh call(s), "
            f"{sandbox.authz.invalid_grants} invalid_grant"
        )
    say("\nall sample clients handled as expected" if ok else "\nsome sample clients were not handled as expected")
    return 0 if ok else 1


def _summary(say, sandbox: Sandbox, members: dict) -> bool:
    say("\nsummary (sign_up_form for recorded consent, a bulk import for unknown consent):")
    signed_up = {call["email"] for call in sandbox.calls}
    ok = True
    for label, _, kwargs, expected in SAMPLES:
        email = kwargs["client"]["email"].strip().lower()
        found = sandbox.api.find(email, include_deleted=True)
        permission = found[0]["email_address"]["permission_to_send"] if found else None
        lane = "sign_up_form" if email in signed_up else "import"
        actual = f"{permission} via {lane}" if email in members else "not sent"
        if permission == "unsubscribed":
            actual = "stays unsubscribed"
        ok &= actual == expected
        say(
            f"  {'✓' if actual == expected else '✗'} client {kwargs['client']['id']:<4} {label:<28} "
            f"expected {expected:<26} got {actual}"
        )
    return ok


def _custom_field_report(say, sandbox: Sandbox, plan: dict) -> bool:
    """The mapped client key arrived in the custom field, by its id."""
    email = SAMPLES[0][2]["client"]["email"]
    sent = [f for body in sandbox.api.sign_ups if body["email_address"] == email for f in body.get("custom_fields", [])]
    arrived = sandbox.api.custom_values(email).get(CUSTOM_FIELD)
    ok = arrived == "Gold" and sent == [{"custom_field_id": plan["custom_field_id"], "value": "Gold"}]
    say(
        f"  {'✓' if ok else '✗'} custom field {CUSTOM_FIELD!r} of {email}: {arrived!r} "
        f"(sent as custom_field_id {plan['custom_field_id']})"
    )
    return ok


def _dry_run_report(say, sandbox: Sandbox) -> bool:
    say("\ndry run: what would have been sent (and no write call was made):")
    outbox = dispatch.runtime().outbox
    for label, _, kwargs, _expected in SAMPLES:
        rows = outbox_admin.for_client(outbox, str(kwargs["client"]["id"]))
        outcome = rows[-1]["outcome"] if rows else "not recorded (rejected by the hook: see the log)"
        say(f"  client {kwargs['client']['id']:<4} {label:<28} {outcome}")
    writes = len(sandbox.calls)
    say(f"  {'✓' if writes == 0 else '✗'} write calls made: {writes}")
    return writes == 0


def _describe(kwargs) -> str:
    client = kwargs["client"]
    lead = f"lead {kwargs['lead']['id']}, " if "lead" in kwargs else ""
    return f"{lead}client {client['id']}"


def _write_config(path: Path, sandbox: Sandbox, dry_run: bool = False) -> None:
    """The config an admin would have after logging in: a token pair, its expiry, the app's id."""
    issued = sandbox.authz.seed()
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=issued["expires_in"])
    text = config_toml(
        access_token=issued["access_token"],
        refresh_token=issued["refresh_token"],
        token_expires_at=expires.replace(microsecond=0),
        client_id=SANDBOX_CLIENT_ID,
        list_id=SEEDED_LIST_ID,
        api_base_url=sandbox.api_base_url,
        token_url=sandbox.token_url,
        dry_run=dry_run,
        fields={"plan": f"custom:{CUSTOM_FIELD}"},
    )
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)


def _show_plugin_log(out) -> None:
    logger = logging.getLogger("remixcrm_plugin_ctct")
    if not logger.handlers:
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter("    log %(levelname)-7s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
