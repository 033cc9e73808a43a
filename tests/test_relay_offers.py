# A sender never sends what the receiver's limits would refuse (spec/replication.md, "Offering to a relay"):
# a relay that strangers fed more junk feeds than its peers' quotas take offers another relay the feeds it
# neither named nor holds at that relay's stated pace, holds the rest back and offers them as the hour
# moves on; the receiving relay never has to refuse one, nobody is closed with `rate-limited:`, and the
# feeds the receiver follows flow meanwhile. In-process relays on the memory network under the virtual clock.
from __future__ import annotations

import random
from pathlib import Path

import nacl.signing
import pytest
import trio
import trio.testing
from memnodes import Net, RawPeer, chain, raw_key, wait_until
from test_relay_quota import follow, junk

from p2pnode.node import Node
from p2pnode.peerbook import TokenBucket
from p2pnode.relaypolicy import RelayLimits
from p2pnode.store import Store
from protocol import wire
from protocol.log import Entry
from protocol.offers import NEW_FEEDS_PER_HOUR, OfferBudget, Quota

JUNK = 3_000  # three times what the receiving relay takes from one peer in its first hour
HOUR = 3600.0
SLOW_TIMERS = {"replication_tick": 2.0, "poll_interval": 1.0}  # an hour of virtual time, few wake-ups
FIRST = NEW_FEEDS_PER_HOUR - NEW_FEEDS_PER_HOUR // 10  # offered at once: the quota less the sender's margin


def strangers_held(node: Node, named: set[bytes]) -> int:
    """Feeds the receiving relay holds that it does not want by name (its own, followed): what it took
    under its new-feed quota."""
    return len(set(node.store.clock()) - named)


async def test_a_relay_full_of_junk_offers_another_relay_only_what_its_quota_takes(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    author = nacl.signing.SigningKey(b"\x45" * 32)
    honest = bytes(author.verify_key)
    posts = chain(author, ["one", "two", "three"])

    def fed(_: nacl.signing.SigningKey, store: Store) -> None:  # what strangers and an honest author gave it
        for start in range(0, JUNK, 1_000):
            assert store.ingest_verified(junk(1_000, seed=start)[: JUNK - start]).error is None
        assert store.ingest_verified(posts[:2]).error is None

    def follows(key: nacl.signing.SigningKey, store: Store) -> None:
        assert store.ingest_verified([follow(key, honest)]).error is None

    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        flooded = await net.add(relay=True, prepare=fed, **SLOW_TIMERS)
        assert flooded.address is not None
        receiver = await net.add([flooded.address], relay=True, prepare=follows, **SLOW_TIMERS)
        named = {receiver.owner, honest}
        await wait_until(lambda: flooded.owner in receiver.sessions and receiver.owner in flooded.sessions)
        session = receiver.sessions[flooded.owner]
        other_side = flooded.sessions[receiver.owner]
        # the followed feed flows at once, whatever else waits
        await wait_until(lambda: receiver.store.clock([honest]).get(honest) == 2, timeout=30)
        # the quota's first allowance comes at once (less the sender's margin), and no more
        await wait_until(lambda: strangers_held(receiver, named) >= FIRST, timeout=120)
        started = trio.current_time()
        await trio.sleep(60)
        assert strangers_held(receiver, named) <= FIRST + 1 + 60 * NEW_FEEDS_PER_HOUR / HOUR
        # a new post of the followed author reaches the flooded relay and flows on while junk is held back
        await hand_over(net, flooded, posts[2:])
        await wait_until(lambda: receiver.store.clock([honest]).get(honest) == 3, timeout=30)
        # an hour on: about another hour's worth, at the quota's pace, never more
        await trio.sleep(HOUR)
        elapsed = trio.current_time() - started
        held = strangers_held(receiver, named)
        assert held <= FIRST + 1 + elapsed * NEW_FEEDS_PER_HOUR / HOUR, held
        assert held >= FIRST + (elapsed - 120) * NEW_FEEDS_PER_HOUR / HOUR, held
        assert held < JUNK  # the rest is still held back
        # the receiver never had to refuse a feed of it, and the connection is the same one, open
        assert receiver.relay_policy.refused == 0
        assert receiver.sessions.get(flooded.owner) is session and session.closing is None
        assert flooded.sessions.get(receiver.owner) is other_side and other_side.closing is None
        nursery.cancel_scope.cancel()


async def test_a_stated_quota_is_kept_and_a_relay_that_states_none_gets_the_spec_figures(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The receiving relay's quota comes from its own settings (here 40 an hour), stated in its `hello`;
    a peer that wants all and states nothing is offered no more than the spec's 1,000 at once (less the
    sender's margin of a tenth)."""

    def fed(_: nacl.signing.SigningKey, store: Store) -> None:
        assert store.ingest_verified(junk(1_500, seed=7)).error is None

    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        flooded = await net.add(relay=True, prepare=fed, **SLOW_TIMERS)
        assert flooded.address is not None
        limits = RelayLimits(new_feeds_per_peer_per_hour=40)
        receiver = await net.add([flooded.address], relay=True, relay_limits=limits, **SLOW_TIMERS)
        await wait_until(lambda: flooded.owner in receiver.sessions)
        await wait_until(lambda: strangers_held(receiver, {receiver.owner}) >= 36, timeout=60)  # 40 less 4
        await trio.sleep(HOUR / 2)
        assert 36 + 18 <= strangers_held(receiver, {receiver.owner}) <= 36 + 21
        assert receiver.relay_policy.refused == 0
        assert receiver.sessions[flooded.owner].closing is None
        # a relay-like peer that states no quota: notes of at most 1,000 feeds, then nothing until time passes
        peer = await RawPeer.connect(net, flooded, raw_key(77))
        await peer.hello()
        await peer.send(wire.Want({}, (), True))
        await peer.ping(1)
        with trio.move_on_after(30):
            while True:
                message = await peer.receive()
                assert not isinstance(message, wire.Close), message.reason
        noted = {f for m in peer.received if isinstance(m, wire.Have) for f in m.feeds}
        assert FIRST <= len(noted) <= FIRST + 9, len(noted)  # and 30 s: 8 more
        nursery.cancel_scope.cancel()


async def hand_over(net: Net, node: Node, entries: list[Entry]) -> None:
    """Entries of a feed the node holds, from a peer of its own (as an author's node would send them)."""
    peer = await RawPeer.connect(net, node, raw_key(4_242))
    await peer.hello()
    await peer.send(wire.entries_message(entries))
    await peer.ping(3)
    await peer.conn.aclose()


@pytest.mark.parametrize("per_hour", [40, 1_000])
def test_offers_delivered_up_to_six_minutes_late_never_exceed_the_receivers_quota(per_hour: int) -> None:
    """The sender counts a feed when it offers it, the receiver when its entries arrive: with every delivery
    up to 360 s late (at random), the receiver's own bucket (p2pnode/relaypolicy.py's) always has room;
    and without the sender's margin it would not."""
    rng = random.Random(per_hour)

    def refusals(margin: bool) -> int:
        budget = OfferBudget(Quota(per_hour, per_hour, 10**9), 0.0)
        if not margin:  # the same bucket without the tenth kept in hand
            budget.cap, budget.level = float(per_hour), float(per_hour)
        arrivals = []
        now = 0.0
        while now < 6 * HOUR:
            while budget.take(now):
                arrivals.append(now + (360 if now == 0 else rng.uniform(0, 360)))  # the first burst: late
            now += rng.uniform(0, 60)
        receiver = TokenBucket(per_hour, per_hour / HOUR, 0.0)
        return sum(not receiver.take(when) for when in sorted(arrivals))

    assert refusals(margin=True) == 0
    assert refusals(margin=False) > 0
