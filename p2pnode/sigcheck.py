# Checks the signatures that a node stored unchecked (spec/log.md, "Checking a batch": entries proven by a
# later entry's signature through the hash chain) once the node is quiet, so that a sync of a long feed is
# not slowed by them and sending those entries on later costs nothing more. A signature found bad is marked
# and the entry is never sent (it stays held and shown: it is the author's; its bytes were altered on the way).
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import trio

from protocol.ids import entry_ref

from .store import Store

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("p2pnode.node")

CHUNK = 2_000  # signatures read and checked at a time
QUIET_S = 1.0  # no unchecked entries stored for this long: the node is quiet enough to check


class SignatureChecker:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.last_busy = -math.inf
        self.checked = 0  # signatures checked since the node started
        self.bad = 0
        self._wake = trio.Event()

    def wake(self) -> None:
        """Entries came in unchecked: check them once the node has been quiet for QUIET_S."""
        self.last_busy = trio.current_time()
        self._wake.set()

    async def run(self) -> None:
        db = self.node.db
        while True:
            authors = await db.read(Store.feeds_unchecked, 100)
            if not authors:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            for author in authors:
                await self._check_feed(author)
                await trio.lowlevel.checkpoint()  # inline store calls (simulations) do not yield by themselves

    async def _quiet(self) -> None:
        while (left := self.last_busy + QUIET_S - trio.current_time()) > 0:
            await trio.sleep(left)

    async def _check_feed(self, author: bytes) -> None:
        node = self.node
        seq = 0
        while True:
            await self._quiet()
            rows = await node.db.read(Store.unchecked_after, author, seq, CHUNK)
            bad = set(await node.verifier.bad_signatures([(header, signature) for _, _, header, signature in rows]))
            for position in sorted(bad):
                log.warning("entry %s has a bad signature: it is kept (a later signature of its author proves it) "
                            "but never sent on", entry_ref(rows[position][1]))
            named = [(entry, signature) for _, entry, _, signature in rows]
            await node.db.write(Store.signatures_checked, author,
                                [ref for i, ref in enumerate(named) if i not in bad],
                                [ref for i, ref in enumerate(named) if i in bad], len(rows) < CHUNK)
            self.checked += len(rows)
            self.bad += len(bad)
            if len(rows) < CHUNK:
                return
            seq = rows[-1][0]
