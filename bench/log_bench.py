# Benchmark of the log and the store: posts created+signed+stored per second (one transaction each via
# Store.publish, and batched via create_entry + Store.ingest), foreign entries verified+ingested per second,
# bytes on disk per entry, and the bare signature-verify rate as the ceiling; also ingest the way a running
# node does it, with signatures checked in two worker processes. Prints figures; never a test.
#   python bench/log_bench.py [--n 100000] [--batch 500]
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nacl.signing
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pnode.store import Store  # noqa: E402
from p2pnode.verifier import Verifier  # noqa: E402
from protocol.log import Entry, create_entry  # noqa: E402

AUTHOR_KEY = nacl.signing.SigningKey(b"\x21" * 32)
FOREIGN_KEY = nacl.signing.SigningKey(b"\x22" * 32)
OBSERVER = bytes(nacl.signing.SigningKey(b"\x23" * 32).verify_key)


def post_text(i: int) -> str:
    return f"benchmark post number {i}: a short line of text, about the size of a typical post."


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def bench_publish(directory: Path, n: int) -> float:
    """Store.publish: create, sign and store each post in its own transaction."""
    with Store(directory / "publish.sqlite3", bytes(AUTHOR_KEY.verify_key)) as store:
        start = time.perf_counter()
        for i in range(n):
            store.publish(AUTHOR_KEY, {"type": "post", "text": post_text(i)}, timestamp=1_000 + i)
        return rate(n, time.perf_counter() - start)


def bench_publish_batched(directory: Path, n: int, batch: int) -> float:
    """create_entry + Store.ingest in batches: the same work, one transaction per batch."""
    with Store(directory / "batched.sqlite3", bytes(AUTHOR_KEY.verify_key)) as store:
        start = time.perf_counter()
        previous: Entry | None = None
        items: list[tuple[bytes, bytes, bytes | None]] = []
        for i in range(n):
            previous = create_entry(AUTHOR_KEY, previous, {"type": "post", "text": post_text(i)}, 1_000 + i)
            items.append((previous.header_bytes, previous.signature, previous.payload))
            if len(items) == batch:
                _ingest_all(store, items)
                items = []
        _ingest_all(store, items)
        return rate(n, time.perf_counter() - start)


def _ingest_all(store: Store, items: list[tuple[bytes, bytes, bytes | None]]) -> None:
    if items:
        result = store.ingest(items)
        if result.error is not None:
            raise SystemExit(f"ingest failed: {result.error.reason}")


def make_foreign(n: int) -> list[tuple[bytes, bytes, bytes | None]]:
    previous: Entry | None = None
    items = []
    for i in range(n):
        previous = create_entry(FOREIGN_KEY, previous, {"type": "post", "text": post_text(i)}, 1_000 + i)
        items.append((previous.header_bytes, previous.signature, previous.payload))
    return items


def bench_ingest(directory: Path, items: list[tuple[bytes, bytes, bytes | None]], batch: int) -> tuple[float, float]:
    """Foreign entries verified and ingested into a fresh store; also bytes on disk per entry."""
    path = directory / "ingest.sqlite3"
    with Store(path, OBSERVER) as store:
        start = time.perf_counter()
        for first in range(0, len(items), batch):
            _ingest_all(store, items[first:first + batch])
        per_second = rate(len(items), time.perf_counter() - start)
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal")) if os.path.exists(p))
    return per_second, size / len(items)


def bench_ingest_with_workers(directory: Path, items: list[tuple[bytes, bytes, bytes | None]],
                              batch: int) -> float:
    """The running node's path (p2pnode/verifier.py): each batch checked but for its signatures here, the
    signatures it needs (spec/log.md, "Checking a batch": one per feed's run) by two worker processes when
    there are many, the next batch started before this one is stored. The signatures a batch's last one
    proves are left to the node's quiet-time check, as in a running node."""
    path = directory / "ingest-workers.sqlite3"
    verifier = Verifier(2)

    async def run(store: Store) -> None:
        await verifier.verify(items[:batch])  # start the worker processes before timing
        store.ingest_verified([])
        pending = [verifier.start(items[first:first + batch]) for first in range(0, min(len(items), 2 * batch),
                                                                                 batch)]
        next_first = 2 * batch
        while pending:
            entries, error, unchecked = await pending.pop(0).result()
            if error is not None:
                raise SystemExit(f"ingest failed: {error.reason}")
            if next_first < len(items):
                pending.append(verifier.start(items[next_first:next_first + batch]))
                next_first += batch
            result = store.ingest_verified(entries, None, unchecked)
            if result.error is not None:
                raise SystemExit(f"ingest failed: {result.error.reason}")

    try:
        with Store(path, OBSERVER) as store:
            start = time.perf_counter()
            trio.run(run, store)
            return rate(len(items), time.perf_counter() - start)
    finally:
        verifier.close()


def bench_verify_only(items: list[tuple[bytes, bytes, bytes | None]]) -> float:
    """The ceiling: libsodium Ed25519 verification of the same header bytes and nothing else."""
    verify_key = FOREIGN_KEY.verify_key
    start = time.perf_counter()
    for header, signature, _ in items:
        verify_key.verify(header, signature)
    return rate(len(items), time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="entries per figure (default 100000)")
    parser.add_argument("--batch", type=int, default=500, help="entries per ingest batch (default 500)")
    args = parser.parse_args(argv)
    n, batch = args.n, args.batch
    with tempfile.TemporaryDirectory(prefix="p2pnode-bench-") as tmp:
        directory = Path(tmp)
        publish = bench_publish(directory, n)
        print(f"publish (create+sign+store, 1 transaction each):  {publish:10,.0f} posts/s   (n={n:,})")
        batched = bench_publish_batched(directory, n, batch)
        print(f"publish batched (create_entry + ingest by {batch}):   {batched:10,.0f} posts/s")
        items = make_foreign(n)
        ingest, bytes_per_entry = bench_ingest(directory, items, batch)
        print(f"foreign ingest (verify+store, batches of {batch}):    {ingest:10,.0f} entries/s   (target >= 15,000)")
        print(f"bytes on disk per entry (db + wal after checkpoint): {bytes_per_entry:10,.0f} B")
        with_workers = bench_ingest_with_workers(directory, items, batch)
        print(f"foreign ingest, 2 signature workers (the node's way): {with_workers:10,.0f} entries/s")
        verify = bench_verify_only(items)
        print(f"verify only (nacl VerifyKey.verify of the headers):  {verify:10,.0f} verifies/s")
        print(f"ingest / verify-only:                                {ingest / verify:10.2f}")
        print(f"ingest with workers / verify-only (one core):        {with_workers / verify:10.2f}")
    print(json.dumps({"n": n, "batch": batch, "publish_per_s": round(publish), "publish_batched_per_s": round(batched),
                      "ingest_per_s": round(ingest), "bytes_per_entry": round(bytes_per_entry, 1),
                      "ingest_with_workers_per_s": round(with_workers), "verify_only_per_s": round(verify),
                      "ingest_over_verify": round(ingest / verify, 3),
                      "ingest_with_workers_over_verify": round(with_workers / verify, 3)}))


if __name__ == "__main__":
    main()
