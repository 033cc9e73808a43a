# How a node reaches other nodes: the `Network` interface that both real TCP and the in-process memory
# network (p2pnode/memnet.py) implement, so the same node code runs on sockets and in simulations.
from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

Handler = Callable[[trio.abc.Stream], Awaitable[None]]


class Network(Protocol):
    """Listen for and open byte streams."""

    async def serve(self, host: str, port: int, handler: Handler,
                    *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None: ...

    async def dial(self, host: str, port: int) -> trio.abc.Stream: ...


class TcpNetwork:
    """Real TCP sockets."""

    async def serve(self, host: str, port: int, handler: Handler,
                    *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = listeners[0].socket.getsockname()
        task_status.started((sockname[0], sockname[1]))
        await trio.serve_listeners(handler, listeners)

    async def dial(self, host: str, port: int) -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)


def beyond_loopback(host: str) -> bool:
    """Whether a node listening on `host` can be reached from other machines (LAN discovery and UPnP only
    make sense then)."""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"
