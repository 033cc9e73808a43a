# A node's own address and reachability, through real `p2pnode run` processes on 127.0.0.1: peers dial a node
# back and it reports "reachable: yes" or "no" with what they found; a node listening on all interfaces does
# not offer 127.0.0.1 when it has another address, and takes the public IP that two peers agree on (their
# `hello.observed`). Unit checks of the address choice (p2pnode/reach.py) come first.
from __future__ import annotations

import json
from pathlib import Path

import nacl.signing
import trio
from conftest import run_cli
from nodeproc import NodeProcess, init_home, wait_for
from nodeproc import status_json as status

from p2pnode.connection import client_handshake
from p2pnode.reach import SelfAddress, interface_ips
from protocol import wire
from protocol.ids import feed_id, parse_address

WAIT_S = 30.0
OWNER = bytes(nacl.signing.SigningKey(b"\x01" * 32).verify_key)
PEERS = [bytes([n]) * 32 for n in range(2, 6)]


def status_text(home: Path) -> str:
    result = run_cli(home, "status")
    assert result.returncode == 0, result.stderr
    return result.stdout


# ------------------------------------------------------------ the address choice


def test_wildcard_listen_prefers_agreed_public_ip_then_interfaces() -> None:
    me = SelfAddress(OWNER, None, "0.0.0.0")
    me.bound("0.0.0.0", 8765)
    me.interfaces = ["192.168.1.20"]
    assert me.host() == "192.168.1.20"
    assert not me.observe(PEERS[0], "127.0.0.1")  # loopback says nothing
    assert not me.observe(PEERS[0], "203.0.113.5")  # one peer is not enough
    assert me.host() == "192.168.1.20"
    assert not me.observe(PEERS[0], "203.0.113.5")  # nor the same peer twice
    assert me.observe(PEERS[1], "203.0.113.5")
    assert me.host() == "203.0.113.5" and str(me.address()).startswith("203.0.113.5:8765/@")
    assert me.all_addresses()[:2] == [f"203.0.113.5:8765/{feed_id(OWNER)}", f"192.168.1.20:8765/{feed_id(OWNER)}"]
    me.interfaces = []
    me.observed.clear()
    assert me.host() == "127.0.0.1"  # nothing else known


def test_advertise_and_specific_listen_host_win() -> None:
    me = SelfAddress(OWNER, "node.example.org", "0.0.0.0")
    me.bound("0.0.0.0", 8765)
    for peer in PEERS:
        me.observe(peer, "203.0.113.5")
    assert me.host() == "node.example.org"
    me = SelfAddress(OWNER, None, "10.0.0.2")
    me.bound("10.0.0.2", 8765)
    for peer in PEERS:
        me.observe(peer, "203.0.113.5")
    assert me.host() == "10.0.0.2"


def test_checks_ask_three_peers_per_address() -> None:
    me = SelfAddress(OWNER, None, "127.0.0.1")
    me.bound("127.0.0.1", 8765)
    asked = [me.should_ask(peer, 0.0) for peer in PEERS]
    assert asked[:3] == [str(me.address())] * 3 and asked[3] is None
    assert me.should_ask(PEERS[3], 601.0) == str(me.address())  # checked again after ten minutes
    assert me.reachability()["reachable"] is None
    me.record(PEERS[0], wire.Checked(str(me.address()), False, "refused"))
    assert me.reachability()["reachable"] is False and me.reachability()["reasons"] == ["refused"]
    me.record(PEERS[1], wire.Checked(str(me.address()), True))
    assert me.reachability()["reachable"] is True and me.reachability()["checked_by"] == 2
    me.record(PEERS[2], wire.Checked("127.0.0.1:1/" + feed_id(OWNER), True))  # another address: ignored
    assert me.reachability()["checked_by"] == 2


# ------------------------------------------------------------ real nodes


def test_peers_dial_back_and_status_says_reachable(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    a_home, b_home = tmp_path / "a", tmp_path / "b"
    init_home(a_home)
    init_home(b_home)
    nodes.append(a := NodeProcess(a_home))
    nodes.append(b := NodeProcess(b_home, "--seed", a.address))
    for home, node in ((a_home, a), (b_home, b)):
        wait_for(lambda h=home: status(h).get("reachability", {}).get("reachable") is not None, WAIT_S,
                 f"a dial-back check of {home.name}")
        reach = status(home)["reachability"]
        assert reach["reachable"] is True and reach["checked_by"] == 1 and reach["address"] == node.address
        where = node.address.rsplit("/", 1)[0]
        assert f"reachable: yes at {where} (checked by 1 peer, " in status_text(home)


def test_unreachable_address_is_reported_with_the_reason(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    a_home, b_home = tmp_path / "a", tmp_path / "b"
    init_home(a_home)
    init_home(b_home)
    # a listens on 127.0.0.1 only but advertises 127.0.0.2, where nothing listens
    nodes.append(a := NodeProcess(a_home, "--advertise", "127.0.0.2"))
    port = parse_address(a.address).port
    assert a.address.startswith(f"127.0.0.2:{port}/")
    nodes.append(NodeProcess(b_home, "--seed", f"127.0.0.1:{port}/{a.address.rsplit('/', 1)[1]}"))
    wait_for(lambda: status(a_home).get("reachability", {}).get("reachable") is not None, WAIT_S,
             "b's dial-back check of a")
    reach = status(a_home)["reachability"]
    assert reach["reachable"] is False
    assert reach["reasons"] == [f"127.0.0.2:{port}: connection refused (no node listening there, or a firewall)"]
    line = next(line for line in status_text(a_home).splitlines() if line.startswith("reachable:"))
    assert line.startswith(f"reachable: no: peers could not connect to 127.0.0.2:{port} (127.0.0.2:{port}: "
                           "connection refused"), line
    assert f"forward TCP port {port}" in line


def test_wildcard_node_learns_the_ip_two_peers_see(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    home = tmp_path / "a"
    a_id = init_home(home)
    nodes.append(a := NodeProcess(home, "--listen", "0.0.0.0:0", "--no-lan", "--no-upnp"))
    interfaces = interface_ips()
    host = parse_address(a.address).host
    assert host == (interfaces[0] if interfaces else "127.0.0.1")  # never 127.0.0.1 when there is better
    port = parse_address(a.address).port

    def connected() -> set[str]:
        return {p["id"] for p in status(home).get("peers", [])}

    async def peer(seed: bytes, ready: trio.Event, done: trio.Event) -> None:
        key = nacl.signing.SigningKey(seed)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = await client_handshake(stream, key, parse_address(a.address).key)
        await conn.send(wire.encode(wire.Hello(wire.PROTOCOL_VERSION, observed="198.51.100.7")))
        await trio.to_thread.run_sync(wait_for, lambda: feed_id(bytes(key.verify_key)) in connected(), WAIT_S,
                                      "a to register the scripted peer")
        ready.set()
        await done.wait()
        await conn.aclose()

    async def scenario() -> None:
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            first, second = trio.Event(), trio.Event()
            nursery.start_soon(peer, b"\x21" * 32, first, done)
            await first.wait()
            assert parse_address(status(home)["address"]).host == host  # one peer is not enough
            nursery.start_soon(peer, b"\x22" * 32, second, done)
            await second.wait()
            await trio.to_thread.run_sync(
                wait_for, lambda: parse_address(status(home)["address"]).host == "198.51.100.7", WAIT_S,
                "a to take the IP two peers agree on")
            done.set()

    trio.run(scenario)
    info = status(home)
    assert info["address"] == f"198.51.100.7:{port}/{a_id}"
    assert info["addresses"][0] == info["address"]
    whoami = json.loads(run_cli(home, "whoami", "--json").stdout)
    assert whoami["address"] == info["address"]
