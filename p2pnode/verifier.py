# Checks received batches in worker processes, so that a node syncing uses every core (threads in one process
# contend for the GIL): a large batch's decoding and payload hashes (9 us an entry) in chunks, then the
# signatures the batch needs (spec/log.md, "Checking a batch": one per feed for a run that forms a hash chain,
# every one otherwise; libsodium's Ed25519 verify costs 55 us) when there are many. The node's process rebuilds
# the entries from what the workers found (2 us an entry) and checks the few signatures left itself.
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
    Header,
    authenticate,
    bad_signatures,
    signature_ok,
    signatures_to_check,
    verify_entries,
    verify_entries_compact,
)

log = logging.getLogger("p2pnode.verifier")

Raw = tuple[bytes, bytes, bytes | None]
INLINE_CHUNK = 100  # signatures checked on the event loop between two checkpoints (5.5 ms)
WORKER_BATCH = 256  # entries from which a batch is checked in the workers (below, the hop costs more than it saves)


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
        """Start checking a batch; `await pending.result()` later. A large batch is checked but for its
        signatures in the workers, a chunk each; a small one here, at once, its signatures handed to the
        workers when it needs many. Starting the next batch before finishing this one keeps the workers busy
        while the node stores the previous batch."""
        pending = Pending(self, items)
        if self.pool is not None and len(items) >= WORKER_BATCH:
            size = -(-len(items) // self.workers)
            try:
                pending.structure = [self.pool.submit(verify_entries_compact, items[i:i + size])
                                     for i in range(0, len(items), size)]
                pending.structure_size = size
                return pending
            except (BrokenProcessPool, RuntimeError) as exc:  # a worker died, or the pool is shut down
                self._lost(exc)
        pending.entries, pending.error = verify_entries(items, signatures_checked=True)
        pending.check_signatures()
        return pending

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
    """A batch being checked: its structure (decoding, payload hashes: in the workers for a large batch),
    then the signatures it needs (in the workers when there are many)."""

    def __init__(self, verifier: Verifier, items: list[Raw]) -> None:
        self.verifier = verifier
        self.items = items
        self.entries: list[Entry] = []
        self.error: InvalidEntry | None = None
        self.structure: list[Future[tuple[list[tuple[Header, bytes, Any]], bool]]] = []
        self.structure_size = 0
        self.chunks: list[list[int]] = []  # positions whose signatures the workers check, a chunk each
        self.futures: list[Future[list[int]]] = []

    def check_signatures(self) -> None:
        """Hand the signatures the batch needs checked to the workers, when there are many."""
        verifier, entries = self.verifier, self.entries
        positions = signatures_to_check(entries)
        if verifier.pool is None or len(positions) < 2 * verifier.workers:
            return
        size = -(-len(positions) // verifier.workers)
        chunks = [positions[i:i + size] for i in range(0, len(positions), size)]
        try:
            self.futures = [verifier.pool.submit(bad_signatures,
                                                 [(entries[i].header_bytes, entries[i].signature) for i in chunk])
                            for chunk in chunks]
            self.chunks = chunks
        except (BrokenProcessPool, RuntimeError) as exc:
            verifier._lost(exc)

    async def _worker_results(self, futures: list[Future[Any]]) -> list[Any] | None:
        try:
            return await trio.to_thread.run_sync(_results, futures, abandon_on_cancel=True)
        except (BrokenProcessPool, RuntimeError) as exc:
            self.verifier._lost(exc)
            return None

    async def _rebuild(self) -> None:
        """The entries as the workers found them, up to the first invalid one (named by checking it here)."""
        results = await self._worker_results(self.structure)
        if results is None:
            self.entries, self.error = verify_entries(self.items, signatures_checked=True)
            return
        items, size = self.items, self.structure_size
        for number, (found, failed) in enumerate(results):
            base = number * size
            self.entries.extend(Entry(*items[base + i], header, entry_hash, decoded)
                                for i, (header, entry_hash, decoded) in enumerate(found))
            if failed:
                _, error = verify_entries(items[base + len(found):base + len(found) + 1], signatures_checked=True)
                self.error = error or InvalidEntry("invalid entry")
                return

    async def result(self) -> tuple[list[Entry], InvalidEntry | None, set[bytes]]:
        if self.structure:
            await self._rebuild()
            self.check_signatures()
        known: dict[int, bool] = {}  # position -> signature valid, as the workers found
        if self.futures:
            for chunk, found in zip(self.chunks, await self._worker_results(self.futures) or [], strict=False):
                bad = set(found)
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
