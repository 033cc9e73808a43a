# Opening the home router (spec/peers.md, "Port mapping"): UPnP IGD through miniupnpc, which asks the router
# (found by SSDP on the local network) to forward the node's TCP port from its external address, and when no
# UPnP router answers or it refuses, NAT-PMP and then PCP to the default gateway (p2pnode/pmp.py). The lease is
# renewed at half its length and the mapping deleted when the node stops. The outcome, good or bad, is kept
# as one line for `status`, naming the method that worked. miniupnpc blocks, so its calls run in a thread.
from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from .network import beyond_loopback
from .pmp import NatPmpRouter, PcpRouter, PortMapError, default_gateway

log = logging.getLogger("p2pnode.nat")

LEASE_S = 3600  # asked of the router; renewed at half of it
RETRY_S = 300.0  # after a failure (no router, a refusal), try again this much later
DISCOVER_MS = 2000
DESCRIPTION = "p2pnode"


def upnp_enabled(listen_host: str, disabled: bool) -> bool:
    """UPnP runs unless --no-upnp, and only when the node listens beyond loopback."""
    return not disabled and beyond_loopback(listen_host)


class PortMapping:
    """The state of this node's router port mapping, for status."""

    def __init__(self) -> None:
        self.state = "starting"  # starting | mapped | failed | off
        self.detail = "looking for a UPnP, NAT-PMP or PCP router on the local network"
        self.external: tuple[str, int] | None = None
        self.method: str | None = None  # UPnP | NAT-PMP | PCP, once mapped
        self.at = time.time()

    def set(self, state: str, detail: str, external: tuple[str, int] | None = None,
            method: str | None = None) -> None:
        self.state, self.detail, self.external, self.method, self.at = state, detail, external, method, time.time()

    def report(self) -> dict[str, Any]:
        return {"state": self.state, "detail": self.detail, "at": int(self.at), "method": self.method,
                "external": f"{self.external[0]}:{self.external[1]}" if self.external else None}


class _Router:
    """One miniupnpc client bound to the router it found (blocking calls: run them in a thread)."""

    def __init__(self) -> None:
        import miniupnpc
        self.upnp = miniupnpc.UPnP()
        self.upnp.discoverdelay = DISCOVER_MS

    def find(self) -> str:
        try:
            found = self.upnp.discover()
        except Exception:  # miniupnpc raises a bare Exception (text "Success") when the search fails
            found = 0
        if found == 0:
            raise RuntimeError("no UPnP router answered on the local network (none there, or UPnP is off on it)")
        try:
            self.upnp.selectigd()
        except Exception as exc:
            raise RuntimeError(f"no usable UPnP internet gateway: {exc}") from None
        return str(self.upnp.externalipaddress())

    def map(self, port: int) -> None:
        try:
            ok = self.upnp.addportmapping(port, "TCP", self.upnp.lanaddr, port, DESCRIPTION, "", LEASE_S)
        except Exception as exc:
            raise RuntimeError(f"the router refused to forward TCP port {port}: {exc}") from None
        if not ok:
            raise RuntimeError(f"the router refused to forward TCP port {port}")

    def unmap(self, port: int) -> None:
        self.upnp.deleteportmapping(port, "TCP")


class UpnpRouter:
    """The UPnP IGD client with the same async interface as pmp.NatPmpRouter and pmp.PcpRouter."""

    method = "UPnP"

    def __init__(self) -> None:
        self.router: _Router | None = None

    async def map(self, port: int, lifetime: int) -> tuple[str, int, int]:
        try:
            self.router = self.router or await trio.to_thread.run_sync(_Router)
            external_ip = await trio.to_thread.run_sync(self.router.find)
            ipaddress.ip_address(external_ip)  # the router must name a real address
            await trio.to_thread.run_sync(self.router.map, port)
        except Exception as exc:  # miniupnpc raises bare Exceptions; none may stop the node
            raise PortMapError(str(exc) or type(exc).__name__) from None
        return external_ip, port, lifetime

    async def unmap(self, port: int) -> None:
        if self.router is not None:
            await trio.to_thread.run_sync(self.router.unmap, port, abandon_on_cancel=True)


Router = UpnpRouter | NatPmpRouter | PcpRouter


async def find_router(port: int) -> tuple[Router, tuple[str, int, int]]:
    """Map `port` by the first method that works: UPnP, then NAT-PMP, then PCP (only when the gateway answered
    NAT-PMP saying it speaks PCP). PortMapError naming each method's reason when none does."""
    reasons = []
    upnp = UpnpRouter()
    try:
        return upnp, await upnp.map(port, LEASE_S)
    except PortMapError as exc:
        reasons.append(f"UPnP: {exc}")
    try:
        gateway = default_gateway()
        pmp = NatPmpRouter(gateway)
        try:
            return pmp, await pmp.map(port, LEASE_S)
        except PortMapError as exc:
            reasons.append(str(exc))
            if not exc.unsupported_version:
                raise
        pcp = PcpRouter(gateway)
        return pcp, await pcp.map(port, LEASE_S)
    except PortMapError as exc:
        if str(exc) not in reasons:
            reasons.append(str(exc))
    raise PortMapError("; ".join(reasons))


async def run_port_mapping(port: int, state: PortMapping,
                           changed: Callable[[tuple[str, int] | None], None]) -> None:
    """Map `port` until cancelled, reporting in `state`; `changed(external)` is called with the external
    (ip, port) once mapped, and with None when the mapping is lost. Deletes it at the end."""
    router: Router | None = None
    mapped: tuple[str, int] | None = None
    try:
        while True:
            try:
                if router is None:
                    router, (ip, external_port, lease) = await find_router(port)
                else:
                    ip, external_port, lease = await router.map(port, LEASE_S)
            except PortMapError as exc:
                text = f"{router.method}: {exc}" if router is not None else str(exc)
                log.info("router port mapping: %s", text)
                state.set("failed", text)
                router = None
                if mapped:
                    mapped = None
                    changed(None)
                await trio.sleep(RETRY_S)
                continue
            if mapped != (ip, external_port):
                log.info("the router forwards %s:%d to this node's port %d (%s, lease %d s)", ip, external_port,
                         port, router.method, lease)
            mapped = (ip, external_port)
            renew = max(lease // 2, 30)
            state.set("mapped", f"port opened by {router.method}: the router forwards {ip}:{external_port} to this "
                                f"node (lease {lease} s, renewed every {renew} s)", mapped, router.method)
            changed(mapped)
            await trio.sleep(renew)
    finally:
        if mapped and router is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    await router.unmap(port)
                    log.info("%s port mapping of %d removed", router.method, port)
                except Exception as exc:  # the router went away: its lease ends the mapping anyway
                    log.info("could not remove the %s port mapping: %s", router.method, exc)
