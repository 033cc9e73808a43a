# Benchmark: the memory one peer can make a node hold for it (spec/replication.md, "Memory per peer"),
# measured with tracemalloc. (1) The replication state of a relay that holds 100,000 feeds, for peers that
# each do the most the spec lets them: want 100,000 feeds, stream them, ask for the past of all of them,
# and note 300,000 more feeds the relay neither holds nor names (keys decoded from the wire: each peer's
# own objects). (2) A real relay (in-process, memory network, real handshake and SQLite) with peers that
# each note 300,000 strangers and want 100,000 unknown feeds over the connection: what the whole node
# allocates per peer (SQLite's own memory is not traced). Prints bytes per peer and the ratio to the bound.
# Not part of the test suite.
#
# usage: python bench/peer_memory.py [--peers 4] [--node-peers 4]
from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import trio  # noqa: E402

from protocol import wire  # noqa: E402
from protocol.offers import MAX_STRANGER_NOTES  # noqa: E402
from protocol.replication import MAX_PEER_WANTS, Replicator  # noqa: E402

BOUND_BYTES = 128 * 1024 * 1024  # spec/replication.md, "Memory per peer"
CHUNK = wire.MAX_FEEDS_PER_WANT


def fresh(numbers: range, salt: int) -> list[bytes]:
    """Feed keys as a decoder makes them: new bytes objects (salt only varies the unnamed ones)."""
    return [bytes(n.to_bytes(28, "big") + salt.to_bytes(4, "big")) for n in numbers]


def copies(feeds: list[bytes]) -> list[bytes]:
    return [bytes(bytearray(f)) for f in feeds]


def replicator_part(peers: int) -> None:
    replicator = Replicator(relay=True)
    held = fresh(range(MAX_PEER_WANTS), 0)
    replicator.on_stored(dict.fromkeys(held, 5), None, 0.0)
    replicator.set_lows(dict.fromkeys(held, 2))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for handle in range(1, peers + 1):
        peer = replicator.add_peer(handle, bytes([handle]) * 32)
        named = fresh(range(MAX_PEER_WANTS), 10_000 + handle)  # feeds it holds and the relay lacks
        streamed = copies(held)  # the peer's own decoded keys of the feeds the relay holds
        for start in range(0, len(named), CHUNK):
            replicator.on_want(handle, wire.Want(dict.fromkeys(named[start:start + CHUNK], 3), (), True), 0.0)
        for start in range(0, len(streamed), CHUNK):
            part = streamed[start:start + CHUNK]
            replicator.on_stream(handle, wire.Stream(dict.fromkeys(part, 3), ()))
            replicator.on_backfill(handle, wire.Backfill(dict.fromkeys(part, 5)))
        strangers = fresh(range(3 * MAX_PEER_WANTS), handle)
        for start in range(0, len(strangers), CHUNK):
            replicator.on_have(handle, wire.Have(dict.fromkeys(strangers[start:start + CHUNK], 9)), 1.0)
        del named, streamed, strangers
        counts = {name: len(getattr(peer, name)) for name in (
            "their_want", "their_seq", "streaming_to", "streaming_from", "stream_due", "backfill_to", "notes_due",
            "dirty", "strangers")}
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_peer = (after - before) / peers
    print(f"replication state, {peers} peers at every limit (relay holding {len(held):,} feeds): "
          f"{per_peer / 1e6:.1f} MB per peer; bound {BOUND_BYTES / 2**20:.0f} MiB: "
          f"{per_peer / BOUND_BYTES:.2f} of it")
    print(f"  counts of the last peer: {counts}")
    stranger_replicator = Replicator(relay=True)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for handle in range(1, peers + 1):
        stranger_replicator.add_peer(handle, bytes([handle]) * 32)
        strangers = fresh(range(3 * MAX_PEER_WANTS), handle)
        for start in range(0, len(strangers), CHUNK):
            stranger_replicator.on_have(handle, wire.Have(dict.fromkeys(strangers[start:start + CHUNK], 9)), 1.0)
        del strangers
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"replication state, {peers} peers each noting {3 * MAX_PEER_WANTS:,} strangers: "
          f"{(after - before) / peers / 1e6:.2f} MB per peer (node-wide maps included; "
          f"{MAX_STRANGER_NOTES:,} notes kept each)")


async def node_part(peers: int) -> None:
    from memnodes import Net, RawPeer, raw_key

    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            net = Net(Path(tmp), nursery)
            relay = await net.add(relay=True)
            connected = []
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for number in range(peers):
                peer = await RawPeer.connect(net, relay, raw_key(900 + number))
                await peer.hello()
                nursery.start_soon(drain, peer)  # it reads what the relay sends (its stream requests)
                strangers = fresh(range(3 * MAX_PEER_WANTS), 2_000 + number)
                for start in range(0, len(strangers), CHUNK):
                    await peer.send(wire.Have(dict.fromkeys(strangers[start:start + CHUNK], 4)))
                wanted = fresh(range(MAX_PEER_WANTS), 1_000 + number)
                for start in range(0, len(wanted), CHUNK):
                    await peer.send(wire.Want(dict.fromkeys(wanted[start:start + CHUNK], 0), (), False))
                del wanted, strangers
                connected.append(peer)
            await settle(relay, peers)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            states = list(relay.replicator.peers.values())
            per_peer = (after - before) / peers
            print(f"a real relay, {peers} peers each noting {3 * MAX_PEER_WANTS:,} strangers and "
                  f"wanting {MAX_PEER_WANTS:,} unknown feeds: {per_peer / 1e6:.1f} MB per peer (whole node, Python "
                  f"allocations); bound {BOUND_BYTES / 2**20:.0f} MiB: {per_peer / BOUND_BYTES:.2f} of it")
            print(f"  their_seq per peer: {sorted(len(s.their_seq) for s in states)}, strangers: "
                  f"{sorted(len(s.strangers) for s in states)}")
            del connected
            nursery.cancel_scope.cancel()


async def drain(peer: object) -> None:
    try:
        while True:
            await peer.receive()  # type: ignore[attr-defined]
            peer.received.clear()  # type: ignore[attr-defined]  # the bench keeps nothing of it
    except Exception:  # the relay or the bench ended the connection
        return


async def settle(relay: object, peers: int) -> None:
    """Until every peer's messages are handled (the relay answers each one's ping)."""
    replicator = relay.replicator  # type: ignore[attr-defined]
    with trio.fail_after(600):
        while len(replicator.peers) < peers or any(len(p.their_want) < MAX_PEER_WANTS
                                                    for p in replicator.peers.values()):
            await trio.sleep(0.2)
        await trio.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--node-peers", type=int, default=4)
    args = parser.parse_args()
    random.seed(1)
    replicator_part(args.peers)
    if args.node_peers:
        trio.run(node_part, args.node_peers)


if __name__ == "__main__":
    main()
