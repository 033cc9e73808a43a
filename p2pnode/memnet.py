# An in-process network of memory streams (trio.testing) with the same interface as TcpNetwork, so that
# many nodes run in one process under a virtual clock: for simulations and many-node tests.
from __future__ import annotations

import errno
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

Handler = Callable[[trio.abc.Stream], Awaitable[None]]


class MemoryNetwork:
    """A switchboard: each host gets a MemoryInterface; dialling a (host, port) starts that listener's handler.
    `bandwidth` (bytes/s each way) makes every link that slow; `buffered=False` gives links no buffer at all
    (a send waits until the other side reads), the harshest model of a slow link with full buffers."""

    def __init__(self, *, bandwidth: float | None = None, buffered: bool = True) -> None:
        self.listeners: dict[tuple[str, int], tuple[Handler, trio.Nursery]] = {}
        self._ports = itertools.count(10_000)
        # hosts cut off (a partition, churn): dials to or from them are refused, and what is sent on their open
        # links waits until they are back, as TCP holds data while packets are dropped
        self.down: set[str] = set()
        self.bandwidth = bandwidth
        self.buffered = buffered
        self._back: trio.Event | None = None

    def pair(self, hosts: tuple[str, str]) -> tuple[trio.abc.Stream, trio.abc.Stream]:
        ours, theirs = (trio.testing.memory_stream_pair() if self.buffered
                        else trio.testing.lockstep_stream_pair())
        if self.bandwidth is not None:
            ours, theirs = Throttled(ours, self.bandwidth), Throttled(theirs, self.bandwidth)
        return Link(ours, self, hosts), Link(theirs, self, hosts)

    def cut(self, host: str) -> None:
        self.down.add(host)

    def restore(self, host: str) -> None:
        self.down.discard(host)
        if self._back is not None:
            self._back.set()
            self._back = None

    async def wait_restored(self) -> None:
        if self._back is None:
            self._back = trio.Event()
        await self._back.wait()

    def interface(self, host: str) -> MemoryInterface:
        return MemoryInterface(self, host)


class MemoryInterface:
    def __init__(self, network: MemoryNetwork, host: str) -> None:
        self.network = network
        self.host = host

    async def serve(self, host: str, port: int, handler: Handler, *,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        port = port or next(self.network._ports)
        key = (self.host, port)
        if key in self.network.listeners:
            raise OSError(errno.EADDRINUSE, f"{self.host}:{port} is in use")
        async with trio.open_nursery() as nursery:
            self.network.listeners[key] = (handler, nursery)
            try:
                task_status.started(key)
                await trio.sleep_forever()
            finally:
                del self.network.listeners[key]

    async def dial(self, host: str, port: int) -> trio.abc.Stream:
        entry = self.network.listeners.get((host, port))
        if entry is None or host in self.network.down or self.host in self.network.down:
            raise OSError(errno.ECONNREFUSED, f"connection to {host}:{port} refused")
        handler, nursery = entry
        ours, theirs = self.network.pair((self.host, host))
        nursery.start_soon(handler, theirs)
        return ours


class _Wrapper(trio.abc.Stream):
    """A stream that passes everything but `send_all` to the stream it wraps."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Link(_Wrapper):
    """One end of a link between two hosts: a send waits while either host is cut off."""

    def __init__(self, inner: trio.abc.Stream, network: MemoryNetwork, hosts: tuple[str, str]) -> None:
        super().__init__(inner)
        self.network = network
        self.hosts = hosts

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        while self.hosts[0] in self.network.down or self.hosts[1] in self.network.down:
            await self.network.wait_restored()
        await self.inner.send_all(data)


class Throttled(_Wrapper):
    """A stream whose sends take as long as `bandwidth` bytes/s allows (on the trio clock, so simulations
    under a virtual clock see a slow link without waiting for it)."""

    def __init__(self, inner: trio.abc.Stream, bandwidth: float) -> None:
        super().__init__(inner)
        self.bandwidth = bandwidth

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep(len(data) / self.bandwidth)
        await self.inner.send_all(data)
