# Keeps SQLite off the event loop (spec/decisions.md, "The store and the event loop"): a running node makes
# every store call through a StoreRunner. Writes go, one at a time, to a worker thread that owns the store's
# connection; reads go to a second connection in another worker thread, so serving peers goes on while a
# write waits for a lock held by another process (WAL lets readers and a writer work at once). In simulations
# under a virtual clock (`threaded=False`) the calls run inline: a thread hop looks idle to trio's autojump
# clock, which would then race ahead of the store.
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from .store import Store

T = TypeVar("T")


class StoreRunner:
    """`await db.write(Store.method, *args)` and `await db.read(Store.method, *args)`."""

    def __init__(self, store: Store, *, threaded: bool) -> None:
        self.store = store
        self.threaded = threaded
        self.reader = store
        if threaded and str(store.path) != ":memory:":
            self.reader = Store(store.path, store.owner)
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(1)
        # held by the reader thread during each read: a read abandoned by a cancelled caller may still be
        # running when the node closes the store, and closing a connection under a running query crashes
        # the process (SIGSEGV, seen when a node was stopped right after a sync)
        self._reading = threading.Lock()

    async def write(self, method: Callable[..., T], *args: Any) -> T:
        """Run a store method on the writer connection. Not abandoned when cancelled: a transaction that
        has started finishes (or rolls back) before the caller goes on."""
        if not self.threaded:
            return method(self.store, *args)
        return await trio.to_thread.run_sync(method, self.store, *args, limiter=self._write_limiter)

    async def read(self, method: Callable[..., T], *args: Any) -> T:
        """Run a read-only store method on the reader connection; a cancelled caller does not wait for it."""
        if not self.threaded:
            return method(self.reader, *args)
        return await trio.to_thread.run_sync(self._read, method, *args, limiter=self._read_limiter,
                                             abandon_on_cancel=True)

    def _read(self, method: Callable[..., T], *args: Any) -> T:
        with self._reading:
            return method(self.reader, *args)

    def close(self) -> None:
        if self.reader is not self.store:
            with self._reading:  # an abandoned read finishes first (reads are short)
                self.reader.close()
