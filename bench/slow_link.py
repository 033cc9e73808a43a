# Benchmark: two nodes that follow each other sync 10,000 entries each way over a slow link (the memory network
# with a bandwidth limit and no buffer, under a virtual clock: the scenario of tests/test_replication_nodes.py's
# slow-link test). Prints the link time (the bytes the entries need, sent in full batches, over the bandwidth),
# the measured time, their ratio against the 1.10 bound, the connections dropped, the bytes each way by
# message type, and where each direction's link sat idle. Not part of the test suite.
#
# usage: python bench/slow_link.py [--entries 10000] [--bandwidth 80000] [--ping 1.0] [--buffered]
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import nacl.signing
import trio
import trio.testing

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from memnodes import Net, own_feed_then_follow, wait_until  # noqa: E402

from p2pnode.connection import Connection  # noqa: E402
from p2pnode.memnet import MemoryNetwork  # noqa: E402
from p2pnode.node import Node  # noqa: E402
from p2pnode.session import MAX_BATCH_BYTES  # noqa: E402
from protocol import boxstream, msgframing, wire  # noqa: E402
from protocol.log import Entry  # noqa: E402

BOUND = 1.10
BOX_OVERHEAD = 34  # a box-stream frame: 18-byte boxed header + 16-byte MAC on the body (spec/transport.md)


def on_link(message_bytes: int) -> int:
    """Bytes a wire message of this size takes on the link: 4-byte length, then box-stream frames."""
    framed = message_bytes + msgframing.LENGTH_SIZE
    frames = -(-framed // boxstream.MAX_BODY_SIZE)
    return framed + frames * BOX_OVERHEAD


def full_batches(entries: list[Entry], limit: int) -> list[int]:
    """Sizes (wire bytes) of the `entries` messages that carry these entries in batches as full as the
    protocol allows (MAX_ENTRIES_PER_MESSAGE and the sender's MAX_BATCH_BYTES)."""
    sizes, batch, size = [], [], 0
    for entry in entries:
        entry_size = len(entry.header_bytes) + len(entry.signature) + len(entry.payload or b"") + 16
        if batch and (len(batch) == limit or size + entry_size > MAX_BATCH_BYTES):
            sizes.append(len(wire.encode(wire.entries_message(batch))))
            batch, size = [], 0
        batch.append(entry)
        size += entry_size
    if batch:
        sizes.append(len(wire.encode(wire.entries_message(batch))))
    return sizes


class LinkLog:
    """What crossed the link each way: bytes by message type (counted where Connection.send frames them), and
    the busy periods of each direction's throttled stream (to find where the link sat idle)."""

    def __init__(self) -> None:
        self.by_type: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
        self.sends: dict[str, list[tuple[float, float, str]]] = defaultdict(list)  # (start, end, type)
        self.raw: dict[str, int] = defaultdict(int)
        self.names: dict[bytes, str] = {}
        self.pending: dict[int, str] = {}  # id(stream) -> type of the message being sent on it
        self.counting = True  # until both sides hold everything (the shutdown's goodbyes are left out)


def instrument(log: LinkLog, bandwidth: float) -> None:
    """Count every message by type and direction. Measurement only: the sends themselves are unchanged."""
    original = Connection.send

    async def counting_send(self: Connection, message: bytes) -> None:
        kind = type(wire.decode(message)).__name__.lower()
        if log.counting:
            counts = log.by_type[log.names.get(self.remote_key, "?")][kind]
            counts[0] += 1
            counts[1] += on_link(len(message))
        log.pending[id(getattr(self._stream, "inner", self._stream))] = kind  # the Throttled under the Link
        await original(self, message)

    Connection.send = counting_send  # type: ignore[method-assign]

    from p2pnode import memnet

    class Timed(memnet.Throttled):
        direction = "?"

        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            start = trio.current_time()
            await trio.sleep(len(data) / self.bandwidth)
            end = trio.current_time()
            await self.inner.send_all(data)
            kind = log.pending.pop(id(self), "handshake")
            if log.counting:
                log.raw[self.direction] += len(data)
                log.sends[self.direction].append((start, end, kind))

    memnet.Throttled = Timed  # type: ignore[misc]


class DropCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.drops: list[str] = []
        self.counting = True  # until both sides hold everything; the shutdown's goodbyes are no drops

    def emit(self, record: logging.LogRecord) -> None:
        if self.counting and record.msg.startswith("peer %s disconnected"):
            self.drops.append(record.getMessage())


def held(node: Node, author: bytes) -> int:
    """Entries of the feed held without a gap (it arrives newest first: the head comes before the past)."""
    head = node.store.head(author)
    return head.seq - node.store.lows().get(author, 1) + 1 if head else 0


async def scenario(args: argparse.Namespace, tmp: Path, log: LinkLog, drops: DropCounter) -> dict[str, Any]:
    keys = [nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(2)]  # the keys Net gives nodes 0 and 1
    feeds = [bytes(k.verify_key) for k in keys]
    log.names = {feeds[1]: "a->b", feeds[0]: "b->a"}
    made: dict[int, list[Entry]] = {0: [], 1: []}
    done: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        network = MemoryNetwork(bandwidth=args.bandwidth, buffered=args.buffered)
        original_pair = network.pair

        def pair(*args: Any) -> tuple[trio.abc.Stream, trio.abc.Stream]:
            ours, theirs = original_pair(*args)
            # the dialler is b: its stream carries b->a (set on the Throttled streams inside the links)
            ours.inner.direction, theirs.inner.direction = "b->a", "a->b"  # type: ignore[attr-defined]
            return ours, theirs

        network.pair = pair  # type: ignore[method-assign]
        net = Net(tmp, nursery, network)
        a = await net.add(prepare=own_feed_then_follow(args.entries, feeds[1], made[0]), ping_interval=args.ping)
        started = trio.current_time()
        b = await net.add([a.address], prepare=own_feed_then_follow(args.entries, feeds[0], made[1]),
                          ping_interval=args.ping)
        total = args.entries + 1

        async def watch(name: str, node: Node, author: bytes) -> None:
            await wait_until(lambda: held(node, author) == total, timeout=3600)
            done[name] = trio.current_time() - started

        async with trio.open_nursery() as watchers:
            watchers.start_soon(watch, "a->b", b, a.owner)
            watchers.start_soon(watch, "b->a", a, b.owner)
        elapsed = trio.current_time() - started
        drops.counting = log.counting = False
        complete = b.store.check() == [] and a.store.check() == []
        nursery.cancel_scope.cancel()
    limit = wire.MAX_ENTRIES_PER_MESSAGE
    needed = {"a->b": full_batches(made[0], limit), "b->a": full_batches(made[1], limit)}
    return {"elapsed": elapsed, "done": done, "started": started, "needed": needed, "made": made,
            "complete": complete}


def idle_gaps(sends: list[tuple[float, float, str]], start: float, end: float) -> list[tuple[float, float, str]]:
    """Periods over 0.05 s where a direction's link carried nothing: (from, length, type of the next send)."""
    gaps = []
    last = start
    for s, e, kind in sorted(sends):
        if s - last > 0.05:
            gaps.append((last - start, s - last, kind))
        last = max(last, e)
    if end - last > 0.05:
        gaps.append((last - start, end - last, "(end)"))
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=10_000, help="entries each way (plus one follow entry)")
    parser.add_argument("--bandwidth", type=float, default=80_000.0, help="bytes/s each way")
    parser.add_argument("--ping", type=float, default=1.0, help="ping interval, s (the test pings every second)")
    parser.add_argument("--buffered", action="store_true", help="links with a buffer (default: none, as the test)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    log, drops = LinkLog(), DropCounter()
    logging.getLogger("p2pnode.node").addHandler(drops)
    logging.getLogger("p2pnode.node").setLevel(logging.INFO)
    logging.getLogger("p2pnode.node").propagate = False
    instrument(log, args.bandwidth)
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="p2pnode-slowlink-") as tmp:
        result = trio.run(scenario, args, Path(tmp), log, drops, clock=trio.testing.MockClock(autojump_threshold=0))
    wall = time.perf_counter() - wall
    elapsed, started = result["elapsed"], result["started"]
    raw_entry_bytes = {d: sum(len(e.header_bytes) + len(e.signature) + len(e.payload or b"") for e in es)
                       for d, es in zip(("a->b", "b->a"), (result["made"][0], result["made"][1]), strict=True)}
    needed = {d: sum(on_link(s) for s in sizes) for d, sizes in result["needed"].items()}
    link_time = max(needed.values()) / args.bandwidth
    one_entry = len(wire.encode(wire.entries_message([result["made"][0][-1]])))
    test_link_time = (args.entries + 1) * one_entry / args.bandwidth
    ratio = elapsed / link_time
    print(f"{args.entries:,} entries (+1 follow) each way at {args.bandwidth / 1000:g} kB/s, "
          f"{'buffered' if args.buffered else 'unbuffered'} links, ping every {args.ping:g} s")
    print(f"link time: {link_time:.2f} s = {max(needed.values()):,} bytes (the entries in full batches, framed and "
          f"boxed; entries alone {max(raw_entry_bytes.values()):,} bytes) / {args.bandwidth:,.0f} B/s")
    print(f"  (the test's estimate, {args.entries + 1} x a one-entry message of {one_entry} bytes of the feed's "
          f"largest entry, unboxed: {test_link_time:.2f} s)")
    print(f"measured: {elapsed:.2f} s (virtual) from b's start until both hold everything; a->b done at "
          f"{result['done']['a->b']:.2f} s, b->a at {result['done']['b->a']:.2f} s")
    print(f"ratio {ratio:.3f} (bound {BOUND}: {'within' if ratio <= BOUND else 'OVER'}); connections dropped: "
          f"{len(drops.drops)}; stores check clean: {result['complete']}; wall {wall:.1f} s")
    summary: dict[str, Any] = {"link_time_s": round(link_time, 2), "measured_s": round(elapsed, 2),
                               "ratio": round(ratio, 3), "drops": len(drops.drops), "by_direction": {}}
    for direction in ("a->b", "b->a"):
        kinds = log.by_type[direction]
        total = sum(b for _, b in kinds.values())
        busy = sum(e - s for s, e, _ in log.sends[direction])
        print(f"{direction}: {log.raw[direction]:,} bytes on the link (messages {total:,}, the rest the handshake); "
              f"link busy {busy:.2f} s of {elapsed:.2f} s; needed {needed[direction]:,}")
        for kind, (count, size) in sorted(kinds.items(), key=lambda item: -item[1][1]):
            print(f"  {kind:8} {count:6} messages {size:11,} bytes ({size / max(1, total):6.1%}) = "
                  f"{size / args.bandwidth:7.2f} s of link")
        gaps = idle_gaps(log.sends[direction], started, started + elapsed)
        idle = sum(g for _, g, _ in gaps)
        longest = sorted(gaps, key=lambda g: -g[1])[:6]
        print(f"  idle over 0.05 s: {len(gaps)} gaps, {idle:.2f} s in all; longest: "
              + ", ".join(f"{length:.2f} s at {at:.1f} s before {kind}" for at, length, kind in longest))
        summary["by_direction"][direction] = {"bytes": log.raw[direction], "busy_s": round(busy, 2),
                                              "idle_s": round(idle, 2), "needed": needed[direction],
                                              "by_type": {k: v for k, v in kinds.items()}}
    for line in drops.drops:
        print(f"  drop: {line}")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
