# Sans-I/O replication (spec/replication.md): per peer, which feeds it wants, what it holds as far as we know,
# which feeds it streams to us and which we stream to it. Redundancy control after Epidemic Broadcast Trees:
# of all the connected peers that hold a feed, exactly one streams its entries to us; the others only send
# notes (`have`: their seq), and one of them takes over when the streaming peer falls behind, stalls or goes.
# The node feeds this object events (messages received, entries stored, the time) and carries out what it
# asks for (messages to send, feed ranges to read from the store and send). No I/O, no clock of its own.
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from . import wire
from .errors import Reason, RemoteProtocolError
from .offers import MAX_STRANGER_NOTES, OfferBudget, Quota

SWITCH_DELAY = 1.0  # s a note may show more than we hold before another peer is asked to stream the feed
STALL_TIMEOUT = 5.0  # s a streaming peer that claims more than it delivers may go without sending anything
MAX_PEER_WANTS = 100_000  # feeds one peer may want on a connection (spec/wire.md, rate-limited:)
NEWEST_FIRST = 50  # a feed we hold nothing of, and a peer holds more of than this, starts with its newest entries
# s a note of a new entry waits before it is sent: notes of several feeds leave in one `have`, and a note to a
# peer that meanwhile noted (or sent) that entry itself is not sent at all (spec/replication.md, "Notes wait")
NOTE_DELAY = 0.5


@dataclass(eq=False)
class PeerState:
    """What one connected peer and this node have told each other. `id` is the connection's handle (two
    connections of one key may live at once, briefly), `key` the peer's public key."""

    id: int
    key: bytes
    wants_all: bool = False  # a relay: it wants every feed we hold
    their_want: set[bytes] = field(default_factory=set)
    their_seq: dict[bytes, int] = field(default_factory=dict)  # of feeds either side wants: what it holds
    streaming_to: set[bytes] = field(default_factory=set)  # feeds it asked us to stream
    streaming_from: set[bytes] = field(default_factory=set)  # feeds we asked it to stream
    want_sent: set[bytes] = field(default_factory=set)
    all_sent: bool = False
    notes_due: set[bytes] = field(default_factory=set)
    notes_waiting: set[bytes] = field(default_factory=set)  # notes of new entries, sent after NOTE_DELAY
    notes_since: float = 0.0  # when the oldest of `notes_waiting` was added
    stream_due: set[bytes] = field(default_factory=set)
    stop_due: set[bytes] = field(default_factory=set)
    dirty: set[bytes] = field(default_factory=set)  # feeds with entries to send it
    backfill_due: set[bytes] = field(default_factory=set)  # feeds whose past we ask it for
    backfill_to: dict[bytes, int] = field(default_factory=dict)  # feeds whose past we send it: below this seq
    distrusted: set[bytes] = field(default_factory=set)  # feeds it claimed and did not deliver
    received: int = 0
    sent: int = 0
    quota: Quota | None = None  # its new-feed quota for us, as its hello stated it (protocol/offers.py)
    offers: OfferBudget | None = None  # a peer that wants all: what of its quota is left to offer
    cursor: int = 0  # a peer that wants all: the feeds before this place in `Replicator.order` were offered
    strangers: dict[bytes, None] = field(default_factory=dict)  # noted feeds nobody named, oldest first


class Replicator:
    """The replication state of one node and all its connected peers. Every method is an event; the
    actions are read back with `next_message(peer)` and `next_feed(peer)`. `touched` collects the peers
    that got something new to send since the node last emptied it."""

    def __init__(self, *, relay: bool = False, switch_delay: float = SWITCH_DELAY,
                 stall_timeout: float = STALL_TIMEOUT, max_peer_wants: int = MAX_PEER_WANTS,
                 newest_first: int = NEWEST_FIRST, keep_distant: int = 0, note_delay: float = NOTE_DELAY) -> None:
        self.relay = relay
        self.note_delay = note_delay
        self.newest_first = newest_first
        self.keep_distant = keep_distant  # > 0: feeds at hop 2 and beyond are kept to their latest N entries
        self.low: dict[bytes, int] = {}  # partial feeds -> lowest seq held (entries from it to the head)
        self.depth: dict[bytes, int] = {}  # wanted feeds -> hops from the owner (0: its own feed)
        self.starts: dict[bytes, set[int]] = {}  # feeds asked for newest first -> after which seqs
        self.backfilling: dict[bytes, int] = {}  # partial feeds -> the peer asked for their past
        self.switch_delay = switch_delay
        self.stall_timeout = stall_timeout
        self.max_peer_wants = max_peer_wants
        self.clock: dict[bytes, int] = {}  # every feed this node holds -> its latest seq
        self.wanted: set[bytes] = set()
        self.blocked: set[bytes] = set()
        self.forked: set[bytes] = set()
        self.peers: dict[int, PeerState] = {}
        self.streamer: dict[bytes, int] = {}  # feed -> handle of the peer streaming it to us
        self.lagging: dict[bytes, float] = {}  # feed -> since when a note has shown more than we hold
        self.last_progress: dict[bytes, float] = {}  # feed -> when its streamer last delivered or was asked
        # wanted feeds some peer has noted beyond what we hold -> the highest such seq: all that the timer and
        # the status look at, so their cost follows what is in flight, not how many feeds a relay holds
        self.behind: dict[bytes, int] = {}
        self.touched: set[int] = set()
        self.max_stranger_notes = MAX_STRANGER_NOTES
        self.order: list[bytes] = []  # every feed this node has held, in the order it first held it
        self.position: dict[bytes, int] = {}  # feed -> its place in `order`
        self.now = 0.0  # the latest time an event brought: what offers to a relay are counted against

    # ------------------------------------------------------------ what we want

    def wants(self, feed: bytes) -> bool:
        if feed in self.blocked or feed in self.forked:
            return False
        return self.relay or feed in self.wanted

    def _desired(self) -> set[bytes]:
        """Feeds named in our `want`s: a relay names only what its owner wants and says `all` for the rest."""
        return self.wanted - self.blocked - self.forked

    def set_interest(self, wanted: set[bytes], blocked: set[bytes], forked: set[bytes], now: float,
                     depth: dict[bytes, int] | None = None) -> None:
        """The owner's follows or blocks changed (or a fork was found): peers get the difference."""
        self.wanted, self.blocked, self.forked = set(wanted), set(blocked), set(forked)
        self.depth = dict(depth or {})
        for feed in list(self.streamer):
            if not self.wants(feed):
                self._stop_streaming(feed)
        for peer in self.peers.values():
            for feed in list(peer.streaming_to):
                if feed in self.blocked:
                    peer.streaming_to.discard(feed)
                    peer.dirty.discard(feed)
            peer.their_want -= self.blocked
            for feed in [f for f in peer.strangers if f in self.wanted]:
                del peer.strangers[feed]
            self.touched.add(peer.id)
            # feeds a peer already told us about can be streamed from it at once
            for feed, seq in list(peer.their_seq.items()):
                if self.wants(feed):
                    self._note(peer, feed, seq, now)

    # ------------------------------------------------------------ peers

    def add_peer(self, handle: int, key: bytes) -> PeerState:
        peer = PeerState(handle, key)
        self.peers[handle] = peer
        self.touched.add(handle)
        return peer

    def remove_peer(self, handle: int, now: float) -> None:
        peer = self.peers.pop(handle, None)
        if peer is None:
            return
        self.touched.discard(handle)
        for feed in peer.streaming_from:
            if self.streamer.get(feed) == handle:
                del self.streamer[feed]
                self._choose_streamer(feed, now)
        for feed, asked in list(self.backfilling.items()):
            if asked == handle:
                del self.backfilling[feed]
                self._ask_past(feed)

    # ------------------------------------------------------------ messages from a peer

    def on_want(self, handle: int, message: wire.Want, now: float) -> None:
        peer = self.peers[handle]
        for feed in message.drop:
            peer.their_want.discard(feed)
            peer.streaming_to.discard(feed)
            peer.dirty.discard(feed)
            peer.notes_due.discard(feed)
            peer.notes_waiting.discard(feed)
        their_want, their_seq = peer.their_want, peer.their_seq
        for feed, seq in message.feeds.items():
            if feed in their_want and their_seq.get(feed, -1) >= seq:
                continue  # said before: a peer repeating a large want costs a lookup per feed, nothing more
            if feed in self.blocked:
                continue
            their_want.add(feed)
            self._note(peer, feed, seq, now)
            if self.clock.get(feed, 0) > 0:
                peer.notes_due.add(feed)
        if len(peer.their_want) > self.max_peer_wants:
            raise RemoteProtocolError(f"the peer wants more than {self.max_peer_wants} feeds", Reason.RATE_LIMITED)
        if message.all and not peer.wants_all:
            self.now = max(self.now, now)
            _wants_all(self, peer)
        self.touched.add(handle)

    def on_have(self, handle: int, message: wire.Have, now: float) -> None:
        peer = self.peers[handle]
        their_seq = peer.their_seq
        for feed, seq in message.feeds.items():
            if their_seq.get(feed, -1) < seq:  # a note repeating what it said changes nothing
                self._note(peer, feed, seq, now)
                if peer.wants_all and self.clock.get(feed, 0) > seq:
                    peer.notes_due.add(feed)  # it holds that feed: telling it we hold more costs no quota

    def on_stream(self, handle: int, message: wire.Stream) -> None:
        peer = self.peers[handle]
        for feed in message.stop:
            peer.streaming_to.discard(feed)
            peer.dirty.discard(feed)
        for feed, seq in message.feeds.items():
            if feed in self.blocked:
                continue
            if feed not in peer.their_want and not peer.wants_all:
                peer.their_want.add(feed)
            peer.streaming_to.add(feed)
            peer.notes_due.discard(feed)
            # never twice on one connection: a repeated request from an older seq sends only what is new to it
            held = max(peer.their_seq.get(feed, 0), seq)
            peer.their_seq[feed] = held
            if self.clock.get(feed, 0) > held:
                peer.dirty.add(feed)
        if len(peer.their_want) > self.max_peer_wants or len(peer.streaming_to) > self.max_peer_wants:
            raise RemoteProtocolError(f"the peer wants more than {self.max_peer_wants} feeds", Reason.RATE_LIMITED)
        self.touched.add(handle)

    def on_backfill(self, handle: int, message: wire.Backfill) -> None:
        peer = self.peers[handle]
        for feed, before in message.feeds.items():
            if feed not in self.blocked and before > self.low.get(feed, 1) and feed in self.clock:
                peer.backfill_to[feed] = before
        if len(peer.backfill_to) > self.max_peer_wants:
            raise RemoteProtocolError(f"the peer asks for the past of more than {self.max_peer_wants} feeds",
                                      Reason.RATE_LIMITED)
        self.touched.add(handle)

    def set_lows(self, lows: dict[bytes, int]) -> None:
        """Partial feeds began or grew downwards (or were cut to their latest entries): ask for the rest of
        the past of those this node keeps whole."""
        for feed, low in lows.items():
            if low <= 1:
                self.low.pop(feed, None)
                self.backfilling.pop(feed, None)
                continue
            self.low[feed] = low
            self._ask_past(feed)

    def _keeps_whole(self, feed: bytes) -> bool:
        return not (self.keep_distant and self.depth.get(feed, 2 if self.relay else 0) >= 2)

    def _ask_past(self, feed: bytes) -> None:
        if feed in self.backfilling or self.low.get(feed, 1) <= 1 or not self._keeps_whole(feed):
            return
        if not self.wants(feed):
            return
        handle = self.streamer.get(feed)
        candidates = [self.peers[handle]] if handle in self.peers else list(self.peers.values())
        candidates = [p for p in candidates if feed in p.their_seq]
        if candidates:
            peer = candidates[0]
            self.backfilling[feed] = peer.id
            peer.backfill_due.add(feed)
            self.touched.add(peer.id)

    def _stream_from(self, feed: bytes, peer: PeerState) -> int:
        """From which seq to ask a peer to stream a feed: what we hold, or, holding nothing, its newest
        entries (the latest N only of a distant feed kept partial)."""
        held = self.clock.get(feed, 0)
        if held:
            return held
        window = self.newest_first if self._keeps_whole(feed) else self.keep_distant
        noted = peer.their_seq.get(feed, 0)
        if window and noted > window:
            start = noted - window
            self.starts.setdefault(feed, set()).add(start)
            return start
        return 0

    def on_entries(self, handle: int, seqs: dict[bytes, int], now: float) -> None:
        """The peer sent (verified) entries of these feeds up to these seqs: it holds them."""
        peer = self.peers.get(handle)
        if peer is None:
            return
        for feed, seq in seqs.items():
            if (self.wants(feed) or feed in peer.their_want) and (
                    feed in peer.their_seq or len(peer.their_seq) < self.max_peer_wants):
                peer.their_seq[feed] = max(peer.their_seq.get(feed, 0), seq)
                self._seen(feed, seq)
            if self.streamer.get(feed) == handle:
                self.last_progress[feed] = now

    def _note(self, peer: PeerState, feed: bytes, seq: int, now: float) -> None:
        """The peer holds `feed` up to `seq` (a want or a have said so)."""
        if not (self.wants(feed) or feed in peer.their_want):
            return  # nothing we would do with it: not kept, so a peer cannot grow our memory with it
        if feed not in peer.their_seq and not _room_for_note(self, peer, feed):
            return  # a bounded number of notes per peer (spec/replication.md, "Memory per peer")
        peer.their_seq[feed] = max(peer.their_seq.get(feed, 0), seq)
        self._seen(feed, seq)
        if feed in self.low and feed not in self.backfilling:
            self._ask_past(feed)  # a partial feed whose past nobody sends (the peer asked went away)
        held = self.clock.get(feed, 0)
        if not self.wants(feed) or feed in peer.distrusted or seq <= held:
            return  # a peer is asked to stream only what it holds beyond us; notes bring the rest
        current = self.streamer.get(feed)
        if current is None or current not in self.peers or self.peers[current].their_seq.get(feed, 0) < held:
            self._switch(feed, peer, now)  # nobody streams it, or the one who does is behind us
        elif current != peer.id:
            # the streaming peer may have the entry in flight: give it SWITCH_DELAY before asking another
            self.lagging.setdefault(feed, now)

    def _seen(self, feed: bytes, seq: int) -> None:
        if seq > self.clock.get(feed, 0) and seq > self.behind.get(feed, 0) and self.wants(feed):
            self.behind[feed] = seq

    # ------------------------------------------------------------ our own progress

    def on_stored(self, seqs: dict[bytes, int], source: int | None, now: float) -> None:
        """This node now holds these feeds up to these seqs (received from `source`, or published, or written
        by another process): stream them on, and note them to the peers that want them from someone else."""
        for feed, seq in seqs.items():
            if seq <= self.clock.get(feed, 0):
                continue
            if feed not in self.position:
                self.position[feed] = len(self.order)
                self.order.append(feed)
            self.clock[feed] = seq
            self.starts.pop(feed, None)
            if seq >= self.behind.get(feed, seq + 1):
                del self.behind[feed]
            if feed in self.lagging and seq >= self._best_seq(feed):
                del self.lagging[feed]
            for peer in self.peers.values():
                peer.strangers.pop(feed, None)  # held now: no longer a stranger's note
                if peer.id == source or feed in self.blocked:
                    continue
                if peer.their_seq.get(feed, 0) >= seq:
                    continue
                if feed in peer.streaming_to:
                    peer.dirty.add(feed)
                    self.touched.add(peer.id)
                elif feed in peer.their_want or (peer.wants_all and _offered(self, peer, feed)):
                    if self.note_delay > 0:
                        if not peer.notes_waiting:
                            peer.notes_since = now
                        peer.notes_waiting.add(feed)
                    else:
                        peer.notes_due.add(feed)
                        self.touched.add(peer.id)
                elif peer.wants_all:
                    self.touched.add(peer.id)  # not offered yet: its turn comes within the peer's quota

    def on_purged(self, feeds: Iterable[bytes]) -> None:
        """The store dropped these feeds (a block): nothing of them is held, sent or streamed any more."""
        for feed in feeds:
            self.clock.pop(feed, None)
            self.behind.pop(feed, None)
            self.low.pop(feed, None)
            self.backfilling.pop(feed, None)
            self._stop_streaming(feed)
            for peer in self.peers.values():
                peer.dirty.discard(feed)
                peer.notes_due.discard(feed)
                peer.notes_waiting.discard(feed)
                peer.backfill_to.pop(feed, None)

    def _stop_streaming(self, feed: bytes) -> None:
        handle = self.streamer.pop(feed, None)
        self.lagging.pop(feed, None)
        self.last_progress.pop(feed, None)
        peer = self.peers.get(handle) if handle is not None else None
        if peer is not None and feed in peer.streaming_from:
            peer.streaming_from.discard(feed)
            peer.stream_due.discard(feed)
            peer.stop_due.add(feed)
            self.touched.add(peer.id)

    # ------------------------------------------------------------ choosing who streams

    def _best_seq(self, feed: bytes) -> int:
        return max((p.their_seq.get(feed, 0) for p in self.peers.values()), default=0)

    def _switch(self, feed: bytes, peer: PeerState, now: float) -> None:
        old = self.streamer.get(feed)
        if old == peer.id:
            return
        if old is not None and old in self.peers:
            previous = self.peers[old]
            previous.streaming_from.discard(feed)
            previous.stream_due.discard(feed)
            previous.stop_due.add(feed)
            self.touched.add(old)
        self.streamer[feed] = peer.id
        peer.streaming_from.add(feed)
        peer.stop_due.discard(feed)
        peer.stream_due.add(feed)
        self.lagging.pop(feed, None)
        self.last_progress[feed] = now
        self.touched.add(peer.id)

    def _choose_streamer(self, feed: bytes, now: float, exclude: int | None = None) -> bool:
        """Ask the peer that holds most of `feed` beyond us (the author itself on a tie) to stream it."""
        held = self.clock.get(feed, 0)
        candidates = [p for p in self.peers.values() if p.id != exclude and feed not in p.distrusted
                      and p.their_seq.get(feed, 0) > held]
        if not candidates:
            return False
        best = max(candidates, key=lambda p: (p.their_seq.get(feed, 0), p.key == feed))
        self._switch(feed, best, now)
        return True

    def tick(self, now: float) -> None:
        """Time passed: replace streaming peers that fell behind another peer's note or stalled, and offer
        relays the feeds held back for their quota as it refills."""
        self.now = max(self.now, now)
        for peer in self.peers.values():
            if peer.notes_waiting and now - peer.notes_since >= self.note_delay:
                # not the notes the peer no longer needs: it noted (or sent) those entries itself meanwhile
                clock, their_seq = self.clock, peer.their_seq
                peer.notes_due.update(f for f in peer.notes_waiting if clock.get(f, 0) > their_seq.get(f, 0))
                peer.notes_waiting = set()
                self.touched.add(peer.id)
            if peer.wants_all and peer.cursor < len(self.order) and peer.offers is not None \
                    and peer.offers.ready(now):
                self.touched.add(peer.id)
        for feed, since in list(self.lagging.items()):
            if now - since < self.switch_delay:
                continue
            held = self.clock.get(feed, 0)
            current = self.streamer.get(feed)
            ahead = [p for p in self.peers.values() if p.their_seq.get(feed, 0) > held and feed not in p.distrusted]
            if not ahead or current in {p.id for p in ahead}:
                # the streaming peer holds more than we do: it is delivering, or it stalls (below)
                self.lagging.pop(feed, None)
                continue
            best = max(ahead, key=lambda p: p.their_seq.get(feed, 0))
            self._switch(feed, best, now)
        for feed in list(self.behind):
            if not self.wants(feed) or self.behind[feed] <= self.clock.get(feed, 0):
                del self.behind[feed]
                continue
            handle = self.streamer.get(feed)
            peer = self.peers.get(handle) if handle is not None else None
            if peer is None:
                continue
            claimed = peer.their_seq.get(feed, 0)
            if claimed > self.clock.get(feed, 0) and now - self.last_progress.get(feed, now) >= self.stall_timeout:
                # it says it holds more but sends nothing: trust others with this feed first
                peer.distrusted.add(feed)
                if not self._choose_streamer(feed, now, exclude=handle):
                    self.last_progress[feed] = now  # nobody else has it: keep waiting on this one

    # ------------------------------------------------------------ actions

    def next_message(self, handle: int) -> wire.Message | None:
        """The next control message for this peer (want, have, stream), or None when there is none."""
        peer = self.peers.get(handle)
        if peer is None:
            return None
        desired = self._desired()
        added = desired - peer.want_sent
        dropped = peer.want_sent - desired
        if added or dropped or (self.relay and not peer.all_sent):
            chunk_add = sorted(added)[: wire.MAX_FEEDS_PER_WANT]
            chunk_drop = sorted(dropped)[: wire.MAX_FEEDS_PER_WANT]
            peer.want_sent.update(chunk_add)
            peer.want_sent.difference_update(chunk_drop)
            peer.all_sent = peer.all_sent or self.relay
            return wire.Want({f: self.clock.get(f, 0) for f in chunk_add}, tuple(chunk_drop), self.relay)
        if peer.stop_due:
            stop = _take(peer.stop_due, wire.MAX_FEEDS_PER_WANT)
            return wire.Stream({}, tuple(stop))
        if peer.stream_due:
            feeds = _take(peer.stream_due, wire.MAX_FEEDS_PER_WANT)
            return wire.Stream({f: self._stream_from(f, peer) for f in feeds}, ())
        if peer.backfill_due:
            feeds = _take(peer.backfill_due, wire.MAX_FEEDS_PER_WANT)
            asks = {f: self.low[f] for f in feeds if self.low.get(f, 1) > 1}
            if asks:
                return wire.Backfill(asks)
        while peer.notes_due:
            feeds = _take(peer.notes_due, wire.MAX_FEEDS_PER_WANT)
            notes = {f: self.clock[f] for f in feeds if self.clock.get(f, 0) > 0 and f not in self.blocked}
            if notes:
                return wire.Have(notes)
        if peer.wants_all:
            return _offer(self, peer)
        return None

    def next_feed(self, handle: int) -> tuple[bytes, int] | None:
        """A feed with entries to send this peer, and the seq after which to send: (author, since)."""
        peer = self.peers.get(handle)
        if peer is None:
            return None
        while peer.dirty:
            feed = peer.dirty.pop()
            since = peer.their_seq.get(feed, 0)
            if feed in peer.streaming_to and feed not in self.blocked and self.clock.get(feed, 0) > since:
                if since + 1 < self.low.get(feed, 1):
                    continue  # we hold only later entries: sending them would leave the peer a gap
                return feed, since
        return None

    def next_backfill(self, handle: int) -> tuple[bytes, int] | None:
        """A feed whose past to send this peer, and the seq below which to send: (author, before)."""
        peer = self.peers.get(handle)
        if peer is None:
            return None
        for feed, before in list(peer.backfill_to.items()):
            if feed in self.blocked or before <= self.low.get(feed, 1) or feed not in self.clock:
                del peer.backfill_to[feed]
                continue
            return feed, before
        return None

    def backfill_sent(self, handle: int, feed: bytes, lowest: int, count: int) -> None:
        peer = self.peers.get(handle)
        if peer is None:
            return
        peer.sent += count
        if lowest <= max(1, self.low.get(feed, 1)):
            peer.backfill_to.pop(feed, None)
        else:
            peer.backfill_to[feed] = lowest

    def entries_sent(self, handle: int, feed: bytes, last_seq: int, count: int) -> None:
        """Entries of `feed` up to `last_seq` went to the peer; more follow if we hold more."""
        peer = self.peers.get(handle)
        if peer is None:
            return
        peer.sent += count
        peer.their_seq[feed] = max(peer.their_seq.get(feed, 0), last_seq)
        if feed in peer.streaming_to and self.clock.get(feed, 0) > peer.their_seq[feed]:
            peer.dirty.add(feed)

    def not_held(self, handle: int, feed: bytes) -> None:
        """The store has nothing after what the peer holds (our clock ran ahead of a purge or a damage)."""
        peer = self.peers.get(handle)
        if peer is not None:
            peer.dirty.discard(feed)

    # ------------------------------------------------------------ status

    def in_sync(self, handle: int) -> bool:
        peer = self.peers.get(handle)
        if peer is None:
            return False
        behind_them = any(peer.their_seq.get(f, 0) > self.clock.get(f, 0) for f in self.behind)
        behind_us = bool(peer.dirty or peer.backfill_to)  # what it streams from us and lacks is dirty
        return not behind_them and not behind_us

    def progress(self) -> dict[bytes, tuple[int, int]]:
        """Wanted feeds that a peer holds more of than we do: feed -> (held, best seen)."""
        return {f: (self.clock.get(f, 0), s) for f, s in self.behind.items()
                if s > self.clock.get(f, 0) and self.wants(f)}


def _take(items: set[bytes], limit: int) -> list[bytes]:
    taken = []
    while items and len(taken) < limit:
        taken.append(items.pop())
    return taken


# ------------------------------------------------------------ offers to a relay, notes kept per peer


def _wants_all(rep: Replicator, peer: PeerState) -> None:
    """The peer (a relay) wants every feed: its own named feeds and those it holds are noted as usual; the
    others, in the order this node first held them, within its new-feed quota (protocol/offers.py)."""
    peer.wants_all = True
    peer.offers = OfferBudget(peer.quota or Quota(), rep.now)
    peer.cursor = 0
    for feed, seq in peer.their_seq.items():
        if rep.clock.get(feed, 0) > seq and feed not in rep.blocked:
            peer.notes_due.add(feed)


def _offered(rep: Replicator, peer: PeerState, feed: bytes) -> bool:
    """Whether this node may note `feed` to a peer that wants all without spending its quota: the peer
    named it, holds it, or was offered it already."""
    return (feed in peer.their_want or peer.their_seq.get(feed, 0) > 0
            or rep.position.get(feed, len(rep.order)) < peer.cursor)


def _offer(rep: Replicator, peer: PeerState) -> wire.Have | None:
    """The next `have` of feeds a relay has not heard of from us, as far as its quota allows: a feed it
    neither named nor holds costs one; the cursor stops at the first one the quota has no room for."""
    budget = peer.offers
    if budget is None:
        return None
    notes: dict[bytes, int] = {}
    steps = 0
    order, clock = rep.order, rep.clock
    while peer.cursor < len(order) and len(notes) < wire.MAX_FEEDS_PER_WANT and steps < 4 * wire.MAX_FEEDS_PER_WANT:
        steps += 1
        feed = order[peer.cursor]
        seq = clock.get(feed, 0)
        if seq == 0 or feed in rep.blocked:
            peer.cursor += 1
            continue
        if feed in peer.their_want or peer.their_seq.get(feed, 0) > 0:
            if peer.their_seq.get(feed, 0) < seq:
                notes[feed] = seq
            peer.cursor += 1
            continue
        if not budget.take(rep.now):
            break  # held back: tick() wakes the writer when the quota has room again
        notes[feed] = seq
        peer.cursor += 1
    if peer.cursor < len(order) and steps >= 4 * wire.MAX_FEEDS_PER_WANT:
        rep.touched.add(peer.id)  # more to look at: the writer comes back after what else is due
    return wire.Have(notes) if notes else None


def _room_for_note(rep: Replicator, peer: PeerState, feed: bytes) -> bool:
    """Whether to keep a peer's note of a feed not yet in its `their_seq`: at most `max_peer_wants` notes
    in all, and of them at most `max_stranger_notes` of feeds this node neither holds nor names and the
    peer did not name (the oldest such note is forgotten to make room for a new one)."""
    if len(peer.their_seq) >= rep.max_peer_wants:
        return False
    if feed in rep.clock or feed in rep.wanted or feed in peer.their_want:
        return True
    if rep.max_stranger_notes <= 0:
        return False
    strangers = peer.strangers
    while len(strangers) >= rep.max_stranger_notes:
        _forget(rep, peer, next(iter(strangers)))
    strangers[feed] = None
    return True


def _forget(rep: Replicator, peer: PeerState, feed: bytes) -> None:
    """Drop what we keep about a stranger's feed that a peer noted (and stop its stream from that peer)."""
    peer.strangers.pop(feed, None)
    peer.their_seq.pop(feed, None)
    peer.distrusted.discard(feed)
    if rep.streamer.get(feed) == peer.id:
        if feed in peer.stream_due:  # never asked: nothing to stop (so stop_due stays bounded too)
            peer.stream_due.discard(feed)
            peer.streaming_from.discard(feed)
            del rep.streamer[feed]
            rep.lagging.pop(feed, None)
            rep.last_progress.pop(feed, None)
        else:
            rep._stop_streaming(feed)
    if feed not in rep.clock:
        rep.behind.pop(feed, None)
