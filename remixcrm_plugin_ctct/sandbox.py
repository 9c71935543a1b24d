"""An offline stand-in for Constant Contact's V3 API on a loopback port.

Enough of the real service for the demo, the tests and the benchmarks: ``sign_up_form`` with
the vendor schema's limits (stricter than the real service about unknown fields, so we notice
if we ever send one), upsert by email with 201/200, bearer-token checks with Constant Contact's
error bodies, and a ``hang`` switch for an API that never answers.
"""

import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SEEDED_LIST_ID = "1d0c1bd5-7e5a-4d0e-9b64-5ad1c4b3f001"
SEEDED_TOKEN = "sandbox-access-token"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
# ContactCreateOrUpdateInput string fields we model, with maxLength from the vendor spec
_LIMITS = {"email_address": 50, "first_name": 50, "last_name": 50, "job_title": 50, "company_name": 50, "phone_number": 25}
_OTHER_SCHEMA_FIELDS = {"list_memberships", "custom_fields", "anniversary", "birthday_month", "birthday_day", "street_address", "sms_channel"}


class Sandbox:
    """``with Sandbox() as sb:`` serves on ``sb.api_base_url`` until the block ends."""

    def __init__(self, access_token: str = SEEDED_TOKEN, host: str = "127.0.0.1", port: int = 0):
        self.access_token = access_token
        self.lists = {SEEDED_LIST_ID: {"list_id": SEEDED_LIST_ID, "name": "RemixCRM clients"}}
        self.contacts: dict[str, dict] = {}  # lower-cased email -> contact
        self.requests: list[tuple[str, str, dict | None]] = []  # (method, path, body)
        self.hang = threading.Event()  # set: accept requests, never answer (until stop)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def api_base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v3"

    def start(self) -> "Sandbox":
        self._thread = threading.Thread(target=self._server.serve_forever, name="ctct-sandbox", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def members(self, list_id: str = SEEDED_LIST_ID) -> list[dict]:
        with self._lock:
            return [c for c in self.contacts.values() if list_id in c["list_memberships"]]

    # --- request handling (called on server threads) ---
    def sign_up(self, body) -> tuple[int, object]:
        problems = _validate(body)
        if problems:
            return 400, [{"error_key": "json.field.invalid", "error_message": p} for p in problems]
        unknown = [l for l in body["list_memberships"] if l not in self.lists]
        if unknown:
            return 404, [{"error_key": "contacts.api.not_found", "error_message": f"list {unknown[0]} was not found"}]
        with self._lock:
            key = body["email_address"].lower()
            existing = self.contacts.get(key)
            contact = existing or {"contact_id": str(uuid.uuid4()), "list_memberships": []}
            contact.update({k: v for k, v in body.items() if k != "list_memberships"})
            contact["list_memberships"] += [l for l in body["list_memberships"] if l not in contact["list_memberships"]]
            contact["permission_to_send"] = "explicit"  # what the real endpoint does, even after an unsubscribe
            self.contacts[key] = contact
        return (200 if existing else 201), {"contact_id": contact["contact_id"], "action": "updated" if existing else "created"}


def _validate(body) -> list[str]:
    if not isinstance(body, dict):
        return ["the request body must be a JSON object"]
    problems = [f"'{k}' is not a property of ContactCreateOrUpdateInput" for k in body if k not in _LIMITS and k not in _OTHER_SCHEMA_FIELDS]
    lists = body.get("list_memberships")
    if not isinstance(lists, list) or not 1 <= len(lists) <= 50 or not all(isinstance(l, str) and _UUID.match(l) for l in lists):
        problems.append("list_memberships must hold 1 to 50 list ids (UUIDs)")
    if not body.get("email_address"):
        problems.append("email_address is required")
    for key, limit in _LIMITS.items():
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            problems.append(f"{key} must be a string of at most {limit} characters")
    return problems


def _handler(sandbox: Sandbox):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: the demo prints its own view
            pass

        def _reply(self, status: int, body) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _read_body(self):
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _authorised(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {sandbox.access_token}":
                return True
            self._reply(401, {"error_key": "unauthorized", "error_message": "Unauthorized"})
            return False

        def do_POST(self):
            raw = self._read_body()
            if sandbox.hang.is_set():
                sandbox._stopping.wait()
                return
            path = urlsplit(self.path).path
            if path != "/v3/contacts/sign_up_form":
                return self._reply(404, [{"error_key": "not_found", "error_message": "no such endpoint"}])
            if not self._authorised():
                return
            if not (self.headers.get("Content-Type") or "").startswith("application/json"):
                return self._reply(415, [{"error_key": "unsupported_media_type", "error_message": "Content-Type must be application/json"}])
            try:
                body = json.loads(raw)
            except ValueError:
                return self._reply(400, [{"error_key": "json.parse.error", "error_message": "malformed JSON"}])
            sandbox.requests.append(("POST", path, body))
            self._reply(*sandbox.sign_up(body))

        def do_GET(self):
            if sandbox.hang.is_set():
                sandbox._stopping.wait()
                return
            url = urlsplit(self.path)
            if not self._authorised():
                return
            if url.path == "/v3/contacts":
                email = (parse_qs(url.query).get("email") or [""])[0].lower()
                with sandbox._lock:
                    found = [c for k, c in sandbox.contacts.items() if not email or k == email]
                return self._reply(200, {"contacts": found})
            list_id = url.path.removeprefix("/v3/contact_lists/")
            if list_id in sandbox.lists:
                return self._reply(200, {**sandbox.lists[list_id], "membership_count": len(sandbox.members(list_id))})
            self._reply(404, [{"error_key": "not_found", "error_message": "Resource not found"}])

    return Handler
