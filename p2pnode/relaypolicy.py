# What a relay takes from strangers and what it asks of its peers (spec/replication.md, "Relay quotas"):
# new feeds (ones it neither wants nor holds) are admitted within a per-peer and a node-wide hourly quota
# and up to a cap on the feeds it holds beyond those it wants; when full, only feeds that a held feed
# follows are still taken (up to a hard cap). A peer over its own quota is told `rate-limited:` with a
# retry time. (A relay's own `want`s name only the feeds its owner wants, protocol/replication.py, so no
# amount of stored junk can make them exceed what its peers accept.)
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from protocol.log import peek_author
from protocol.offers import Quota
from protocol.replication import Replicator
from protocol.wire import Hello

from .peerbook import TokenBucket
from .store import Store
from .storeio import StoreRunner

Raw = tuple[bytes, bytes, bytes | None]
PEER = "peer"  # refused: this peer's own quota
NODE = "node"  # refused: the node-wide quota or cap


@dataclass(frozen=True)
class RelayLimits:
    """The defaults are the ones spec/replication.md names."""

    new_feeds_per_peer_per_hour: int = 1_000
    new_feeds_per_hour: int = 10_000  # from all peers together
    max_feeds: int = 20_000  # feeds held beyond the wanted ones; then only followed feeds are taken...
    hard_max_feeds: int = 25_000  # ...up to this many
    remembered_peers: int = 4_096


class RelayPolicy:
    """The relay's ingest quotas: consulted for each entry of a feed it does not hold (select_wanted)."""

    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.limits = limits or RelayLimits()
        self.known: set[bytes] = set()  # feeds the store holds or has admitted
        self.held = 0  # of those, not wanted ones (what max_feeds counts)
        self._peers: OrderedDict[bytes, TokenBucket] = OrderedDict()
        self._all: TokenBucket | None = None
        self.refused = 0

    async def load(self, db: StoreRunner, wanted: set[bytes]) -> None:
        self.known = set(await db.read(Store.clock))
        self.held = len(self.known - wanted)

    async def select(self, db: StoreRunner, peer: bytes, wanted: set[bytes], raw: list[Raw],
                     now: float) -> tuple[list[Raw], str | None]:
        """The entries of a batch a relay takes from `peer` (whose feeds pass `wanted` or the quotas), and
        the `rate-limited:` reason to close with once they are stored, if `peer` went over its own quota."""
        new = list(dict.fromkeys(a for item in raw if (a := peek_author(item[0])) is not None
                                 and a not in wanted and a not in self.known))  # in the batch's order
        followed: set[bytes] = set()
        if new and self.held >= self.limits.max_feeds:  # full: which of them does a held feed follow?
            followed = await db.read(Store.followed_among, new)
        verdicts = {a: self.admit(peer, a, now, a in followed) for a in new}
        keep = [item for item in raw if verdicts.get(peek_author(item[0]) or b"") is None]
        over = PEER in verdicts.values()
        return keep, (self.retry_reason(peer, now) if over else None)

    def admit(self, peer: bytes, author: bytes, now: float, followed: bool = False) -> str | None:
        """Whether to take entries of `author` (a feed this node does not want) from `peer`: None when
        yes; PEER when `peer` has used up its own quota (tell it, see `retry_reason`); NODE when the
        node-wide quota or the cap says no (not that peer's doing: its entries are dropped quietly).
        `followed`: a feed the relay holds follows `author`."""
        if author in self.known:
            return None
        bucket = self._bucket(peer, now)
        if self._all is None:
            self._all = TokenBucket(self.limits.new_feeds_per_hour, self.limits.new_feeds_per_hour / 3600, now)
        if bucket.level(now) < 1:
            self.refused += 1
            return PEER
        if self._all.level(now) < 1 or (self.held >= self.limits.max_feeds and (
                self.held >= self.limits.hard_max_feeds or not followed)):
            self.refused += 1
            return NODE
        bucket.take(now)
        self._all.take(now)
        self.known.add(author)
        self.held += 1
        return None

    def quota_for(self, peer: bytes, now: float) -> tuple[int, int, int]:
        """What this relay tells `peer` in its `hello` (spec/wire.md, hello.quota): how many new feeds it
        takes from that peer now, per hour after that, and in total before it refuses strangers."""
        bucket = self._peers.get(peer)
        level = bucket.level(now) if bucket is not None else self.limits.new_feeds_per_peer_per_hour
        if self._all is not None:
            level = min(level, self._all.level(now))
        room = max(0, self.limits.max_feeds - self.held)
        return int(level), self.limits.new_feeds_per_peer_per_hour, room

    def retry_reason(self, peer: bytes, now: float) -> str:
        """The `rate-limited:` close reason for a peer over its quota, with when to come back."""
        bucket = self._bucket(peer, now)
        retry = math.ceil((1 - bucket.level(now)) / bucket.rate) if bucket.rate > 0 else 3600
        return (f"rate-limited: more than {self.limits.new_feeds_per_peer_per_hour} new feeds from one peer "
                f"in an hour; retry in {max(retry, 1)} s")

    def _bucket(self, peer: bytes, now: float) -> TokenBucket:
        bucket = self._peers.get(peer)
        if bucket is None:
            rate = self.limits.new_feeds_per_peer_per_hour
            bucket = TokenBucket(rate, rate / 3600, now)
            self._peers[peer] = bucket
            while len(self._peers) > self.limits.remembered_peers:
                self._peers.popitem(last=False)
        self._peers.move_to_end(peer)
        return bucket


def heard_quota(replicator: Replicator, handle: int, hello: Hello) -> None:
    """A peer's `hello` stated its new-feed quota for us: what we offer it, if it wants all, stays within
    it (protocol/offers.py). A peer that states none is assumed to keep spec/replication.md's figures."""
    state = replicator.peers.get(handle)
    if state is not None and hello.quota is not None:
        state.quota = Quota(*hello.quota)
