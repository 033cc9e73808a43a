# Knowing this node's own address and whether others can reach it (spec/peers.md, "Your own address",
# "Reachability", "LAN discovery", "Port mapping", "Onion service"): the machine's interface addresses, the IP
# each peer says it sees us connect from (hello's `observed`), the address to advertise (--advertise, an onion
# service, a router port mapping, a specific listen host, a public IP that several peers agree on, an interface
# address), the answers of peers asked to dial us back, and the services that change the address (LAN
# discovery, UPnP, Tor). `Reach` is the node's part that runs them; SelfAddress holds the state.
from __future__ import annotations

import ipaddress
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nacl.signing
import trio

from protocol import wire
from protocol.errors import ProtocolError
from protocol.ids import Address, parse_address

from .connection import TransportError, client_handshake
from .lan import lan_enabled, run_lan_discovery
from .nat import PortMapping, run_port_mapping, upnp_enabled
from .onion import OnionState, run_onion_service
from .seeds import DialProblems, classify
from .store import Store

if TYPE_CHECKING:
    from .node import Node
    from .session import Session

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
            "router to this machine (or enable UPnP or NAT-PMP on the router), or give --advertise the host that "
            "reaches this node; it can still dial out and sync")


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


class Reach:
    """The node's own address and the services around it; `node.reach`."""

    def __init__(self, node: Node) -> None:
        self.node = node
        config = node.config
        self.me = SelfAddress(node.owner, config.advertise_host, config.listen_host)
        self.dial_problems = DialProblems()  # what each failed dial found; the addresses given up on
        self.checking = 0  # dial-back checks running for peers
        self.port_mapping: PortMapping | None = None
        self.onion: OnionState | None = None
        self.address_reason = "at start"  # why the advertised address last changed (runner's `listening` line)

    def start(self, nursery: trio.Nursery, host: str, port: int) -> Address:
        """The node listens at host:port: choose its address, start LAN discovery, UPnP and Tor as configured."""
        node, config = self.node, self.node.config
        self.me.bound(host, port)
        if lan_enabled(host, not config.lan_discovery or config.proxy is not None):
            nursery.start_soon(run_lan_discovery, node.owner, port, self.me.interfaces or [host], self._found_on_lan)
        if upnp_enabled(host, not config.upnp or config.proxy is not None):
            self.port_mapping = PortMapping()
            nursery.start_soon(run_port_mapping, port, self.port_mapping, self._port_mapped)
        if config.tor_control is not None:
            self.onion = OnionState()
            key_file = Path(config.onion_key_file) if config.onion_key_file else None
            nursery.start_soon(run_onion_service, config.tor_control, port, "127.0.0.1" if is_wildcard(host) else host,
                               key_file, self.onion, self._onion_published)
        return self.me.address()

    async def _found_on_lan(self, address: Address) -> None:
        node = self.node
        if address.key != node.owner and address.key not in node.blocked:
            if await node.db.write(Store.add_peer, str(address), address.key, "lan"):
                log.info("found %s on the local network", address)

    def _port_mapped(self, external: tuple[str, int] | None) -> None:
        if external != self.me.mapped:
            self.me.mapped = external
            self.me.recheck()  # earlier checks saw the router closed
            method = self.port_mapping.method if self.port_mapping is not None else None
            self._address_changed(f"port opened by {method or 'the router'}" if external is not None
                                  else "the router's port mapping was lost")

    def _onion_published(self, onion: str | None) -> None:
        self.me.onion = onion
        self._address_changed("onion service published" if onion is not None else "onion service gone")

    def _address_changed(self, reason: str) -> None:
        """Advertise the new address from now on, and ask connected peers to check it."""
        node = self.node
        node.address = self.me.address()
        self.address_reason = reason
        log.info("this node's address is now %s (%s)", node.address, reason)
        for session in list(node.sessions.values()):
            address = self.me.should_ask(session.key, trio.current_time()) if session.closing is None else None
            if address is not None:
                session.queue(wire.Check(address))
        node.notify()

    # ------------------------------------------------------------ from peers

    def hello_received(self, session: Session, hello: wire.Hello) -> None:
        """What a peer's hello tells about us: the IP it sees us at; then ask it to dial us back, if our
        address needs more checks."""
        if self.me.observe(session.key, hello.observed):
            public = self.me.public_ip()
            count = sum(1 for ip in self.me.observed.values() if ip == public)
            log.info("peers agree they see this node at %s", public)
            self._address_changed(f"public address learned from {count} peers")
        address = self.me.should_ask(session.key, trio.current_time())
        if address is not None:
            session.queue(wire.Check(address))

    def checked(self, session: Session, result: wire.Checked) -> None:
        self.me.record(session.key, result)
        self.node.notify()

    def answer_check(self, session: Session, check: wire.Check) -> None:
        """Dial a peer back at the address it asks about, in the background, and tell it what happened."""
        node = self.node
        now = trio.current_time()
        session.checks_answered = [t for t in session.checks_answered if now - t < CHECK_WINDOW]
        if len(session.checks_answered) >= CHECK_BUDGET:
            return  # more checks than the budget on this connection are ignored
        session.checks_answered.append(now)
        try:
            address = parse_address(check.address)
        except ProtocolError as exc:
            session.queue(wire.Checked(check.address, False, exc.reason))
            return
        if address.key != session.key:
            session.queue(wire.Checked(check.address, False, "invalid: the address does not name your key"))
            return
        if self.checking >= node.config.max_probes:
            session.queue(wire.Checked(check.address, False, "rate-limited: too many checks at once"))
            return
        self.checking += 1

        async def dial_back() -> None:
            try:
                problem = await probe_address(node.network, node.key, address, node.config.network_key,
                                              node.config.handshake_timeout, "probe: reachability check")
            finally:
                self.checking -= 1
            if session.closing is None:
                session.queue(wire.Checked(check.address, problem is None, problem or ""))

        assert node.nursery is not None
        node.nursery.start_soon(self._contained, dial_back)

    async def _contained(self, task: Any) -> None:
        try:
            await task()
        except Exception:  # a bug in a check ends that check only
            log.exception("error in a dial-back check; the node goes on")

    def status(self) -> dict[str, Any]:
        return {
            "addresses": self.me.all_addresses(),
            "public_ip": self.me.public_ip(),
            "reachability": self.me.reachability(),
            "onion": self.onion.report() if self.onion else None,
            "port_mapping": self.port_mapping.report() if self.port_mapping else {
                "state": "off", "detail": "off (--no-upnp, --proxy, or listening on loopback)"},
            "dial_problems": self.dial_problems.report(),
        }
