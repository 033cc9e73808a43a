# Knowing this node's own address and whether others can reach it (spec/peers.md, "Your own address" and
# "Reachability"): the machine's interface addresses, the IP each peer says it sees us connect from (hello's
# `observed`), the address to advertise (--advertise, else a specific listen host, else a public IP that
# several peers agree on, else an interface address), and the answers of peers asked to dial us back.
from __future__ import annotations

import ipaddress
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import nacl.signing
import trio

from protocol import wire
from protocol.ids import Address

from .connection import TransportError, client_handshake
from .seeds import classify

log = logging.getLogger("p2pnode.reach")

OBSERVED_QUORUM = 2  # distinct peers that must report the same IP before it is taken as ours
MAX_OBSERVATIONS = 64
CHECK_PEERS = 3  # peers asked to dial us back for each address
CHECK_INTERVAL = 600.0  # seconds before an address is checked again
CHECK_BUDGET = 4  # a peer answers at most this many checks per connection in CHECK_WINDOW seconds
CHECK_WINDOW = 600.0


def interface_ips() -> list[str]:
    """This machine's IP addresses (not loopback or link-local), global ones first."""
    try:
        import ifaddr
        adapters = ifaddr.get_adapters()
    except Exception:  # no way to list interfaces here: fall back to none
        return []
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for adapter in adapters:
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                address = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                continue
            if not (address.is_loopback or address.is_link_local or address.is_unspecified) and address not in found:
                found.append(address)
    found.sort(key=lambda a: (not a.is_global, a.version))
    return [str(a) for a in found]


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def usable_observation(text: str | None) -> str | None:
    """An observed IP worth counting: not loopback, link-local or unspecified (those say nothing to others)."""
    if text is None:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.is_loopback or address.is_link_local or address.is_unspecified:
        return None
    return str(address)


def remote_ip(stream: trio.abc.Stream) -> str | None:
    """The IP a directly connected stream comes from; None for memory streams and proxied connections."""
    if getattr(stream, "proxied", False):
        return None
    sock = getattr(stream, "socket", None)
    if sock is None:
        return None
    try:
        return str(sock.getpeername()[0])
    except (OSError, IndexError):
        return None


@dataclass
class CheckResult:
    peer: bytes
    address: str
    ok: bool
    reason: str
    at: float


class SelfAddress:
    """What this node knows of its own address, and of whether peers can reach it there."""

    def __init__(self, owner: bytes, advertise: str | None, listen_host: str) -> None:
        self.owner = owner
        self.advertise = advertise
        self.listen_host = listen_host
        self.port = 0
        self.interfaces: list[str] = []
        self.observed: dict[bytes, str] = {}  # peer key -> the IP it last said it sees us at
        self.checks: list[CheckResult] = []
        self.asked: dict[str, set[bytes]] = {}  # address -> peers asked to check it
        self.asked_at: dict[str, float] = {}
        self.extra: list[str] = []  # other hosts that reach us (an onion service)
        self.mapped: tuple[str, int] | None = None  # the router's external IP and port forwarded to us (UPnP)
        self.onion: str | None = None  # HOST.onion of our onion service, same port

    def bound(self, host: str, port: int) -> None:
        self.listen_host = host
        self.port = port
        self.interfaces = interface_ips() if is_wildcard(self.listen_host) else []

    def public_ip(self) -> str | None:
        """An IP that at least OBSERVED_QUORUM peers report seeing us connect from, the most reported first."""
        counts = Counter(ip for ip in self.observed.values())
        for ip, count in counts.most_common():
            if count >= OBSERVED_QUORUM:
                return ip
        return None

    def host_port(self) -> tuple[str, int]:
        """Where others should dial: --advertise, the router's port mapping, a specific listen host, an agreed
        public IP, an interface address, and only when there is nothing else 127.0.0.1."""
        if self.advertise:
            return self.advertise, self.port
        if self.onion is not None:
            return self.onion, self.port
        if self.mapped is not None:
            return self.mapped
        if not is_wildcard(self.listen_host):
            return self.listen_host, self.port
        public = self.public_ip()
        if public is not None:
            return public, self.port
        if self.interfaces:
            return self.interfaces[0], self.port
        return "127.0.0.1", self.port

    def host(self) -> str:
        return self.host_port()[0]

    def address(self) -> Address:
        host, port = self.host_port()
        return Address(host, port, self.owner)

    def all_addresses(self) -> list[str]:
        """Every address that may reach us: the advertised one, the extra ones (onion, UPnP), the interfaces'."""
        seen = [str(self.address())]
        for host in [*self.extra, *self.interfaces]:
            text = str(Address(host, self.port, self.owner))
            if text not in seen:
                seen.append(text)
        return seen

    def observe(self, peer: bytes, ip: str | None) -> bool:
        """Record what a peer said it sees; True when the advertised host changed because of it."""
        usable = usable_observation(ip)
        if usable is None:
            return False
        before = self.address()
        self.observed.pop(peer, None)
        self.observed[peer] = usable
        while len(self.observed) > MAX_OBSERVATIONS:
            del self.observed[next(iter(self.observed))]
        return self.address() != before

    # ------------------------------------------------------------ reachability

    def should_ask(self, peer: bytes, now: float) -> str | None:
        """The address to ask this peer to check, or None when enough peers checked it recently."""
        address = str(self.address())
        asked = self.asked.setdefault(address, set())
        if now - self.asked_at.get(address, now) > CHECK_INTERVAL:
            asked.clear()
            self.asked_at.pop(address, None)
        if peer in asked or len(asked) >= CHECK_PEERS:
            return None
        asked.add(peer)
        self.asked_at.setdefault(address, now)
        return address

    def recheck(self) -> None:
        """Forget the checks so far: something that decides reachability changed (a router port mapping)."""
        self.checks.clear()
        self.asked.clear()
        self.asked_at.clear()

    def record(self, peer: bytes, result: wire.Checked) -> None:
        if result.address != str(self.address()):
            return  # about an address we no longer use
        self.checks = [c for c in self.checks if c.peer != peer and c.address == result.address][-16:]
        self.checks.append(CheckResult(peer, result.address, result.ok, result.reason, time.time()))

    def reachability(self) -> dict[str, Any]:
        address = str(self.address())
        checks = [c for c in self.checks if c.address == address]
        result: dict[str, Any] = {"address": address, "checked_by": len(checks)}
        if not checks:
            result["reachable"] = None
            return result
        good = [c for c in checks if c.ok]
        result["reachable"] = bool(good)
        result["at"] = int(max(c.at for c in checks))
        if not good:
            result["reasons"] = sorted({c.reason for c in checks})
        return result


def describe_reachability(info: dict[str, Any] | None, now: float, listen_port: int | None = None) -> str:
    """One line for `status`: yes (checked by N peers, when) / no: why, and what to do / not checked yet."""
    if not info:
        return "not checked yet"
    address = info.get("address", "?")
    where = address.rsplit("/", 1)[0]
    if info.get("reachable") is None:
        return f"not checked yet (no peer has dialled {where} back)"
    count = info.get("checked_by", 0)
    ago = _ago(now - info.get("at", now))
    if info["reachable"]:
        return f"yes at {where} (checked by {count} peer{'s' if count != 1 else ''}, {ago})"
    reasons = "; ".join(info.get("reasons") or []) or "no reason given"
    port = where.rsplit(":", 1)[-1]
    return (f"no: peers could not connect to {where} ({reasons}; {ago}); forward TCP port {port} on your "
            "router to this machine (or enable UPnP on the router), or give --advertise the host that reaches "
            "this node; it can still dial out and sync")


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} s ago"
    if seconds < 5400:
        return f"{round(seconds / 60)} min ago"
    return f"{round(seconds / 3600)} h ago"


async def probe_address(network: Any, key: nacl.signing.SigningKey, address: Address, network_key: bytes,
                        timeout: float, reason: str) -> str | None:
    """Dial `address`, complete the handshake (which proves its key), say `close` with `reason` before any
    hello, hang up. None when that worked, else what was found there (one line)."""
    try:
        with trio.fail_after(timeout):
            stream = await network.dial(address.host, address.port)
            conn = await client_handshake(stream, key, address.key, network_key=network_key,
                                          handshake_timeout=timeout)
            await conn.send(wire.encode(wire.Close(reason)))
            await conn.aclose()
    except (OSError, ValueError, trio.TooSlowError, TransportError) as exc:
        return classify(str(address), address.key, exc, timeout).text
    return None
