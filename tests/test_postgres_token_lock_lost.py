"""A refresh that outlives its lock: the lock's connection dies while the token call is out.

Rotating refresh tokens are single-use. Host A takes the token lock and calls the token endpoint;
while the call is out, A's lock connection is dropped (PostgreSQL restarted, an admin's
pg_terminate_backend, idle_in_transaction_session_timeout, a network blip), so the server lets go
of the lock. Host B takes it, reads the pair A has not replaced yet and refreshes with the refresh
token A just spent: invalid_grant. The valid pair A received must survive, and nobody may be told
to log in again while it exists.
"""

import threading
import time

import pytest
from conftest import REFRESHABLE, pg_sql

from remixcrm_plugin_ctct.ctct import oauth, token_manager
from remixcrm_plugin_ctct.ctct.token_manager import NeedsReauth, TokenManager, TokenUnavailable
from remixcrm_plugin_ctct.store.postgres import open_store

SETTINGS = REFRESHABLE


class RotatingAuthz:
    """Constant Contact's rotating refresh tokens: each refresh expires every earlier one."""

    def __init__(self):
        self.valid, self.n, self.calls, self.invalid_grants = "refresh-0", 0, 0, 0
        self.during_call = None  # runs after the server rotated, before the answer reaches the caller

    def refresh(self, token_url, refresh_token, client_id, client_secret):
        self.calls += 1
        if refresh_token != self.valid:
            self.invalid_grants += 1
            raise oauth.OAuthError("invalid_grant", "The refresh token is invalid or expired.", 400)
        self.n += 1
        self.valid = f"refresh-{self.n}"
        tokens = oauth.Tokens(f"access-{self.n}", self.valid, 4_000_000_000.0, 86400.0)
        during, self.during_call = self.during_call, None
        if during is not None:
            during()
        return tokens


def drop_lock_connection(url: str, name: str) -> None:
    """The server ends the session holding the token lock (the one idle inside a transaction)."""
    (ended,) = pg_sql(
        url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = %s AND state = 'idle in transaction'",
        (f"remixcrm-ctct {name}",),
    )[0]
    assert ended == 1


@pytest.fixture
def hosts(pg_schema, tmp_path, monkeypatch):
    url, name = pg_schema
    authz = RotatingAuthz()
    monkeypatch.setattr(oauth, "refresh", authz.refresh)
    opened = []

    def host(data_dir: str, clock=time.time) -> TokenManager:
        box, tokens, _ = open_store(url, name, tmp_path / data_dir)
        opened.append(box)
        manager = TokenManager(tokens, clock=clock, sleep=lambda s: manager.slept.append(s))
        manager.slept = []
        return manager

    yield url, name, authz, host
    for box in opened:
        box.close()


def test_a_refresh_that_outlives_its_lock_keeps_the_new_pair_and_asks_nobody_to_log_in(hosts):
    url, name, authz, host = hosts
    a, b = host("host-a"), host("host-b")
    outcome_b = []

    def host_b_refreshes_meanwhile():
        drop_lock_connection(url, name)
        try:
            outcome_b.append(b.access_token(SETTINGS))
        except (NeedsReauth, TokenUnavailable) as e:
            outcome_b.append(e)

    authz.during_call = host_b_refreshes_meanwhile
    assert a.access_token(SETTINGS) == "access-1"
    assert authz.invalid_grants == 1  # b spent a's refresh token again: the race happened
    # b was not told to log in again: a valid pair exists
    assert not isinstance(outcome_b[0], NeedsReauth), outcome_b
    # and the pair a received is the stored one, usable by every host
    state = b.store.read()
    assert state.refresh_token == authz.valid == "refresh-1"
    assert state.needs_reauth is None
    assert b.access_token(SETTINGS) == "access-1"


def test_a_refresh_token_spent_by_a_host_that_then_died_still_asks_for_a_login(hosts, monkeypatch):
    url, name, authz, host = hosts
    a, b = host("host-a"), host("host-b")
    outcome_b = []

    def host_a_dies_and_b_refreshes():
        drop_lock_connection(url, name)
        try:
            b.access_token(SETTINGS)
        except (NeedsReauth, TokenUnavailable) as e:
            outcome_b.append(e)
        raise SystemExit  # a is gone before it could store its pair: that pair is lost for good

    authz.during_call = host_a_dies_and_b_refreshes
    with pytest.raises(SystemExit):
        a.access_token(SETTINGS)
    assert isinstance(outcome_b[0], TokenUnavailable)  # a's call might still have been under way
    monkeypatch.setattr(token_manager, "IN_FLIGHT", 0.0)  # ... until it cannot be any more
    with pytest.raises(NeedsReauth):
        b.access_token(SETTINGS)


def test_a_host_whose_clock_runs_ahead_never_makes_another_wait_with_the_lock_held(hosts):
    _, _, authz, host = hosts
    ahead = host("host-a", clock=lambda: time.time() + 3600)  # its clock is an hour fast
    b = host("host-b")
    assert ahead.access_token(SETTINGS) == "access-1"  # its attempt is stamped an hour ahead
    assert b.after_unauthorized(SETTINGS, "access-1") == "access-2"  # a 401 on host b
    assert all(s <= 1.0 for s in b.slept), b.slept  # the one-call-a-second rule waits a second at most


def test_a_frozen_holder_of_the_token_lock_lets_go_within_its_bound(pg_schema, tmp_path, monkeypatch):
    """A process frozen while it holds the token lock (SIGSTOP, a paused VM, a deadlock) keeps its
    connection open: its kernel still answers keepalives. Its transaction must not hold the lock
    for ever, or no host could refresh the token again (every send stops within 24 h)."""
    url, name = pg_schema
    box_a, tokens_a, _ = open_store(url, name, tmp_path / "host-a")
    box_b, tokens_b, _ = open_store(url, name, tmp_path / "host-b")
    try:
        monkeypatch.setattr("remixcrm_plugin_ctct.store.postgres.tokens.LOCK_HOLD", 0.5)
        frozen = tokens_a.lock()
        frozen.__enter__()  # and never leaves: the process froze
        monkeypatch.setattr("remixcrm_plugin_ctct.store.postgres.tokens.LOCK_HOLD", 60.0)
        started = time.monotonic()
        with tokens_b.lock():  # waits at most LOCK_TIMEOUT (60 s) for the lock
            pass
        assert time.monotonic() - started < 30
    finally:
        box_a.close()
        box_b.close()


def test_a_host_refused_as_another_spent_the_token_after_its_lock_was_lost_asks_nobody_to_log_in(hosts, monkeypatch):
    """The other order: a's lock is lost before its request reaches Constant Contact; b takes the
    lock and spends the refresh token first, so a is refused while b's new pair is still on its
    way. b's attempt is in the store when a reads it after the refusal: a must wait for that pair,
    not declare the token dead (an ERROR, every host paused, a login asked for)."""
    url, name, authz, host = hosts
    a, b = host("host-a"), host("host-b")
    a_calling, b_spent, a_done = threading.Event(), threading.Event(), threading.Event()
    real = authz.refresh

    def refresh(token_url, refresh_token, client_id, client_secret):
        if threading.current_thread().name == "host-a":
            a_calling.set()
            assert b_spent.wait(30)  # a's request reaches Constant Contact after b's
            return real(token_url, refresh_token, client_id, client_secret)
        tokens = real(token_url, refresh_token, client_id, client_secret)
        b_spent.set()
        assert a_done.wait(30)  # b's answer is still on its way while a is refused
        return tokens

    monkeypatch.setattr(oauth, "refresh", refresh)
    outcome = {}

    def run(who, manager):
        try:
            outcome[who] = manager.after_unauthorized(SETTINGS, "access-0")
        except (NeedsReauth, TokenUnavailable) as e:
            outcome[who] = e
        finally:
            if who == "host-a":
                a_done.set()

    ta = threading.Thread(target=run, args=("host-a", a), name="host-a")
    ta.start()
    assert a_calling.wait(30)
    drop_lock_connection(url, name)
    tb = threading.Thread(target=run, args=("host-b", b), name="host-b")
    tb.start()
    ta.join(60)
    tb.join(60)
    assert outcome["host-b"] == "access-1"
    assert not isinstance(outcome["host-a"], NeedsReauth), outcome
    state = a.store.read()
    assert state.refresh_token == "refresh-1" and state.needs_reauth is None
