"""The one place that talks HTTP to Constant Contact's V3 API.

One lazily created ``requests.Session`` is shared by every delivery thread (connection reuse),
every call carries explicit (connect, read) timeouts, and the Authorization header is set
per call and never logged or put into an exception.
"""

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from .. import __version__, forksafe
from . import redact

if TYPE_CHECKING:  # requests is imported lazily: importing the plugin stays cheap
    import requests

log = logging.getLogger("remixcrm_plugin_ctct")

CONNECT_TIMEOUT = 3.05  # seconds; just over a TCP retransmit window
READ_TIMEOUT = 10.0
USER_AGENT = f"remixcrm-plugin-ctct/{__version__}"

# What an admin should do about each status (Constant Contact's own guidance, plus ours).
FIXES = {
    400: "Constant Contact rejected the data: check that list_id is set in Settings → Integrations → "
    "Email Marketing → List ID and that the client's fields are valid; resending as-is will fail again",
    401: "the access token is invalid or expired (they last 24 h): paste a new token in Settings → "
    "Integrations → Email Marketing, or run `remixcrm-ctct login`",
    403: "the token lacks the contact_data scope or the user lacks the contacts:write privilege: log in "
    "again with `remixcrm-ctct login` as an account administrator",
    404: "the list or endpoint was not found: check List ID in Settings → Integrations → Email Marketing "
    "(run `remixcrm-ctct check`) and api_base_url",
}

# GET /contacts's query parameters as the vendor spec defines them (operationId getContacts):
# anything else is a programming error, never sent
CONTACTS_PARAMS = frozenset(
    {
        "status", "email", "lists", "segment_id", "tags", "updated_after", "updated_before", "created_after",
        "created_before", "optout_after", "optout_before", "include", "sms_status", "include_count", "limit",
    }
)  # fmt: skip
_DATE_TIME_PARAMS = frozenset(p for p in CONTACTS_PARAMS if p.endswith(("_after", "_before")))

_session: "requests.Session | None" = None
_session_lock = threading.Lock()


class ApiError(Exception):
    """A failed call: HTTP status (None for a transport error) and Constant Contact's words,
    redacted once here (no email, no token, one capped line): they go to the log and the outbox."""

    def __init__(
        self,
        status: int | None,
        error_key: str,
        error_message: str,
        retry_after: str | None = None,
        known_secrets: tuple[str, ...] = (),
    ):
        self.status = status
        self.error_key = redact.upstream_text(error_key, 100, known_secrets)
        self.error_message = redact.upstream_text(error_message, known=known_secrets)
        self.retry_after = retry_after  # the Retry-After header, if Constant Contact ever sends one
        super().__init__(f"{status or 'no response'} {self.error_key}: {self.error_message}")

    @property
    def fix(self) -> str | None:
        return FIXES.get(self.status) if self.status is not None else None


@dataclass(frozen=True)
class SignUpResult:
    status: int  # 201 created, 200 updated: the documented signal (the body's `action` is not read)
    contact_id: str | None

    @property
    def created(self) -> bool:
        return self.status == 201


@dataclass(frozen=True)
class ContactsPage:
    contacts: list[dict]
    next: str | None  # the next page's path under the API base (from _links.next.href); None: the last page
    server_time: float | None  # the answer's Date header: Constant Contact's clock (1 s resolution)


_fork_hook_registered = False


def session() -> "requests.Session":
    """The process-wide session, created on first use (importing this module opens nothing)."""
    global _session, _fork_hook_registered
    with _session_lock:
        if _session is None:
            requests = forksafe.load_module("requests")  # lazy (cheap plugin import), never torn by a fork

            s = requests.Session()
            s.headers["User-Agent"] = f"{USER_AGENT} {s.headers['User-Agent']}"
            s.headers["Accept"] = "application/json"
            _session = s
            if not _fork_hook_registered:
                _fork_hook_registered = True
                forksafe.after_fork_in_child(_after_fork)
        return _session


def reset_session() -> None:
    """Forget the session so the next call makes a new one: for tests, which must not share
    connections. A forked child needs no call: ``_after_fork`` already runs there (forksafe)."""
    global _session
    with _session_lock:
        _session = None


def _after_fork() -> None:
    """A child must never use the parent's keep-alive sockets: both would read each other's
    answers (a consent lookup answered for another contact). The old session is parked, not
    closed: closing it would shut sockets the parent still uses."""
    global _session, _session_lock
    _session_lock = threading.Lock()  # a parent thread may have held it at fork time
    forksafe.keep(_session)
    _session = None


def parse_error(response: "requests.Response") -> tuple[str, str]:
    """``(error_key, error_message)`` from a body that may be a list, an object or not JSON."""
    try:
        body = response.json()
    except ValueError:
        text = (response.text or "").strip().replace("\n", " ")
        # not cut here: a cut through an address would leave its local part unmaskable;
        # ApiError caps the text after redacting it
        return f"http_{response.status_code}", text or (response.reason or "no body")
    if isinstance(body, list) and body and isinstance(body[0], dict):
        first = body[0]
        more = f" (+{len(body) - 1} more)" if len(body) > 1 else ""
        return str(first.get("error_key", f"http_{response.status_code}")), str(first.get("error_message", "")) + more
    if isinstance(body, dict):
        key = body.get("error_key") or body.get("error") or f"http_{response.status_code}"
        message = body.get("error_message") or body.get("error_description") or body.get("message") or ""
        return str(key), str(message)
    return f"http_{response.status_code}", str(body)


class CtctClient:
    """Calls Constant Contact with one access token. Cheap to create; shares the session."""

    def __init__(self, api_base_url: str, access_token: str):
        self.api_base_url = api_base_url.rstrip("/")
        self._access_token = access_token

    def __repr__(self) -> str:
        return f"CtctClient(api_base_url={self.api_base_url!r}, access_token=<hidden>)"

    def sign_up(self, body: dict) -> SignUpResult:
        """``POST /contacts/sign_up_form``: create or update one contact. Raises ApiError."""
        response = self._request("POST", "/contacts/sign_up_form", json=body)
        data = _json_or_empty(response)
        return SignUpResult(response.status_code, data.get("contact_id"))

    def import_contacts(self, body: bytes) -> dict:
        """``POST /activities/contacts_json_import`` with a body already serialised (the caller
        measured it against the 4 MB limit): the 201's ``ActivityImport`` (``activity_id``, ``state``)."""
        return _json_or_empty(
            self._request("POST", "/activities/contacts_json_import", data=body, content_type="application/json")
        )

    def get_activity(self, activity_id: str) -> dict:
        """``GET /activities/{id}``: an import's ``state``, ``status`` counts and ``activity_errors``."""
        return _json_or_empty(self._request("GET", f"/activities/{quote(activity_id, safe='')}"))

    def find_contact(self, email: str) -> dict | None:
        """``GET /contacts?email=…&status=all``: the contact with this email, deleted ones included.
        The query is lower-cased: Constant Contact stores addresses in lower case and a mixed-case
        query matches nothing — a miss here would let the consent guard re-subscribe someone."""
        found = _json_or_empty(self._request("GET", "/contacts", params={"email": email.lower(), "status": "all"}))
        for contact in found.get("contacts") or []:
            address = contact.get("email_address") or {}
            if isinstance(address, dict) and str(address.get("address", "")).lower() == email.lower():
                return contact
        return None

    def list_contacts(self, **params: Any) -> tuple[list[dict], str | None]:
        """One page of ``GET /contacts``: (contacts, the next page's path or None). ``params`` are
        the spec's (``status="unsubscribed,deleted"``, ``optout_after=<epoch or ISO>``, ``limit=500``…);
        an ``email`` is lower-cased (Constant Contact stores addresses lower-cased)."""
        page = self.contacts_page(params)
        return page.contacts, page.next

    def next_contacts(self, path: str) -> tuple[list[dict], str | None]:
        """The page at ``path`` (a ``next`` from :meth:`list_contacts`), followed as given."""
        page = self.contacts_page(path=path)
        return page.contacts, page.next

    def contacts_page(self, params: dict | None = None, path: str | None = None) -> ContactsPage:
        """One page of ``GET /contacts`` (``params``, or a next-page ``path``), with the server's time."""
        if path is not None:
            response = self._request("GET", self._under_base(path))
        else:
            response = self._request("GET", "/contacts", params=contacts_query(params or {}))
        data = _json_or_empty(response)
        contacts = [c for c in data.get("contacts") or [] if isinstance(c, dict)]
        links = data.get("_links")
        following = links.get("next") if isinstance(links, dict) else None
        href = following.get("href") if isinstance(following, dict) else None
        return ContactsPage(contacts, href if isinstance(href, str) and href else None, _date(response))

    def _under_base(self, href: str) -> str:
        """A ``_links`` href (``/v3/contacts?cursor=…``) as a path under ``api_base_url``. The
        bearer token goes to Constant Contact's host only: a link to any other origin is refused."""
        link, base = urlsplit(href), urlsplit(self.api_base_url)
        if (link.scheme or link.netloc) and (link.scheme, link.netloc) != (base.scheme, base.netloc):
            raise ApiError(None, "bad_link", "Constant Contact's next-page link points to another host")
        path = link.path
        for prefix in (base.path.rstrip("/"), "/v3"):  # the base's own path, or the vendor's behind a proxy
            if prefix and path.startswith(prefix + "/"):
                path = path[len(prefix) :]
                break
        return path + (f"?{link.query}" if link.query else "")

    def custom_fields_page(self, path: str | None = None) -> tuple[list[dict], str | None]:
        """One page of ``GET /contact_custom_fields`` (100 a page, the spec's maximum; an account has
        at most 100): (``CustomField``s, the next page's path or None). ``path``: a next link, followed
        only on Constant Contact's own host."""
        if path is not None:
            response = self._request("GET", self._under_base(path))
        else:
            response = self._request("GET", "/contact_custom_fields", params={"limit": 100})
        data = _json_or_empty(response)
        found = [f for f in data.get("custom_fields") or [] if isinstance(f, dict)]
        links = data.get("_links")
        following = links.get("next") if isinstance(links, dict) else None
        href = following.get("href") if isinstance(following, dict) else None
        return found, href if isinstance(href, str) and href else None

    def remove_list_memberships(self, contact_ids: list[str], list_ids: list[str]) -> dict:
        """``POST /activities/remove_list_memberships`` for these contacts only (``source.contact_ids``,
        up to 500): the 201's ``ActivityListsMembership``. Only list memberships change; a contact's
        permission to send stays as it is (never an unsubscribe)."""
        body = {"source": {"contact_ids": list(contact_ids)}, "list_ids": list(list_ids)}
        return _json_or_empty(self._request("POST", "/activities/remove_list_memberships", json=body))

    def privileges(self) -> list:
        """``GET /account/user/privileges``: needs no scope, so the cheapest "is this token alive"."""
        return _json_list(self._request("GET", "/account/user/privileges"))

    def get_list(self, list_id: str) -> dict:
        """``GET /contact_lists/{id}`` with its member count (needs the contact_data scope)."""
        return _json_or_empty(
            self._request("GET", f"/contact_lists/{list_id}", params={"include_membership_count": "all"})
        )

    def _request(self, method: str, path: str, content_type: str | None = None, **kwargs: Any) -> "requests.Response":
        requests = forksafe.load_module("requests")  # lazy (cheap plugin import), never torn by a fork

        redact.guard_urllib3()  # before our first request: urllib3 logs query strings (emails) at DEBUG
        headers = {"Authorization": f"Bearer {self._access_token}"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            response = session().request(
                method, self.api_base_url + path, headers=headers, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), **kwargs
            )
        except requests.Timeout as e:
            raise ApiError(
                None, "timeout", f"no answer from {self.api_base_url} in time ({type(e).__name__})"
            ) from None
        except requests.RequestException as e:
            raise ApiError(None, "connection_error", f"cannot reach {self.api_base_url} ({type(e).__name__})") from None
        if response.status_code >= 400:
            raise ApiError(
                response.status_code,
                *parse_error(response),
                retry_after=response.headers.get("Retry-After"),
                known_secrets=(self._access_token,),
            )
        return response


def contacts_query(params: dict) -> dict:
    """``GET /contacts`` parameters as sent: only the spec's names (ValueError otherwise),
    times (epoch seconds) as ISO-8601, booleans as ``true``/``false``, an email lower-cased."""
    unknown = set(params) - CONTACTS_PARAMS
    if unknown:
        raise ValueError(f"GET /contacts has no parameter {sorted(unknown)}")
    query: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        if key in _DATE_TIME_PARAMS and isinstance(value, int | float):
            value = iso_time(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        query[key] = str(value).lower() if key == "email" else str(value)
    return query


def iso_time(epoch: float) -> str:
    """``2022-01-01T16:37:59.091Z``: the spec's example format for date-time parameters."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _date(response: "requests.Response") -> float | None:
    try:
        return parsedate_to_datetime(response.headers["Date"]).timestamp()
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _json_or_empty(response: "requests.Response") -> dict:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _json_list(response: "requests.Response") -> list:
    try:
        data = response.json()
    except ValueError:
        return []
    return data if isinstance(data, list) else []
