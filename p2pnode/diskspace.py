# A full disk is a state of the node, not a crash (spec/decisions.md, "A full disk"): DiskWatch decides
# whether the node may store what peers send (free space above the --min-free floor, and no write failed for
# lack of space since), says so once in the log and in `status`, and when space returns lets the node ask
# its peers again for what it dropped meanwhile. Also: recognising "no space" errors, and the one-line
# messages that name the cause of a home the node cannot use (full, read-only, no permission).
from __future__ import annotations

import errno
import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from .session import Session
    from .store import Store

log = logging.getLogger("p2pnode.disk")

DEFAULT_MIN_FREE = 256 * 2**20
SQLITE_FULL = 13
SQLITE_READONLY = 8
SQLITE_CANTOPEN = 14
SQLITE_PERM = 3
CHECK_INTERVAL_S = 1.0


def is_disk_full(exc: BaseException) -> bool:
    """An error that means the filesystem (or the user's quota) has no room left."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF == SQLITE_FULL) or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def parse_size(text: str) -> int:
    """'300M', '1G', '512k', '0' or a plain number of bytes."""
    units = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}
    number = text.strip().lower()
    digits = number.rstrip("kmgb")
    unit = number[len(digits):]
    if not digits.isdigit() or unit not in units:
        raise ValueError(f"--min-free must be a size such as 300M, 1G or 0, not {text!r}")
    return int(digits) * units[unit]


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class DiskWatch:
    """Whether the node stores what its peers send. `full` holds while the free space of the home's
    filesystem is below `min_free` or since a write failed for lack of space, until there is `min_free`
    free again (and at least a little: 1 MiB).

    Entries that arrive meanwhile are dropped. A peer never sends an entry twice on one connection
    (spec/replication.md), so when space returns the node closes the connections whose entries it dropped
    (`internal:`, not the peer's fault); they are dialled again and send, from what is held, what was lost."""

    def __init__(self, home: Path, min_free: int, store: Store | None = None) -> None:
        self.home = home
        self.min_free = min_free
        self.store = store
        self.full = False
        self.reason = ""
        self.dropped = 0  # entries received and not stored during the current episode
        self.dropped_from: set[Session] = set()

    def may_store(self) -> bool:
        return not self.full

    def failed(self, exc: BaseException) -> bool:
        """Note a failed write: True (and the node is now full) when it failed for lack of space."""
        if not is_disk_full(exc):
            return False
        self._enter(f"a write failed: {exc}")
        return True

    def drop(self, session: Session, count: int) -> None:
        self.dropped += count
        self.dropped_from.add(session)

    def _enter(self, reason: str) -> None:
        if self.full:
            return
        self.full = True
        self.reason = reason
        self.dropped = 0
        log.error("the disk holding %s is full (%s): not storing what peers send until there is %s free; "
                  "still serving and connected", self.home, reason, _size(self._resume_at()))

    def _resume_at(self) -> int:
        return max(self.min_free, 2**20)

    def check(self) -> bool:
        """Look at the free space; True when the node may store again after an episode."""
        if self.store is not None and self.store.full_error is not None:  # a bookkeeping write was skipped
            self.failed(self.store.full_error)
            self.store.full_error = None
        try:
            free = free_bytes(self.home)
        except OSError as exc:
            log.warning("cannot read the free space of %s: %s", self.home, exc)
            return False
        if not self.full and free < self.min_free:
            self._enter(f"{_size(free)} free, below the floor of {_size(self.min_free)} (--min-free)")
        elif self.full and free >= self._resume_at():
            log.warning("the disk holding %s has %s free again: storing again; %d entries dropped meanwhile "
                        "are fetched again from %d peers", self.home, _size(free), self.dropped,
                        len(self.dropped_from))
            return True
        return False

    async def run(self) -> None:
        from protocol.errors import Reason

        from .session import PeerGone
        while True:
            if self.check():
                # closed before storing resumes: a later entry of theirs would not follow what is held
                for session in self.dropped_from:
                    session.close(PeerGone(Reason.INTERNAL, "this node dropped entries while its disk was full; "
                                           "connect again to send them"))
                self.dropped_from.clear()
                self.full = False
            await trio.sleep(CHECK_INTERVAL_S)

    def status(self) -> dict[str, Any]:
        return {"storing": not self.full, "disk_full": self.reason if self.full else None}


def home_problem(exc: BaseException, home: Path) -> str | None:
    """The one line that names the cause of a failure to use the home, or None if it is not one of those."""
    if is_disk_full(exc):
        return f"the disk holding {home} is full: free some space and try again"
    code = getattr(exc, "sqlite_errorcode", None)
    code = code & 0xFF if code is not None else None
    access_problem = (isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno == errno.EROFS)
                      or code in (SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_PERM)
                      or (isinstance(exc, sqlite3.Error) and "unable to open" in str(exc)))
    if not access_problem:
        return None
    if _read_only_fs(home):
        return f"the home {home} is on a read-only filesystem: p2pnode needs to write there"
    from .home import STORE_FILE
    files = [home / name for name in (STORE_FILE, f"{STORE_FILE}-wal", f"{STORE_FILE}-shm")]
    for path in [home, *files]:
        if path.exists() and not os.access(path, os.R_OK | os.W_OK | (os.X_OK if path == home else 0)):
            return f"no permission to read and write {path} as user {_user()}: check its owner and mode"
    if code == SQLITE_READONLY:
        return f"the store in {home} cannot be written (read-only): check the permissions of its files"
    return None


def _read_only_fs(home: Path) -> bool:
    try:
        return bool(os.statvfs(home).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _user() -> str:
    try:
        import pwd
        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())
