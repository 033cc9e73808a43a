# Talking NAT-PMP (RFC 6886) and PCP (RFC 6887) to the default gateway over UDP port 5351: finding the gateway
# (Linux: /proc/net/route), sending a request and retrying it at 250 ms, 500 ms, 1 s... (the RFCs' doubling,
# stopped after TRIES sends), and the few exchanges a node needs: the external address, map a TCP port, delete
# the mapping. The packets themselves are protocol/natpmp.py's. Every failure is a PortMapError with one line.
from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from protocol import natpmp
from protocol.natpmp import RouterAnswerError

FIRST_WAIT_S = 0.25
TRIES = 5  # 0.25 + 0.5 + 1 + 2 + 4 = 7.75 s before "no answer" (RFC 6886 goes on to 9 tries, 64 s)
ANSWER_MAX = 1100  # PCP's largest message

T = TypeVar("T")


class PortMapError(Exception):
    """Why a NAT-PMP/PCP exchange failed, in one line; `unsupported_version` when the router speaks the other."""

    def __init__(self, text: str, unsupported_version: bool = False) -> None:
        super().__init__(text)
        self.unsupported_version = unsupported_version


def default_gateway(route_file: Path = Path("/proc/net/route")) -> str:
    """The IPv4 default gateway of this machine (Linux's routing table), or PortMapError."""
    try:
        lines = route_file.read_text().splitlines()[1:]
    except OSError:
        raise PortMapError("cannot find the default gateway on this system (no /proc/net/route)") from None
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "00000000" and int(fields[3], 16) & 0x2:  # RTF_GATEWAY
            return str(ipaddress.IPv4Address(struct.pack("<I", int(fields[2], 16))))
    raise PortMapError("this machine has no default gateway (no IPv4 default route)")


async def exchange(gateway: str, request: bytes, parse: Callable[[bytes], T], what: str,
                   port: int = natpmp.PORT, tries: int = TRIES, first_wait: float = FIRST_WAIT_S) -> T:
    """Send `request` to gateway:port until an answer comes (waits double from `first_wait`), and parse it."""
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            await sock.connect((gateway, port))  # answers from anywhere else are not delivered
        except OSError as exc:
            raise PortMapError(f"{what}: cannot reach the gateway {gateway}: {exc.strerror or exc}") from None
        wait = first_wait
        for _ in range(tries):
            try:
                await sock.send(request)
                with trio.move_on_after(wait):
                    data = await sock.recv(ANSWER_MAX)
                    try:
                        return parse(data)
                    except RouterAnswerError as exc:
                        raise PortMapError(f"{what}: {exc} (from {gateway}:{port})",
                                           exc.result == natpmp.UNSUPPORTED_VERSION) from None
            except ConnectionRefusedError:
                raise PortMapError(f"{what}: the gateway {gateway} refused (nothing listens on its UDP port {port};"
                                   " NAT-PMP/PCP off or unsupported)") from None
            except OSError as exc:
                raise PortMapError(f"{what}: cannot reach the gateway {gateway}: {exc.strerror or exc}") from None
            wait *= 2
    total = sum(first_wait * 2 ** n for n in range(tries))
    raise PortMapError(f"{what}: no answer from the gateway {gateway}:{port} after {tries} tries ({total:g} s)")


def local_ip_toward(gateway: str, port: int = natpmp.PORT) -> str:
    """This machine's address on the way to the gateway (PCP's client address field)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((gateway, port))  # UDP: no packet is sent
        return str(sock.getsockname()[0])


class NatPmpRouter:
    """A NAT-PMP gateway: its external address and the TCP mapping of one port."""

    method = "NAT-PMP"

    def __init__(self, gateway: str, port: int = natpmp.PORT) -> None:
        self.gateway = gateway
        self.port = port

    async def external_ip(self) -> str:
        answer = await exchange(self.gateway, natpmp.natpmp_external_address_request(),
                                natpmp.natpmp_parse_external_address, "NAT-PMP external address", self.port)
        return answer.ip

    async def map(self, internal_port: int, lifetime: int) -> tuple[str, int, int]:
        """Ask for `internal_port` (the same port outside if free): (external IP, external port, lifetime)."""
        ip = await self.external_ip()
        mapping = await exchange(self.gateway, natpmp.natpmp_map_request(internal_port, internal_port, lifetime),
                                 lambda data: natpmp.natpmp_parse_map(data, internal_port), "NAT-PMP map", self.port)
        if mapping.lifetime == 0 or mapping.external_port == 0:
            raise PortMapError("NAT-PMP map: the router granted no mapping (lifetime or port 0)")
        return ip, mapping.external_port, mapping.lifetime

    async def unmap(self, internal_port: int) -> None:
        await exchange(self.gateway, natpmp.natpmp_map_request(internal_port, 0, 0),
                       lambda data: natpmp.natpmp_parse_map(data, internal_port), "NAT-PMP delete", self.port,
                       tries=3)


class PcpRouter:
    """A PCP gateway: the MAP of one TCP port, renewed and deleted with the same nonce."""

    method = "PCP"

    def __init__(self, gateway: str, port: int = natpmp.PORT) -> None:
        self.gateway = gateway
        self.port = port
        self.nonce = os.urandom(natpmp.NONCE_SIZE)

    async def map(self, internal_port: int, lifetime: int) -> tuple[str, int, int]:
        client = local_ip_toward(self.gateway, self.port)
        request = natpmp.pcp_map_request(client, self.nonce, internal_port, internal_port, lifetime)
        mapping = await exchange(self.gateway, request,
                                 lambda data: natpmp.pcp_parse_map(data, self.nonce, internal_port), "PCP map",
                                 self.port)
        if mapping.lifetime == 0 or mapping.external_port == 0 or mapping.external_ip is None:
            raise PortMapError("PCP map: the router granted no mapping (lifetime or port 0)")
        return mapping.external_ip, mapping.external_port, mapping.lifetime

    async def unmap(self, internal_port: int) -> None:
        client = local_ip_toward(self.gateway, self.port)
        request = natpmp.pcp_map_request(client, self.nonce, internal_port, 0, 0)
        await exchange(self.gateway, request, lambda data: natpmp.pcp_parse_map(data, self.nonce, internal_port),
                       "PCP delete", self.port, tries=3)
