# Memory per peer bounded by the figures spec/replication.md states ("Memory per peer"): a peer that names,
# streams and notes as many feeds as it may, and notes hundreds of thousands more, leaves the per-peer
# replication state at or under the stated counts (counted, deterministic), and a relay keeps only a bounded
# number of a stranger's notes, over a real connection too (memory network, virtual clock).
from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from memnodes import Net, RawPeer, raw_key, wait_until

from protocol import wire
from protocol.errors import RemoteProtocolError
from protocol.offers import MAX_STRANGER_NOTES
from protocol.replication import MAX_PEER_WANTS, PeerState, Replicator

CHUNK = wire.MAX_FEEDS_PER_WANT


def keys(first: int, count: int) -> list[bytes]:
    return [(first + n).to_bytes(32, "big") for n in range(count)]


def chunks(feeds: list[bytes], seq: int) -> list[dict[bytes, int]]:
    return [dict.fromkeys(feeds[start:start + CHUNK], seq) for start in range(0, len(feeds), CHUNK)]


def per_peer_counts(peer: PeerState) -> dict[str, int]:
    return {name: len(getattr(peer, name)) for name in (
        "their_want", "their_seq", "streaming_to", "streaming_from", "want_sent", "notes_due", "notes_waiting",
        "stream_due",
        "stop_due", "dirty", "backfill_due", "backfill_to", "distrusted", "strangers")}


def assert_within_stated_bound(peer: PeerState) -> None:
    counts = per_peer_counts(peer)
    assert counts["their_want"] <= MAX_PEER_WANTS
    assert counts["streaming_to"] <= MAX_PEER_WANTS
    assert counts["backfill_to"] <= MAX_PEER_WANTS
    assert counts["their_seq"] <= 2 * MAX_PEER_WANTS
    assert counts["strangers"] <= MAX_STRANGER_NOTES
    noted = set(peer.their_seq)
    for subset in ("streaming_from", "stream_due", "backfill_due", "distrusted", "strangers"):
        assert set(getattr(peer, subset)) <= noted, subset
    # stops of streams asked for and then forgotten: sent before any new stream request
    assert counts["stop_due"] <= counts["their_seq"] + 2 * MAX_STRANGER_NOTES


def test_a_peer_at_every_limit_stays_within_the_stated_counts() -> None:
    """A relay holding 100,000 feeds; a peer that wants 100,000 of them (the most it may), streams them,
    notes them, and then notes 300,000 feeds nobody here holds or names."""
    replicator = Replicator(relay=True)
    held = keys(1, MAX_PEER_WANTS)
    replicator.on_stored(dict.fromkeys(held, 5), None, 0.0)
    peer = replicator.add_peer(1, b"p" * 32)
    for part in chunks(held, 3):
        replicator.on_want(1, wire.Want(part, (), True), 0.0)
    for part in chunks(held, 2):
        replicator.on_stream(1, wire.Stream(part, ()))
    strangers = keys(10_000_000, 3 * MAX_PEER_WANTS)
    for part in chunks(strangers, 9):
        replicator.on_have(1, wire.Have(part), 1.0)
    counts = per_peer_counts(peer)
    assert counts["their_want"] == MAX_PEER_WANTS and counts["streaming_to"] == MAX_PEER_WANTS
    assert counts["their_seq"] == MAX_PEER_WANTS and counts["strangers"] == 0  # no room for more notes
    assert_within_stated_bound(peer)
    # a second peer that only notes the 300,000: the newest 10,000 are kept
    other = replicator.add_peer(2, b"q" * 32)
    for part in chunks(strangers, 9):
        replicator.on_have(2, wire.Have(part), 1.0)
    assert set(other.strangers) == set(other.their_seq) == set(strangers[-MAX_STRANGER_NOTES:])
    assert_within_stated_bound(other)
    # what the node keeps across peers because of them grows no further: the streams it asked for
    assert len(replicator.streamer) <= MAX_STRANGER_NOTES and len(replicator.behind) <= MAX_STRANGER_NOTES
    # one more stream than it may: closed, as spec/wire.md says
    with pytest.raises(RemoteProtocolError, match="wants more than"):
        replicator.on_stream(1, wire.Stream({(5).to_bytes(32, "little"): 0}, ()))


def test_notes_beyond_the_cap_are_not_kept_and_forgotten_strangers_stop_streaming() -> None:
    replicator = Replicator(relay=True, max_peer_wants=300)
    replicator.max_stranger_notes = 50
    peer = replicator.add_peer(1, b"p" * 32)
    first = keys(1, 50)
    replicator.on_have(1, wire.Have(dict.fromkeys(first, 4)), 0.0)
    assert peer.streaming_from == set(first)  # asked to stream every stranger it noted
    while replicator.next_message(1) is not None:  # the writer sends the stream requests
        pass
    replicator.on_have(1, wire.Have(dict.fromkeys(keys(1_000, 50), 4)), 0.0)
    # the first 50 were forgotten to make room, and their streams stopped
    assert not (peer.streaming_from & set(first)) and set(first) <= peer.stop_due
    assert len(peer.strangers) == 50
    # forgotten before their stream request went out: nothing to stop
    replicator.on_have(1, wire.Have(dict.fromkeys(keys(2_000, 50), 4)), 0.0)
    assert not (peer.stream_due & set(keys(1_000, 50))) and not (peer.stop_due & set(keys(1_000, 50)))
    assert len(replicator.streamer) == 50
    # feeds the node names are no strangers: kept up to the cap of notes, then no more
    replicator.set_interest(set(keys(5_000, 400)), set(), set(), 0.0)
    replicator.on_have(1, wire.Have(dict.fromkeys(keys(5_000, 400), 4)), 0.0)
    assert len(peer.their_seq) == 300
    assert_within_stated_bound(peer)


async def test_a_relay_keeps_a_bounded_number_of_a_strangers_notes(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Over a connection: a peer notes 30,000 feeds a relay does not hold; the relay keeps 10,000 of them
    (the newest), asks for those, and the connection stays."""
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        relay = await net.add(relay=True)
        peer = await RawPeer.connect(net, relay, raw_key(88))
        await peer.hello()
        for part in chunks(keys(1, 3 * MAX_STRANGER_NOTES), 7):
            await peer.send(wire.Have(part))
        await peer.ping(1)
        [state] = relay.replicator.peers.values()
        await wait_until(lambda: len(state.strangers) == MAX_STRANGER_NOTES)
        assert_within_stated_bound(state)
        assert len(state.their_seq) == MAX_STRANGER_NOTES
        await peer.ping(2)
        nursery.cancel_scope.cancel()
