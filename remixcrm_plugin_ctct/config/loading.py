"""One reading of the file, judged: what the hook needs (:func:`load`) and what ``login`` and
``refresh`` need (:func:`load_for_tokens`). Whatever the file holds, both answer; neither raises."""

from pathlib import Path
from typing import Any

from . import fields, reading, settings
from .messages import SETTINGS_PATH, show
from .settings import ACTIVE, INACTIVE, INVALID, PROVIDERS, LoadedConfig, Settings


def load(path: Path) -> LoadedConfig:
    """Read and validate ``path``. Never raises; problems come back as ``invalid``."""
    try:
        doc = reading.read_doc(path)
    except FileNotFoundError:
        return LoadedConfig(INACTIVE, f"no config file at {path}", path)
    except (OSError, reading.Unreadable) as e:
        return _unreadable(path, e)
    except Exception as e:  # the last line of defence: the hook must get an answer, never a traceback
        return _crashed(path, e)
    try:
        return _judge(path, doc)
    except Exception as e:
        return _crashed(path, e)


def load_for_tokens(path: Path) -> tuple[Settings | None, str]:
    """The config as ``login`` and ``refresh`` need it: the list and the provider radio may still
    be unset (an admin often logs in first). Returns (settings, "") or (None, the problem)."""
    try:
        try:
            doc = reading.read_doc(path)
        except FileNotFoundError:
            doc = {}
        loaded = _judge(path, doc)
        if loaded.settings is not None:
            return loaded.settings, ""
        # the same reading once more, leniently: no list needed, and any provider
        problems: list[str] = []
        marketing = doc.get("email_marketing")
        table = settings.section(marketing, problems) if isinstance(marketing, dict) else {}
        lenient = settings.parse_section(table, problems, require_list=False)
    except (OSError, reading.Unreadable) as e:
        return None, _unreadable(path, e).message
    except Exception as e:  # as in load(): a message, never a traceback
        return None, _crashed(path, e).message
    return (lenient, "") if lenient else (None, f"{path}: " + "; ".join(problems))


def _judge(path: Path, doc: dict[str, Any]) -> LoadedConfig:
    marketing = doc.get("email_marketing")
    if not isinstance(marketing, dict):
        return LoadedConfig(INACTIVE, f"no [email_marketing] section in {path}", path)
    provider = marketing.get("provider", "none")
    if not isinstance(provider, str) or provider not in PROVIDERS:
        return LoadedConfig(
            INVALID,
            f"{path}: email_marketing.provider = {show(provider)} is not one of "
            f"{', '.join(PROVIDERS)}; choose a provider in {SETTINGS_PATH}",
            path,
        )
    if provider != "constant_contact":
        return LoadedConfig(INACTIVE, f"provider is {provider!r} in {path}", path)
    problems: list[str] = []
    table = settings.section(marketing, problems)
    warnings: list[str] = []
    mapped = fields.parse(table.get("fields"), warnings)
    told = tuple(f"{path}: {w}" for w in warnings)
    parsed = settings.parse_section(table, problems)
    if problems or parsed is None:
        return LoadedConfig(
            INVALID,
            f"{path}: " + "; ".join(problems),
            path,
            fields=mapped,
            warnings=told,
            sender=settings.sender_of(table),
        )
    message = f"sending new clients to list {parsed.list_id} via {parsed.api_base_url}"
    return LoadedConfig(ACTIVE, message, path, parsed, fields=mapped, warnings=told, sender=parsed.sender)


def _unreadable(path: Path, e: OSError | reading.Unreadable) -> LoadedConfig:
    if isinstance(e, reading.Unreadable):
        return LoadedConfig(INVALID, str(e), path)
    return LoadedConfig(INVALID, f"cannot read {path} ({e.strerror or e}); make it readable by the RemixCRM user", path)


def _crashed(path: Path, e: Exception) -> LoadedConfig:
    # the exception's text is left out: it may quote the file, and the file holds secrets
    return LoadedConfig(
        INVALID,
        f"{path} could not be read ({type(e).__name__}); save the settings again in "
        f"{SETTINGS_PATH}, and report this if it persists",
        path,
    )
