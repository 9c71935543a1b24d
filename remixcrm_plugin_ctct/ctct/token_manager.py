"""Which access token to send now, and refreshing it without ever burning a refresh token.

Rules (Constant Contact access tokens last 24 h; rotating refresh tokens are single-use and
every refresh expires all earlier ones):
- refresh before sending when the expiry is unknown or near; refresh once after a 401;
- one refresh at a time across threads *and* processes: take the lock, re-read the store, and
  use another process's fresh token instead of calling the endpoint again;
- save the new pair before using the new access token; at most one token call per second;
- ``invalid_grant`` (or any other refusal) means "needs re-authorisation": one ERROR with the
  fix, and no more token calls until the config's tokens or the store change.
"""

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable

from .. import forksafe
from ..config import Settings
from ..store.interfaces import TokenConflict, TokenStore
from ..store.tokens import TokenState, fingerprint
from . import client, oauth

log = logging.getLogger("remixcrm_plugin_ctct")

PROACTIVE_MARGIN = 300.0  # refresh when the token expires within 5 minutes
MIN_REFRESH_INTERVAL = 1.0  # never more than one token-endpoint call per second
# the longest another holder's token call can be out: its lock may be lost meanwhile (its
# connection dropped), and a refresh token it spent is then refused to us while its pair is coming
IN_FLIGHT = client.CONNECT_TIMEOUT + client.READ_TIMEOUT + 5.0
REAUTH_FIX = (
    "run `remixcrm-ctct login`, or paste a new access and refresh token in Settings → Integrations → Email Marketing"
)


class NeedsReauth(Exception):
    """No usable token and no way to get one without a human."""


class TokenUnavailable(Exception):
    """The token endpoint could not be reached or failed; worth trying again later."""


def describe_expiry(expires_at: float | None) -> str:
    """When a token expires, for people. Any number is described, never raised on: the expiry
    comes from a token response or a hand-edited config (year 10000, inf and nan have been seen)."""
    if (
        expires_at is None
        or isinstance(expires_at, bool)
        or not isinstance(expires_at, (int, float))
        or not math.isfinite(expires_at)
    ):
        return "an unknown time"
    try:
        when = dt.datetime.fromtimestamp(expires_at, dt.UTC).replace(microsecond=0)
    except (OverflowError, ValueError, OSError):
        return f"an impossible time ({expires_at:.0f} s after 1970, outside the years 1 to 9999)"
    return f"{when.isoformat().replace('+00:00', 'Z')} (in {_duration(expires_at - time.time())})"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "an unknown time"
    if seconds < 0:
        return "the past"
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, rest = divmod(seconds, 3600)
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"


class TokenManager:
    def __init__(
        self,
        store: TokenStore,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.store, self._clock, self._sleep = store, clock, sleep
        self._lock = threading.Lock()
        self._announced: str | None = None
        self._my_call = 0.0  # the last refresh attempt this process recorded in the store
        self._foreign: tuple[float, float] = (0.0, float("-inf"))  # another's attempt, when first seen here
        self._refused: tuple[str, float] = ("", float("-inf"))  # a refresh token refused, when first (monotonic)
        forksafe.after_fork_in_child(self._after_fork)

    def __repr__(self) -> str:
        return f"TokenManager({self.store!r})"

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held it at fork time

    # --- what delivery calls ---
    def access_token(self, settings: Settings) -> str:
        """A token good for the next call; refreshes first when the expiry is unknown or near."""
        state = self.state(settings)
        self._check_reauth(state, settings)
        if state.access_token and self._fresh(state):
            return state.access_token
        return self.refresh(settings, stale=state.access_token)

    def after_unauthorized(self, settings: Settings, rejected: str) -> str:
        """The API said 401 to ``rejected``: a newer token from the store, or a refresh."""
        return self.refresh(settings, stale=rejected)

    def refresh(self, settings: Settings, stale: str | None = None, force: bool = False) -> str:
        """Refresh under the cross-process lock, unless someone already did. Returns the token."""
        with self._lock, self.store.lock():
            state = self.store.read()
            if state is None or state.seeded_from != _seed(settings):
                state = self._seed_locked(settings, state)
            if not force:  # an admin's explicit `remixcrm-ctct refresh` may try a dead token once more
                self._check_reauth(state, settings)
            if not force and state.access_token and state.access_token != stale and self._fresh(state):
                return state.access_token  # another thread or process refreshed meanwhile
            refresh_token = state.refresh_token
            if not refresh_token or not settings.client_id:
                missing = "refresh_token" if not refresh_token else "client_id"
                raise self._reauth(f"the access token is expired or unknown and there is no {missing} to refresh it")
            if state.last_refresh_call not in (0.0, self._my_call, self._foreign[0]):
                # another process's attempt: maybe still out if it is recent (its clock, not ours:
                # the window is counted from when we first saw it, so a skewed clock cannot stretch it)
                recent = self._clock() - state.last_refresh_call < IN_FLIGHT
                self._foreign = (state.last_refresh_call, time.monotonic() if recent else float("-inf"))
            # at most one interval: the last attempt may carry another host's clock, running ahead
            wait = min(MIN_REFRESH_INTERVAL, state.last_refresh_call + MIN_REFRESH_INTERVAL - self._clock())
            if wait > 0:
                self._sleep(wait)
            state = state.with_(last_refresh_call=self._clock())
            self.store.write(state)  # the attempt counts even if this process dies mid-call
            self._my_call = state.last_refresh_call
            try:
                tokens = oauth.refresh(settings.token_url, refresh_token, settings.client_id, settings.client_secret)
            except oauth.OAuthError as e:
                if e.transient:
                    raise TokenUnavailable(f"token refresh failed: {e}") from None
                latest = self.store.read()  # rotated by someone who did not take the lock (a login)?
                if latest and latest.refresh_token != refresh_token and latest.access_token:
                    return latest.access_token
                if latest and latest.last_refresh_call not in (0.0, self._my_call, self._foreign[0]):
                    # another process's attempt stamped after ours (our lock was lost before our
                    # request arrived): it may have spent the token first, its pair still coming
                    self._foreign = (latest.last_refresh_call, time.monotonic())
                if time.monotonic() < self._foreign[1] + IN_FLIGHT and self._excused(refresh_token):
                    # another host's call with this refresh token may still be out (its lock was lost
                    # mid-call): its new pair is coming; declaring it dead would ask for a needless login
                    raise TokenUnavailable(
                        f"token refresh refused ({e.error}) while another process's refresh may still be under way"
                    ) from None
                reason = f"Constant Contact refused the refresh token ({e})"
                try:
                    self.store.write(state.with_(needs_reauth=reason, reauth_credentials=_credentials(settings, state)))
                except TokenConflict:
                    latest = self.store.read()
                    if latest and latest.refresh_token != refresh_token and latest.access_token:
                        return latest.access_token  # a new pair landed meanwhile
                raise self._reauth(reason) from None
            new = state.with_(
                access_token=tokens.access_token,
                refresh_token=tokens.refresh_token or refresh_token,
                expires_at=tokens.expires_at,
                lifetime=tokens.lifetime,
                needs_reauth=None,
                reauth_credentials="",
            )
            kept = self._keep(new, refresh_token)  # saved before the new access token is used
        self._announced = None
        if kept is not new:
            return kept.access_token or tokens.access_token
        log.info("access token refreshed; it expires at %s", describe_expiry(new.expires_at))
        return tokens.access_token

    def _excused(self, refresh_token: str) -> bool:
        """Whether a refusal of ``refresh_token`` may still be temporary: for IN_FLIGHT from its
        *first* refusal here. A call that could bring the new pair spent the token before that
        refusal, so it has answered by then; counted from each new attempt of another process
        instead, processes trying in turn would excuse each other for ever, and nobody would say
        the token is dead (no login asked for; the events die after max_age_hours)."""
        mark, now = fingerprint(refresh_token), time.monotonic()
        if self._refused[0] != mark:
            self._refused = (mark, now)
        return now < self._refused[1] + IN_FLIGHT

    def _keep(self, new: TokenState, spent: str) -> TokenState:
        """Store the pair a refresh with ``spent`` returned: never lose a rotated pair. If another
        process wrote meanwhile (its refresh overlapped ours when our lock was lost), ours still wins
        unless the store now holds a different refresh token (a login, a pair pasted in Settings)."""
        for _ in range(5):
            try:
                self.store.write(new)
                return new
            except TokenConflict:
                latest = self.store.read()
                if latest is not None and latest.refresh_token not in (spent, new.refresh_token):
                    return latest
                if latest is not None:  # keep the newest attempt time: the one-call-a-second rule
                    new = new.with_(last_refresh_call=max(new.last_refresh_call, latest.last_refresh_call))
        self.store.write(new)  # still changing: one last try, raising TokenConflict if it fails
        return new

    def save_login(self, settings: Settings, tokens: oauth.Tokens) -> TokenState:
        """Store the tokens a login produced; they win over the config's current pair."""
        with self._lock, self.store.lock():
            old = self.store.read() or TokenState()
            state = TokenState(
                tokens.access_token,
                tokens.refresh_token,
                tokens.expires_at,
                tokens.lifetime,
                seeded_from=_seed(settings),
                last_refresh_call=old.last_refresh_call,
            )
            self.store.write(state)
        self._announced = None
        return state

    def state(self, settings: Settings) -> TokenState:
        """The current state (seeded from the config if needed), for status and check."""
        state = self.store.read()
        if state is not None and state.seeded_from == _seed(settings):
            return state
        try:
            return self._reseed(settings)
        except OSError:  # the data dir takes no writes (full, read-only): the config's tokens, unsaved
            expires = settings.token_expires_at.timestamp() if settings.token_expires_at else None
            return TokenState(settings.access_token, settings.refresh_token, expires, None, seeded_from=_seed(settings))

    # --- helpers ---
    def _fresh(self, state: TokenState) -> bool:
        if not state.access_token or state.expires_at is None:
            return False
        # a quarter of the lifetime for short-lived tokens (sandbox, tests), else 5 minutes
        margin = min(PROACTIVE_MARGIN, state.lifetime / 4) if state.lifetime else PROACTIVE_MARGIN
        return state.expires_at - self._clock() > margin

    def _reseed(self, settings: Settings) -> TokenState:
        with self._lock, self.store.lock():
            return self._seed_locked(settings, self.store.read())

    def _seed_locked(self, settings: Settings, current: TokenState | None) -> TokenState:
        seed = _seed(settings)
        if current is not None and current.seeded_from == seed:
            return current  # another process seeded it while we waited for the lock
        if current is not None and not (settings.access_token or settings.refresh_token):
            state = current.with_(seeded_from=seed)  # config holds no tokens (a login-only setup): keep ours
            self.store.write(state)
            return state
        expires = settings.token_expires_at.timestamp() if settings.token_expires_at else None
        state = TokenState(
            settings.access_token,
            settings.refresh_token,
            expires,
            None,
            seeded_from=seed,
            last_refresh_call=current.last_refresh_call if current else 0.0,
        )
        self.store.write(state)
        if current is not None:
            log.info("new tokens found in the config (pasted in Settings); they replace the stored ones")
        return state

    def _check_reauth(self, state: TokenState, settings: Settings) -> None:
        if not state.access_token and not state.refresh_token:
            raise self._reauth("there is no access token")
        if state.needs_reauth and state.reauth_credentials == _credentials(settings, state):
            raise self._reauth(state.needs_reauth)

    def _reauth(self, reason: str) -> NeedsReauth:
        if self._announced != reason:  # one ERROR per cause, not one per send
            self._announced = reason
            log.error("constant contact needs re-authorisation: %s. Fix: %s", reason, REAUTH_FIX)
        return NeedsReauth(f"{reason}; {REAUTH_FIX}")


def _seed(settings: Settings) -> str:
    return fingerprint(settings.access_token, settings.refresh_token)


def _credentials(settings: Settings, state: TokenState) -> str:
    return fingerprint(state.refresh_token, settings.client_id, settings.client_secret)
