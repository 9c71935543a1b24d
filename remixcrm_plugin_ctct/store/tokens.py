"""The plugin's own copy of the OAuth tokens: ``tokens.json`` in the data dir.

Why a file of our own: Constant Contact's rotating refresh tokens are single-use, so the newest
one must be kept the moment it arrives, and RemixCRM's ``config.toml`` belongs to the host (a
write of ours could lose an admin's edit). The file is 0600, written atomically (temp file,
fsync, rename), and guarded by a cross-process lock (``tokens.lock``) for the read–refresh–write
cycle, because RemixCRM runs several worker processes on one machine.
"""

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from filelock import FileLock

FILE_NAME = "tokens.json"
LOCK_NAME = "tokens.lock"
LOCK_TIMEOUT = 60.0  # seconds; one refresh takes a token-endpoint call at most


def fingerprint(*values: str | None) -> str:
    """A short one-way digest: lets us tell whether secrets changed without storing them twice."""
    digest = hashlib.sha256("\0".join(v or "" for v in values).encode()).hexdigest()
    return digest[:16]


@dataclass(frozen=True)
class TokenState:
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None  # epoch seconds
    lifetime: float | None = None  # seconds the current access token was issued for
    seeded_from: str = ""  # fingerprint of the config's token pair this state descends from
    last_refresh_call: float = 0.0  # epoch seconds of the last token-endpoint call, any process
    needs_reauth: str | None = None  # why refreshing is hopeless, or None
    reauth_credentials: str = ""  # fingerprint of (refresh token, client id, secret) that failed

    def with_(self, **changes) -> "TokenState":
        return replace(self, **changes)


class TokenStore:
    """The file implementation of :class:`.interfaces.TokenStore`."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self._cache: tuple | None = None

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r})"

    def lock(self) -> FileLock:
        """The cross-process lock for read–refresh–write. A new object per use: FileLock
        objects are re-entrant per thread, and we want each use to be independent."""
        self._ensure_dir()
        return FileLock(str(self.directory / LOCK_NAME), timeout=LOCK_TIMEOUT, mode=0o600)

    def signature(self) -> tuple:
        """Changes whenever the file is rewritten (cheap: one stat)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return (None,)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def read(self) -> TokenState | None:
        signature = self.signature()
        cached = self._cache
        if cached is not None and cached[0] == signature and signature != (None,):
            return cached[1]  # unchanged since the last read: one stat instead of open + parse
        state = self._read()
        self._cache = (signature, state)
        return state

    def _read(self) -> TokenState | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable or torn by hand-editing: reseed from the config
        known = TokenState.__dataclass_fields__
        return TokenState(**{k: v for k, v in data.items() if k in known})

    def write(self, state: TokenState) -> None:
        """Atomically replace the file: a crash leaves the old or the new file, never half."""
        self._ensure_dir()
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tokens-", suffix=".tmp")  # mkstemp: 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(asdict(state), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(self.directory)

    def _ensure_dir(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def _fsync_dir(directory: Path) -> None:
    # makes the rename itself durable; not possible on every platform
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
