# Replication between real nodes on the in-process network under a virtual clock (and, for the store lock, in
# real time with real threads): the stream of a feed moves to another peer when its peer vanishes or lies,
# without a gap and without a storm of duplicates; two nodes syncing each other over a slow link with no
# buffer do not stall; a write lock held by another process does not freeze the event loop.
from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import nacl.signing
import trio
import trio.testing
from memnodes import Net, RawPeer, assert_serves, chain, own_feed_then_follow, raw_key, wait_until

from p2pnode.memnet import MemoryNetwork
from p2pnode.node import Node
from p2pnode.store import Store
from protocol import wire
from protocol.log import Entry, create_entry

FEED_SIZE = 3_000


def holder_of(entries: list[Entry]):  # noqa: ANN201 - a prepare callback
    def prepare(_: nacl.signing.SigningKey, store: Store) -> None:
        for start in range(0, len(entries), 1_000):
            assert store.ingest_verified(entries[start:start + 1_000]).error is None
    return prepare


def follower_of(author: bytes):  # noqa: ANN201 - a prepare callback
    def prepare(key: nacl.signing.SigningKey, store: Store) -> None:
        store.publish(key, {"type": "follow", "feed": author})
    return prepare


def held(node: Node, author: bytes) -> int:
    head = node.store.head(author)
    return head.seq if head else 0


def whole(node: Node, author: bytes) -> int:
    """Entries of the feed held without a gap, from its first: the head alone comes first (newest first)."""
    return held(node, author) if node.store.lows().get(author, 1) == 1 else 0


async def test_stream_moves_when_its_peer_vanishes_mid_feed(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    author = raw_key(200)
    x = bytes(author.verify_key)
    entries = chain(author, [f"post {i}" for i in range(FEED_SIZE)])
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery, MemoryNetwork(bandwidth=200_000))  # about 1,000 entries a second
        first = await net.add(prepare=holder_of(entries), relay=True)
        second = await net.add(prepare=holder_of(entries), relay=True)
        reader = await net.add([first.address, second.address], prepare=follower_of(x), outbound_target=2)
        await wait_until(lambda: len(reader.sessions) == 2)
        await wait_until(lambda: held(reader, x) >= 500)
        streaming = reader.sessions[reader.by_handle[reader.replicator.streamer[x]].key]
        vanishing = first if streaming.key == first.owner else second
        net.stop(vanishing)
        await wait_until(lambda: held(reader, x) == FEED_SIZE, timeout=120)
        assert reader.store.check() == []
        # the old stream's batch in flight may arrive twice; nothing like a second copy of the feed
        assert reader.stats.duplicates_in <= wire.MAX_ENTRIES_PER_MESSAGE
        nursery.cancel_scope.cancel()


async def test_stream_moves_when_its_peer_lies_about_its_seq(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    author = raw_key(201)
    x = bytes(author.verify_key)
    entries = chain(author, [f"post {i}" for i in range(200)])
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        reader = await net.add(prepare=follower_of(x))
        liar = await RawPeer.connect(net, reader, raw_key(202))
        await liar.hello()
        await liar.send(wire.Have({x: 100_000}))  # claims a long feed and will send nothing of it
        await wait_until(lambda: x in reader.replicator.streamer)
        honest = await net.add([reader.address], prepare=holder_of(entries), relay=True)
        await wait_until(lambda: held(reader, x) == len(entries), timeout=60)
        assert reader.sessions[honest.owner].handle == reader.replicator.streamer[x]
        assert reader.store.check() == []
        nursery.cancel_scope.cancel()


async def test_two_nodes_syncing_each_other_over_a_slow_link_do_not_stall(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """10,000 entries each way at 80 KB/s over links with no buffer (a send waits for the other side to read),
    pinging every second. Version a16794b took 124 s and a `timeout:` drop for this; link time is ~25 s (the
    entries in full batches; bench/slow_link.py prints the breakdown)."""
    count = 10_000
    bandwidth = 80_000
    keys = [nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(2)]  # the keys Net gives nodes 0 and 1
    feeds = [bytes(k.verify_key) for k in keys]

    async with trio.open_nursery() as nursery:
        network = MemoryNetwork(bandwidth=bandwidth, buffered=False)
        net = Net(tmp_path, nursery, network)
        a = await net.add(prepare=own_feed_then_follow(count, feeds[1]), ping_interval=1.0)
        started = trio.current_time()
        b = await net.add([a.address], prepare=own_feed_then_follow(count, feeds[0]), ping_interval=1.0)
        await wait_until(lambda: a.owner in b.sessions)
        session = b.sessions[a.owner]
        # a feed arrives newest first: its head comes early, so wait for every entry, not for the head
        await wait_until(lambda: whole(a, b.owner) == count + 1 and whole(b, a.owner) == count + 1, timeout=600)
        elapsed = trio.current_time() - started
        assert b.sessions.get(a.owner) is session, "the connection was dropped and made again"
        entries = [stored.entry for stored in a.store.feed(a.owner)][::-1]
        per = wire.MAX_ENTRIES_PER_MESSAGE
        batches = [entries[i:i + per] for i in range(0, len(entries), per)]
        link_time = sum(len(wire.encode(wire.entries_message(batch))) for batch in batches) / bandwidth
        assert elapsed < 1.5 * link_time, f"{elapsed:.0f} s for about {link_time:.0f} s of link time"
        nursery.cancel_scope.cancel()


async def test_write_lock_held_by_another_process_does_not_freeze_the_node(tmp_path: Path) -> None:
    """Real time and real threads: while another connection holds the store's write lock, the node stores
    nothing but answers a ping at once. Version a16794b froze its event loop for as long as the lock was held."""
    author = raw_key(210)
    entries = chain(author, ["a", "b", "c"])
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        node = await net.add(relay=True, store_thread=True)
        peer = await RawPeer.connect(net, node, raw_key(211))
        await peer.hello()
        with closing(sqlite3.connect(node.store.path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # another process writes, and takes its time
            await peer.send(wire.entries_message(entries))
            await wait_until(lambda: node.stats.entries_in == 3, timeout=10)  # the node is now waiting to store
            with trio.fail_after(5):
                await peer.ping(42)  # answered while the write waits for the lock
            # (asked through the other connection: the node's own is busy in its writer thread, and a call
            # on it from here would wait for that thread, as the node's loop used to)
            stored = other.execute("SELECT count(*) FROM entries WHERE author = ?", (bytes(author.verify_key),))
            assert stored.fetchone()[0] == 0
            other.execute("COMMIT")
        await wait_until(lambda: node.store.head(bytes(author.verify_key)) is not None, timeout=30)
        nursery.cancel_scope.cancel()


def low_of(node: Node, author: bytes) -> int:
    return node.store.lows().get(author, 1) if node.store.head(author) else 0


async def test_new_follower_gets_the_newest_entries_first_then_the_past(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    author = raw_key(220)
    x = bytes(author.verify_key)
    entries = chain(author, [f"post {i}" for i in range(FEED_SIZE)])
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery, MemoryNetwork(bandwidth=200_000))
        holder = await net.add(prepare=holder_of(entries), relay=True)
        reader = await net.add([holder.address], prepare=follower_of(x))
        await wait_until(lambda: held(reader, x) > 0)
        assert held(reader, x) == FEED_SIZE  # the first thing shown is the newest ...
        assert [e.entry.seq for e in reader.store.feed(x)] == list(range(FEED_SIZE, FEED_SIZE - 50, -1))
        await wait_until(lambda: low_of(reader, x) == 1, timeout=120)  # ... and the past comes behind it
        assert len(reader.store.feed(x)) == FEED_SIZE
        assert reader.store.check() == []
        nursery.cancel_scope.cancel()


async def test_forged_newest_entry_is_refused_and_the_feed_comes_from_an_honest_peer(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    author = raw_key(221)
    x = bytes(author.verify_key)
    entries = chain(author, [f"post {i}" for i in range(200)])
    forged = entries[-1].to_wire()
    forged[1] = bytes(64)  # the head, with a signature its author never made
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        reader = await net.add(prepare=follower_of(x))
        liar = await RawPeer.connect(net, reader, raw_key(222))
        await liar.hello()
        await liar.send(wire.Have({x: 200}))
        with trio.fail_after(30):
            while not isinstance(message := await liar.receive(), wire.Stream):
                pass
        assert message.feeds == {x: 150}  # newest first
        await liar.send(wire.Entries((tuple(forged),)))
        reason = await liar.close_reason()
        assert reason is not None and reason.startswith("invalid:"), reason
        assert reader.store.head(x) is None
        await net.add([reader.address], prepare=holder_of(entries), relay=True)
        await wait_until(lambda: low_of(reader, x) == 1 and held(reader, x) == 200, timeout=60)
        assert reader.store.check() == []
        nursery.cancel_scope.cancel()


async def test_distant_feeds_are_kept_to_their_latest_entries(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    distant, near = raw_key(230), raw_key(231)
    d, n = bytes(distant.verify_key), bytes(near.verify_key)
    distant_feed = chain(distant, [f"far {i}" for i in range(500)])
    near_feed = [create_entry(near, None, {"type": "follow", "feed": d}, 1_000)]
    near_feed += chain(near, [f"near {i}" for i in range(99)], start=near_feed[0])
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        holder = await net.add(prepare=holder_of(distant_feed + near_feed), relay=True)
        reader = await net.add([holder.address], prepare=follower_of(n), keep_distant=20)
        await wait_until(lambda: held(reader, n) == 100 and held(reader, d) == 500, timeout=60)
        await wait_until(lambda: low_of(reader, n) == 1)
        assert low_of(reader, d) == 481  # hop 2: the latest 20, and no more is asked for
        assert len(reader.store.feed(d)) == 20
        assert reader.store.check() == []
        nursery.cancel_scope.cancel()


async def test_a_flood_of_wants_is_read_at_the_budgeted_rate_and_others_are_served(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The same 10,000-feed want, 30 times: past the burst of 200,000 feed names the node reads that peer at
    20,000 names a second (so the flood costs it a bounded share of its time) and keeps serving everyone."""
    feeds = {(i + 1).to_bytes(32, "big"): 0 for i in range(wire.MAX_FEEDS_PER_WANT)}
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        node = await net.add()
        flooder = await RawPeer.connect(net, node, raw_key(240))
        await flooder.hello()
        started = trio.current_time()
        for _ in range(30):
            await flooder.send(wire.Want(feeds, (), False))
        await flooder.ping(1)  # answered after the whole flood was read
        elapsed = trio.current_time() - started
        assert elapsed >= (30 * len(feeds) - node.config.request_burst) / node.config.request_rate - 0.5
        await assert_serves(net, node, 2)
        nursery.cancel_scope.cancel()
