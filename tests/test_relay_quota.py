# Relay quotas (spec/replication.md, "Relay quotas"): new feeds per peer per hour and in total, which feeds
# a full relay still takes, `rate-limited:` with a retry time to the peer over its quota, and a relay's own
# `want` that stays within what its peers accept, also after a restart. In-process nodes on the memory
# network under the virtual clock (scaled-down limits), and 100,000 junk feeds against a real relay.
from __future__ import annotations

import random
import re
from pathlib import Path

import nacl.signing
import trio
import trio.testing
from attackers import handshake, hello, open_tcp
from conftest import run_cli
from memnodes import Net, chain, wait_until
from nodeproc import NodeProcess, init_home, status_json, wait_for
from test_node_defense import RawPeer, raw_key

from p2pnode.home import STORE_FILE
from p2pnode.node import Node, NodeConfig
from p2pnode.relaypolicy import NODE, PEER, RelayLimits, RelayPolicy
from p2pnode.store import Store
from protocol import wire
from protocol.ids import parse_feed_id
from protocol.log import Entry, create_entry


def junk(count: int, seed: int = 0) -> list[Entry]:
    """One-entry feeds of fresh keys: what a flooder invents."""
    rng = random.Random(seed)
    return [chain(nacl.signing.SigningKey(rng.randbytes(32)), ["junk"])[0] for _ in range(count)]


def follow(key: nacl.signing.SigningKey, target: bytes) -> Entry:
    return create_entry(key, None, {"type": "follow", "feed": target}, 1_000)


def test_policy_quotas_and_the_full_relay(tmp_path: Path) -> None:
    owner = bytes(nacl.signing.SigningKey.generate().verify_key)
    with Store(tmp_path / "s.sqlite3", owner) as store:
        policy = RelayPolicy(RelayLimits(new_feeds_per_peer_per_hour=5, new_feeds_per_hour=8,
                                         max_feeds=6, hard_max_feeds=7))
        a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
        feeds = [bytes([i]) * 32 for i in range(1, 40)]
        assert [policy.admit(a, f, 0.0) for f in feeds[:6]] == [None] * 5 + [PEER]
        assert policy.admit(a, feeds[0], 0.0) is None  # a feed it holds is always taken
        assert policy.retry_reason(a, 0.0) == (
            "rate-limited: more than 5 new feeds from one peer in an hour; retry in 720 s")
        assert policy.admit(b, feeds[10], 0.0) is None  # 6 held: full from now on
        assert policy.admit(b, feeds[11], 0.0) == NODE  # a stranger is refused when full...
        followed = feeds[12]
        assert store.ingest_verified([follow(nacl.signing.SigningKey(b"\x01" * 32), followed)]).error is None
        assert store.followed_among([followed, feeds[11]]) == {followed}
        assert policy.admit(b, followed, 0.0, followed=True) is None  # ...a followed one is, to the hard cap
        assert policy.admit(c, feeds[13], 0.0) == NODE  # and the node-wide 8 per hour are used up
        assert policy.admit(c, feeds[13], 3600.0 / 8 * 2, followed=True) == NODE  # refilled; the hard cap holds


async def test_a_relays_want_stays_within_its_peers_limit_also_after_a_restart(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A relay holding 600 junk feeds (what an unbounded relay kept after a flood), an honest peer that
    accepts wants of at most 450 feeds: they stay connected, also across a restart of the relay."""
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        relay = await net.add(relay=True, prepare=lambda key, store: store.ingest_verified(junk(600)))
        assert relay.address is not None
        honest = await net.add([relay.address], max_peer_wants=450)
        await wait_until(lambda: relay.owner in honest.sessions and honest.owner in relay.sessions, timeout=60)
        first = honest.sessions[relay.owner]
        await trio.sleep(100)  # 100 virtual seconds: pings
        assert honest.sessions.get(relay.owner) is first and first.closing is None
        # restart the relay on the same store and port
        port = relay.address.port
        await relay.stop()
        relay.store.close()
        key = nacl.signing.SigningKey(bytes([1]) * 32)
        store = Store(tmp_path / "node0.sqlite3", bytes(key.verify_key))
        assert len(store.clock()) >= 600
        config = NodeConfig(listen_host="10.0.0.0", listen_port=port, verify_workers=0, relay=True,
                            store_thread=False)
        again = Node(key, store, config, net.network.interface("10.0.0.0"), random.Random(7))
        await nursery.start(again.run, [])
        await wait_until(lambda: again.owner in honest.sessions and honest.owner in again.sessions
                         and honest.sessions[again.owner] is not first, timeout=600)
        second = honest.sessions[again.owner]
        await trio.sleep(100)
        assert honest.sessions.get(again.owner) is second and second.closing is None
        nursery.cancel_scope.cancel()


async def test_junk_feeds_are_held_to_the_quotas_and_the_flooder_told_when_to_retry(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        limits = RelayLimits(new_feeds_per_peer_per_hour=50, new_feeds_per_hour=120, max_feeds=100,
                             hard_max_feeds=110)
        relay = await net.add(relay=True, relay_limits=limits)
        reasons = []
        for number in range(5):
            peer = await RawPeer.connect(net, relay, raw_key(500 + number))
            await peer.hello()
            await peer.send(wire.entries_message(junk(80, seed=number)))
            if number < 2:  # over its own quota of 50: told when to retry
                reasons.append(await peer.close_reason())
            else:  # the relay is full: not this peer's doing, its junk is dropped and it stays connected
                await peer.ping(number)
            await peer.conn.aclose()
        for reason in reasons:
            assert reason is not None and re.fullmatch(
                r"rate-limited: more than 50 new feeds from one peer in an hour; retry in \d+ s", reason), reason
        held = len(relay.store.clock())
        assert 100 <= held <= 110, held  # 2 x 50 taken, then the relay is full
        # an honest author's feed that a held feed follows is still taken; a stranger's is not
        friend = nacl.signing.SigningKey(b"\x77" * 32)
        peer = await RawPeer.connect(net, relay, raw_key(600))
        await peer.hello()
        # a feed already held (it was taken under the quotas) follows the friend
        held_key = nacl.signing.SigningKey(random.Random(0).randbytes(32))
        [held_entry] = chain(held_key, ["junk"])
        assert relay.store.clock([held_key.verify_key.encode()])[held_key.verify_key.encode()] == 1
        followed = create_entry(held_key, held_entry, {"type": "follow", "feed": bytes(friend.verify_key)}, 2_000)
        await peer.send(wire.entries_message([followed]))
        await peer.ping(1)
        held += 1
        await peer.send(wire.entries_message(chain(friend, ["hello"]) + junk(1, seed=99)))
        await peer.ping(1)
        await wait_until(lambda: relay.store.clock([bytes(friend.verify_key)])[bytes(friend.verify_key)] == 1)
        assert len(relay.store.clock()) == held
        nursery.cancel_scope.cancel()


AUTHOR = nacl.signing.SigningKey(b"\x44" * 32)


async def test_a_real_relay_after_100000_junk_feeds_and_a_restart(tmp_path: Path) -> None:
    """100,000 one-entry feeds of fresh keys from 100 flooders (a fresh peer key each, as a Sybil would)
    against `p2pnode run --relay`: the store keeps to the node-wide quota, and an honest peer that connects
    afterwards, and again after a restart, gets the relay's wants (within 100,000 feeds) and stays."""
    home = tmp_path / "relay"
    owner = parse_feed_id(init_home(home))
    node = NodeProcess(home, "--relay")
    try:
        opening = trio.CapacityLimiter(8)
        rng = random.Random(5)

        async def flood(number: int) -> None:
            entries = [chain(nacl.signing.SigningKey(rng.randbytes(32)), ["junk"])[0] for _ in range(1000)]
            async with opening:
                stream = await open_tcp(node.address, f"127.0.{number % 250 + 1}.{number // 250 + 2}")
                peer = await handshake(stream, node.address)
                await peer.send(hello())
                await peer.send(wire.entries_message(entries))
                if number < FILLING:  # within the node-wide quota: stay until the relay holds them all
                    await held_by(node.address, entries[-1].author, f"127.0.{number % 250 + 1}.{number // 250 + 2}")
                await peer.send(wire.Ping(1))
                while not isinstance(await peer.receive(), wire.Pong | wire.Close | None):
                    pass
                await trio.aclose_forcefully(stream)

        started = trio.current_time()
        with trio.fail_after(600):
            async with trio.open_nursery() as nursery:  # the first ten fill the node-wide quota...
                for number in range(FILLING):
                    nursery.start_soon(flood, number)
            async with trio.open_nursery() as nursery:  # ...the other 90 come after
                for number in range(FILLING, 100):
                    nursery.start_soon(flood, number)
        with Store(home / STORE_FILE, owner) as store:
            held = len(store.clock())
        quota = RelayLimits().new_feeds_per_hour  # and what it refilled while the flood went on
        assert quota - 100 <= held <= quota + 1 + quota * (trio.current_time() - started) / 3600, held
        await assert_honest_peer_stays(node)
        assert node.stop() == 0, node.log_text()
        node = NodeProcess(home, "--relay")
        await assert_honest_peer_stays(node)
        assert_another_relay_stays(tmp_path, home, owner, node)
    finally:
        assert node.stop() == 0, node.log_text()


def assert_another_relay_stays(tmp_path: Path, home: Path, owner: bytes, flooded: NodeProcess) -> None:
    """A second `p2pnode run --relay` whose owner follows the flooded relay's: it gets that feed and, of
    the junk feeds the flooded relay holds (10,000), the 900 it is offered at once (its quota of 1,000 an
    hour less the sender's margin), with
    nothing refused and nobody closed with `rate-limited:` (spec/replication.md, "Offering to a relay")."""
    assert run_cli(home, "post", "still here").returncode == 0
    other_home = tmp_path / "other"
    other_owner = parse_feed_id(init_home(other_home))
    assert run_cli(other_home, "follow", flooded.address).returncode == 0
    other = NodeProcess(other_home, "--relay")
    try:
        def held() -> dict[bytes, int]:
            with Store(other_home / STORE_FILE, other_owner) as store:
                return store.clock()

        wait_for(lambda: held().get(owner, 0) >= 1, 60, "the followed feed at the second relay")
        first = 1_000 - 100  # the quota less the sender's margin (protocol/offers.py)
        wait_for(lambda: len(held()) >= first + 2, 120, "the first hour's new feeds at the second relay")
        wait_for(lambda: any(p.get("in_sync") for p in status_json(other_home).get("peers", [])), 60,
                 "the second relay in sync with the flooded one")
        new = len(set(held()) - {owner, other_owner})
        assert first <= new <= first + 5, new  # the quota's first allowance, and a few seconds' refill
        for log in (other.log_text(), flooded.log_text()):
            assert "rate-limited" not in log, log
        assert status_json(other_home)["peers"], "the second relay lost its connection"
    finally:
        assert other.stop() == 0, other.log_text()


FILLING = 10  # flooders whose 1,000 feeds each the relay takes (its node-wide quota: 10,000 an hour)


async def held_by(address: str, author: bytes, local_ip: str) -> None:
    """Until the relay holds `author`'s feed: asked over another connection (a want is answered with a
    note once the feed is held; the connection that sent the entries is not noted its own)."""
    stream = await open_tcp(address, local_ip)
    peer = await handshake(stream, address)
    await peer.send(hello())
    await peer.send(wire.Want({author: 0}, (), False))
    with trio.fail_after(120):
        while not isinstance(message := await peer.receive(), wire.Have) or author not in message.feeds:
            assert message is not None and not isinstance(message, wire.Close), message
    await trio.aclose_forcefully(stream)


async def assert_honest_peer_stays(node: NodeProcess) -> None:
    """An honest peer counts the feeds the relay's wants name (its limit: 100,000) and checks that the
    relay answers a ping after them, i.e. nothing closed the connection."""
    stream = await open_tcp(node.address, None)
    peer = await handshake(stream, node.address)
    await peer.send(hello())
    await peer.send(wire.Want({bytes(AUTHOR.verify_key): 0}, (), False))
    await peer.send(wire.Ping(77))
    named: set[bytes] = set()
    wants = 0
    ponged = False
    with trio.fail_after(60):  # the relay's writer may send the pong before its want: wait for both
        while not (ponged and wants):
            message = await peer.receive()
            assert message is not None and not isinstance(message, wire.Close), message
            if isinstance(message, wire.Want):
                wants += 1
                named.update(message.feeds)
            if isinstance(message, wire.Pong) and message.nonce == 77:
                ponged = True
    assert len(named) <= 100_000
    await peer.send(wire.Ping(78))  # and it is still connected after its wants went out
    with trio.fail_after(60):
        while not isinstance(message := await peer.receive(), wire.Pong):
            assert message is not None and not isinstance(message, wire.Close), message
    await peer.send(wire.Close("done"))
    await trio.aclose_forcefully(stream)
