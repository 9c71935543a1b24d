"""Calls to Constant Contact's OAuth2 authorization server (``authz.constantcontact.com``).

Form bodies (RFC 6749), HTTP Basic ``client_id:client_secret`` when the app has a secret, else
``client_id`` in the body (PKCE and device apps have none). Errors carry the server's ``error``
code and description, never a token.
"""

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from .. import forksafe
from . import client, redact

SCOPES = "contact_data offline_access"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
EPOCH_THRESHOLD = 1e9  # an expires_in above this is an epoch time, not a duration


class OAuthError(Exception):
    """The token endpoint said no (``error``), or could not be reached (``transient``)."""

    def __init__(self, error: str, description: str = "", status: int | None = None):
        # the server's words (or a redirect's query), redacted once: they are logged and stored
        error, description = redact.upstream_text(error, 100), redact.upstream_text(description)
        self.error, self.description, self.status = error, description, status
        super().__init__(f"{error}: {description}" if description else error)

    @property
    def transient(self) -> bool:
        return (
            self.status is None or self.status >= 500 or self.status == 429 or self.error == "temporarily_unavailable"
        )


@dataclass(frozen=True)
class Tokens:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: float | None  # epoch seconds
    lifetime: float | None  # seconds


def endpoint(token_url: str, name: str) -> str:
    """``…/v1/token`` → ``…/v1/<name>``: the other endpoints live beside the token endpoint
    (so a sandbox ``token_url`` moves all of them)."""
    return token_url.rsplit("/", 1)[0] + "/" + name


def parse_tokens(body: dict, now: float | None = None) -> Tokens:
    """Read a token response. ``expires_in`` is a duration per RFC 6749, but Constant Contact's
    own SDK spec calls it an epoch time: a value above 10⁹ is taken as one. Without it, the
    JWT's ``exp`` claim is used, else the expiry is unknown (and refreshed before use)."""
    now = time.time() if now is None else now
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise OAuthError("invalid_response", "the token response has no access_token")
    raw = body.get("expires_in")
    try:
        seconds = float(raw) if raw is not None else None
    except (TypeError, ValueError):
        seconds = None
    if seconds is None:
        expires_at = _jwt_exp(access)
    elif seconds > EPOCH_THRESHOLD:
        expires_at = seconds
    else:
        expires_at = now + seconds
    lifetime = None if expires_at is None else max(0.0, expires_at - now)
    return Tokens(access, body.get("refresh_token") or None, expires_at, lifetime)


def _jwt_exp(token: str) -> float | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return float(claims["exp"])
    except (ValueError, KeyError, TypeError):
        return None


def token_request(url: str, data: dict, client_id: str | None, client_secret: str | None = None) -> dict:
    """POST a form to an authorization-server endpoint; the JSON answer, or OAuthError."""
    requests = forksafe.load_module("requests")  # lazy (cheap plugin import), never torn by a fork

    data = dict(data)
    auth = None
    if client_secret:
        auth = (client_id or "", client_secret)
    elif client_id:
        data["client_id"] = client_id
    redact.guard_urllib3()
    try:
        response = client.session().post(
            url,
            data=data,
            auth=auth,
            headers={"Accept": "application/json"},
            timeout=(client.CONNECT_TIMEOUT, client.READ_TIMEOUT),
        )
    except requests.RequestException as e:
        raise OAuthError("connection_error", f"cannot reach {url} ({type(e).__name__})") from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 400 or not isinstance(body, dict) or "error" in body:
        body = body if isinstance(body, dict) else {}
        raise OAuthError(
            str(body.get("error") or f"http_{response.status_code}"),
            str(body.get("error_description") or ""),
            response.status_code,
        )
    return body


def refresh(token_url: str, refresh_token: str, client_id: str | None, client_secret: str | None) -> Tokens:
    body = token_request(
        token_url, {"grant_type": "refresh_token", "refresh_token": refresh_token}, client_id, client_secret
    )
    return parse_tokens(body)


# --- Device Authorization flow (RFC 8628): works on a headless server ---


def device_authorize(token_url: str, client_id: str, scope: str = SCOPES) -> dict:
    return token_request(endpoint(token_url, "device/authorize"), {"scope": scope}, client_id)


def poll_device_token(
    token_url: str,
    client_id: str,
    start: dict,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Tokens:
    """Poll until the user approved; honours authorization_pending and slow_down (+5 s)."""
    interval = float(start["interval"]) if start.get("interval") is not None else 5.0  # RFC 8628's default
    deadline = clock() + float(start.get("expires_in") or 600)
    while True:
        sleep(interval)
        if clock() > deadline:
            raise OAuthError("expired_token", "the code expired before it was approved; run login again")
        try:
            body = token_request(
                token_url, {"grant_type": DEVICE_GRANT, "device_code": start["device_code"]}, client_id
            )
        except OAuthError as e:
            if e.error == "authorization_pending":
                continue
            if e.error == "slow_down":
                interval += 5
                continue
            raise
        return parse_tokens(body)


# --- Authorization Code with PKCE (RFC 7636) ---


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(64)[:96]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_url(
    token_url: str, client_id: str, redirect_uri: str, state: str, challenge: str, scope: str = SCOPES
) -> str:
    query = urlencode(
        {
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": scope,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    return f"{endpoint(token_url, 'authorize')}?{query}"


def exchange_code(
    token_url: str, client_id: str, code: str, redirect_uri: str, verifier: str, client_secret: str | None = None
) -> Tokens:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, "code_verifier": verifier}
    return parse_tokens(token_request(token_url, data, client_id, client_secret))
