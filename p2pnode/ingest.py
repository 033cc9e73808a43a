# What a node does with entries that reach it: which received entries it keeps (only feeds it wants, never
# blocked or forked ones), storing them through the store's writer thread, the fork and block policy, and the
# consequences of any new entry, wherever it came from (a peer, a local publish, another process): the
# replication state learns the new seqs, and follows, blocks and forks recompute what the node wants.
from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING

import trio

from protocol import wire
from protocol.errors import Blocked, ForkDetected, ProtocolError
from protocol.ids import feed_id
from protocol.log import CONTACT_TYPES, Entry, peek_author

from .session import PeerGone, Session
from .store import IngestResult, Store

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("p2pnode.node")

Raw = tuple[bytes, bytes, bytes | None]


class Ingest:
    def __init__(self, node: Node) -> None:
        self.node = node

    def select_wanted(self, message: wire.Entries) -> list[Raw]:
        """The entries of a batch whose feeds this node wants; the others are dropped unread (a want change
        may cross a batch in flight: not an error)."""
        wants = self.node.replicator.wants
        return [item for item in message.raw if (author := peek_author(item[0])) is None or wants(author)]

    async def store_from_peer(self, session: Session, entries: list[Entry], error: ProtocolError | None,
                              unchecked: set[bytes] | None = None) -> None:
        """Store a verified batch from a peer. `error`: the batch's first invalid entry, which ends the session
        with its reason once the verified entries before it are stored. `unchecked`: the hashes of entries
        proven by a later signature, whose own signatures are checked before they are sent on."""
        node = self.node
        node.stats.entries_in += len(entries)
        remaining = entries
        while remaining:
            if not node.disk.may_store():  # a full disk: dropped (p2pnode/diskspace.py says how they come back)
                node.disk.drop(session, len(remaining))
                break
            try:
                starts = {f: set(s) for f, s in node.replicator.starts.items()}
                result: IngestResult = await node.db.write(Store.ingest_verified, remaining, starts, unchecked)
            except sqlite3.OperationalError as exc:
                if not node.disk.failed(exc):
                    raise
                node.disk.drop(session, len(remaining))
                break
            processed = len(result.stored) + result.duplicates
            node.stats.duplicates_in += result.duplicates
            held = remaining[:processed]
            node.replicator.on_entries(session.handle, _last_seqs(held), trio.current_time())
            session.received_entries += len(result.stored)
            if result.unchecked:
                node.signatures.wake()  # check them when the node is quiet (p2pnode/sigcheck.py)
            await self.stored(result, source=session)
            if not isinstance(result.error, ForkDetected | Blocked):
                error = result.error or error
                break
            # not the peer's fault: it holds the other branch of a fork, or a feed our owner blocked after
            # the batch left it. Stop fetching that feed and keep the rest of the batch
            failed = remaining[processed].author
            log.warning("%s (seen from peer %s); this feed is no longer fetched", result.error.reason,
                        feed_id(session.key)[:12])
            if failed == node.owner and isinstance(result.error, ForkDetected):
                log.error("this node's own feed is forked: it signed two entries at the same seq (was the store "
                          "lost and posted to before the feed came back from peers?); it cannot post any more")
            remaining = [e for e in remaining[processed + 1:] if e.author != failed]
            node.interest_changed()
        if error is not None:
            log.warning("peer %s sent an invalid entry: %s", feed_id(session.key)[:12], error.reason)
            raise PeerGone.from_error(error)

    async def stored(self, result: IngestResult, source: Session | None = None) -> None:
        """Act on what a write to the store did, wherever the entries came from."""
        node = self.node
        if result.purged_feeds:
            node.replicator.on_purged(result.purged_feeds)
        if result.lows:
            node.replicator.set_lows(result.lows)
        if result.stored and node.observer is not None:
            node.observer(result.stored, source.key if source else None)
        if result.stored:
            node.replicator.on_stored(_last_seqs(result.stored), source.handle if source else None,
                                      trio.current_time())
            node.wake_touched()
            node.notify()
        if result.purged_feeds or result.forked or any(_is_contact(e) for e in result.stored):
            node.interest_changed()


def _last_seqs(entries: list[Entry]) -> dict[bytes, int]:
    seqs: dict[bytes, int] = {}
    for entry in entries:
        if entry.seq > seqs.get(entry.author, 0):
            seqs[entry.author] = entry.seq
    return seqs


def _is_contact(entry: Entry) -> bool:
    content = entry.content()
    return content is not None and content.get("type") in CONTACT_TYPES
