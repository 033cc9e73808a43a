# NAT-PMP (RFC 6886) and PCP MAP (RFC 6887) packets (protocol/natpmp.py): the exact request bytes, the answers
# parsed, and every kind of bad answer (short, wrong version or opcode, a result code, another mapping's nonce)
# refused with one line; then p2pnode/pmp.py's UDP exchange against a misbehaving router on 127.0.0.1: a bad
# answer is one PortMapError line, silence is retried at 250 ms doubling and then reported, never a traceback.
from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
import trio

from p2pnode.pmp import PortMapError, default_gateway, exchange
from protocol import natpmp
from protocol.natpmp import RouterAnswerError

NONCE = bytes(range(12))


def pmp_answer(op: int, result: int, body: bytes, version: int = 0) -> bytes:
    return struct.pack("!BBHI", version, op, result, 1234) + body


def test_natpmp_requests_are_the_rfc_bytes() -> None:
    assert natpmp.natpmp_external_address_request() == b"\x00\x00"
    assert natpmp.natpmp_map_request(8765, 8765, 3600).hex() == "00020000223d223d00000e10"
    assert natpmp.natpmp_map_request(8765, 0, 0).hex() == "00020000223d000000000000"
    with pytest.raises(ValueError):
        natpmp.natpmp_map_request(70000, 0, 0)


def test_natpmp_answers_are_parsed() -> None:
    address = natpmp.natpmp_parse_external_address(pmp_answer(128, 0, bytes([203, 0, 113, 5])))
    assert address == natpmp.ExternalAddress(1234, "203.0.113.5")
    mapping = natpmp.natpmp_parse_map(pmp_answer(130, 0, struct.pack("!HHI", 8765, 40000, 1800)), 8765)
    assert mapping == natpmp.Mapping(1234, 8765, 40000, 1800)


@pytest.mark.parametrize("data, reason", [
    (b"", "a 0-byte answer, too short for NAT-PMP"),
    (b"\x00\x82\x00", "a 3-byte answer, too short for NAT-PMP"),
    (pmp_answer(130, 0, b"\x22\x3d"), "a 10-byte answer, NAT-PMP's is 16 bytes"),
    (pmp_answer(129, 0, struct.pack("!HHI", 8765, 8765, 60)), "an answer with opcode 129, not 130"),
    (pmp_answer(130, 0, struct.pack("!HHI", 8765, 8765, 60), version=1), "an answer of version 1, not NAT-PMP's 0"),
    (pmp_answer(130, 2, b""), "the router said not authorized or refused (NAT-PMP turned off on the router?) "
                              "(NAT-PMP result 2)"),
    (pmp_answer(130, 4, b""), "the router said out of resources (no more mappings allowed) (NAT-PMP result 4)"),
    (pmp_answer(130, 99, b""), "the router said unknown result code (NAT-PMP result 99)"),
    (pmp_answer(130, 0, struct.pack("!HHI", 9999, 8765, 60)), "the router answered for port 9999, not 8765"),
    (bytes([2, 0x82, 0, 1]) + bytes(20), "the router speaks PCP, not NAT-PMP"),
])
def test_bad_natpmp_map_answers_are_one_line(data: bytes, reason: str) -> None:
    with pytest.raises(RouterAnswerError) as caught:
        natpmp.natpmp_parse_map(data, 8765)
    assert str(caught.value) == reason


def test_a_natpmp_external_address_of_zero_is_refused() -> None:
    with pytest.raises(RouterAnswerError, match="no external address yet"):
        natpmp.natpmp_parse_external_address(pmp_answer(128, 0, bytes(4)))


def pcp_answer(result: int = 0, op: int = 0x81, nonce: bytes = NONCE, port: int = 8765, protocol: int = 6) -> bytes:
    header = struct.pack("!BBBBII", 2, op, 0, result, 7200, 99) + bytes(12)
    external = bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 5])
    return header + nonce + struct.pack("!B3xHH", protocol, port, 41000) + external


def test_pcp_map_request_and_answer() -> None:
    request = natpmp.pcp_map_request("192.168.1.20", NONCE, 8765, 8765, 7200)
    assert len(request) == 60
    assert request[:8].hex() == "0201000000001c20"
    assert request[8:24] == bytes(10) + b"\xff\xff" + bytes([192, 168, 1, 20])
    assert request[24:36] == NONCE
    assert request[36:44].hex() == "06000000223d223d"
    assert request[44:60] == bytes(10) + b"\xff\xff" + bytes(4)
    mapping = natpmp.pcp_parse_map(pcp_answer(), NONCE, 8765)
    assert mapping == natpmp.Mapping(99, 8765, 41000, 7200, "203.0.113.5")
    with pytest.raises(ValueError):
        natpmp.pcp_map_request("192.168.1.20", b"short", 8765, 8765, 60)


@pytest.mark.parametrize("data, reason", [
    (b"\x02", "a 1-byte answer, too short for PCP"),
    (pcp_answer()[:40], "a 40-byte answer, a PCP MAP response is at least 60 bytes"),
    (pcp_answer(op=0x82), "an answer with opcode 130, not 129 (MAP response)"),
    (b"\x00" + pcp_answer()[1:], "an answer of version 0, not PCP's 2"),
    (pcp_answer(result=8), "the router said no resources (PCP result 8)"),
    (pcp_answer(nonce=bytes(12)), "an answer for another mapping (its nonce is not ours)"),
    (pcp_answer(protocol=17), "the router answered for protocol 17 port 8765, not TCP port 8765"),
])
def test_bad_pcp_answers_are_one_line(data: bytes, reason: str) -> None:
    with pytest.raises(RouterAnswerError) as caught:
        natpmp.pcp_parse_map(data, NONCE, 8765)
    assert str(caught.value) == reason


def test_default_gateway_from_the_routing_table(tmp_path: Path) -> None:
    table = tmp_path / "route"
    table.write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
                     "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
                     "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\n")
    assert default_gateway(table) == "192.168.1.1"
    table.write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n")
    with pytest.raises(PortMapError, match="no default gateway"):
        default_gateway(table)


async def fake_router(answer: bytes | None, task_status: trio.TaskStatus[tuple[int, list[bytes]]]) -> None:
    """A UDP server on 127.0.0.1 that records each request and answers `answer` (None: stays silent)."""
    received: list[bytes] = []
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        task_status.started((sock.getsockname()[1], received))
        while True:
            data, peer = await sock.recvfrom(2048)
            received.append(data)
            if answer is not None:
                await sock.sendto(answer, peer)


async def test_a_bad_router_answer_is_one_line() -> None:
    async with trio.open_nursery() as nursery:
        port, received = await nursery.start(fake_router, b"\x00\x81\x00")
        with pytest.raises(PortMapError) as caught:
            await exchange("127.0.0.1", natpmp.natpmp_map_request(8765, 8765, 60),
                           lambda data: natpmp.natpmp_parse_map(data, 8765), "NAT-PMP map", port)
        assert str(caught.value) == f"NAT-PMP map: a 3-byte answer, too short for NAT-PMP (from 127.0.0.1:{port})"
        assert received == [natpmp.natpmp_map_request(8765, 8765, 60)]
        nursery.cancel_scope.cancel()


async def test_a_silent_router_is_retried_with_doubling_waits_then_reported() -> None:
    async with trio.open_nursery() as nursery:
        port, received = await nursery.start(fake_router, None)
        with pytest.raises(PortMapError) as caught:
            await exchange("127.0.0.1", b"\x00\x00", natpmp.natpmp_parse_external_address, "NAT-PMP external address",
                           port, tries=3, first_wait=0.05)
        assert str(caught.value) == (f"NAT-PMP external address: no answer from the gateway 127.0.0.1:{port} "
                                     "after 3 tries (0.35 s)")
        assert received == [b"\x00\x00"] * 3
        nursery.cancel_scope.cancel()


async def test_a_closed_port_on_the_gateway_is_one_line() -> None:
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(PortMapError, match=r"refused \(nothing listens on its UDP port"):
        await exchange("127.0.0.1", b"\x00\x00", natpmp.natpmp_parse_external_address, "NAT-PMP", closed)
