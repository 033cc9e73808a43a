# Nodes on in-process memory streams (trio.testing) under a virtual clock: replication, live push,
# hops, blocks, retraction and peer exchange, with real SQLite stores and the real handshake.
from __future__ import annotations

import random
from pathlib import Path

import trio
import trio.testing
from memnodes import Net, wait_until

from p2pnode.node import Node


def seqs(node: Node, author: Node) -> int:
    return node.store.clock([author.owner])[author.owner]


async def test_two_nodes_sync_and_push(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        a = await net.add()
        for i in range(30):
            await a.publish({"type": "post", "text": f"before {i}"})
        b = await net.add(seeds=[a.address])
        await b.publish({"type": "follow", "feed": a.owner})
        await wait_until(lambda: seqs(b, a) == 30)
        await a.publish({"type": "post", "text": "live"})
        await wait_until(lambda: seqs(b, a) == 31)
        assert b.store.feed(a.owner, 1)[0].content["text"] == "live"
        assert b.store.check() == []
        nursery.cancel_scope.cancel()


async def test_relay_hops_and_author_gone(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A posts and follows D; R relays; B follows A only: B gets A's feed from R, and D's at hop 2."""
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        r = await net.add(relay=True)
        d = await net.add(seeds=[r.address])
        a = await net.add(seeds=[r.address])
        await d.publish({"type": "post", "text": "from d"})
        await a.publish({"type": "follow", "feed": d.owner})
        await a.publish({"type": "post", "text": "from a"})
        await wait_until(lambda: seqs(r, a) == 2 and seqs(r, d) == 1)
        b = await net.add(seeds=[r.address])
        await b.publish({"type": "follow", "feed": a.owner})
        await wait_until(lambda: seqs(b, a) == 2 and seqs(b, d) == 1)
        # with hops=1, a fourth node gets A but not D
        c = await net.add(seeds=[r.address], hops=1)
        await c.publish({"type": "follow", "feed": a.owner})
        await wait_until(lambda: seqs(c, a) == 2)
        await trio.sleep(5)
        assert seqs(c, d) == 0
        nursery.cancel_scope.cancel()


async def test_retraction_and_block_propagate(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        a = await net.add()
        b = await net.add(seeds=[a.address])
        c = await net.add(seeds=[a.address])
        first = await a.publish({"type": "post", "text": "regret"})
        for node in (b, c):
            await node.publish({"type": "follow", "feed": a.owner})
        await wait_until(lambda: seqs(b, a) == 1 and seqs(c, a) == 1)
        await a.publish({"type": "retract", "entry": first.hash})
        await wait_until(lambda: seqs(b, a) == 2)
        stored = b.store.entry_by_hash(first.hash)
        assert stored is not None and stored.retracted and stored.entry.payload is None
        assert b.store.check() == []
        # C blocks A: A's entries are purged, the connection closed, and new posts are not fetched
        await c.publish({"type": "block", "feed": a.owner})
        assert seqs(c, a) == 0
        await wait_until(lambda: a.owner not in c.sessions)
        await a.publish({"type": "post", "text": "after the block"})
        await wait_until(lambda: seqs(b, a) == 3)
        await trio.sleep(10)
        assert seqs(c, a) == 0 and c.store.feed(a.owner) == []
        nursery.cancel_scope.cancel()


async def test_peer_exchange_finds_peers_beyond_the_seed(tmp_path: Path,
                                                         autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        seed = await net.add()
        a = await net.add(seeds=[seed.address])
        await wait_until(lambda: a.owner in seed.sessions)
        # the seed checks the address A announced in its hello by dialling it; only then does it share it
        await wait_until(lambda: str(a.address) in seed.store.working_peers(10))
        b = await net.add(seeds=[seed.address])
        await wait_until(lambda: any(row["key"] == a.owner for row in b.store.peer_book()), timeout=300)
        await wait_until(lambda: a.owner in b.sessions, timeout=300)
        nursery.cancel_scope.cancel()


async def test_fifty_nodes_random_topology(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """50 nodes in a random connected topology; every node follows the author; one post reaches all."""
    rng = random.Random(50)
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        nodes = [await net.add(outbound_target=3)]
        for _ in range(49):
            # each new node is seeded with one or two existing nodes: the graph is connected
            seeds = [n.address for n in rng.sample(nodes, min(len(nodes), rng.choice([1, 2])))]
            nodes.append(await net.add(seeds=seeds, outbound_target=3))
        author = nodes[rng.randrange(50)]
        for node in nodes:
            if node is not author:
                await node.publish({"type": "follow", "feed": author.owner})
        entry = await author.publish({"type": "post", "text": "to everyone"})
        await wait_until(lambda: all(n.store.entry_by_hash(entry.hash) is not None for n in nodes), timeout=600)
        assert all(n.store.check() == [] for n in nodes)
        nursery.cancel_scope.cancel()


async def test_silent_client_is_dropped_after_the_handshake_timeout(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        node = await net.add()
        stream = await net.network.interface("10.9.9.9").dial(node.address.host, node.address.port)
        started = trio.current_time()
        with trio.fail_after(60):
            assert await stream.receive_some(100) == b""  # the node hung up without a word
        assert trio.current_time() - started == node.config.handshake_timeout
        await wait_until(lambda: node.inbound == 0, timeout=1)
        assert node.sessions == {}
        nursery.cancel_scope.cancel()
