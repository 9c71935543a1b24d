"""The sandbox's authorization server: tokens that expire, refresh tokens that rotate.

Behaves as Constant Contact's documents say: access tokens live ``access_lifetime`` seconds
(24 h by default); a *rotating* app gets a new refresh token on every refresh and every earlier
one stops working; a *long-lived* app gets the same one back. Refusals use the OAuth error
body ``{"error": …, "error_description": …}``. Logins (device and PKCE) are approved without a
human: a device code once its verification page is opened (or on the second poll, with
``auto_approve_device``), an authorize request at once. The token endpoint takes at most
``token_rate_limit`` requests a second (1 by default, strict: the plugin spaces token calls by
>= 1 s) and answers 429 beyond it, in the Okta-style body its ``/oauth2/default/v1`` paths suggest
([INFER]: Constant Contact documents no body for it, and a client must not rely on ``error``).
"""

import base64
import hashlib
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import urlencode

SANDBOX_CLIENT_ID = "sandbox-client-id"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TOKEN_THROTTLED = {"errorCode": "E0000047", "errorSummary": "API call exceeded rate limit due to too many requests."}


class AuthServer:
    def __init__(
        self,
        access_lifetime: float = 86400,
        rotating: bool = True,
        client_id: str = SANDBOX_CLIENT_ID,
        client_secret: str | None = None,
        auto_approve_device: bool = True,
        device_interval: float = 1,
        scope: str = "contact_data offline_access",
        clock: Callable[[], float] = time.time,
        token_rate_limit: float | None = 1,
        rate_clock: Callable[[], float] = time.monotonic,
    ):
        self.access_lifetime, self.rotating = access_lifetime, rotating
        self.client_id, self.client_secret = client_id, client_secret
        self.auto_approve_device, self.device_interval, self.clock = auto_approve_device, device_interval, clock
        self.scope = scope  # what new tokens are granted (drop contact_data to test a missing scope)
        self.access_tokens: dict[str, float] = {}  # token -> expires_at
        self.token_scopes: dict[str, set] = {}  # token -> its scopes
        self.refresh_tokens: set[str] = set()  # the ones that still work
        self.device_codes: dict[str, dict] = {}
        self.auth_codes: dict[str, dict] = {}
        self.token_calls = 0  # grant_type=refresh_token calls
        self.invalid_grants = 0
        self.token_rate_limit, self.rate_clock = token_rate_limit, rate_clock
        self.token_throttled = 0  # token requests answered 429
        self._token_arrivals: deque = deque()
        self._lock = threading.Lock()

    def seed(self, expired: bool = False) -> dict:
        """A token pair as if an admin had just logged in (``expired``: its access token is dead)."""
        with self._lock:
            issued = self._issue_locked()
            if expired:
                self.access_tokens[issued["access_token"]] = self.clock() - 1
                issued["expires_in"] = -1
        return issued

    def access_ok(self, token: str | None) -> bool:
        with self._lock:
            expires = self.access_tokens.get(token or "")
            return expires is not None and expires > self.clock()

    def has_scope(self, token: str | None, scope: str) -> bool:
        with self._lock:
            return scope in self.token_scopes.get(token or "", {scope})  # unknown (static) tokens: all scopes

    def revoke_refresh_tokens(self) -> None:
        """As if the admin revoked the app: every refresh now answers invalid_grant."""
        with self._lock:
            self.refresh_tokens.clear()

    def expire_all_access_tokens(self) -> None:
        with self._lock:
            for token in self.access_tokens:
                self.access_tokens[token] = self.clock() - 1

    def _issue_locked(self) -> dict:
        access = f"sbx-at-{secrets.token_urlsafe(16)}"
        self.access_tokens[access] = self.clock() + self.access_lifetime
        self.token_scopes[access] = set(self.scope.split())
        if self.rotating or not self.refresh_tokens:
            refresh = f"sbx-rt-{secrets.token_urlsafe(16)}"
            if self.rotating:
                self.refresh_tokens.clear()  # "causes all previous refresh tokens to expire"
            self.refresh_tokens.add(refresh)
        else:
            refresh = next(iter(self.refresh_tokens))
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_lifetime,
            "refresh_token": refresh,
            "scope": self.scope,
        }

    # --- endpoints: each returns (status, body) ---
    def token(self, form: dict, basic: tuple[str, str] | None) -> tuple[int, dict]:
        if self._token_throttled():
            return 429, TOKEN_THROTTLED
        client_id = basic[0] if basic else form.get("client_id")
        if client_id != self.client_id or (self.client_secret and (not basic or basic[1] != self.client_secret)):
            return 401, {"error": "invalid_client", "error_description": "Client authentication failed."}
        grant = form.get("grant_type")
        with self._lock:
            if grant == "refresh_token":
                self.token_calls += 1
                if form.get("refresh_token") not in self.refresh_tokens:
                    self.invalid_grants += 1
                    return 400, {
                        "error": "invalid_grant",
                        "error_description": "The refresh token is invalid or expired.",
                    }
                return 200, self._issue_locked()
            if grant == "authorization_code":
                return self._code_grant(form)
            if grant == DEVICE_GRANT:
                return self._device_grant(form)
        return 400, {"error": "unsupported_grant_type", "error_description": f"grant_type {grant!r} is not supported"}

    def _token_throttled(self) -> bool:
        if self.token_rate_limit is None:
            return False
        with self._lock:
            now = self.rate_clock()
            while self._token_arrivals and now - self._token_arrivals[0] >= 1.0:
                self._token_arrivals.popleft()
            if len(self._token_arrivals) >= self.token_rate_limit:
                self.token_throttled += 1
                return True
            self._token_arrivals.append(now)
            return False

    def device_authorize(self, form: dict, base_url: str) -> tuple[int, dict]:
        if form.get("client_id") != self.client_id:
            return 401, {"error": "invalid_client", "error_description": "Client authentication failed."}
        device_code, user_code = secrets.token_urlsafe(24), secrets.token_hex(4).upper()
        with self._lock:
            self.device_codes[device_code] = {
                "user_code": user_code,
                "approved": False,
                "polls": 0,
                "expires_at": self.clock() + 600,
            }
        verify = f"{base_url}/device"
        return 200, {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": verify,
            "verification_uri_complete": f"{verify}?user_code={user_code}",
            "expires_in": 600,
            "interval": self.device_interval,
        }

    def approve_device(self, user_code: str) -> bool:
        with self._lock:
            for entry in self.device_codes.values():
                if entry["user_code"] == user_code:
                    entry["approved"] = True
                    return True
        return False

    def _device_grant(self, form: dict) -> tuple[int, dict]:
        entry = self.device_codes.get(form.get("device_code", ""))
        if entry is None or entry["expires_at"] < self.clock():
            return 400, {"error": "expired_token", "error_description": "The device code has expired."}
        entry["polls"] += 1
        if self.auto_approve_device and entry["polls"] >= 2:
            entry["approved"] = True
        if not entry["approved"]:
            return 400, {"error": "authorization_pending", "error_description": "The user has not yet approved."}
        del self.device_codes[form["device_code"]]
        return 200, self._issue_locked()

    def authorize(self, query: dict) -> tuple[int, str]:
        """Approves at once; returns (302, redirect location) or (400, message)."""
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            return 400, "unknown client_id or response_type"
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return 400, "PKCE with S256 is required"
        code = secrets.token_urlsafe(24)
        with self._lock:
            self.auth_codes[code] = {
                "redirect_uri": query.get("redirect_uri"),
                "challenge": query["code_challenge"],
                "expires_at": self.clock() + 300,
            }
        return 302, f"{query.get('redirect_uri')}?{urlencode({'code': code, 'state': query.get('state', '')})}"

    def _code_grant(self, form: dict) -> tuple[int, dict]:
        entry = self.auth_codes.pop(form.get("code", ""), None)  # single-use, as documented
        if entry is None or entry["expires_at"] < self.clock() or entry["redirect_uri"] != form.get("redirect_uri"):
            return 400, {"error": "invalid_grant", "error_description": "The authorization code is invalid or expired."}
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != entry["challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed."}
        return 200, self._issue_locked()
