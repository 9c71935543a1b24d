"""The sender process's view of the journals (``sender = "process"``): it writes none of its
own; it folds every host process's journal into the outbox while that process is still
writing it, and adopts the finished ones (a process that died, or handed a full file over).

Why folding a file another process appends to is safe: only whole lines are taken (a line
still being written waits for the next look), and the offset reached is stored in the same
transaction as the records, exactly as for our own journal. Host processes in this mode never
fold, so the sender process (single instance, by its lock) is the only one reading a live file.

Noticing new work costs one ``stat`` per journal per look (a directory listing and the sizes), and
a read of the bytes after what was folded when a file is longer than that (a mapped file always
is: its size is its capacity, its data ends at the first NUL), no SQLite query: the offsets
already folded are remembered here.
"""

import os
import time
from pathlib import Path

from . import journal_files
from .flock import Busy
from .interfaces import JournalSink
from .journal import ADOPT_EVERY, Journal


class JournalWatcher(Journal):
    def __init__(self, directory: Path):
        super().__init__(directory)
        self._known: dict[str, int] = {}  # journal name -> bytes folded (as far as we know)

    def sizes(self) -> dict[str, int]:
        """Every journal's name and size now (files vanish while we look: they are skipped)."""
        found: dict[str, int] = {}
        try:
            entries = os.scandir(self.directory)
        except FileNotFoundError:
            return found
        with entries:
            for entry in entries:
                if entry.name.endswith(".jsonl"):
                    try:
                        found[entry.name] = entry.stat().st_size
                    except FileNotFoundError:
                        continue
        return found

    def grown(self) -> bool:
        """Some journal holds a line not folded yet (cheap: no SQLite; a file is read only when
        its size passed what was folded)."""
        return any(self._unfolded(name, size, self._known.get(name, 0)) for name, size in self.sizes().items())

    def backlog(self, folded_offset) -> bool:
        return any(self._unfolded(name, size, folded_offset(name)) for name, size in self.sizes().items())

    def _unfolded(self, name: str, size: int, folded: int) -> bool:
        # a tail cut short by a failed write is no line to fold: it must not keep us going round
        # (every 20 ms, never leaving when idle) until its writer writes again
        return size > folded and journal_files.whole_line_after(self.directory / name, folded, size)

    def fold_into(self, outbox: JournalSink) -> int:
        """Fold what every journal gained since the last look; adopt the finished ones."""
        if not self._fold_lock.acquire(blocking=False):
            return 0
        try:
            count = 0
            now = time.monotonic()
            adopt_all = now - self._adopted_at >= ADOPT_EVERY  # a dead process's file that did not grow
            if adopt_all:
                self._adopted_at = now
            sizes = self.sizes()
            for name in [n for n in self._known if n not in sizes]:
                del self._known[name]  # adopted and removed (by us or another process)
            for name, size in sizes.items():
                if not adopt_all and not self._unfolded(name, size, self._known.get(name, 0)):
                    continue  # a mapped file's size is its capacity: only a whole new line counts
                path = self.directory / name
                lock = journal_files.owner_lock(path)
                try:
                    lock.acquire()
                except Busy:  # its process is alive: take its whole lines, it goes on writing
                    count += journal_files.fold_file(outbox, path)
                    self._known[name] = outbox.journal_offset(name)
                    continue
                count += journal_files.fold_file(outbox, path, final=True)
                journal_files.forget(outbox, path, lock)
                self._known.pop(name, None)
            return count
        finally:
            self._fold_lock.release()
