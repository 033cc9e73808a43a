# Finding peers on the local network with no seed and no internet (spec/peers.md, "LAN discovery"): the node
# publishes itself over mDNS/DNS-SD as `_p2pnode._tcp` (TXT `id` = its feed id) and browses for others; each
# one found goes into the peer book as `lan` and is dialled like any address, so it must prove its key in the
# handshake. zeroconf runs its own thread; its callbacks only hand names to the trio side through a channel.
from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from protocol.errors import ProtocolError
from protocol.ids import Address, feed_id, parse_feed_id

from .network import beyond_loopback

log = logging.getLogger("p2pnode.lan")

SERVICE_TYPE = "_p2pnode._tcp.local."
LOOKUP_TIMEOUT_MS = 3000
MAX_PENDING = 256  # names waiting to be looked up; more are dropped (a flood on the LAN cannot grow memory)


def lan_enabled(listen_host: str, disabled: bool) -> bool:
    """LAN discovery runs unless --no-lan, and only when others on the LAN can reach us (not bound to loopback)."""
    return not disabled and beyond_loopback(listen_host)


def service_name(owner: bytes) -> str:
    return f"p2pnode-{feed_id(owner)[1:17]}.{SERVICE_TYPE}"


async def run_lan_discovery(owner: bytes, port: int, hosts: list[str],
                            found: Callable[[Address], Awaitable[None]]) -> None:
    """Publish this node at `hosts`:`port` and report every other node found with `found(address)`, until
    cancelled; then unpublish. `hosts`: this node's interface addresses (the ones its LAN peers can dial).
    A failure of mDNS itself (no multicast, port 5353 taken) is logged in one line; the node goes on."""
    try:
        await _discover(owner, port, hosts, found)
    except Exception as exc:  # zeroconf raises its own types and OSErrors; none may stop the node
        log.warning("LAN discovery stopped: %s: %s", type(exc).__name__, exc)


async def _discover(owner: bytes, port: int, hosts: list[str], found: Callable[[Address], Awaitable[None]]) -> None:
    from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

    token = trio.lowlevel.current_trio_token()
    names_in, names_out = trio.open_memory_channel[str](MAX_PENDING)

    def queue(name: str) -> None:
        try:
            names_in.send_nowait(name)
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass

    def on_change(zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            try:
                token.run_sync_soon(queue, name)
            except trio.RunFinishedError:
                pass

    addresses = [h for h in hosts if _is_ip(h)]
    zc = await trio.to_thread.run_sync(lambda: Zeroconf(ip_version=IPVersion.All))
    info = ServiceInfo(SERVICE_TYPE, service_name(owner), port=port, properties={"id": feed_id(owner)},
                       parsed_addresses=addresses)
    browser = None
    try:
        await trio.to_thread.run_sync(zc.register_service, info)
        log.info("published on the LAN as %s at %s port %d", service_name(owner), ", ".join(addresses), port)
        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
        async for name in names_out:
            if name == service_name(owner):
                continue
            peer = await trio.to_thread.run_sync(zc.get_service_info, SERVICE_TYPE, name, LOOKUP_TIMEOUT_MS)
            for address in _addresses(peer, owner):
                await found(address)
    finally:
        with trio.CancelScope(shield=True):
            if browser is not None:
                browser.cancel()
            await trio.to_thread.run_sync(_close, zc, info)


def _close(zc: Any, info: Any) -> None:
    try:
        zc.unregister_service(info)
    finally:
        zc.close()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _addresses(info: Any, owner: bytes) -> list[Address]:
    """The addresses a service record names, if it carries a well-formed feed id other than ours."""
    if info is None or not info.port:
        return []
    raw = (info.properties or {}).get(b"id")
    try:
        key = parse_feed_id(raw.decode("ascii") if isinstance(raw, bytes) else "")
    except (ProtocolError, UnicodeDecodeError):
        return []
    if key == owner:
        return []
    result = []
    for text in info.parsed_addresses():
        ip = ipaddress.ip_address(text)
        if ip.is_loopback or ip.is_unspecified or (ip.version == 6 and ip.is_link_local):
            continue  # a link-local IPv6 address needs a scope id, which an address cannot carry
        result.append(Address(str(ip), info.port, key))
    return result
