# Repairing payloads (spec/replication.md, "Repair"): a node that holds an entry without its payload (it came
# without one, or the store found it damaged on disk and dropped it) asks the peers that hold the feed that far
# for the entry again with a `fetch`, each peer once per connection, and answers its peers' `fetch`es from the
# store. The node's hooks: `run` (a loop of the node), `on_fetch` (the reader, for each fetch received) and
# `next_message` (the session's one writer, when it has nothing else to send).
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import trio

from protocol import wire

from .store import Store

if TYPE_CHECKING:
    from .node import Node
    from .session import Session

MAX_MISSING = 10_000  # missing payloads looked at a time (the oldest first); the rest wait their turn
ANSWER_QUEUE = 2 * wire.MAX_REFS_PER_FETCH  # entries waiting to be sent per peer; further fetches are dropped
MAX_ANSWER_BYTES = 512 * 1024
TICK_S = 1.0

Ref = tuple[bytes, int]


class _PeerRepair:
    """What one connection has been asked for, and what it asked us for."""

    def __init__(self) -> None:
        self.asked: set[Ref] = set()
        self.requests: list[wire.Fetch] = []
        self.answers: list[Ref] = []
        self.rows: list[tuple[bytes, bytes, bytes | None]] = []  # read for an answer, not sent yet


class Repairer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.missing: list[Ref] = []
        self.peers: weakref.WeakKeyDictionary[Session, _PeerRepair] = weakref.WeakKeyDictionary()
        self._data_version: int | None = None

    def _peer(self, session: Session) -> _PeerRepair:
        state = self.peers.get(session)
        if state is None:
            state = self.peers[session] = _PeerRepair()
        return state

    async def run(self) -> None:
        """Once a second: look for missing payloads again when the store changed (another connection wrote,
        or an entry came without its payload), and ask the connected peers that hold them."""
        node = self.node
        while True:
            version = await node.db.write(Store.data_version)
            if node.store.missing_changed or version != self._data_version:
                node.store.missing_changed = False
                self._data_version = version
                self.missing = await node.db.read(Store.missing_payloads, MAX_MISSING)
            if self.missing:
                for session in list(node.sessions.values()):
                    self._ask(session)
            await trio.sleep(TICK_S)

    def _ask(self, session: Session) -> None:
        if session.closing is not None or session.hello is None:
            return
        peer = self.node.replicator.peers.get(session.handle)
        if peer is None:
            return
        state = self._peer(session)
        refs = [ref for ref in self.missing if ref not in state.asked and peer.their_seq.get(ref[0], 0) >= ref[1]
                and ref[0] not in self.node.blocked][: wire.MAX_REFS_PER_FETCH]
        if refs:
            state.asked.update(refs)
            state.requests.append(wire.Fetch(tuple(refs)))
            session.poke()

    def on_fetch(self, session: Session, message: wire.Fetch) -> None:
        """A peer asks for entries again: queued (at most ANSWER_QUEUE), sent by the session's writer."""
        state = self._peer(session)
        blocked = self.node.blocked
        state.answers.extend(ref for ref in message.refs if ref[0] not in blocked)
        del state.answers[ANSWER_QUEUE:]
        session.poke()

    async def next_message(self, session: Session) -> wire.Message | None:
        """The next repair message for this peer: a fetch of ours, or entries that answer one of its fetches."""
        state = self.peers.get(session)
        if state is None:
            return None
        if state.requests:
            return state.requests.pop(0)
        if not state.rows and state.answers:
            refs = sorted(state.answers[: wire.MAX_REFS_PER_FETCH])  # each feed's entries in seq order
            del state.answers[: wire.MAX_REFS_PER_FETCH]
            state.rows = await self.node.db.read(Store.entries_at, refs)  # those held
        if not state.rows:
            return None
        batch: list[tuple[bytes, bytes, bytes | None]] = []
        size = 0
        for item in state.rows:
            item_size = len(item[0]) + len(item[1]) + len(item[2] or b"") + 16
            if batch and size + item_size > MAX_ANSWER_BYTES:
                break
            batch.append(item)
            size += item_size
        del state.rows[: len(batch)]
        return wire.Entries(tuple(batch))
