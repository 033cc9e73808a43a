# The packets of NAT-PMP (RFC 6886) and of PCP's MAP opcode (RFC 6887), which a node sends to its default
# gateway's UDP port 5351 to have a TCP port forwarded when the router speaks no UPnP (spec/peers.md, "Port
# mapping", has the byte layouts). Sans-I/O: requests are built as bytes, answers parsed from bytes; anything
# a router sends that is not the expected answer raises RouterAnswerError with one line saying what was wrong.
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

PORT = 5351
NATPMP_VERSION = 0
PCP_VERSION = 2
OP_EXTERNAL_ADDRESS = 0
OP_MAP_UDP = 1
OP_MAP_TCP = 2
PCP_OP_MAP = 1
PROTOCOL_TCP = 6
NONCE_SIZE = 12

NATPMP_RESULTS = {
    0: "success",
    1: "unsupported version",
    2: "not authorized or refused (NAT-PMP turned off on the router?)",
    3: "network failure (the router has no external address yet?)",
    4: "out of resources (no more mappings allowed)",
    5: "unsupported opcode",
}
PCP_RESULTS = {
    0: "success", 1: "unsupported version", 2: "not authorized", 3: "malformed request", 4: "unsupported opcode",
    5: "unsupported option", 6: "malformed option", 7: "network failure", 8: "no resources",
    9: "unsupported protocol", 10: "user over quota", 11: "cannot provide the external port",
    12: "address mismatch (a NAT between this machine and the router?)", 13: "excessive remote peers",
}
UNSUPPORTED_VERSION = 1


class RouterAnswerError(Exception):
    """An answer from the router that cannot be used, in one line; `result` holds its result code if it had one."""

    def __init__(self, text: str, result: int | None = None, version: int | None = None) -> None:
        super().__init__(text)
        self.result = result
        self.version = version


@dataclass(frozen=True)
class ExternalAddress:
    epoch: int
    ip: str


@dataclass(frozen=True)
class Mapping:
    """A port mapping the router granted: its external port (and IP for PCP) and its lifetime in seconds."""

    epoch: int
    internal_port: int
    external_port: int
    lifetime: int
    external_ip: str | None = None


def _check_port(port: int, what: str) -> None:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"{what} must be from 0 to 65535, not {port}")


def _check_lifetime(lifetime: int) -> None:
    if not 0 <= lifetime <= 0xFFFFFFFF:
        raise ValueError(f"lifetime must be from 0 to 2**32-1 seconds, not {lifetime}")


# ------------------------------------------------------------------ NAT-PMP (RFC 6886)

def natpmp_external_address_request() -> bytes:
    return bytes([NATPMP_VERSION, OP_EXTERNAL_ADDRESS])


def natpmp_map_request(internal_port: int, external_port: int, lifetime: int) -> bytes:
    """Map TCP `internal_port` (suggesting `external_port`) for `lifetime` s; lifetime 0 deletes the mapping."""
    _check_port(internal_port, "internal port")
    _check_port(external_port, "external port")
    _check_lifetime(lifetime)
    return struct.pack("!BBHHHI", NATPMP_VERSION, OP_MAP_TCP, 0, internal_port, external_port, lifetime)


def _natpmp_header(data: bytes, opcode: int, size: int) -> tuple[int, int]:
    """Check version, opcode, result code and size of a NAT-PMP answer; its result code and epoch."""
    if len(data) < 4:
        raise RouterAnswerError(f"a {len(data)}-byte answer, too short for NAT-PMP")
    version, op, result = struct.unpack_from("!BBH", data)
    if version != NATPMP_VERSION:
        if version == PCP_VERSION and data[3] == UNSUPPORTED_VERSION:  # PCP: result code in byte 3
            raise RouterAnswerError("the router speaks PCP, not NAT-PMP", UNSUPPORTED_VERSION, version)
        raise RouterAnswerError(f"an answer of version {version}, not NAT-PMP's 0", version=version)
    if op != 128 + opcode:
        raise RouterAnswerError(f"an answer with opcode {op}, not {128 + opcode}")
    if result != 0:
        text = NATPMP_RESULTS.get(result, "unknown result code")
        raise RouterAnswerError(f"the router said {text} (NAT-PMP result {result})", result, version)
    if len(data) < size:
        raise RouterAnswerError(f"a {len(data)}-byte answer, NAT-PMP's is {size} bytes")
    return result, struct.unpack_from("!I", data, 4)[0]


def natpmp_parse_external_address(data: bytes) -> ExternalAddress:
    _, epoch = _natpmp_header(data, OP_EXTERNAL_ADDRESS, 12)
    ip = ipaddress.IPv4Address(data[8:12])
    if ip.is_unspecified:
        raise RouterAnswerError("the router has no external address yet (it said 0.0.0.0)")
    return ExternalAddress(epoch, str(ip))


def natpmp_parse_map(data: bytes, internal_port: int) -> Mapping:
    _, epoch = _natpmp_header(data, OP_MAP_TCP, 16)
    internal, external, lifetime = struct.unpack_from("!HHI", data, 8)
    if internal != internal_port:
        raise RouterAnswerError(f"the router answered for port {internal}, not {internal_port}")
    return Mapping(epoch, internal, external, lifetime)


# ------------------------------------------------------------------ PCP MAP (RFC 6887)

def _ip16(ip: str) -> bytes:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv4Address):
        return bytes(ipaddress.IPv6Address(f"::ffff:{address}").packed)
    return address.packed


def _ip_text(data: bytes) -> str:
    address = ipaddress.IPv6Address(data)
    return str(address.ipv4_mapped) if address.ipv4_mapped is not None else str(address)


def pcp_map_request(client_ip: str, nonce: bytes, internal_port: int, external_port: int, lifetime: int,
                    external_ip: str = "0.0.0.0") -> bytes:
    """A 60-byte PCP MAP request for TCP `internal_port` from `client_ip` (this machine's address toward the
    router); `nonce` (12 random bytes) must be the same to renew or delete (lifetime 0) the mapping."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"the PCP nonce must be {NONCE_SIZE} bytes")
    _check_port(internal_port, "internal port")
    _check_port(external_port, "external port")
    _check_lifetime(lifetime)
    header = struct.pack("!BBHI", PCP_VERSION, PCP_OP_MAP, 0, lifetime) + _ip16(client_ip)
    body = nonce + struct.pack("!B3xHH", PROTOCOL_TCP, internal_port, external_port) + _ip16(external_ip)
    return header + body


def pcp_parse_map(data: bytes, nonce: bytes, internal_port: int) -> Mapping:
    if len(data) < 4:
        raise RouterAnswerError(f"a {len(data)}-byte answer, too short for PCP")
    version, op, _, result = struct.unpack_from("!BBBB", data)
    if version != PCP_VERSION:
        raise RouterAnswerError(f"an answer of version {version}, not PCP's 2", version=version)
    if op != 0x80 | PCP_OP_MAP:
        raise RouterAnswerError(f"an answer with opcode {op}, not {0x80 | PCP_OP_MAP} (MAP response)")
    if result != 0:
        text = PCP_RESULTS.get(result, "unknown result code")
        raise RouterAnswerError(f"the router said {text} (PCP result {result})", result, version)
    if len(data) < 60:
        raise RouterAnswerError(f"a {len(data)}-byte answer, a PCP MAP response is at least 60 bytes")
    lifetime, epoch = struct.unpack_from("!II", data, 4)
    if data[24:36] != nonce:
        raise RouterAnswerError("an answer for another mapping (its nonce is not ours)")
    protocol, internal, external = struct.unpack_from("!B3xHH", data, 36)
    if protocol != PROTOCOL_TCP or internal != internal_port:
        raise RouterAnswerError(f"the router answered for protocol {protocol} port {internal}, "
                                f"not TCP port {internal_port}")
    return Mapping(epoch, internal, external, lifetime, _ip_text(data[44:60]))
