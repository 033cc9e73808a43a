# Checks the signatures of received batches in worker processes, so that a node syncing a large feed uses
# every core: libsodium's Ed25519 verify is most of the cost of ingesting, and threads in one process
# contend for the GIL between calls. Everything else about an entry is checked in the node's own process.
# The workers die with the node, whatever kills it (see _worker_init).
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import select
import signal
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import trio

from protocol.errors import InvalidEntry
from protocol.log import Entry, first_bad_signature, verify_entries

log = logging.getLogger("p2pnode.verifier")

Raw = tuple[bytes, bytes, bytes | None]


class Verifier:
    """`await verify(items)` -> (verified entries before the first invalid one, its error or None).
    With 0 workers it verifies inline (simulations under a virtual clock, where a thread hop looks idle)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None
        if workers > 0:
            # forkserver: never fork the trio process itself, whose threads and sockets a child must not inherit
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"),
                                            initializer=_worker_init, initargs=(os.getpid(),))

    def start(self, items: list[Raw]) -> Pending:
        """Hand a batch to the workers now; `await pending.result()` later. Starting the next batch before
        finishing this one keeps the workers busy while the node stores the previous batch."""
        futures: list[Future[int | None]] = []
        size = len(items)
        if self.pool is not None and len(items) >= 2 * self.workers:
            size = -(-len(items) // self.workers)
            try:
                futures = [self.pool.submit(first_bad_signature, [(h, s) for h, s, _ in items[i:i + size]])
                           for i in range(0, len(items), size)]
            except (BrokenProcessPool, RuntimeError) as exc:  # a worker died, or the pool is shut down
                self._lost(exc)
                futures = []
        return Pending(self, items, futures, size)

    async def verify(self, items: list[Raw]) -> tuple[list[Entry], InvalidEntry | None]:
        return await self.start(items).result()

    def _lost(self, exc: BaseException) -> None:
        log.warning("signature workers unavailable (%s); verifying in the node's process", exc)
        self.pool = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


class Pending:
    """A batch whose signatures the workers are checking."""

    def __init__(self, verifier: Verifier, items: list[Raw], futures: list[Future[int | None]], size: int) -> None:
        self.verifier = verifier
        self.items = items
        self.futures = futures
        self.size = size

    async def result(self) -> tuple[list[Entry], InvalidEntry | None]:
        if not self.futures:
            return verify_entries(self.items)
        try:
            results = await trio.to_thread.run_sync(_results, self.futures, abandon_on_cancel=True)
        except (BrokenProcessPool, RuntimeError) as exc:
            self.verifier._lost(exc)
            return verify_entries(self.items)
        bad = next((i * self.size + r for i, r in enumerate(results) if r is not None), None)
        checked = self.items if bad is None else self.items[:bad]
        verified, error = verify_entries(checked, signatures_checked=True)
        if error is None and bad is not None:
            _, error = verify_entries(self.items[bad:bad + 1])  # the full check names what is wrong
            error = error or InvalidEntry("bad signature")
        return verified, error


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _worker_init(node_pid: int) -> None:
    """Runs first in each worker. A worker must not outlive its node: a SIGKILLed node cannot shut its
    pool down, and its workers would otherwise sit forever on the pipe of their task queue (they hold its
    write end themselves). The multiprocessing forkserver and resource tracker stop on their own once the
    last process holding their pipes, the node and its workers, is gone."""
    # Ctrl-C reaches the whole process group; the node shuts its workers down itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        # the worker's parent is the forkserver: if it dies, so does the worker
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_node, args=(node_pid,), name="watch-node", daemon=True).start()


def _watch_node(node_pid: int) -> None:
    """End this worker as soon as the node process is gone (a pidfd becomes readable when its process
    exits; where there is none, poll the pid once a second)."""
    try:
        pidfd = os.pidfd_open(node_pid)
    except ProcessLookupError:
        os._exit(0)  # the node died before this worker started
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        select.select([pidfd], [], [])
        os._exit(0)
    while True:
        try:
            os.kill(node_pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass
        threading.Event().wait(1.0)


def _results(futures: list[Future[int | None]]) -> list[int | None]:
    return [future.result() for future in futures]
