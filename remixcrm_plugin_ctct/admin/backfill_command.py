"""``remixcrm-ctct backfill FILE [--dry-run] [--chunk N] [--timeout S]``: what it prints, its
progress display, its exit codes. The work is :mod:`.backfill`'s; the file's reading
:mod:`.backfill_file`'s.

Exit codes: 0 done (every row recorded, every recorded row delivered or skipped on purpose; a dry
run: no invalid row); 1 nothing done (FILE refused, the config not active, the outbox not
writable, the same file being backfilled by another run); 3 recorded, but sending is paused or
``--timeout`` passed (the rows go out by themselves); 4 done, but some rows were invalid or given
up; 130 interrupted (what was recorded stays recorded: run the same command again). argparse's
usage errors are 2.
"""

import sqlite3
import sys
import time
from collections.abc import Callable
from typing import TextIO

from filelock import FileLock, Timeout

from .. import config
from ..runtime import runtime
from ..store.outbox import FILE_NAME as OUTBOX_FILE
from . import backfill
from .backfill_file import BackfillFile, Refused

DONE, FAILED, UNFINISHED, NEEDS_A_LOOK, INTERRUPTED = 0, 1, 3, 4, 130
STATUS_HINT = "see `remixcrm-ctct status` (and `remixcrm-ctct status --client ID` for one client)"


def mirror_lookup() -> backfill.SuppressedLookup | None:
    """The suppression mirror as of its last sync, read only (a dry run writes nothing, so it is
    not brought up to date here: the worker does that before every send); None when there is
    none yet: then "not checked"."""
    if not (config.data_dir() / OUTBOX_FILE).exists():
        return None
    rt = runtime()
    if rt.mirror.synced_at() is None:
        return None
    return rt.mirror.filter


class Progress:
    """A bar redrawn in place on a terminal; elsewhere (a log file, a pipe) a plain line every
    ``every`` seconds or ``step`` percent, so a long run writes tens of lines, not thousands."""

    def __init__(self, out: TextIO, tty: bool, clock: Callable[[], float] = time.monotonic, every=5.0, step=10):
        self.out, self.tty, self.clock, self.every, self.step = out, tty, clock, every, step
        self._drawn = 0  # width of the bar on screen (0: none)
        self._mark: tuple = ()  # (label, percent step, finished) of the last line written
        self._said: tuple = ()  # (label, done) of the last line written
        self._said_at = float("-inf")

    def show(self, label: str, done: int, total: int, detail: str = "") -> None:
        percent = 100 * done // total if total else 100
        if self.tty:
            bar = "#" * (30 * done // total if total else 30)
            text = f"\r{label} [{bar:<30}] {done:,}/{total:,} {detail}"
            self.out.write(text.ljust(self._drawn))
            self._drawn = len(text)
            self.out.flush()
            return
        now, mark = self.clock(), (label, percent // self.step, done == total)
        if mark != self._mark or (now - self._said_at >= self.every and (label, done) != self._said):
            self.out.write(f"{label}: {done:,} of {total:,} ({percent}%){', ' + detail if detail else ''}\n")
            self.out.flush()
            self._mark, self._said, self._said_at = mark, (label, done), now

    def end(self) -> None:
        if self._drawn:
            self.out.write("\n")
            self.out.flush()
            self._drawn = 0


def run(
    path: str,
    dry_run: bool = False,
    chunk: int = backfill.CHUNK,
    timeout: float | None = None,
    out: TextIO | None = None,
    suppressed: backfill.SuppressedLookup | None = None,
) -> int:
    out = out or sys.stdout
    progress = Progress(out, out.isatty())

    def say(text: str) -> None:
        progress.end()
        out.write(text + "\n")
        out.flush()

    loaded = config.load(config.config_path())
    try:
        file = BackfillFile(path, tuple(key for key, _ in loaded.fields))
    except Refused as e:
        say(f"✗ {e}")
        return FAILED
    with file:
        unknown = getattr(loaded.settings, "unknown_consent", "implicit")
        size = f"{file.size / 1e6:.1f} MB" if file.size >= 100_000 else f"{file.size:,} bytes"
        if dry_run:
            say(f"backfill {file.path} ({file.format}, {size}): dry run")
            if loaded.status != config.ACTIVE:
                say(f"  note: the config is {loaded.status} ({loaded.message}); a real run needs it active")
            try:
                tally = backfill.read(
                    file, unknown, suppressed, progress=_reading(progress, file), field_map=loaded.fields
                )
            except KeyboardInterrupt:
                say("interrupted; nothing was written")
                return INTERRUPTED
            _report(say, tally, unknown, file.ignored)
            say("dry run: nothing was written (no outbox row, no progress). Without --dry-run these rows are recorded")
            return NEEDS_A_LOOK if tally.invalid else DONE
        if loaded.status != config.ACTIVE:
            say(f"✗ backfill sends through the plugin, whose config is {loaded.status}: {loaded.message}")
            return FAILED
        key = f"backfill-{file.fingerprint()}"
        say(
            f"backfill {file.path} ({file.format}, {size}), fingerprint {key[9:21]}: the file is known by its "
            "content, so a rerun of the same file continues where it stopped and an edited file is a new backfill"
        )
        return _record_and_send(say, progress, file, key, unknown, suppressed, chunk, timeout, loaded.fields)


def _record_and_send(
    say, progress: Progress, file: BackfillFile, key: str, unknown, suppressed, chunk, timeout, field_map=()
) -> int:
    rt = runtime()
    outbox, recorded_to = rt.outbox, 0

    def record(records: list[dict], offset: int) -> None:
        nonlocal recorded_to
        outbox.add_records(records, journal=key, offset=offset)  # the rows and "1..offset are in": one commit
        recorded_to = offset

    try:
        with FileLock(str(rt.data_dir / f"{key[:25]}.lock"), timeout=0, mode=0o600):
            recorded_to = start = outbox.journal_offset(key)
            since = float(outbox.get_meta(f"{key}:started") or 0) or time.time()
            outbox.set_meta(f"{key}:started", repr(since))  # rows of this backfill are the ones touched since
            if start:
                say(f"continuing: an earlier run recorded rows 1-{start:,} of this file; they are not recorded again")
            tally = backfill.read(
                file, unknown, suppressed, record, start, chunk, _reading(progress, file), field_map=field_map
            )
    except Timeout:
        say("✗ another `remixcrm-ctct backfill` of this file is recording it; wait for it, or stop it and run again")
        return FAILED
    except (sqlite3.Error, OSError) as e:
        where = f"rows 1-{recorded_to:,} are recorded; " if recorded_to else ""
        say(f"✗ cannot write the outbox {outbox.location} ({e}): {where}fix the disk, then run the same command again")
        return FAILED
    except KeyboardInterrupt:
        say(f"interrupted: rows 1-{recorded_to:,} are recorded and will be sent; run the same command to continue")
        return INTERRUPTED
    _report(say, tally, unknown, file.ignored)
    earlier = f"; rows 1-{tally.earlier:,} were recorded by an earlier run" if tally.earlier else ""
    say(f"recorded {tally.recorded:,} client(s) now{earlier}")

    def sending(counts: dict[str, int]) -> None:
        total, left = sum(counts.values()), counts.get("pending", 0) + counts.get("sending", 0)
        progress.show("sending", total - left, total, _states(counts))

    try:
        watched = backfill.watch(outbox, rt.worker, rt.delivery.shared_pause, since, sending, timeout)
    except KeyboardInterrupt:
        say(f"interrupted: every row is recorded and goes out with the plugin's sender; {STATUS_HINT}")
        return INTERRUPTED
    say(f"backfill rows: {_states(watched.counts) or 'none'}")
    if watched.pause is not None:
        say(
            f"paused by {watched.pause}: {watched.left:,} row(s) wait, recorded, and go out when it lifts; "
            + STATUS_HINT
        )
        return UNFINISHED
    if watched.timed_out:
        say(f"--timeout passed with {watched.left:,} row(s) still to send; they go out by themselves; {STATUS_HINT}")
        return UNFINISHED
    say(f"done; {STATUS_HINT}")
    return NEEDS_A_LOOK if tally.invalid or watched.counts.get("dead") else DONE


def _reading(progress: Progress, file: BackfillFile) -> Callable[[int], None]:
    total = max(1, file.size)
    return lambda rows: progress.show("reading", min(file.position(), total), total, f"{rows:,} rows")


def _states(counts: dict[str, int]) -> str:
    names = ("delivered", "skipped", "dry_run", "dead", "pending", "sending")
    return ", ".join(f"{name.replace('_', ' ')} {counts[name]:,}" for name in names if counts.get(name))


def _report(say: Callable[[str], None], tally: backfill.Tally, unknown: str, ignored: list[str]) -> None:
    counts = tally.counts()
    say(f"{tally.rows:,} row(s) read:")
    say(f"  to import             {counts['to import']:>9,} contact(s): implicit permission, through an import")
    say(f"  declined              {counts['declined']:>9,} (email_opt_in false: never sent)")
    if unknown == "skip" or counts["consent unknown"]:
        say(f'  consent unknown       {counts["consent unknown"]:>9,} (unknown_consent = "skip": not sent)')
    if tally.mirror_checked:
        say(f"  suppressed            {counts['suppressed']:>9,} (unsubscribed or deleted in Constant Contact)")
    else:
        say("  suppressed                    - (not checked: the suppression mirror has not synced yet)")
    say(f"  duplicates coalesced  {counts['duplicates']:>9,} row(s) (an email on an earlier row too: the later wins)")
    say(f"  invalid               {tally.invalid:>9,} row(s)" + (":" if tally.invalid else ""))
    _listed(say, tally.problems, tally.invalid)
    if tally.notes:
        say(f"  notes (sent all the same) {tally.notes:,}:")
        _listed(say, tally.noted, tally.notes)
    if ignored:
        say(f"  ignored (not the hook's keys): {', '.join(ignored)}")


def _listed(say: Callable[[str], None], shown: list[str], count: int) -> None:
    for text in shown:
        say(f"    {text}")
    if count > len(shown):
        say(f"    ... and {count - len(shown):,} more")
