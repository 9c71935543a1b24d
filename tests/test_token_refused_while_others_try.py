"""A refresh token that is dead for good while several processes keep trying it.

A refusal (invalid_grant) is excused as temporary while another process's refresh with the same
token may still be under way: its new pair may be coming. But that excuse must end: a call that
could still bring the pair spent the token *before* our first refusal, so it has answered within
IN_FLIGHT of it. Processes that keep trying in turn (prefork workers, several hosts, each event
a new attempt) each see the other's attempt as "recent", and without a bound nobody ever says the
token is dead: no "needs re-authorisation", and the events die after max_age_hours instead.
"""

import types

from conftest import REFRESHABLE

from remixcrm_plugin_ctct.ctct import oauth, token_manager
from remixcrm_plugin_ctct.ctct.token_manager import NeedsReauth, TokenManager, TokenUnavailable
from remixcrm_plugin_ctct.store.tokens import TokenStore

SETTINGS = REFRESHABLE


def test_a_dead_refresh_token_is_declared_dead_even_while_processes_keep_trying_in_turn(tmp_path, monkeypatch):
    now = [1_000_000.0]
    clock = lambda: now[0]  # noqa: E731
    monkeypatch.setattr(token_manager, "time", types.SimpleNamespace(time=clock, monotonic=clock))

    def advance(seconds: float) -> None:
        now[0] += seconds

    def refused(token_url, refresh_token, client_id, client_secret):
        advance(0.2)
        raise oauth.OAuthError("invalid_grant", "The refresh token is invalid or expired.", 400)

    monkeypatch.setattr(oauth, "refresh", refused)
    store = tmp_path / "tokens"
    died, a, b = (TokenManager(TokenStore(store), clock=clock, sleep=advance) for _ in range(3))

    def spent_and_died(*_):
        advance(0.2)
        raise SystemExit  # a process spent refresh-0 and died before it could store the new pair

    monkeypatch.setattr(oauth, "refresh", spent_and_died)
    try:
        died.after_unauthorized(SETTINGS, "access-0")
    except SystemExit:
        pass
    monkeypatch.setattr(oauth, "refresh", refused)
    outcomes = []
    for turn in range(40):  # two live processes take turns, one attempt every 3 s: two minutes
        advance(3.0)
        try:
            (a if turn % 2 else b).after_unauthorized(SETTINGS, "access-0")
        except (NeedsReauth, TokenUnavailable) as e:
            outcomes.append((now[0], e))
    started = outcomes[0][0]
    # excused at first (the dead process's call might have been under way), but not for ever
    assert isinstance(outcomes[0][1], TokenUnavailable)
    assert any(isinstance(e, NeedsReauth) for _, e in outcomes), [type(e).__name__ for _, e in outcomes]
    first = next(at for at, e in outcomes if isinstance(e, NeedsReauth))
    assert first - started <= token_manager.IN_FLIGHT + 10
