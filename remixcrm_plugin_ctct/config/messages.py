"""What the config's problem messages share: where the admin fixes things, and how a bad value is quoted."""

from typing import Any

SETTINGS_PATH = "Settings → Integrations → Email Marketing"
SECTION = "email_marketing.constant_contact"
_SHOWN = 80  # characters of a bad value quoted back in a message (they end up in log lines)


def show(value: Any) -> str:
    """A bad value as quoted back in a message (and so in a log line): escaped and capped."""
    try:
        shown = repr(value)
    except Exception:  # a nesting too deep for repr
        return f"<a {type(value).__name__}>"
    return shown if len(shown) <= _SHOWN else shown[:_SHOWN] + f"… ({len(shown)} characters)"
