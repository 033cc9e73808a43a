# Repairing payloads (spec/replication.md, "Repair"): a node that holds an entry without its payload (it came
# without one, or the store found it damaged on disk and dropped it) asks the peers that hold the feed for that
# entry again with a `fetch`, once per connection, and answers the `fetch`es of its peers from its store.
# The node's hooks: `run` (a task of its nursery) and `answer` (for each fetch received).
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import trio

from protocol import wire

if TYPE_CHECKING:
    from .node import Node, Session

MAX_MISSING = 10_000  # missing payloads remembered at a time (the oldest first); the rest wait their turn
ANSWER_QUEUE = 2 * wire.MAX_REFS_PER_FETCH  # refs waiting for an answer per peer; more fetches are dropped
MAX_ANSWER_BYTES = 512 * 1024
TICK_S = 1.0


class Repairer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.missing: list[tuple[bytes, int]] = []
        self.asked: weakref.WeakKeyDictionary[Session, set[tuple[bytes, int]]] = weakref.WeakKeyDictionary()
        self.queued: weakref.WeakKeyDictionary[Session, list[tuple[bytes, int]]] = weakref.WeakKeyDictionary()
        self.repaired = 0  # payloads that came back since the node started (for status)
        self._data_version: int | None = None

    def rescan(self) -> None:
        store = self.node.store
        store.missing_changed = False
        before = set(self.missing)
        self.missing = [(bytes(a), s) for a, s in store.missing_payloads(MAX_MISSING)]
        self.repaired += len(before - set(self.missing))

    async def run(self) -> None:
        """Once a second (and at once when the store says something went missing): look for missing payloads
        again when the store changed, and ask each connected peer for those it holds and was not asked for."""
        store = self.node.store
        while True:
            version = store.data_version()
            if store.missing_changed or version != self._data_version:
                self._data_version = version
                self.rescan()
            if self.missing:
                for session in list(self.node.sessions.values()):
                    self.ask(session)
            await trio.sleep(TICK_S)

    def ask(self, session: Session) -> None:
        if session.closing is not None or session.hello is None:
            return
        asked = self.asked.setdefault(session, set())
        refs = [ref for ref in self.missing if ref not in asked and session.their_have.get(ref[0], 0) >= ref[1]
                and ref[0] not in self.node.blocked][: wire.MAX_REFS_PER_FETCH]
        if refs:
            asked.update(refs)
            self.node._nursery_send(session, [wire.Fetch(tuple(refs))])

    def answer(self, session: Session, message: wire.Fetch) -> None:
        """Queue a peer's fetch; one task per peer sends the entries, so the reader never waits to send."""
        queue = self.queued.get(session)
        if queue is None:
            queue = self.queued[session] = []
            self.node._nursery.start_soon(self._answer, session, queue)  # type: ignore[union-attr]
        blocked = self.node.blocked
        queue.extend(ref for ref in message.refs if ref[0] not in blocked)
        del queue[ANSWER_QUEUE:]

    async def _answer(self, session: Session, queue: list[tuple[bytes, int]]) -> None:
        from .node import PeerGone
        try:
            while queue and session.closing is None:
                refs = sorted(queue[: wire.MAX_REFS_PER_FETCH])  # each feed's entries in seq order
                del queue[: wire.MAX_REFS_PER_FETCH]
                batch: list[tuple[bytes, bytes, bytes | None]] = []
                size = 0
                for item in self.node.store.entries_at(refs):
                    item_size = len(item[0]) + len(item[1]) + len(item[2] or b"") + 16
                    if batch and size + item_size > MAX_ANSWER_BYTES:
                        await session.send(wire.Entries(tuple(batch)))
                        batch, size = [], 0
                    batch.append(item)
                    size += item_size
                if batch:
                    await session.send(wire.Entries(tuple(batch)))
        except PeerGone as exc:
            session.close(exc.reason)
        finally:
            self.queued.pop(session, None)
