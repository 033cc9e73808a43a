# Opening the home router (spec/peers.md, "Port mapping"): UPnP IGD through miniupnpc, which asks the router
# (found by SSDP on the local network) to forward the node's TCP port from its external address; the lease is
# renewed at half its length and the mapping deleted when the node stops. The outcome, good or bad, is kept
# as one line for `status`. miniupnpc blocks, so each call runs in a worker thread.
from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from .network import beyond_loopback

log = logging.getLogger("p2pnode.nat")

LEASE_S = 3600  # asked of the router; renewed at half of it
RETRY_S = 300.0  # after a failure (no router, a refusal), try again this much later
DISCOVER_MS = 2000
DESCRIPTION = "p2pnode"


def upnp_enabled(listen_host: str, disabled: bool) -> bool:
    """UPnP runs unless --no-upnp, and only when the node listens beyond loopback."""
    return not disabled and beyond_loopback(listen_host)


class PortMapping:
    """The state of this node's UPnP port mapping, for status."""

    def __init__(self) -> None:
        self.state = "starting"  # starting | mapped | failed | off
        self.detail = "looking for a UPnP router on the local network"
        self.external: tuple[str, int] | None = None
        self.at = time.time()

    def set(self, state: str, detail: str, external: tuple[str, int] | None = None) -> None:
        self.state, self.detail, self.external, self.at = state, detail, external, time.time()

    def report(self) -> dict[str, Any]:
        return {"state": self.state, "detail": self.detail, "at": int(self.at),
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


async def run_port_mapping(port: int, state: PortMapping,
                           changed: Callable[[tuple[str, int] | None], None]) -> None:
    """Map `port` (external = internal) until cancelled, reporting in `state`; `changed(external)` is called
    with the external (ip, port) once mapped, and with None when the mapping is lost. Deletes it at the end."""
    router: _Router | None = None
    mapped = False
    try:
        while True:
            try:
                router = router or await trio.to_thread.run_sync(_Router)
                external_ip = await trio.to_thread.run_sync(router.find)
                ipaddress.ip_address(external_ip)  # the router must name a real address
                await trio.to_thread.run_sync(router.map, port)
            except Exception as exc:  # miniupnpc raises bare Exceptions; none may stop the node
                text = str(exc) or type(exc).__name__
                log.info("UPnP port mapping: %s", text)
                state.set("failed", text)
                if mapped:
                    mapped = False
                    changed(None)
                await trio.sleep(RETRY_S)
                continue
            if not mapped:
                log.info("the router forwards %s:%d to this node (UPnP, lease %d s)", external_ip, port, LEASE_S)
            mapped = True
            state.set("mapped", f"the router forwards {external_ip}:{port} to this node (UPnP, lease {LEASE_S} s, "
                                "renewed at half)", (external_ip, port))
            changed((external_ip, port))
            await trio.sleep(LEASE_S / 2)
    finally:
        if mapped and router is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    await trio.to_thread.run_sync(router.unmap, port, abandon_on_cancel=True)
                    log.info("UPnP port mapping of %d removed", port)
                except Exception as exc:  # the router went away: its lease ends the mapping anyway
                    log.info("could not remove the UPnP port mapping: %s", exc)
