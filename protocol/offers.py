# What a node may offer a peer that wants every feed (a relay's `want all`) and what it keeps per peer about
# feeds nobody named (spec/replication.md, "Offering to a relay" and "Memory per peer"). A relay takes only
# so many new feeds from one peer an hour (its quota, stated in its `hello`); the sender notes feeds the
# peer neither names nor holds within that quota and holds the rest back until the window moves on, so an
# honest sender is never closed with `rate-limited:` whatever strangers fed it. Sans-I/O: time is passed in.
from __future__ import annotations

from dataclasses import dataclass

# The receiving side's figures (spec/replication.md, "Relay quotas"), assumed for a peer that states none.
NEW_FEEDS_PER_HOUR = 1_000  # new feeds a relay takes from one peer an hour, and at once
NEW_FEEDS_ROOM = 20_000  # new feeds a relay takes in total before it refuses strangers
# Per peer, notes of feeds this node neither holds nor names and the peer did not name: the oldest are
# forgotten past this many (spec/replication.md, "Memory per peer").
MAX_STRANGER_NOTES = 10_000


@dataclass(frozen=True)
class Quota:
    """A relay's new-feed quota for one peer, as its `hello` states it: how many new feeds it takes from
    that peer now, how many more an hour after that (up to that many at once), and how many in total."""

    now: int = NEW_FEEDS_PER_HOUR
    per_hour: int = NEW_FEEDS_PER_HOUR
    room: int = NEW_FEEDS_ROOM


class OfferBudget:
    """The sender's side of a peer's quota: a token bucket that starts a tenth of an hour's quota below
    where the peer's stood when it said `hello` and refills at the peer's rate up to that much below its
    cap, so it never holds more than the peer's own bucket (which refills at the same rate from at least
    that level) even when what we offered reaches the peer minutes later; plus the peer's room in total."""

    def __init__(self, quota: Quota, now: float) -> None:
        self.per_hour = max(quota.per_hour, 0)
        # the receiver counts a feed when its entries arrive, later than we count it: a tenth of an hour's
        # quota kept in hand covers deliveries up to 6 minutes late (at any rate)
        self.margin = (self.per_hour + 9) // 10
        self.cap = self.per_hour - self.margin
        self.level = float(min(max(quota.now, 0), self.per_hour) - self.margin)
        self.room = max(quota.room, 0)
        self.updated = now
        self.offered = 0

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(float(self.cap), self.level + (now - self.updated) * self.per_hour / 3600)
            self.updated = now

    def take(self, now: float) -> bool:
        """One new feed may be offered now (and is counted), or not yet."""
        self._refill(now)
        if self.level < 1 or self.offered >= self.room:
            return False
        self.level -= 1
        self.offered += 1
        return True

    def ready(self, now: float) -> bool:
        self._refill(now)
        return self.level >= 1 and self.offered < self.room
