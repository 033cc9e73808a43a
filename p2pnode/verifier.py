# Checks received batches: everything but the signatures in the node's own process, then the signatures the
# batch needs checked (spec/log.md, "Checking a batch": one per feed for a run that forms a hash chain, every
# one otherwise) in worker processes when there are many, so that a batch of many feeds uses every core:
# libsodium's Ed25519 verify costs 55 us, and threads in one process contend for the GIL between calls.
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
from typing import Any

import trio

from protocol.errors import InvalidEntry
from protocol.log import (
    Entry,
    authenticate,
    bad_signatures,
    signature_ok,
    signatures_to_check,
    verify_entries,
)

log = logging.getLogger("p2pnode.verifier")

Raw = tuple[bytes, bytes, bytes | None]
INLINE_CHUNK = 100  # signatures checked on the event loop between two checkpoints (5.5 ms)


class Verifier:
    """`await verify(items)` -> (entries before the first invalid one, its error or None, the hashes of those
    whose own signatures went unchecked: spec/log.md, "Checking a batch"). With 0 workers it checks inline
    (simulations under a virtual clock, where a thread hop looks idle)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None
        if workers > 0:
            # forkserver: never fork the trio process itself, whose threads and sockets a child must not inherit
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"),
                                            initializer=_worker_init, initargs=(os.getpid(),))

    def start(self, items: list[Raw]) -> Pending:
        """Check a batch but for its signatures now, and hand the signatures it needs checked to the workers;
        `await pending.result()` later. Starting the next batch before finishing this one keeps the workers
        busy while the node stores the previous batch."""
        entries, error = verify_entries(items, signatures_checked=True)
        positions = signatures_to_check(entries)
        chunks: list[list[int]] = []
        futures: list[Future[list[int]]] = []
        if self.pool is not None and len(positions) >= 2 * self.workers:
            size = -(-len(positions) // self.workers)
            chunks = [positions[i:i + size] for i in range(0, len(positions), size)]
            try:
                futures = [self.pool.submit(bad_signatures,
                                            [(entries[i].header_bytes, entries[i].signature) for i in chunk])
                           for chunk in chunks]
            except (BrokenProcessPool, RuntimeError) as exc:  # a worker died, or the pool is shut down
                self._lost(exc)
                futures = []
        return Pending(self, entries, error, chunks, futures)

    async def verify(self, items: list[Raw]) -> tuple[list[Entry], InvalidEntry | None, set[bytes]]:
        return await self.start(items).result()

    async def bad_signatures(self, items: list[tuple[bytes, bytes]]) -> list[int]:
        """The positions of the (header, signature) pairs whose signatures are bad: in the workers, or inline
        with a checkpoint every INLINE_CHUNK signatures."""
        if self.pool is not None and items:
            size = -(-len(items) // self.workers)
            try:
                futures = [self.pool.submit(bad_signatures, items[i:i + size]) for i in range(0, len(items), size)]
                results = await trio.to_thread.run_sync(_results, futures, abandon_on_cancel=True)
                return [i * size + bad for i, found in enumerate(results) for bad in found]
            except (BrokenProcessPool, RuntimeError) as exc:
                self._lost(exc)
        bad: list[int] = []
        for start in range(0, len(items), INLINE_CHUNK):
            bad.extend(start + i for i in bad_signatures(items[start:start + INLINE_CHUNK]))
            await trio.lowlevel.checkpoint()
        return bad

    def _lost(self, exc: BaseException) -> None:
        log.warning("signature workers unavailable (%s); verifying in the node's process", exc)
        self.pool = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


class Pending:
    """A batch whose signatures the workers are checking."""

    def __init__(self, verifier: Verifier, entries: list[Entry], error: InvalidEntry | None,
                 chunks: list[list[int]], futures: list[Future[list[int]]]) -> None:
        self.verifier = verifier
        self.entries = entries
        self.error = error
        self.chunks = chunks
        self.futures = futures

    async def result(self) -> tuple[list[Entry], InvalidEntry | None, set[bytes]]:
        known: dict[int, bool] = {}  # position -> signature valid, as the workers found
        if self.futures:
            try:
                results = await trio.to_thread.run_sync(_results, self.futures, abandon_on_cancel=True)
            except (BrokenProcessPool, RuntimeError) as exc:
                self.verifier._lost(exc)
                results = []
            for chunk, bad in zip(self.chunks, results, strict=False):
                known.update((position, index not in bad) for index, position in enumerate(chunk))
        entries = self.entries

        def valid(position: int) -> bool:
            if position in known:
                return known[position]
            return signature_ok(entries[position].header_bytes, entries[position].signature)

        kept, failed, unchecked = authenticate(entries, valid)
        return kept, (InvalidEntry("bad signature") if failed else self.error), unchecked


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


def _results(futures: list[Future[Any]]) -> list[Any]:
    return [future.result() for future in futures]
