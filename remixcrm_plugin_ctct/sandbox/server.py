"""The sandbox's HTTP face: Constant Contact's API under ``/v3`` and its authorization server
under ``/oauth2/default/v1``, on a loopback port, with a ``hang`` switch for an API that never
answers. Standard library only (``http.server``): nothing to install for the demo.
"""

import base64
import json
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from . import admin_calls
from .activities import Imports
from .authz import AuthServer
from .contacts import ContactsApi
from .faults import Faults
from .list_activities import create_removal
from .seen import RequestLog

SEEDED_TOKEN = "sandbox-access-token"  # a static token that never expires (tests, benchmarks)
OAUTH_PREFIX = "/oauth2/default/v1"
_UNAUTHORIZED = {"error_key": "unauthorized", "error_message": "Unauthorized"}
_NO_SCOPE = [{"error_key": "forbidden", "error_message": "The token does not have the contact_data scope"}]
_NOT_JSON = [{"error_key": "unsupported_media_type", "error_message": "Content-Type must be application/json"}]
_IMPORT_PATH = "/v3/activities/contacts_json_import"
_REMOVE_PATH = "/v3/activities/remove_list_memberships"
# GET /account/user/privileges in the spec's UserPrivilegesResource shape (ids are the sandbox's own)
PRIVILEGES = [
    {"privilege_id": n, "privilege_name": name}
    for n, name in enumerate(("contacts:read", "contacts:write", "contacts:lists:read"), start=1)
]


class Sandbox:
    """``with Sandbox() as sb:`` serves on ``sb.api_base_url`` / ``sb.token_url`` until the block ends.

    ``confirmed_opt_in``: the account's Confirmed Opt-In is on (sign_up_form makes new contacts
    ``pending_confirmation``). ``lowercase_lookups`` (on by default): ``GET /contacts?email=``
    matches only the stored lower-case address. ``import_polls_to_complete``: the ``GET
    /activities/{id}`` poll on which an import completes. ``token_rate_limit`` (1/s) and the rest
    go to the authorization server."""

    def __init__(
        self,
        access_token: str | None = SEEDED_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        confirmed_opt_in: bool = False,
        lowercase_lookups: bool = True,
        import_polls_to_complete: int = 2,
        **authz_options,
    ):
        self.static_token = access_token
        self.api = ContactsApi(confirmed_opt_in=confirmed_opt_in, lowercase_lookups=lowercase_lookups)
        self.authz = AuthServer(**authz_options)
        self.faults = Faults()
        self.imports = Imports(self.api, self.faults, polls_to_complete=import_polls_to_complete)
        self.hang = threading.Event()  # set: accept requests, never answer (until stop)
        self.unauthorized = 0  # 401s answered by the API
        self.calls: list[dict] = []  # every sign_up_form call: email, start, end, status (for overlap checks)
        self.seen = RequestLog()  # every request, whatever its path or method (seen.py: reversible writes only)
        self._calls_lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True

    @property
    def base_url(self) -> str:
        host, port = self._server.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def api_base_url(self) -> str:
        return f"{self.base_url}/v3"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}{OAUTH_PREFIX}/token"

    def start(self) -> "Sandbox":
        # a short poll interval: stop() waits for the loop to notice, and tests stop many sandboxes
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="ctct-sandbox", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def members(self, list_id: str | None = None) -> list[dict]:
        return self.api.members(list_id) if list_id else self.api.members()

    def token_ok(self, token: str | None) -> bool:
        return (self.static_token is not None and token == self.static_token) or self.authz.access_ok(token)


def _handler(sandbox: Sandbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

        def log_message(self, *args: object) -> None:  # quiet: the demo prints its own view
            pass

        def date_time_string(self, timestamp: float | None = None) -> str:
            # the Date header by the sandbox's clock (tests replace it), as Constant Contact's by its own
            return formatdate(sandbox.api.clock() if timestamp is None else timestamp, usegmt=True)

        def _reply(self, status: int, body, headers: dict | None = None) -> None:
            data = json.dumps(body).encode() if not isinstance(body, bytes) else body
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if not isinstance(body, bytes) else "text/html")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _bearer_ok(self) -> bool:
            auth = self.headers.get("Authorization") or ""
            if auth.startswith("Bearer ") and sandbox.token_ok(auth[7:]):
                return True
            sandbox.unauthorized += 1
            self._reply(401, _UNAUTHORIZED, {"WWW-Authenticate": "Bearer realm=api.cc.email"})
            return False

        def _basic(self) -> tuple[str, str] | None:
            auth = self.headers.get("Authorization") or ""
            if not auth.startswith("Basic "):
                return None
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            return user, password

        def _hanging(self) -> bool:
            if sandbox.hang.is_set():
                sandbox._stopping.wait()
                return True
            return False

        def _fault(self) -> bool:
            """Apply the rate limits and injected faults; True when the call was answered."""
            fate = sandbox.faults.decide()
            if sandbox.faults.latency:
                time.sleep(sandbox.faults.latency)  # the simulated network, not synchronisation
            if fate[0] == "ok":
                return False
            if fate[0] == "hang":
                sandbox._stopping.wait()
            elif fate[0] == "drop":
                self.close_connection = True  # closed with no answer: the client sees a reset
            else:
                self._reply(fate[1], fate[2])
            return True

        def do_POST(self) -> None:
            raw = self._body()
            sandbox.seen.add("POST", self.path, raw)
            if self._hanging():
                return
            url = urlsplit(self.path)
            if url.path == "/sandbox/faults":  # the admin switch, for hosts in other processes
                sandbox.faults.configure(json.loads(raw or b"{}"))
                return self._reply(200, {"ok": True})
            if url.path == "/sandbox/unsubscribe":  # the person clicks "unsubscribe" (other processes, scripts)
                return self._reply(*admin_calls.unsubscribe(sandbox.api, raw))
            if url.path == "/sandbox/custom_fields":  # as an admin creates one in Settings → Custom Fields
                wanted = json.loads(raw or b"{}")
                return self._reply(
                    201, sandbox.api.seed_custom_field(str(wanted["label"]), wanted.get("type", "string"))
                )
            if url.path.startswith(OAUTH_PREFIX):
                form = dict(parse_qsl(raw.decode()))
                form.update(parse_qsl(url.query))  # Constant Contact's own examples use the query string
                if url.path == f"{OAUTH_PREFIX}/token":
                    return self._reply(*sandbox.authz.token(form, self._basic()))
                if url.path == f"{OAUTH_PREFIX}/device/authorize":
                    return self._reply(*sandbox.authz.device_authorize(form, sandbox.base_url + OAUTH_PREFIX))
                return self._reply(404, {"error": "not_found", "error_description": "no such endpoint"})
            if url.path not in ("/v3/contacts/sign_up_form", _IMPORT_PATH, _REMOVE_PATH):
                return self._reply(404, [{"error_key": "not_found", "error_message": "no such endpoint"}])
            started = time.monotonic()
            if self._fault() or not self._bearer_ok():
                return
            if not sandbox.authz.has_scope(self._token(), "contact_data"):
                return self._reply(403, _NO_SCOPE)
            if not (self.headers.get("Content-Type") or "").startswith("application/json"):
                return self._reply(415, _NOT_JSON)
            if url.path == _IMPORT_PATH:
                return self._reply(*sandbox.imports.create(raw))
            if url.path == _REMOVE_PATH:
                return self._reply(*create_removal(raw, sandbox.api, sandbox.imports.add))
            try:
                body = json.loads(raw)
            except ValueError:
                return self._reply(400, [{"error_key": "json.parse.error", "error_message": "malformed JSON"}])
            status, answer = sandbox.api.sign_up(body)
            with sandbox._calls_lock:
                email = str(body.get("email_address", "")).lower()
                sandbox.calls.append({"email": email, "start": started, "end": time.monotonic(), "status": status})
            self._reply(status, answer)

        def do_PUT(self) -> None:  # none of these is modelled: logged (seen.py judges them) and refused
            self._unmodelled("PUT")

        def do_PATCH(self) -> None:
            self._unmodelled("PATCH")

        def do_DELETE(self) -> None:
            self._unmodelled("DELETE")

        def _unmodelled(self, method: str) -> None:
            sandbox.seen.add(method, self.path, self._body())
            if not self._hanging():
                self._reply(
                    405, [{"error_key": "method.not.modelled", "error_message": f"the sandbox has no {method}"}]
                )

        def do_GET(self) -> None:
            sandbox.seen.add("GET", self.path)
            if self._hanging():
                return
            url = urlsplit(self.path)
            query = dict(parse_qsl(url.query))
            if url.path == f"{OAUTH_PREFIX}/authorize":
                status, location = sandbox.authz.authorize(query)
                if status == 302:
                    return self._reply(302, b"", {"Location": location})
                return self._reply(400, location.encode())
            if url.path == "/sandbox/stats":  # what the limits and faults did, for benches and tests
                f = sandbox.faults
                return self._reply(
                    200,
                    {
                        "api_requests": f.requests,
                        "throttled": f.throttled,
                        "quota_refused": f.quota_refused,
                        "members": len(sandbox.members()),
                        "unauthorized": sandbox.unauthorized,
                        "sign_ups": len(sandbox.calls),
                        "token_calls": sandbox.authz.token_calls,
                        "invalid_grants": sandbox.authz.invalid_grants,
                        "token_throttled": sandbox.authz.token_throttled,
                        "imports": len(sandbox.imports.activities),
                    },
                )
            if url.path == f"{OAUTH_PREFIX}/device":
                ok = sandbox.authz.approve_device(query.get("user_code", ""))
                return self._reply(200 if ok else 404, b"approved" if ok else b"unknown code")
            if url.path == "/sandbox/view":  # read-only JSON view for people (no token needed)
                return self._reply(
                    200,
                    {
                        "lists": list(sandbox.api.lists.values()),
                        "custom_fields": list(sandbox.api.custom_fields.values()),
                        "contacts": sandbox.api.find(include_deleted=True),
                        "activities": sandbox.imports.view(),
                    },
                )
            if self._fault() or not self._bearer_ok():
                return
            if url.path == "/v3/account/user/privileges":  # no scope needed: the cheapest "is this token alive"
                return self._reply(200, PRIVILEGES)
            if not sandbox.authz.has_scope(self._token(), "contact_data"):
                return self._reply(403, _NO_SCOPE)
            if url.path == "/v3/contacts":
                return self._reply(*sandbox.api.query(query))
            if url.path == "/v3/contact_custom_fields":
                return self._reply(*sandbox.api.custom_fields_page(query))
            if url.path.startswith("/v3/activities/"):
                return self._reply(*sandbox.imports.get(url.path.removeprefix("/v3/activities/")))
            found = sandbox.api.get_list(url.path.removeprefix("/v3/contact_lists/"))
            if found is not None:
                return self._reply(200, found)
            self._reply(404, [{"error_key": "not_found", "error_message": "Resource not found"}])

        def _token(self) -> str:
            return (self.headers.get("Authorization") or "").removeprefix("Bearer ")

    return Handler
