# Sync progress of a running node: per peer, how many entries of the feeds we want it holds beyond ours
# ("12,000 of 100,000, 4,300/s"), read from the sessions and the replication state (protocol/replication.py).
# `p2pnode run` adds it to node.json (what `status` shows) and logs it every few seconds while a sync lasts.
from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from protocol.ids import feed_id

log = logging.getLogger("p2pnode.progress")

WINDOW_S = 5.0  # rates are measured over this many seconds
MAX_FEEDS_SHOWN = 10  # feeds listed per peer (the ones with the most left)
LOG_INTERVAL_S = 5.0


def log_interval() -> float:
    """Seconds between progress log lines ($P2PNODE_PROGRESS_INTERVAL, for tests and impatient people)."""
    try:
        return max(0.1, float(os.environ.get("P2PNODE_PROGRESS_INTERVAL", LOG_INTERVAL_S)))
    except ValueError:
        return LOG_INTERVAL_S


class _Rate:
    """A counter's growth per second over the last WINDOW_S seconds."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, value: int) -> float:
        self.samples.append((now, value))
        while len(self.samples) > 2 and now - self.samples[1][0] >= WINDOW_S:
            self.samples.popleft()
        first_time, first_value = self.samples[0]
        elapsed = now - first_time
        return max(0.0, (value - first_value) / elapsed) if elapsed > 0 else 0.0


class SyncProgress:
    """Samples a Node; `peers()` gives each connected peer's progress as plain data (JSON-ready)."""

    def __init__(self, node: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.clock = clock
        self._peer_rates: dict[bytes, _Rate] = {}
        self._feed_rates: dict[bytes, _Rate] = {}

    def peers(self) -> dict[str, dict[str, Any]]:
        """feed id of each peer -> {"left", "rate", "received", "feeds": [{"feed", "held", "of", "rate"}]}."""
        now = self.clock()
        held = _held(self.node)
        result: dict[str, dict[str, Any]] = {}
        live_feeds: set[bytes] = set()
        sessions = _sessions(self.node)
        for key, received, their_have in sessions:
            rate = self._peer_rates.setdefault(key, _Rate()).add(now, received)
            behind = []
            for author, theirs in their_have.items():
                ours = held.get(author, 0)
                if theirs > ours:
                    live_feeds.add(author)
                    feed_rate = self._feed_rates.setdefault(author, _Rate()).add(now, ours)
                    behind.append((theirs - ours, author, ours, theirs, feed_rate))
            behind.sort(key=lambda item: (-item[0], item[1]))
            result[feed_id(key)] = {
                "received": received,
                "rate": round(rate, 1),
                "left": sum(item[0] for item in behind),
                "feeds_behind": len(behind),
                "feeds": [{"feed": feed_id(author), "held": ours, "of": theirs, "rate": round(feed_rate, 1)}
                          for _, author, ours, theirs, feed_rate in behind[:MAX_FEEDS_SHOWN]],
            }
        for gone in set(self._peer_rates) - {key for key, _, _ in sessions}:
            del self._peer_rates[gone]
        for done in set(self._feed_rates) - live_feeds:
            del self._feed_rates[done]
        return result


# The only two functions that read the node's state (its sessions and its replication state): no store
# access, so that this runs on the event loop while the store belongs to its own thread.

def _held(node: Any) -> dict[bytes, int]:
    """Every feed this node holds -> its latest seq."""
    return dict(node.replicator.clock)


def _sessions(node: Any) -> list[tuple[bytes, int, dict[bytes, int]]]:
    """(peer key, entries received, what it holds of the feeds we want) of each open session."""
    replicator = node.replicator
    found = []
    for session in list(node.sessions.values()):
        if session.closing is not None or session.hello is None:
            continue
        state = replicator.peers.get(session.handle)
        their = state.their_seq if state is not None else {}
        found.append((session.key, session.received_entries,
                      {feed: seq for feed, seq in their.items() if replicator.wants(feed)}))
    return found


def describe_peer(peer: str, data: dict[str, Any], name: Callable[[str], str]) -> str:
    """One log line: 'sync from @abc…: 88,000 left, 4,300/s; alice 12,000 of 100,000'."""
    feeds = "; ".join(f"{name(f['feed'])} {f['held']:,} of {f['of']:,}" for f in data["feeds"][:3])
    more = data["feeds_behind"] - min(3, len(data["feeds"]))
    return (f"sync from {peer[:12]}: {data['left']:,} entries left, {data['rate']:,.0f}/s; {feeds}"
            + (f"; and {more} more feeds" if more > 0 else ""))


async def log_progress(progress: SyncProgress, interval: float | None = None) -> None:
    """Log each peer's progress every `interval` seconds while there is something left to fetch from it,
    and once when it is done."""
    interval = log_interval() if interval is None else interval
    syncing: dict[str, float] = {}
    while True:
        await trio.sleep(interval)
        peers = progress.peers()
        for peer, data in peers.items():
            if data["left"] > 0:
                syncing.setdefault(peer, progress.clock())
                log.info("%s", describe_peer(peer, data, lambda text: text[:12]))
            elif peer in syncing:
                took = progress.clock() - syncing.pop(peer)
                log.info("sync from %s: up to date (%s entries received in this session; about %.0f s)",
                         peer[:12], f"{data['received']:,}", took)
        for peer in set(syncing) - set(peers):
            del syncing[peer]
