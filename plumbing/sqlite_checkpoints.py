"""A SQLite file's write-ahead log checkpointed by a thread of its own, so that no commit on a service's loop does it.

By default SQLite checkpoints in the connection that commits once the log passes 1,000 pages: that commit copies the
log's pages into the database file and syncs both (~300 pages and two fsyncs at 1,000 trigger entries/s). In the
campaigns trigger bench those commits took 6-7 ms on the event loop's thread (up to 29 ms), against 0.2 ms for the
others, ~2.5 times a second, and 57% of the entries slower than the p99 were in flight across one (10% of all
entries). Here a thread asks SQLite for a PASSIVE checkpoint every `interval`: it copies what it can without waiting
for a reader or taking the write lock, the file and log syncs happen in that thread (sqlite3 lets go of the
interpreter meanwhile), and the writers' own checkpoint is left as a backstop (WAL_AUTOCHECKPOINT_PAGES) for a thread
that fell behind.

Under a steady stream of commits that thread alone never lets the log start over. SQLite restarts the log (writes
from its first frame again) only at a commit that begins when every frame has been copied, and commits land while a
checkpoint runs (6-9 ms for the ~2,500 pages a quarter second brings at 1,000 trigger entries/s, ~10 pages an entry).
The log grew until the writers' own checkpoint fired at 10,000 pages: about once a second one trigger commit on the
loop copied what the thread had not, in 5-12 ms, and the entries behind it waited. So once the log holds
RESTART_PAGES the thread asks the database (`restart`) for one more checkpoint in its writers' turn, on its loop: no
commit can land during it, it copies only what came since the thread's last one, and the next commit starts the log
over.
"""

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

WAL_AUTOCHECKPOINT_PAGES = 20_000
"""The connections' own wal_autocheckpoint while the thread runs (~80 MiB of log at 4 KiB pages): reached only if the
log could not be restarted past RESTART_PAGES (a reader holding an old snapshot for a long time)."""

RESTART_PAGES = 8_000
"""Pages in the log (~32 MiB at 4 KiB pages) past which the thread asks for the checkpoint that lets it start over."""

BEHIND_WARNING_PAGES = 5_000
"""Pages a checkpoint could not copy (readers still on them) above which it is logged, at most once a minute."""

_WARNING_EVERY_SECONDS = 60.0


class WalCheckpointer:
    """Checkpoints the write-ahead log of the SQLite file at `path` every `interval` seconds until stop()."""

    def __init__(self, path: str, interval: float, restart: Callable[[], None] | None = None) -> None:
        """`restart`, called from the thread once the log holds RESTART_PAGES after a checkpoint, has one more
        checkpoint run where no commit lands meanwhile (the database's writers' turn) and returns at once."""
        self.path = path
        self.interval = interval
        self.restart = restart
        self.checkpoints = 0
        """Checkpoints run (each a PRAGMA wal_checkpoint(PASSIVE), whether or not the log had pages to copy)."""
        self._stopping = threading.Event()
        self._warned_at = float("-inf")
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ends the thread after its current checkpoint (idempotent)."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        try:
            while not self._stopping.wait(self.interval):
                # No log yet (nothing written, or the file is not made yet): nothing to copy, and connecting would
                # create an empty database file before the service's migrations do.
                if connection is None and not os.path.exists(self.path + "-wal"):
                    continue
                try:
                    if connection is None:
                        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                    self._checkpoint(connection)
                except sqlite3.Error as error:
                    log.warning("sqlite_checkpoint_failed", database=os.path.basename(self.path), error=str(error))
                    with contextlib.suppress(sqlite3.Error):
                        if connection is not None:
                            connection.close()
                    connection = None
        finally:
            if connection is not None:
                connection.close()

    def _checkpoint(self, connection: sqlite3.Connection) -> None:
        # (busy, pages in the log, pages of it now in the database file); -1s when the file is not in WAL mode.
        _busy, in_log, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1
        behind = in_log - copied
        now = time.monotonic()
        if behind > BEHIND_WARNING_PAGES and now - self._warned_at >= _WARNING_EVERY_SECONDS:
            self._warned_at = now
            log.warning("sqlite_checkpoint_behind", database=os.path.basename(self.path), pages=behind)
        if self.restart is not None and in_log >= RESTART_PAGES:
            # What was committed while that one ran first, here (a few milliseconds' worth), so that the checkpoint in
            # the writers' turn has little left to copy. Not while a reader holds frames back: what it held would be
            # copied on the writers' loop once it let go (the next interval tries again). Nor when this one could not
            # run at all (busy, -1 pages in and -1 copied: another connection held the checkpoint lock).
            busy, in_log, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy and copied == in_log:
                self.restart()
