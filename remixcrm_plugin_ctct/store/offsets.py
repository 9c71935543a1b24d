"""A journal's offset as the stores keep it (meta key ``journal:<file>``): the bytes of the file
already folded; once the file is folded to its end and deleted, a tombstone with the time.

Why a tombstone rather than no key: a folder that read the file before it was deleted (offset 0:
never folded) must never fold it again. Its compare-and-set (``add_records(..., start=0)``) would
match a missing key — read as 0 — and take every line a second time; it does not match a
tombstone. The hourly purge drops tombstones older than ``KEEP``.
"""

FORGOTTEN = "-1:"  # the tombstone's prefix; then the time it was written (seconds since the epoch)
KEEP = 3600.0  # seconds a tombstone is kept: far longer than any fold in flight
DONE = 1 << 40  # what a tombstone reads as: everything folded (a reader finds nothing to do; lseek takes it)


def tombstone(now: float) -> str:
    return f"{FORGOTTEN}{now:.0f}"


def parse(text: str | None) -> int:
    """The offset a stored value stands for (no key: 0, nothing folded yet)."""
    if not text:
        return 0
    if text.startswith(FORGOTTEN):
        return DONE
    return int(text)
