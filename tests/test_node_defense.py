# Regression tests for the review's defects in the node (nested payloads, bad host names, drop while
# sending, oversized wants, per-peer want cap, forks by prev link, silent seeds, blocking peers, reconnects,
# idle timeouts, internal errors). In-process nodes on MemoryNetwork under the autojump clock, with a raw,
# hand-driven peer doing the misbehaving over the real handshake and wire format.
from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nacl.signing
import trio
import trio.testing
from memnodes import FAR, Net, RawPeer, assert_serves, chain, raw_key, wait_until

from p2pnode.connection import TransportError, server_handshake
from p2pnode.memnet import MemoryInterface
from p2pnode.node import Node
from p2pnode.store import Store
from protocol import wire
from protocol.ids import Address, feed_id
from protocol.log import FORMAT_VERSION, Header, create_entry, sha256

Handler = Callable[[trio.abc.Stream], Awaitable[None]]
BAD_HOSTS = ["a" * 64 + ".example", "a..b"]


def signed(key: nacl.signing.SigningKey, payload: bytes, seq: int = 1,
           prev: bytes | None = None) -> tuple[bytes, bytes, bytes]:
    """An entry signed correctly over any payload bytes (create_entry only builds valid payloads)."""
    header = Header(FORMAT_VERSION, bytes(key.verify_key), seq, prev, 1_000, sha256(payload), len(payload)).encode()
    return header, key.sign(header).signature, payload


def peer_hosts(node: Node) -> set[str]:
    return {row["address"].rpartition("/")[0].rpartition(":")[0] for row in node.store.peer_book()}


# ---------------------------------------------------------------- 1. nested payload


async def test_deeply_nested_payload_is_invalid_and_node_survives(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        relay = await net.add(relay=True)
        author = raw_key(1)
        peer = await RawPeer.connect(net, relay, author)
        await peer.hello()
        payload = b"\x82\xa4type\xa1x\xa1v" + b"\x91" * 600 + b"\x00"  # {"type": "x", "v": [[[...0]]]}
        await peer.send(wire.Entries((signed(author, payload),)))
        reason = await peer.close_reason()
        assert reason is not None and reason.startswith("invalid:"), reason
        assert relay.store.clock([bytes(author.verify_key)])[bytes(author.verify_key)] == 0
        await assert_serves(net, relay, 1)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- 2. bad host names


class Resolving:
    """A node's network that resolves names first, as trio.open_tcp_stream does: a name no DNS query can
    carry (label over 63 characters, empty label) fails there with UnicodeError, a ValueError."""

    def __init__(self, inner: MemoryInterface) -> None:
        self.inner = inner
        self.dialled: list[str] = []

    async def serve(self, host: str, port: int, handler: Handler, *, task_status: Any = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        await self.inner.serve(host, port, handler, task_status=task_status)

    async def dial(self, host: str, port: int) -> trio.abc.Stream:
        self.dialled.append(host)
        host.encode("idna")
        return await self.inner.dial(host, port)


async def test_bad_host_in_hello_is_ignored(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        node = await net.add(wrap=Resolving)
        resolving = node.network
        assert isinstance(resolving, Resolving)
        for number, host in enumerate(BAD_HOSTS):
            key = raw_key(20 + number)
            peer = await RawPeer.connect(net, node, key)
            await peer.hello(f"{host}:8765/{feed_id(bytes(key.verify_key))}")
            await peer.ping(number)
        await trio.sleep(5)  # probes would have run by now
        assert resolving.dialled == []
        assert not peer_hosts(node) & set(BAD_HOSTS), node.store.peer_book()
        await assert_serves(net, node, 2)
        nursery.cancel_scope.cancel()


async def test_bad_host_in_peers_is_ignored(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        node = await net.add(wrap=Resolving)
        resolving = node.network
        assert isinstance(resolving, Resolving)
        peer = await RawPeer.connect(net, node, raw_key(30))
        await peer.hello()
        good = f"10.7.7.7:8765/{feed_id(bytes(raw_key(33).verify_key))}"
        await peer.send(wire.Peers(tuple(f"{host}:8765/{feed_id(bytes(raw_key(31 + i).verify_key))}"
                                         for i, host in enumerate(BAD_HOSTS)) + (good,)))
        await peer.ping(3)
        await trio.sleep(10)  # several dial rounds
        assert not set(resolving.dialled) & set(BAD_HOSTS)
        assert [row["address"] for row in node.store.peer_book()] == [good]
        await peer.ping(4)
        await assert_serves(net, node, 5)
        nursery.cancel_scope.cancel()


async def test_bad_host_already_in_peer_book_is_never_dialled(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A peer book written before the fix (or by hand) holding such names: the node starts and keeps running."""
    def prepare(_: nacl.signing.SigningKey, store: Store) -> None:
        for number, host in enumerate(BAD_HOSTS):
            store.add_peer(f"{host}:8765/{feed_id(bytes(raw_key(40 + number).verify_key))}",
                           bytes(raw_key(40 + number).verify_key), "peer")

    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        node = await net.add(prepare=prepare, wrap=Resolving)
        resolving = node.network
        assert isinstance(resolving, Resolving)
        await trio.sleep(30)
        assert not set(resolving.dialled) & set(BAD_HOSTS)
        await assert_serves(net, node, 6)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- 3. drop in the middle of a feed


class Lockstep:
    """A node's network whose inbound connections are trio's lockstep stream pairs: a send returns only
    once the other side has read it all, as over a slow link, so a want can arrive in the middle of a feed."""

    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.nursery: trio.Nursery | None = None

    async def serve(self, host: str, port: int, handler: Handler, *, task_status: Any = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        async with trio.open_nursery() as nursery:
            self.handler, self.nursery = handler, nursery
            task_status.started((host, 1))
            await trio.sleep_forever()

    async def dial(self, host: str, port: int) -> trio.abc.Stream:
        raise OSError(errno.ECONNREFUSED, "no outbound connections here")

    def connect(self) -> trio.abc.Stream:
        assert self.handler is not None and self.nursery is not None
        ours, theirs = trio.testing.lockstep_stream_pair()
        self.nursery.start_soon(self.handler, theirs)
        return ours


async def test_drop_while_sending_stops_the_feed(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    size = 3 * wire.MAX_ENTRIES_PER_MESSAGE
    author = raw_key(50)
    entries = chain(author, [f"post {i}" for i in range(size)])
    x = bytes(author.verify_key)

    def prepare(_: nacl.signing.SigningKey, store: Store) -> None:
        assert store.ingest_verified(entries).error is None

    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        lockstep = Lockstep()
        node = await net.add(prepare=prepare, wrap=lambda _: lockstep)
        peer = await RawPeer.over(lockstep.connect(), node, raw_key(51))

        async def ask() -> None:  # while reading: the node reads nothing until its own greeting is read
            await peer.hello()
            await peer.send(wire.Want({x: 0}, (), False))
            await peer.send(wire.Stream({x: 0}, ()))

        nursery.start_soon(ask)
        before = after = 0
        with trio.move_on_after(30):
            while after <= 2 * size:  # bounded even if the node sends forever (the clock would never jump)
                message = await peer.receive()
                if not isinstance(message, wire.Entries):
                    continue
                if before == 0:
                    # the node is now blocked sending the next batch; it reads this before that send ends
                    before = len(message.raw)
                    await peer.send(wire.Want({}, (x,), False))  # unfollowed in the middle of the feed
                else:
                    after += len(message.raw)
        assert 0 < before < size
        assert after <= size - before, f"{after} entries received after the drop; the feed has {size}"
        await peer.ping(7)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- 4. wants of a relay with many feeds


async def test_relay_with_many_feeds_sends_notes_within_the_limit(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A relay says `all` instead of listing every feed it holds; asked for all, it notes them in `have`s
    that each stay within the wire limit."""
    count = wire.MAX_FEEDS_PER_WANT + 50
    entries = [create_entry(raw_key(100_000 + i), None, {"type": "post", "text": "hi"}, 1_000) for i in range(count)]
    authors = {e.author for e in entries}

    def prepare(_: nacl.signing.SigningKey, store: Store) -> None:
        for start in range(0, count, 2_500):
            assert store.ingest_verified(entries[start:start + 2_500]).error is None

    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        relay = await net.add(prepare=prepare, relay=True)
        peer = await RawPeer.connect(net, relay, raw_key(60))
        # a relay's hello stating room for every feed: all are noted (within a smaller one, protocol/offers.py)
        await peer.send(wire.Hello(wire.PROTOCOL_VERSION, (), None, True, None, (2 * count,) * 3))
        await peer.send(wire.Want({}, (), True))
        noted: dict[bytes, int] = {}
        relay_wants_all = False
        with trio.fail_after(30):
            while not authors <= noted.keys():
                message = await peer.receive()  # wire.decode refuses a want or have over the limit
                assert not isinstance(message, wire.Close), message.reason
                if isinstance(message, wire.Want):
                    assert len(message.feeds) <= wire.MAX_FEEDS_PER_WANT
                    relay_wants_all = relay_wants_all or message.all
                if isinstance(message, wire.Have):
                    assert len(message.feeds) <= wire.MAX_FEEDS_PER_WANT
                    noted.update(message.feeds)
        assert relay_wants_all
        assert all(noted[a] == 1 for a in authors)
        await peer.ping(8)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- 5. per-peer want cap


async def test_peer_wanting_too_many_feeds_is_rate_limited(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    def feeds(first: int, number: int) -> dict[bytes, int]:
        return {(first + i).to_bytes(32, "big"): 0 for i in range(number)}

    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        node = await net.add(max_peer_wants=50)
        peer = await RawPeer.connect(net, node, raw_key(70))
        await peer.hello()
        await peer.send(wire.Want(feeds(1, 30), (), False))
        await peer.ping(1)
        # dropping makes room: still 30 wanted
        await peer.send(wire.Want(feeds(1_000, 30), tuple(feeds(1, 30)), False))
        await peer.ping(2)
        await peer.send(wire.Want(feeds(2_000, 30), (), False))  # 60 > 50
        reason = await peer.close_reason()
        assert reason is not None and reason.startswith("rate-limited:"), reason
        await assert_serves(net, node, 9)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- 6. fork seen as a longer other branch


async def test_fork_by_prev_link_is_kept_and_the_peer_stays(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    author = raw_key(80)
    x = bytes(author.verify_key)
    root, second_a, third_a = chain(author, ["root", "a2", "a3"])
    [_, _, fourth_b] = chain(author, ["b2", "b3", "b4"], start=root)

    def prepare(key: nacl.signing.SigningKey, store: Store) -> None:
        store.publish(key, {"type": "follow", "feed": x})
        assert store.ingest_verified([root, second_a, third_a]).error is None

    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        node = await net.add(prepare=prepare)
        assert x in node.wanted
        honest = raw_key(81)  # a peer that holds the other branch: only the author misbehaved
        peer = await RawPeer.connect(net, node, honest)
        await peer.hello()
        await peer.ping(1)
        assert any(isinstance(m, wire.Want) and m.feeds.get(x) == 3 for m in peer.received)
        await peer.send(wire.entries_message([fourth_b]))  # seq 4, whose prev is not our seq 3
        await wait_until(lambda: x in node.store.forked_feeds() or bytes(honest.verify_key) not in node.sessions)
        await peer.ping(2)  # not disconnected for it
        assert node.store.fork_proofs(x) == [(3, third_a.header_bytes, fourth_b.header_bytes)]
        assert node.store.clock([x])[x] == 3
        assert x not in node.wanted
        assert any(isinstance(m, wire.Want) and x in m.drop for m in peer.received)
        assert bytes(honest.verify_key) in node.sessions
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- 7. silent seed


async def test_silent_seed_gets_one_connection_at_a_time(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    seed_key = raw_key(90)
    accepted = open_now = most_open = 0

    async def silent(stream: trio.abc.Stream) -> None:
        nonlocal accepted, open_now, most_open
        conn = await server_handshake(stream, seed_key, idle_timeout=FAR)
        accepted += 1
        open_now += 1
        most_open = max(most_open, open_now)
        try:
            while True:  # never says a word; notices when the node hangs up
                await conn.receive()
        except TransportError:
            pass
        finally:
            open_now -= 1

    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        host, port = await net.serve("10.9.9.8", silent)
        await net.add(seeds=[Address(host, port, bytes(seed_key.verify_key))])
        await trio.sleep(100)
        # the silent seed is dropped by the ping deadline (after 50 s) and dialled again after its backoff:
        # never two connections at once, and no more than one per deadline
        assert most_open == 1 and 1 <= accepted <= 2
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- 8. a peer that refuses us


async def test_peer_that_blocks_us_is_redialled_with_backoff(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    refuser_key = raw_key(95)
    handshakes: list[float] = []

    async def refuse(stream: trio.abc.Stream) -> None:
        conn = await server_handshake(stream, refuser_key, idle_timeout=FAR)
        handshakes.append(trio.current_time())
        await conn.send(wire.encode(wire.Close(f"blocked: {feed_id(conn.remote_key)} is blocked by this node")))
        await conn.aclose()

    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        host, port = await net.serve("10.9.9.7", refuse)
        await net.add(seeds=[Address(host, port, bytes(refuser_key.verify_key))])
        await trio.sleep(120)
        assert 2 <= len(handshakes) <= 8, handshakes
        gaps = [b - a for a, b in zip(handshakes, handshakes[1:], strict=False)]
        assert gaps[-1] > 2 * gaps[0], gaps
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- 10. reconnect after a silent loss


async def test_reconnect_from_the_same_peer_replaces_the_old_connection(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        node = await net.add()
        key = raw_key(100)
        old = await RawPeer.connect(net, node, key)
        await old.hello()
        await old.ping(1)
        # `old` died without a word reaching the node (NAT rebinding, laptop resume); the peer reconnects
        new = await RawPeer.connect(net, node, key)
        await new.hello()
        await new.ping(2)
        reason = await old.close_reason()
        assert reason is not None and reason.startswith("duplicate:"), reason
        await new.ping(3)
        assert list(node.sessions) == [bytes(key.verify_key)]
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- 11. idle connection


async def test_idle_connection_is_closed_with_timeout(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        node = await net.add(idle_timeout=5.0)
        peer = await RawPeer.connect(net, node, raw_key(110))
        await peer.hello()
        started = trio.current_time()
        reason = await peer.close_reason()  # the raw peer never answers, not even the node's pings
        assert reason is not None and reason.startswith("timeout:"), reason
        assert 5.0 <= trio.current_time() - started <= 6.0
        await wait_until(lambda: node.sessions == {}, timeout=2)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- 12. unexpected error in a session


class Faulty(trio.abc.Stream):
    """A stream that fails in a way no layer of the node expects, once told to."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.fail = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        if self.fail and data:
            raise RuntimeError("an error nobody expects")
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


class FaultyNetwork:
    """A node's network that hands its inbound connections over Faulty streams."""

    def __init__(self, inner: MemoryInterface) -> None:
        self.inner = inner
        self.streams: list[Faulty] = []

    async def serve(self, host: str, port: int, handler: Handler, *, task_status: Any = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        async def wrapped(stream: trio.abc.Stream) -> None:
            self.streams.append(Faulty(stream))
            await handler(self.streams[-1])

        await self.inner.serve(host, port, wrapped, task_status=task_status)

    async def dial(self, host: str, port: int) -> trio.abc.Stream:
        return await self.inner.dial(host, port)


async def test_unexpected_error_closes_only_that_session(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        node = await net.add(wrap=FaultyNetwork)
        faulty = node.network
        assert isinstance(faulty, FaultyNetwork)
        bystander = await RawPeer.connect(net, node, raw_key(120))
        await bystander.hello()
        await bystander.ping(1)
        victim = await RawPeer.connect(net, node, raw_key(121))
        await victim.hello()
        await victim.ping(2)
        faulty.streams[-1].fail = True
        await victim.send(wire.Ping(3))
        reason = await victim.close_reason()
        assert reason is not None and reason.startswith("internal:"), reason
        await bystander.ping(4)
        await assert_serves(net, node, 10)
        nursery.cancel_scope.cancel()


async def test_the_feed_name_budget_belongs_to_the_address_not_the_connection() -> None:
    """A peer that reconnects (or is evicted and comes back) does not get a fresh burst of feed names."""
    from p2pnode.session import RequestBudgets

    budgets = RequestBudgets(rate=10.0, burst=100.0)
    first = budgets.for_ip("203.0.113.7")
    first.tokens = 0.0  # spent by the first connection
    assert budgets.for_ip("203.0.113.7") is first
    assert budgets.for_ip("203.0.113.8") is not first
    # one IPv6 host can use any address of its /64
    assert budgets.for_ip("2001:db8:1:2::1") is budgets.for_ip("2001:db8:1:2:ffff::9")
    assert budgets.for_ip("2001:db8:1:3::1") is not budgets.for_ip("2001:db8:1:2::1")
    # IPv4 peers on a dual-stack socket are told apart by their IPv4 address, not lumped into one /64
    assert budgets.for_ip("::ffff:198.51.100.7") is not budgets.for_ip("::ffff:198.51.100.8")
    assert budgets.for_ip("::ffff:198.51.100.7") is budgets.for_ip("198.51.100.7")
    # no address (memory streams, proxied connections): a budget of its own
    assert budgets.for_ip(None) is not budgets.for_ip(None)
    # bounded: the least recently heard address is forgotten first
    small = RequestBudgets(rate=10.0, burst=100.0, size=2)
    kept = small.for_ip("203.0.113.7")
    small.for_ip("203.0.113.8")
    small.for_ip("203.0.113.7")  # heard again: now the most recent
    small.for_ip("203.0.113.9")
    assert list(small.by_address) == ["203.0.113.7", "203.0.113.9"] and small.for_ip("203.0.113.7") is kept
