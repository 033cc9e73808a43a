# In-process nodes for tests: a set of Nodes on one MemoryNetwork (memory streams, real SQLite files, the
# real handshake), a peer driven by hand (RawPeer), a bounded wait on a condition under the virtual clock, and
# a chain of signed posts.
from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import nacl.signing
import trio

from p2pnode.connection import Connection, TransportError, client_handshake
from p2pnode.memnet import MemoryInterface, MemoryNetwork
from p2pnode.node import Network, Node, NodeConfig
from p2pnode.store import Store
from protocol import wire
from protocol.ids import Address
from protocol.log import Entry, create_entry

Handler = Callable[[trio.abc.Stream], Awaitable[None]]

RAW_HOST = "10.9.9.9"
FAR = 1e9  # an idle timeout that never fires on the raw peers' side


def raw_key(number: int) -> nacl.signing.SigningKey:
    """Keys for raw peers and authors; Net's nodes use bytes([index + 1]) * 32, which these never equal."""
    return nacl.signing.SigningKey(b"\xee" + number.to_bytes(31, "big"))


class RawPeer:
    """A peer driven by hand: the real handshake, then whatever a test sends (raw msgpack allowed)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.received: list[wire.Message] = []

    @classmethod
    async def over(cls, stream: trio.abc.Stream, node: Node, key: nacl.signing.SigningKey) -> RawPeer:
        assert node.address is not None
        return cls(await client_handshake(stream, key, node.address.key, idle_timeout=FAR))

    @classmethod
    async def connect(cls, net: Net, node: Node, key: nacl.signing.SigningKey) -> RawPeer:
        assert node.address is not None
        stream = await net.network.interface(RAW_HOST).dial(node.address.host, node.address.port)
        return await cls.over(stream, node, key)

    async def send(self, message: wire.Message) -> None:
        await self.conn.send(wire.encode(message))

    async def send_raw(self, obj: Any) -> None:
        await self.conn.send(msgpack.packb(obj, use_bin_type=True))

    async def hello(self, address: str | None = None) -> None:
        await self.send(wire.Hello(wire.PROTOCOL_VERSION, (), address, False))

    async def receive(self) -> wire.Message:
        """The next message, strictly decoded as the node's peers decode it."""
        message = wire.decode(await self.conn.receive())
        self.received.append(message)
        return message

    async def ping(self, nonce: int) -> None:
        """Send a ping and wait for its pong; fail if the node closes instead."""
        await self.send(wire.Ping(nonce))
        with trio.fail_after(30):
            while True:
                message = await self.receive()
                assert not isinstance(message, wire.Close), f"closed instead of a pong: {message.reason}"
                if isinstance(message, wire.Pong) and message.nonce == nonce:
                    return

    async def close_reason(self, timeout: float = 60.0) -> str | None:
        """Read until the node closes: its `close` reason, or None when it hung up without one."""
        with trio.fail_after(timeout):
            while True:
                try:
                    message = await self.receive()
                except TransportError:
                    return None
                if isinstance(message, wire.Close):
                    return message.reason



class Net:
    """Nodes on one MemoryNetwork, each with its own SQLite file and key; `prepare` fills a store first."""

    def __init__(self, tmp_path: Path, nursery: trio.Nursery, network: MemoryNetwork | None = None) -> None:
        self.tmp_path = tmp_path
        self.nursery = nursery
        self.network = network or MemoryNetwork()
        self.nodes: list[Node] = []
        self.scopes: dict[Node, trio.CancelScope] = {}

    def stop(self, node: Node) -> None:
        """Take a node away at once, as a crash or a cut cable would (its peers see the streams end)."""
        self.scopes[node].cancel()

    async def add(self, seeds: list[Address] | None = None, *,
                  prepare: Callable[[nacl.signing.SigningKey, Store], None] | None = None,
                  wrap: Callable[[MemoryInterface], Network] | None = None, **config: Any) -> Node:
        index = len(self.nodes)
        host = f"10.{index // 65536}.{index // 256 % 256}.{index % 256}"
        key = nacl.signing.SigningKey(bytes([index + 1]) * 32)
        store = Store(self.tmp_path / f"node{index}.sqlite3", bytes(key.verify_key))
        if prepare is not None:
            prepare(key, store)
        config = {"verify_workers": 0, "store_thread": False, **config}
        settings = NodeConfig(listen_host=host, listen_port=0, **config)
        interface = self.network.interface(host)
        node = Node(key, store, settings, wrap(interface) if wrap else interface, random.Random(index))
        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                self.scopes[node] = scope
                await node.run(seeds or [], task_status=task_status)

        await self.nursery.start(run)
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


async def assert_serves(net: Net, node: Node, nonce: int) -> None:
    """The node is alive and a well-behaved newcomer gets a pong."""
    peer = await RawPeer.connect(net, node, raw_key(10_000 + nonce))
    await peer.hello()
    await peer.ping(nonce)
    await peer.conn.aclose()


def own_feed_then_follow(count: int, other: bytes, made: list[Entry] | None = None,
                         ) -> Callable[[nacl.signing.SigningKey, Store], None]:
    """A `prepare` for Net.add: the node's own feed of `count` posts, then a follow of `other` (two nodes that
    each hold a feed the other wants, as in the slow-link mutual sync). `made` receives the entries."""
    def prepare(key: nacl.signing.SigningKey, store: Store) -> None:
        previous = None
        batch = []
        for number in range(count):
            previous = create_entry(key, previous, {"type": "post", "text": f"{number:05}"}, 1_000 + number)
            batch.append(previous)
        batch.append(create_entry(key, previous, {"type": "follow", "feed": other}, 1_000 + count))
        for start in range(0, len(batch), 1_000):
            assert store.ingest_verified(batch[start:start + 1_000]).error is None
        if made is not None:
            made.extend(batch)
    return prepare
