# The replication state machine (protocol/replication.py) without any network or clock: events in, actions
# out, as spec/replication.md states them: one streaming peer per feed, notes, moving a stream when its peer
# lags, stalls or goes, nothing sent twice on one connection, limits.
from __future__ import annotations

import pytest

from protocol import wire
from protocol.errors import Reason, RemoteProtocolError
from protocol.replication import NOTE_DELAY, Replicator

F = bytes([1]) * 32  # a feed
G = bytes([2]) * 32
KEY_A, KEY_B, KEY_C = bytes([10]) * 32, bytes([11]) * 32, bytes([12]) * 32


def drain(r: Replicator, handle: int) -> list[wire.Message]:
    out = []
    while (message := r.next_message(handle)) is not None:
        out.append(message)
    return out


def streams(messages: list[wire.Message]) -> dict[bytes, int]:
    found: dict[bytes, int] = {}
    for m in messages:
        if isinstance(m, wire.Stream):
            found.update(m.feeds)
    return found


def stops(messages: list[wire.Message]) -> set[bytes]:
    return {f for m in messages if isinstance(m, wire.Stream) for f in m.stop}


def node_wanting(*feeds: bytes, held: dict[bytes, int] | None = None, newest_first: int = 0) -> Replicator:
    r = Replicator(newest_first=newest_first)
    r.on_stored(held or {}, None, 0.0)
    r.set_interest(set(feeds), set(), set(), 0.0)
    return r


def test_first_messages_are_a_want_with_the_seqs_held() -> None:
    r = node_wanting(F, G, held={F: 4})
    r.add_peer(1, KEY_A)
    messages = drain(r, 1)
    assert messages == [wire.Want({F: 4, G: 0}, (), False)]
    assert drain(r, 1) == []  # nothing twice


def test_only_one_peer_is_asked_to_stream_a_feed() -> None:
    r = node_wanting(F)
    for handle, key in ((1, KEY_A), (2, KEY_B), (3, KEY_C)):
        r.add_peer(handle, key)
        drain(r, handle)
    r.on_have(1, wire.Have({F: 10}), 0.0)
    r.on_have(2, wire.Have({F: 10}), 0.0)
    r.on_want(3, wire.Want({F: 10}, (), False), 0.0)
    asked = {h: streams(drain(r, h)) for h in (1, 2, 3)}
    assert asked == {1: {F: 0}, 2: {}, 3: {}}


def test_a_peer_holding_no_more_than_us_is_not_asked() -> None:
    r = node_wanting(F, held={F: 10})
    r.add_peer(1, KEY_A)
    drain(r, 1)
    r.on_have(1, wire.Have({F: 10}), 0.0)
    assert streams(drain(r, 1)) == {}
    r.on_have(1, wire.Have({F: 11}), 1.0)  # a note of a new entry: now it is asked, from what we hold
    assert streams(drain(r, 1)) == {F: 10}


def test_stream_moves_after_the_switch_delay_when_another_peer_is_ahead() -> None:
    r = node_wanting(F)
    r.add_peer(1, KEY_A)
    r.add_peer(2, KEY_B)
    drain(r, 1), drain(r, 2)
    r.on_have(1, wire.Have({F: 5}), 0.0)
    assert streams(drain(r, 1)) == {F: 0}
    r.on_entries(1, {F: 5}, 0.5)
    r.on_stored({F: 5}, 1, 0.5)
    r.on_have(2, wire.Have({F: 9}), 1.0)  # B has more; A may have it in flight
    r.tick(1.5)
    assert drain(r, 2) == [] and r.streamer[F] == 1
    r.tick(2.0)  # A still has not delivered 6..9 a second later
    assert streams(drain(r, 2)) == {F: 5}
    assert stops(drain(r, 1)) == {F}
    assert r.streamer[F] == 2


def test_entry_from_the_streaming_peer_in_time_keeps_the_stream() -> None:
    r = node_wanting(F)
    r.add_peer(1, KEY_A)
    r.add_peer(2, KEY_B)
    drain(r, 1), drain(r, 2)
    r.on_have(1, wire.Have({F: 5}), 0.0)
    r.on_entries(1, {F: 5}, 0.1)
    r.on_stored({F: 5}, 1, 0.1)
    r.on_have(2, wire.Have({F: 6}), 1.0)
    r.on_entries(1, {F: 6}, 1.2)
    r.on_stored({F: 6}, 1, 1.2)
    r.tick(5.0)
    assert r.streamer[F] == 1
    assert streams(drain(r, 2)) == {} and stops(drain(r, 1)) == set()


def test_streaming_peer_that_goes_is_replaced_by_the_one_holding_most() -> None:
    r = node_wanting(F)
    for handle, key in ((1, KEY_A), (2, KEY_B), (3, KEY_C)):
        r.add_peer(handle, key)
        drain(r, handle)
    r.on_have(1, wire.Have({F: 100}), 0.0)
    r.on_have(2, wire.Have({F: 40}), 0.0)
    r.on_have(3, wire.Have({F: 90}), 0.0)
    assert streams(drain(r, 1)) == {F: 0}
    r.on_entries(1, {F: 30}, 1.0)
    r.on_stored({F: 30}, 1, 1.0)
    r.remove_peer(1, 2.0)
    assert streams(drain(r, 3)) == {F: 30}  # from what we hold: no gap, nothing again
    assert streams(drain(r, 2)) == {}


def test_streaming_peer_that_lies_about_its_seq_is_replaced_and_distrusted() -> None:
    r = node_wanting(F)
    r.add_peer(1, KEY_A)
    r.add_peer(2, KEY_B)
    drain(r, 1), drain(r, 2)
    r.on_have(1, wire.Have({F: 1_000}), 0.0)  # a lie: it will send nothing
    r.on_have(2, wire.Have({F: 50}), 0.0)
    assert streams(drain(r, 1)) == {F: 0}
    r.tick(r.stall_timeout - 0.1)
    assert r.streamer[F] == 1
    r.tick(r.stall_timeout + 0.1)
    assert streams(drain(r, 2)) == {F: 0}
    assert r.streamer[F] == 2
    r.on_have(1, wire.Have({F: 2_000}), 6.0)  # louder lies do not win it back
    r.tick(20.0)
    assert r.streamer[F] == 2


def test_streaming_peer_behind_us_is_replaced_at_once() -> None:
    r = node_wanting(F)
    r.add_peer(1, KEY_A)
    r.add_peer(2, KEY_B)
    drain(r, 1), drain(r, 2)
    r.on_have(1, wire.Have({F: 3}), 0.0)
    drain(r, 1)
    r.on_stored({F: 8}, None, 0.5)  # we got more elsewhere (another process wrote it)
    r.on_have(2, wire.Have({F: 9}), 0.6)
    assert streams(drain(r, 2)) == {F: 8}


def test_serving_sends_only_streamed_feeds_and_never_twice() -> None:
    r = Replicator()
    r.on_stored({F: 50, G: 7}, None, 0.0)
    r.add_peer(1, KEY_A)
    drain(r, 1)
    r.on_want(1, wire.Want({F: 0, G: 0}, (), False), 0.0)
    assert [m for m in drain(r, 1) if isinstance(m, wire.Have)] == [wire.Have({F: 50, G: 7})]
    assert r.next_feed(1) is None  # a want asks for notes, not entries
    r.on_stream(1, wire.Stream({F: 0}, ()))
    assert r.next_feed(1) == (F, 0)
    r.entries_sent(1, F, 50, 50)
    assert r.next_feed(1) is None
    r.on_stream(1, wire.Stream({F: 0}, ()))  # the same request again: nothing is sent again
    assert r.next_feed(1) is None
    r.on_stored({F: 51}, None, 1.0)  # live: the new entry only
    assert r.next_feed(1) == (F, 50)


def test_new_entries_are_noted_to_peers_that_want_them_from_someone_else() -> None:
    r = Replicator()
    r.on_stored({F: 1}, None, 0.0)
    r.add_peer(1, KEY_A)
    r.add_peer(2, KEY_B)
    r.on_want(1, wire.Want({F: 1}, (), False), 0.0)
    r.on_want(2, wire.Want({F: 1}, (), False), 0.0)
    r.on_stream(2, wire.Stream({F: 1}, ()))
    drain(r, 1), drain(r, 2)
    r.on_stored({F: 2}, None, 1.0)
    assert drain(r, 2) == [] and r.next_feed(2) == (F, 1)  # the streaming peer gets the entry at once
    assert drain(r, 1) == []  # the note waits (NOTE_DELAY) ...
    r.tick(1.0 + NOTE_DELAY / 2)
    assert drain(r, 1) == []
    r.tick(1.0 + NOTE_DELAY)
    assert drain(r, 1) == [wire.Have({F: 2})]  # ... then leaves


def test_waiting_notes_leave_together_and_not_to_a_peer_that_noted_the_entry_first() -> None:
    r = Replicator()
    r.on_stored({F: 1, G: 1}, None, 0.0)
    for handle, key in ((1, KEY_A), (2, KEY_B)):
        r.add_peer(handle, key)
        r.on_want(handle, wire.Want({F: 1, G: 1}, (), False), 0.0)
        drain(r, handle)
    r.on_stored({F: 2}, None, 1.0)
    r.on_stored({G: 2}, None, 1.2)
    r.on_have(2, wire.Have({F: 2}), 1.3)  # peer 2 got F's entry elsewhere and said so before our note left
    r.tick(1.0 + NOTE_DELAY)
    assert drain(r, 1) == [wire.Have({F: 2, G: 2})]  # one message for both feeds
    assert drain(r, 2) == [wire.Have({G: 2})]  # F's note would tell it nothing


def test_a_note_is_immediate_without_a_delay() -> None:
    r = Replicator(note_delay=0)
    r.on_stored({F: 1}, None, 0.0)
    r.add_peer(1, KEY_A)
    r.on_want(1, wire.Want({F: 1}, (), False), 0.0)
    drain(r, 1)
    r.on_stored({F: 2}, None, 1.0)
    assert drain(r, 1) == [wire.Have({F: 2})]


def test_entries_from_a_peer_are_not_noted_back_to_it() -> None:
    r = Replicator()
    r.add_peer(1, KEY_A)
    r.on_want(1, wire.Want({F: 0}, (), False), 0.0)
    drain(r, 1)
    r.on_stored({F: 3}, None, 1.0)  # written here (by the CLI, say): the peer wants F and lacks it
    r.tick(1.0 + NOTE_DELAY)
    assert drain(r, 1) == [wire.Have({F: 3})]
    r.on_entries(1, {F: 4}, 1.0)
    r.on_stored({F: 4}, 1, 1.0)
    assert drain(r, 1) == []  # it sent them: it holds them


def test_interest_changes_become_want_differences() -> None:
    r = node_wanting(F)
    r.add_peer(1, KEY_A)
    drain(r, 1)
    r.set_interest({G}, set(), set(), 1.0)
    assert drain(r, 1) == [wire.Want({G: 0}, (F,), False)]


def test_peer_connected_before_a_follow_gets_the_new_want() -> None:
    r = node_wanting()
    r.add_peer(1, KEY_A)  # connected, hello not yet seen: the want is computed when it is sent
    r.set_interest({F}, set(), set(), 0.0)
    assert drain(r, 1) == [wire.Want({F: 0}, (), False)]


def test_blocked_feeds_are_never_served_noted_or_streamed() -> None:
    r = Replicator()
    r.on_stored({F: 5}, None, 0.0)
    r.add_peer(1, KEY_A)
    r.on_want(1, wire.Want({F: 0}, (), False), 0.0)
    r.on_stream(1, wire.Stream({F: 0}, ()))
    r.set_interest(set(), {F}, set(), 1.0)
    r.on_purged([F])
    assert r.next_feed(1) is None
    assert [m for m in drain(r, 1) if isinstance(m, wire.Have)] == []
    r.on_stream(1, wire.Stream({F: 0}, ()))
    assert r.next_feed(1) is None


def test_a_relay_says_all_and_notes_every_feed_to_a_relay() -> None:
    relay = Replicator(relay=True)
    relay.on_stored({F: 3, G: 4}, None, 0.0)
    relay.add_peer(1, KEY_A)
    assert drain(relay, 1)[0] == wire.Want({}, (), True)
    relay.on_want(1, wire.Want({}, (), True), 0.0)
    notes = [m for m in drain(relay, 1) if isinstance(m, wire.Have)]
    assert {f: s for m in notes for f, s in m.feeds.items()} == {F: 3, G: 4}
    relay.on_have(1, wire.Have({bytes([9]) * 32: 2}), 0.0)  # a relay streams any feed a peer holds
    assert streams(drain(relay, 1)) == {bytes([9]) * 32: 0}


def test_too_many_wants_are_rate_limited() -> None:
    r = Replicator(max_peer_wants=3)
    r.add_peer(1, KEY_A)
    r.on_want(1, wire.Want({bytes([i]) * 32: 0 for i in range(3)}, (), False), 0.0)
    with pytest.raises(RemoteProtocolError) as caught:
        r.on_stream(1, wire.Stream({bytes([9]) * 32: 0}, ()))
    assert caught.value.kind is Reason.RATE_LIMITED
    assert caught.value.reason.startswith("rate-limited:")


def test_notes_of_unwanted_feeds_are_not_kept() -> None:
    r = node_wanting(F)
    r.add_peer(1, KEY_A)
    r.on_have(1, wire.Have({bytes([i]) * 32: 1 for i in range(100, 200)}), 0.0)
    assert r.peers[1].their_seq == {}


def test_a_long_new_feed_starts_with_its_newest_entries_then_fills_the_past() -> None:
    r = node_wanting(F, newest_first=50)
    r.add_peer(1, KEY_A)
    drain(r, 1)
    r.on_have(1, wire.Have({F: 100_000}), 0.0)
    assert streams(drain(r, 1)) == {F: 99_950}
    assert r.starts == {F: {99_950}}  # what the store may accept as the first entry of an empty feed
    r.on_entries(1, {F: 100_000}, 0.5)
    r.on_stored({F: 100_000}, 1, 0.5)
    r.set_lows({F: 99_951})
    assert drain(r, 1) == [wire.Backfill({F: 99_951})]  # the past, behind the newest
    r.set_lows({F: 98_951})
    assert drain(r, 1) == []  # one request: the peer keeps sending until seq 1
    r.set_lows({F: 1})
    assert r.low == {} and r.backfilling == {}


def test_past_is_asked_again_of_another_peer_when_the_first_goes() -> None:
    r = node_wanting(F, newest_first=50)
    r.add_peer(1, KEY_A)
    r.add_peer(2, KEY_B)
    drain(r, 1), drain(r, 2)
    r.on_have(1, wire.Have({F: 500}), 0.0)
    r.on_have(2, wire.Have({F: 500}), 0.0)
    r.on_stored({F: 500}, 1, 0.5)
    r.set_lows({F: 451})
    assert [m for m in drain(r, 1) if isinstance(m, wire.Backfill)] == [wire.Backfill({F: 451})]
    r.remove_peer(1, 1.0)
    assert [m for m in drain(r, 2) if isinstance(m, wire.Backfill)] == [wire.Backfill({F: 451})]


def test_past_is_asked_of_a_peer_that_connects_after_the_only_one_went() -> None:
    # e.g. the node closed its only connection (a full disk dropped what it sent) and the peer dials again
    r = node_wanting(F, newest_first=50)
    r.add_peer(1, KEY_A)
    drain(r, 1)
    r.on_have(1, wire.Have({F: 500}), 0.0)
    r.on_stored({F: 500}, 1, 0.5)
    r.set_lows({F: 451})
    assert [m for m in drain(r, 1) if isinstance(m, wire.Backfill)] == [wire.Backfill({F: 451})]
    r.remove_peer(1, 1.0)
    assert r.backfilling == {}
    r.add_peer(2, KEY_A)
    drain(r, 2)
    r.on_have(2, wire.Have({F: 500}), 2.0)
    assert [m for m in drain(r, 2) if isinstance(m, wire.Backfill)] == [wire.Backfill({F: 451})]


def test_distant_feeds_kept_partial_start_at_their_latest_n_and_never_fill_the_past() -> None:
    r = Replicator(newest_first=50, keep_distant=10)
    r.set_interest({F, G}, set(), set(), 0.0, {F: 1, G: 2})
    r.add_peer(1, KEY_A)
    drain(r, 1)
    r.on_have(1, wire.Have({F: 30, G: 30}), 0.0)
    assert streams(drain(r, 1)) == {F: 0, G: 20}  # F is followed: whole (30 <= 50); G at hop 2: latest 10
    r.on_stored({G: 30}, 1, 0.5)
    r.set_lows({G: 21})
    assert [m for m in drain(r, 1) if isinstance(m, wire.Backfill)] == []


def test_serving_the_past_goes_down_to_what_is_held_and_never_leaves_a_gap() -> None:
    r = Replicator()
    r.on_stored({F: 5_000}, None, 0.0)
    r.set_lows({F: 2_001})  # this node itself holds only 2,001..5,000
    r.add_peer(1, KEY_A)
    drain(r, 1)
    r.on_want(1, wire.Want({F: 0}, (), False), 0.0)
    r.on_stream(1, wire.Stream({F: 0}, ()))  # from 0: sending 2,001.. would leave the peer a gap
    assert r.next_feed(1) is None
    r.on_stream(1, wire.Stream({F: 4_950}, ()))
    assert r.next_feed(1) == (F, 4_950)
    r.on_backfill(1, wire.Backfill({F: 4_951}))
    assert r.next_backfill(1) == (F, 4_951)
    r.backfill_sent(1, F, 3_951, 1_000)
    assert r.next_backfill(1) == (F, 3_951)
    r.backfill_sent(1, F, 2_001, 1_950)
    assert r.next_backfill(1) is None


def test_progress_and_in_sync_follow_what_is_in_flight() -> None:
    r = node_wanting(F, G)
    r.add_peer(1, KEY_A)
    drain(r, 1)
    assert r.in_sync(1) and r.progress() == {}
    r.on_have(1, wire.Have({F: 100, G: 3}), 0.0)
    assert r.progress() == {F: (0, 100), G: (0, 3)} and not r.in_sync(1)
    r.on_stored({F: 100, G: 3}, 1, 1.0)
    assert r.progress() == {} and r.in_sync(1)
    r.on_want(1, wire.Want({F: 100}, (), False), 1.0)
    r.on_stream(1, wire.Stream({F: 100}, ()))
    r.on_stored({F: 101}, None, 2.0)  # ours, which it streams from us and lacks
    assert not r.in_sync(1)
    r.entries_sent(1, F, 101, 1)
    assert r.next_feed(1) is None and r.in_sync(1)
