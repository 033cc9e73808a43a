# A hostile client for tests and bench/under_attack.py, built on protocol/ (secret handshake, box stream,
# wire messages) over real TCP: each attack opens connections from a chosen local address (Linux routes
# all of 127.0.0.0/8 to lo, so 127.x.y.z are distinct sources for the node's per-IP and per-/24 limits),
# misbehaves, and reopens each connection as soon as the node closes it. An honest client that syncs a
# feed is here too, so that both sides of a test speak the same wire.
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgpack
import nacl.signing
import nacl.utils
import trio

from protocol import boxstream, msgframing, wire
from protocol.handshake import DEFAULT_NETWORK_KEY, ClientHandshake
from protocol.ids import feed_id, parse_address

ATTACKS = ("half-open", "no-hello", "drip", "want-flood", "peers-flood")


@dataclass
class AttackStats:
    opened: int = 0
    handshaken: int = 0
    refused: int = 0  # hung up before the handshake finished
    reasons: Counter[str] = field(default_factory=Counter)  # close reasons the node sent, by prefix+text head

    def note(self, reason: str) -> None:
        self.reasons[reason[:60]] += 1


class RawPeer:
    """A handshaken connection whose bytes the attacker controls: messages, or box-stream bytes one by one."""

    def __init__(self, stream: trio.SocketStream, encoder: boxstream.BoxStreamEncoder,
                 decoder: boxstream.BoxStreamDecoder) -> None:
        self.stream, self.encoder, self.decoder = stream, encoder, decoder
        self.messages = msgframing.MessageDecoder(wire.MAX_MESSAGE_SIZE)

    def boxed(self, message: bytes) -> bytes:
        return self.encoder.encrypt(msgframing.encode_message(message))

    async def send(self, message: wire.Message | dict) -> None:
        data = wire.encode(message) if not isinstance(message, dict) else msgpack.packb(message, use_bin_type=True)
        await self.stream.send_all(self.boxed(data))

    async def receive(self) -> wire.Message | None:
        """The next message, or None when the stream ends."""
        while True:
            message = self.messages.next_message()
            if message is not None:
                return wire.decode(message)
            event = self.decoder.next_event()
            if isinstance(event, boxstream.Data):
                self.messages.receive_data(event.data)
                continue
            if isinstance(event, boxstream.Goodbye):
                return None
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.decoder.receive_data(data)

    async def close_reason(self) -> str | None:
        """Read (and ignore) messages until the node closes: its `close` reason, or None without one."""
        try:
            while (message := await self.receive()) is not None:
                if isinstance(message, wire.Close):
                    return message.reason
        except (trio.BrokenResourceError, trio.ClosedResourceError, boxstream.BoxStreamError, OSError,
                wire.WireError):
            return None
        return None


async def open_tcp(address: str, local_ip: str | None) -> trio.SocketStream:
    target = parse_address(address)
    return await trio.open_tcp_stream(target.host, target.port, local_address=local_ip)


async def handshake(stream: trio.SocketStream, address: str, key: nacl.signing.SigningKey | None = None,
                    network_key: bytes = DEFAULT_NETWORK_KEY) -> RawPeer:
    machine = ClientHandshake(key or nacl.signing.SigningKey.generate(), parse_address(address).key,
                              nacl.utils.random(32), network_key)
    await stream.send_all(machine.initiate())
    while not machine.complete:
        data = await stream.receive_some(machine.bytes_needed)
        if not data:
            raise trio.BrokenResourceError("closed during the handshake")
        reply = machine.receive_data(data)
        if reply:
            await stream.send_all(reply)
    result = machine.result
    assert result is not None
    decoder = boxstream.BoxStreamDecoder(result.decrypt_key, result.decrypt_nonce)
    if machine.leftover:
        decoder.receive_data(machine.leftover)
    return RawPeer(stream, boxstream.BoxStreamEncoder(result.encrypt_key, result.encrypt_nonce), decoder)


def hello() -> wire.Hello:
    return wire.Hello(wire.PROTOCOL_VERSION, (), None, False)


async def one_connection(kind: str, address: str, local_ip: str | None, stats: AttackStats) -> None:
    """One attacking connection of `kind`, until the node ends it."""
    stream = await open_tcp(address, local_ip)
    stats.opened += 1
    try:
        if kind == "half-open":  # TCP open, not a byte sent: holds a handshake slot
            if await stream.receive_some(1) == b"":
                stats.refused += 1
            return
        try:
            peer = await handshake(stream, address)
        except (trio.BrokenResourceError, OSError, Exception):
            stats.refused += 1
            return
        stats.handshaken += 1
        if kind == "drip":  # hello, then a message whose bytes arrive one at a time, slowly
            await peer.send(hello())
            data = peer.boxed(msgpack.packb({"type": "ping", "nonce": 1, "pad": os.urandom(2000)}))
            async with trio.open_nursery() as nursery:
                async def trickle() -> None:
                    for i in range(len(data)):
                        await stream.send_all(data[i:i + 1])
                        await trio.sleep(0.5)
                nursery.start_soon(_quietly, trickle)
                reason = await peer.close_reason()
                nursery.cancel_scope.cancel()
        elif kind == "want-flood":  # the same want of many (unknown) feeds, over and over
            await peer.send(hello())
            feeds = {os.urandom(32): 0 for _ in range(wire.MAX_FEEDS_PER_WANT)}
            async with trio.open_nursery() as nursery:
                async def flood() -> None:
                    while True:
                        await peer.send(wire.Want(feeds, (), False))
                        await trio.sleep(0.05)
                nursery.start_soon(_quietly, flood)
                reason = await peer.close_reason()
                nursery.cancel_scope.cancel()
        elif kind == "peers-flood":  # addresses of strangers, as many as a message holds, again and again
            await peer.send(hello())
            async with trio.open_nursery() as nursery:
                async def flood_peers() -> None:
                    while True:
                        first = os.urandom(1)[0]
                        addresses = tuple(f"127.{first}.{os.urandom(1)[0]}.9:{1000 + i}/{_STRANGERS[i]}"
                                          for i in range(wire.MAX_ADDRESSES_PER_MESSAGE))
                        await peer.send(wire.Peers(addresses))
                        await trio.sleep(0.05)
                nursery.start_soon(_quietly, flood_peers)
                reason = await peer.close_reason()
                nursery.cancel_scope.cancel()
        else:  # "no-hello": the handshake, then silence
            reason = await peer.close_reason()
        if reason is not None:
            stats.note(reason)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


# feed ids for invented addresses (a new host and port make each address new to the node)
_STRANGERS = [feed_id(bytes(nacl.signing.SigningKey(bytes([i + 1]) * 32).verify_key))
              for i in range(wire.MAX_ADDRESSES_PER_MESSAGE)]


async def _quietly(task: Callable[[], Awaitable[None]]) -> None:
    """Run an attacker's sending task; the node hanging up on it is the expected end."""
    try:
        await task()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def attack(kind: str, address: str, local_ip: str | None, stats: AttackStats,
                 task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Keep one attacking connection of `kind` open from `local_ip`, reopening it whenever it ends."""
    task_status.started()
    while True:
        try:
            await one_connection(kind, address, local_ip, stats)
        except OSError:
            stats.refused += 1
        await trio.sleep(0.01)  # reopen at once (a pause of one scheduler tick, not to spin the CPU alone)


async def honest_sync(address: str, feed: bytes, count: int, key: nacl.signing.SigningKey | None = None,
                      local_ip: str | None = None) -> int:
    """An honest peer: handshake, hello, want and stream `feed` from seq 0, and read until `count` entries of it
    arrived. Returns how many arrived; raises if the node closes first."""
    stream = await open_tcp(address, local_ip)
    try:
        peer = await handshake(stream, address, key)
        await peer.send(hello())
        await peer.send(wire.Want({feed: 0}, (), False))
        await peer.send(wire.Stream({feed: 0}))  # this peer is the one to stream it (spec/replication.md)
        received = 0
        while received < count:
            message = await peer.receive()
            if message is None or isinstance(message, wire.Close):
                reason = message.reason if isinstance(message, wire.Close) else "hung up"
                raise AssertionError(f"the node closed the honest peer after {received} entries: {reason}")
            if isinstance(message, wire.Entries):
                received += len(message.raw)
        await peer.send(wire.Close("done"))
        return received
    finally:
        await trio.aclose_forcefully(stream)
