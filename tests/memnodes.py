# In-process nodes for tests: a set of Nodes on one MemoryNetwork (memory streams, real SQLite files, the
# real handshake), a bounded wait on a condition under the virtual clock, and a chain of signed posts.
from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nacl.signing
import trio

from p2pnode.memnet import MemoryInterface, MemoryNetwork
from p2pnode.node import Network, Node, NodeConfig
from p2pnode.store import Store
from protocol.ids import Address
from protocol.log import Entry, create_entry

Handler = Callable[[trio.abc.Stream], Awaitable[None]]


class Net:
    """Nodes on one MemoryNetwork, each with its own SQLite file and key; `prepare` fills a store first."""

    def __init__(self, tmp_path: Path, nursery: trio.Nursery) -> None:
        self.tmp_path = tmp_path
        self.nursery = nursery
        self.network = MemoryNetwork()
        self.nodes: list[Node] = []

    async def add(self, seeds: list[Address] | None = None, *,
                  prepare: Callable[[nacl.signing.SigningKey, Store], None] | None = None,
                  wrap: Callable[[MemoryInterface], Network] | None = None, **config: Any) -> Node:
        index = len(self.nodes)
        host = f"10.{index // 65536}.{index // 256 % 256}.{index % 256}"
        key = nacl.signing.SigningKey(bytes([index + 1]) * 32)
        store = Store(self.tmp_path / f"node{index}.sqlite3", bytes(key.verify_key))
        if prepare is not None:
            prepare(key, store)
        settings = NodeConfig(listen_host=host, listen_port=0, verify_workers=0, store_thread=False, **config)
        interface = self.network.interface(host)
        node = Node(key, store, settings, wrap(interface) if wrap else interface, random.Random(index))
        await self.nursery.start(node.run, seeds or [])
        self.nodes.append(node)
        return node

    async def serve(self, host: str, handler: Handler) -> tuple[str, int]:
        """A raw listener on the network (a seed that misbehaves)."""
        return await self.nursery.start(self.network.interface(host).serve, host, 0, handler)


async def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def chain(key: nacl.signing.SigningKey, texts: list[str], start: Entry | None = None) -> list[Entry]:
    """Posts with these texts, signed by `key`, following `start` (or starting a feed)."""
    entries: list[Entry] = []
    previous = start
    for number, text in enumerate(texts):
        previous = create_entry(key, previous, {"type": "post", "text": text}, 1_000 + number)
        entries.append(previous)
    return entries
