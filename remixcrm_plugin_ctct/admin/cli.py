"""``remixcrm-ctct``: the admin's command line (also ``python -m remixcrm_plugin_ctct``)."""

import argparse
import dataclasses
import os
import sys

from .. import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remixcrm-ctct",
        description="Constant Contact plugin for RemixCRM: try it, log in, operate it.",
    )
    parser.add_argument("--version", action="version", version=f"remixcrm-plugin-ctct {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run the whole path on a built-in Constant Contact sandbox (no account, no config needed)",
        description="Start a local Constant Contact sandbox, load the plugin through its entry point, "
        "fire the hooks for sample clients (one bad email, one who declined, one who unsubscribed "
        "earlier) and show what arrived, a token expiry and refresh, a summary, and one opt-out flowing back "
        "to RemixCRM. Never touches your "
        "real config.",
    )
    demo.add_argument("--dry-run", action="store_true", help="dry_run = true: show what would be sent, write nothing")
    sandbox = commands.add_parser(
        "sandbox",
        help="run an offline Constant Contact stand-in on a loopback port, and print a config for it",
        description="Serve a local Constant Contact (API under /v3, authorization server under "
        "/oauth2/default/v1) on 127.0.0.1 until Ctrl-C: sign_up_form with the vendor schema's limits, contact "
        "lookups, lists, token refresh (rotating by default), device and PKCE logins, 4 requests/s and a "
        "daily quota, fault injection (POST /sandbox/faults), a person unsubscribing (POST /sandbox/unsubscribe) and a "
        "read-only view (/sandbox/view). Prints a "
        "config.toml that points the plugin at it, with a fresh token pair. The sandbox's tokens are not secrets.",
    )
    sandbox.add_argument("--port", type=int, default=8910, help="loopback port (default 8910; 0 picks a free one)")
    sandbox.add_argument(
        "--token-lifetime", type=float, default=86400, help="access-token lifetime in seconds (default 24 h)"
    )
    sandbox.add_argument("--long-lived", action="store_true", help="long-lived refresh tokens instead of rotating ones")
    sandbox.add_argument(
        "--rate-limit", type=float, default=4, help="requests per second before 429 throttled (default 4)"
    )
    sandbox.add_argument("--daily-quota", type=int, default=10_000, help="requests per day before 429 quota_exceeded")
    sandbox.add_argument("--error-rate", type=float, default=0.0, help="share of API calls answered 503 (0 to 1)")
    sandbox.add_argument("--latency", type=float, default=0.0, help="seconds added to every API answer")
    check = commands.add_parser(
        "check",
        help="would sending work? provider, list, token, scopes, expiry, refresh, data dir, outbox",
        description="Read the config as the plugin does and report, one line each with the fix: provider "
        "selected, list id, token present, token works (a cheap call), scopes, list exists and is not "
        "deleted (name and member count), access-token expiry, refresh possible, data dir writable, outbox "
        "counts. Exit code 0 only when sending would work. Never prints a secret.",
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    login = commands.add_parser(
        "login",
        help="connect to Constant Contact (device code, or --browser) and store the tokens",
        description="Log in to Constant Contact with the OAuth2 Device Authorization flow (works on a "
        "headless server) or, with --browser, Authorization Code with PKCE on a loopback redirect. "
        "The tokens go to the plugin's token store (0600) and win over the ones in config.toml until "
        "new ones are pasted in Settings. Prints the expiry, never a token.",
    )
    login.add_argument("--browser", action="store_true", help="use Authorization Code with PKCE and a browser")
    login.add_argument(
        "--port",
        type=int,
        default=8765,
        help="loopback port for --browser's redirect URI (default 8765; 0 picks a free one)",
    )
    login.add_argument("--no-open", action="store_true", help="with --browser: print the URL, do not open a browser")
    _token_options(login)
    refresh = commands.add_parser(
        "refresh",
        help="refresh the access token now and print its new expiry",
        description="Refresh the access token now with the stored refresh token (taking the same "
        "cross-process lock as the plugin), save the new pair, and print the new expiry.",
    )
    _token_options(refresh)
    status = commands.add_parser(
        "status",
        help="outbox counts, pauses, the last error; --client ID: did client X reach Constant Contact?",
        description="Counts of events by state (pending, sending, delivered, dead), the oldest unsent event, "
        "why sending is paused (daily quota, needs re-authorisation, config), today's request count and the "
        "last error. With --client ID: whether that client reached Constant Contact, and if not, why.",
    )
    status.add_argument("--client", metavar="ID", help="the RemixCRM client id to look up")
    retry = commands.add_parser(
        "retry",
        help="make pending events due now (--dead: dead ones too)",
        description="Make every pending event due now instead of at its backoff time; "
        "with --dead, also give dead events (given up after an error) a new try.",
    )
    retry.add_argument("--dead", action="store_true", help="also retry events that were given up")
    flush = commands.add_parser(
        "flush",
        help="send everything pending now from this process (progress bar on a terminal)",
        description="Send every pending event now, from this process, within the rate "
        "limit, showing progress; stops early when sending is paused and says why.",
    )
    flush.add_argument("--timeout", type=float, help="give up after this many seconds")
    worker = commands.add_parser(
        "worker",
        help='run the sender process in the foreground (sender = "process"; a service: systemd, a container)',
        description='Deliver what RemixCRM\'s processes record, from this process: with sender = "process" '
        "the hooks only append to their journals and this process folds and sends them, within the rate "
        "limit. One per data dir (a second one leaves at once). Runs until SIGTERM or Ctrl-C, then takes at "
        "most 2 s; logs to stderr. Without a service, a hook starts one by itself when none runs.",
    )
    worker.add_argument(
        "--exit-when-idle", type=float, metavar="SECONDS", help="leave after this long with nothing to do"
    )
    worker.add_argument("--log-file", help="log here (rotated at 1 MiB, 3 kept) instead of stderr")
    worker.add_argument(
        "--nice", type=int, default=0, help="lower the CPU priority by this much (a hook's sender process: 10)"
    )
    worker.add_argument("--lock-fd", type=int, help=argparse.SUPPRESS)  # the lock, taken by the hook that starts us
    migrate = commands.add_parser(
        "migrate-state",
        help="copy this host's local SQLite store into the shared PostgreSQL store (state_url)",
        description="Copy unsent and dead events, the newest state of each email, the token pair, today's "
        "request count, the quota pause and counters from this host's data dir into the PostgreSQL store "
        "named by state_url (or REMIXCRM_CTCT_STATE_URL). Idempotent: run it on every host, as often as you "
        "like; nothing is copied twice. Delivered events' history stays local.",
    )
    migrate.add_argument("--dry-run", action="store_true", help="only count what would be copied")
    backfill = commands.add_parser(
        "backfill",
        help="send existing clients from a CSV or JSON Lines export (resumable; --dry-run first)",
        description="Record every client of FILE (CSV with a header row, or JSON Lines; the hook's keys id, "
        "email, first_name, last_name, phone, company, job_title, email_opt_in), each checked as the hook "
        "checks a client, into the outbox in chunks, then send them and show progress. --dry-run prints what "
        "would happen and writes nothing. Killed or interrupted, the same command continues where it stopped "
        "(the file is known by its content). Exit codes: 0 done; 1 nothing done (file refused, config not "
        "active, outbox not writable); 3 recorded but sending paused or --timeout passed; 4 done with invalid "
        "or given-up rows; 130 interrupted.",
    )
    backfill.add_argument("file", metavar="FILE", help="the export: .csv, or .jsonl/.ndjson (else told by content)")
    backfill.add_argument("--dry-run", action="store_true", help="count what would happen; write nothing")
    backfill.add_argument("--chunk", type=_positive, default=1000, help="rows recorded per transaction (default 1000)")
    backfill.add_argument("--timeout", type=float, help="stop watching after this many seconds (rows stay recorded)")
    optouts = commands.add_parser(
        "optouts",
        help="who opted out in Constant Contact, with the RemixCRM client id (table, --json or --csv)",
        description="Bring the suppression mirror up to date (read-only requests; skipped when it synced in the "
        "last minute) and list the opt-outs it recorded, oldest recorded first: when the person opted out, the "
        "email (in full: your own data, on your terminal), the RemixCRM client id we pushed with that email, who "
        "opted them out (the person or the account) and recorded_at, the cursor to pass back as --since.",
    )
    optouts.add_argument(
        "--since",
        metavar="DATE",
        help="only opt-outs recorded after this (exclusive): an ISO 8601 date or date-time (UTC unless it says) "
        "or epoch seconds; pass the last recorded_at you processed",
    )
    optouts.add_argument("--offline", action="store_true", help="read the local mirror only, make no request")
    form = optouts.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="a JSON array of objects")
    form.add_argument("--csv", action="store_true", help="CSV with a header row")
    commands.add_parser(
        "purge",
        help="forget emails and names of events delivered longer ago than retention_days",
        description="Remove emails and names from delivered events older than retention_days "
        "(default 30); the small status record (client id, contact id, outcome, time) stays.",
    )
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _token_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--client-id", help="the app's API key (default: client_id from config.toml)")
    command.add_argument(
        "--token-url",
        help="token endpoint; the device and authorize endpoints live beside it "
        "(default: token_url from config.toml, else Constant Contact's)",
    )


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `remixcrm-ctct status | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import demo

        return demo.run(dry_run=args.dry_run)
    if args.command == "sandbox":
        from ..sandbox import serve

        return serve.run(
            lambda text: print(text, flush=True),
            args.port,
            args.token_lifetime,
            args.long_lived,
            args.rate_limit,
            args.daily_quota,
            args.error_rate,
            args.latency,
        )
    if args.command == "worker":
        from .. import service

        say = lambda text: print(text, flush=True)  # noqa: E731
        return service.run(say, args.exit_when_idle, args.log_file, args.lock_fd, args.nice)
    if args.command in ("login", "refresh"):
        return _tokens_command(args)
    if args.command == "check":
        from . import check

        return check.main(lambda text: print(text, flush=True), args.json)
    if args.command == "migrate-state":
        from . import commands

        return commands.migrate_state(lambda text: print(text, flush=True), args.dry_run)
    if args.command == "backfill":
        from . import backfill_command

        mirror = backfill_command.mirror_lookup() if args.dry_run else None  # a real run: the worker filters
        return backfill_command.run(args.file, args.dry_run, args.chunk, args.timeout, suppressed=mirror)
    if args.command == "optouts":
        from . import optouts

        form = "json" if args.json else "csv" if args.csv else "table"
        return optouts.run(lambda text: print(text, flush=True), args.since, form, sync=not args.offline)
    if args.command in ("status", "retry", "flush", "purge"):
        from ..store.interfaces import StoreUnavailable
        from . import commands

        def say(text: str) -> None:
            print(text, flush=True)

        try:
            if args.command == "status":
                return commands.status(say, args.client)
            if args.command == "retry":
                return commands.retry(say, args.dead)
            if args.command == "flush":
                return commands.flush(say, args.timeout)
            return commands.purge(say)
        except StoreUnavailable as e:
            say(f"✗ cannot reach the shared state store: {e}")
            return 1
    parser.print_help()
    return 2


def _tokens_command(args: argparse.Namespace) -> int:
    from .. import config, runtime
    from ..ctct import oauth
    from ..ctct.token_manager import NeedsReauth, TokenUnavailable, describe_expiry
    from . import login

    def say(text: str) -> None:
        print(text, flush=True)

    settings, problem = config.load_for_tokens(config.config_path())
    if settings is None:
        say(f"✗ {problem}")
        return 1
    overrides = {k: v for k, v in (("client_id", args.client_id), ("token_url", args.token_url)) if v}
    settings = dataclasses.replace(settings, **overrides)
    if not settings.client_id:
        say("✗ no client_id: set client_id (your Constant Contact app's API key) in config.toml, or pass --client-id")
        return 1
    manager = runtime.tokens()
    try:
        if args.command == "refresh":
            manager.refresh(settings, force=True)
            say(f"refreshed; the access token expires at {describe_expiry(manager.state(settings).expires_at)}")
            return 0
        if args.browser:
            expires = login.browser_login(manager, settings, say, port=args.port, open_browser=not args.no_open)
        else:
            expires = login.device_login(manager, settings, say)
    except (oauth.OAuthError, NeedsReauth, TokenUnavailable) as e:
        say(f"✗ {args.command} failed: {e}")
        return 1
    login.report(say, expires)
    return 0


if __name__ == "__main__":
    sys.exit(main())
