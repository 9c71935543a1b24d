"""Who holds an outbox lease, and whether that process is provably gone.

A worker killed with ``kill -9`` cannot hand its leases back. On the same machine we can tell
that it is gone: its pid no longer exists, is a zombie, or belongs to a newer process (the
start time differs). "The same machine" is the host name, the boot and the pid namespace
together: two containers may share a host name and a data dir but not their pids.
"""

import functools
import os
import socket


@functools.lru_cache(maxsize=1)
def _boot_and_namespace() -> str:
    parts = []
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
    except OSError:
        pass
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return "/".join(parts)


def machine() -> str:
    return f"{socket.gethostname()}|{_boot_and_namespace()}"


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 on (the command name may hold spaces and parentheses)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def status(pid: int) -> str | None:
    """The process's state letter from /proc (``R``, ``S``, ``Z`` for a zombie…), or None."""
    fields = _stat(pid)
    return fields[0] if fields else None


def started(pid: int) -> str | None:
    """The process's start time (field 22: clock ticks after boot), where /proc has it."""
    fields = _stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def gone(pid: int, started_then: str | None) -> bool:
    """True only when the process that had ``pid`` (started at ``started_then``) surely ended."""
    if pid <= 0:  # kill(0) and kill(-n) address process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, another user's
    except OSError:
        return False  # cannot tell: not provably gone
    fields = _stat(pid)
    if fields is None:
        return False
    if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent (a prefork master)
        return True
    return started_then is not None and len(fields) > 19 and fields[19] != started_then
