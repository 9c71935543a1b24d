"""``remixcrm-ctct login``: get a token pair from Constant Contact and keep it in the token store.

Two flows, neither needs the app's secret:
- Device Authorization (default): prints a URL and a code to enter on any device — works on a
  headless server.
- Authorization Code with PKCE (``--browser``): opens the browser, receives the code on a
  loopback redirect ``http://127.0.0.1:<port>/callback`` and checks ``state``.
Tokens go to the token store, never to the screen; the expiry is printed.
"""

import secrets
import threading
import time
import webbrowser
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qsl, urlsplit

from ..config import Settings
from ..ctct import oauth
from ..ctct.token_manager import TokenManager, describe_expiry

CALLBACK_TIMEOUT = 300.0  # seconds to wait for the browser
Say = Callable[[str], None]  # prints one line for the admin


def device_login(
    manager: TokenManager, settings: Settings, say: Say, sleep: Callable[[float], None] | None = None
) -> float | None:
    client_id = _client_id(settings)
    start = oauth.device_authorize(settings.token_url, client_id)
    say(f"To connect RemixCRM to Constant Contact, open {start['verification_uri']}")
    say(f"and enter the code {start['user_code']}")
    if start.get("verification_uri_complete"):
        say(f"(or open {start['verification_uri_complete']})")
    say("waiting for approval…")
    tokens = oauth.poll_device_token(settings.token_url, client_id, start, sleep=sleep or time.sleep)
    return manager.save_login(settings, tokens).expires_at


def browser_login(
    manager: TokenManager, settings: Settings, say: Say, port: int = 0, open_browser: bool = True
) -> float | None:
    client_id = _client_id(settings)
    verifier, challenge = oauth.pkce_pair()
    state = secrets.token_urlsafe(24)
    received: dict = {}
    done = threading.Event()

    class Callback(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/callback":
                self.send_error(404)
                return
            received.update(parse_qsl(url.query))
            ok = received.get("state") == state and "code" in received
            self.send_response(200 if ok else 400)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.end_headers()
            self.wfile.write(b"Logged in: you can close this tab." if ok else b"Login failed: see the terminal.")
            done.set()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", port), Callback)
    redirect_uri = f"http://127.0.0.1:{server.server_address[1]}/callback"
    url = oauth.authorize_url(settings.token_url, client_id, redirect_uri, state, challenge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        say(f"redirect URI (register it in your Constant Contact app): {redirect_uri}")
        say(f"open this URL to log in: {url}")
        if open_browser:
            webbrowser.open(url)
        if not done.wait(CALLBACK_TIMEOUT):
            raise oauth.OAuthError("timeout", f"no answer on {redirect_uri} within {CALLBACK_TIMEOUT:.0f} s")
    finally:
        server.shutdown()
        server.server_close()
    if received.get("state") != state:
        raise oauth.OAuthError("invalid_state", "the answer's state does not match: the login was not started here")
    if "error" in received:
        raise oauth.OAuthError(received["error"], received.get("error_description", ""))
    tokens = oauth.exchange_code(
        settings.token_url, client_id, received["code"], redirect_uri, verifier, settings.client_secret
    )
    return manager.save_login(settings, tokens).expires_at


def _client_id(settings: Settings) -> str:
    # `remixcrm-ctct login` refuses to start without one; this keeps the flows honest if called otherwise
    if not settings.client_id:
        raise oauth.OAuthError("invalid_client", "no client_id: set it in config.toml, or pass --client-id")
    return settings.client_id


def report(say: Say, expires_at: float | None) -> None:
    say(f"logged in; the access token expires at {describe_expiry(expires_at)} and is refreshed automatically")
