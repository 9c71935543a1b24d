"""``config_toml()``: RemixCRM's ``config.toml`` text with our table in it, for the demo, the
sandbox, the benches and the tests (RemixCRM writes the real file; we only ever read it)."""

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import TypeAlias

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# the characters a TOML basic string must escape, with their short escapes where TOML has one
_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_ESCAPED = re.compile(r'["\\\x00-\x1f\x7f]')


@dataclass(frozen=True)
class Raw:
    """TOML text written as it is (``Raw("[1, 2]")``, or a deliberately broken value in a test)."""

    text: str


# what a key may be given (None: leave the key out; a dict: a sub-table, such as ``fields``)
Value: TypeAlias = (
    str | bool | int | float | dt.datetime | dt.date | dt.time | Raw | list | tuple | dict[str, object] | None
)


def config_toml(provider: str | None = "constant_contact", /, **keys: Value) -> str:
    """``[email_marketing]`` with ``provider`` (left out when None) and, when ``keys`` are given,
    ``[email_marketing.constant_contact]`` with them. A key whose value is None is left out."""
    lines = ["[email_marketing]"]
    if provider is not None:
        lines.append(f"provider = {toml_value(provider)}")
    if keys:
        lines += ["", "[email_marketing.constant_contact]"]
        plain = {k: v for k, v in keys.items() if v is not None and not isinstance(v, dict)}
        lines += [f"{toml_key(key)} = {toml_value(value)}" for key, value in plain.items()]
        for name, table in keys.items():
            if isinstance(table, dict):  # after the plain keys: a sub-table ends its parent's keys
                lines += ["", f"[email_marketing.constant_contact.{toml_key(name)}]"]
                lines += [f"{toml_key(key)} = {toml_value(value)}" for key, value in table.items()]  # type: ignore[arg-type]
    return "\n".join(lines) + "\n"


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_value(key)


def toml_value(value: Value) -> str:
    """One value as TOML. Strings become basic strings, escaped as TOML requires."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, str):
        return '"' + _ESCAPED.sub(_escape, value) + '"'
    if isinstance(value, bool):  # (before int: a bool is an int)
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dt.datetime):
        text = value.isoformat()
        return text[: -len("+00:00")] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"config_toml() cannot write a {type(value).__name__}")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT.get(char) or f"\\u{ord(char):04X}"
