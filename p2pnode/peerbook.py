# What a node takes from peer exchange (spec/peers.md, "The peer book"): addresses are checked and capped as
# they arrive (per announcing peer, and in total in the store), a `peers` message is one write transaction,
# and addresses the node has never connected to are dialled at a bounded rate, so that a flood of
# addresses can neither fill the store nor turn the node into a dialler of strangers' choosing.
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from protocol.errors import ProtocolError
from protocol.ids import parse_address

from .store import Store
from .storeio import StoreRunner


@dataclass(frozen=True)
class PeerBookLimits:
    """The defaults are the ones spec/peers.md names."""

    max_learned: int = 1_000  # learned (non-seed) addresses kept in the store
    per_peer_burst: int = 64  # new addresses taken from one announcing peer at once...
    per_peer_per_hour: int = 64  # ...and then this many an hour
    all_burst: int = 512  # new addresses from all peers together at once...
    all_per_hour: int = 512  # ...and then this many an hour (peer keys are free: this bounds a Sybil flood)
    remembered_peers: int = 4_096  # announcing peers whose allowance is remembered
    untried_dial_burst: int = 16  # dials of never-connected learned addresses at once...
    untried_dials_per_minute: int = 12  # ...and then this many a minute


class TokenBucket:
    """`burst` tokens, refilled at `rate` a second; take() spends one if there is one."""

    def __init__(self, burst: float, rate: float, now: float) -> None:
        self.burst, self.rate = burst, rate
        self.tokens, self.when = float(burst), now

    def level(self, now: float) -> float:
        """The tokens there are at `now`."""
        self.tokens = min(self.burst, self.tokens + (now - self.when) * self.rate)
        self.when = now
        return self.tokens

    def take(self, now: float, count: float = 1.0) -> bool:
        if self.level(now) < count:
            return False
        self.tokens -= count
        return True


class PeerBook:
    """The node's side of peer exchange, between the wire and the store's peer table."""

    def __init__(self, owner: bytes, blocked: Callable[[], set[bytes]],
                 limits: PeerBookLimits | None = None) -> None:
        self.owner = owner
        self.blocked = blocked
        self.limits = limits or PeerBookLimits()
        self._allowance: OrderedDict[bytes, TokenBucket] = OrderedDict()
        self._untried: set[str] = set()
        self._dials: TokenBucket | None = None
        self._all: TokenBucket | None = None
        self.dropped = 0  # addresses refused by a cap (for tests and status)

    async def load(self, db: StoreRunner) -> None:
        """Read which learned addresses were never connected to (at start)."""
        self._untried = set(await db.read(Store.untried_peers))

    async def learn(self, db: StoreRunner, texts: Iterable[str], announcer: bytes,
                    source: str = "peer") -> list[str]:
        """The addresses of one `peers` message from `announcer`: the valid ones within its allowance go
        into the store in one transaction. Returns those that were new."""
        texts = list(texts)
        now = trio.current_time()
        bucket = self._bucket(announcer, now)
        if self._all is None:
            self._all = TokenBucket(self.limits.all_burst, self.limits.all_per_hour / 3600, now)
        if bucket.level(now) < 1 or self._all.level(now) < 1:  # allowance used up: nothing is even parsed
            self.dropped += len(texts)
            return []
        blocked = self.blocked()
        candidates: dict[str, bytes] = {}
        for text in texts:
            try:
                address = parse_address(text)
            except ProtocolError:
                continue
            if address.key != self.owner and address.key not in blocked:
                candidates.setdefault(str(address), address.key)
        if not candidates:
            return []
        allowed = min(len(candidates), int(bucket.level(now)), int(self._all.level(now)))
        if allowed < len(candidates):
            self.dropped += len(candidates) - allowed
        if allowed <= 0:
            return []
        # the allowances are spent before the write, so that messages arriving meanwhile see them spent
        bucket.take(now, allowed)
        self._all.take(now, allowed)
        added, displaced = await db.write(Store.add_learned_peers, list(candidates.items())[:allowed], source,
                                          self.limits.max_learned)
        unused = allowed - len(added)  # addresses the book already held use no allowance: give it back
        bucket.tokens = min(bucket.burst, bucket.tokens + unused)
        self._all.tokens = min(self._all.burst, self._all.tokens + unused)
        self._untried.difference_update(displaced)
        self._untried.update(added)
        return added

    def _bucket(self, announcer: bytes, now: float) -> TokenBucket:
        bucket = self._allowance.get(announcer)
        if bucket is None:
            bucket = TokenBucket(self.limits.per_peer_burst, self.limits.per_peer_per_hour / 3600, now)
            self._allowance[announcer] = bucket
            while len(self._allowance) > self.limits.remembered_peers:
                self._allowance.popitem(last=False)
        self._allowance.move_to_end(announcer)
        return bucket

    def may_dial(self, address: str) -> bool:
        """Whether the dial loop may dial `address` now: always for seeds and addresses connected to
        before; for a learned address never connected to, only within the dial rate."""
        if address not in self._untried:
            return True
        now = trio.current_time()
        if self._dials is None:
            self._dials = TokenBucket(self.limits.untried_dial_burst, self.limits.untried_dials_per_minute / 60, now)
        if not self._dials.take(now):
            return False
        self._untried.discard(address)  # tried now; later attempts follow the backoff
        return True
