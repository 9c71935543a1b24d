"""Private directories for tokens and contacts: 0700, tightened if someone made them looser."""

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("remixcrm_plugin_ctct")

_warned: set[str] = set()


def ensure_private_dir(path: Path | str) -> Path:
    """Create ``path`` (and parents) with mode 0700. An existing directory that group or others
    may read or write (say, made beforehand with mode 0777) is tightened to 0700 when we own
    it; otherwise one WARNING names the directory and the fix. Raises OSError like mkdir."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(path)
    if stat.S_IMODE(st.st_mode) & 0o077:
        try:
            if st.st_uid != os.geteuid():
                raise PermissionError("owned by another user")
            os.chmod(path, 0o700)
        except OSError as e:
            if str(path) not in _warned:
                _warned.add(str(path))
                log.warning(
                    "the plugin's directory %s is open to other users (mode %o) and could not be tightened (%s); "
                    "run `chmod 700 %s` as its owner: it holds tokens and contacts",
                    path,
                    stat.S_IMODE(st.st_mode),
                    e,
                    path,
                )
    return path
