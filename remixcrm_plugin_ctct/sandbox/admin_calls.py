"""The sandbox's admin calls that play the *other* side of Constant Contact — what people and
the account do there — over HTTP, for hosts and scripts in other processes (in-process tests
call :class:`.contacts.ContactsApi` directly)."""

import json

from .contacts import ContactsApi


def unsubscribe(api: ContactsApi, raw: bytes) -> tuple[int, dict]:
    """``POST /sandbox/unsubscribe {"email": …, "source": "Contact"}``: an opt-out as Constant
    Contact records one (``opt_out_source`` "Contact": by the person, the default; "Account": by
    someone in the account)."""
    try:
        body = json.loads(raw or b"{}")
        email, source = str(body["email"]), body.get("source", "Contact")
    except (ValueError, KeyError, TypeError):
        return 400, {"error": 'the body must be {"email": …, "source": "Contact" | "Account"}'}
    if source not in ("Contact", "Account"):
        return 400, {"error": 'source must be "Contact" or "Account"'}
    try:
        api.unsubscribe(email, source=source)
    except KeyError:
        return 404, {"error": "no such contact"}
    return 200, {"ok": True}
