# A node at home behind a NAT router (tests/netns.py HomeBehindNat: namespaces, nftables masquerade, Debian's
# miniupnpd): with UPnP it maps its port, advertises the router's external address, peers outside dial it
# back ("reachable: yes") and a new node outside connects to it; the mapping goes when the node stops. With no
# UPnP on the router it says so, still learns its public IP from the peers outside, and is reported
# unreachable with the reason. Without UPnP but with NAT-PMP/PCP on the router (miniupnpd, enable_upnp=no) it
# maps its port by NAT-PMP; PCP maps and deletes a port too. A node prints a new `listening` line when its
# address changes. Needs root, nft and miniupnpd (test.sh installs them).
from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from netns import HomeBehindNat, Lab, open_lab, require_command
from nodeproc import NodeProcess, init_home, wait_for
from nodeproc import status_json as status

from protocol.ids import parse_address

WAIT_S = 60.0
pytestmark = pytest.mark.netns


@pytest.fixture
def lab() -> Iterator[Lab]:
    with open_lab() as made:
        require_command("nft", "nftables")
        yield made


def status_line(home: Path, prefix: str) -> str:
    result = run_cli(home, "status")
    assert result.returncode == 0, result.stderr
    return next(line for line in result.stdout.splitlines() if line.startswith(prefix))


def later_listening_lines(node: NodeProcess) -> list[str]:
    """The `listening` lines a stopped node printed after its first one."""
    assert node.proc.stdout is not None
    return [line for line in node.proc.stdout.read().splitlines() if line.startswith("listening ")]


def outside_nodes(tmp_path: Path, lab: Lab, topo: HomeBehindNat, nodes: list[NodeProcess], count: int) -> list[str]:
    addresses = []
    for n in range(count):
        home = tmp_path / f"out{n}"
        init_home(home)
        node = NodeProcess(home, "--listen", "0.0.0.0:0", "--no-lan", "--no-upnp", wrap=lab.exec(topo.net))
        nodes.append(node)
        assert node.address.startswith(f"{topo.OUTSIDE_IP}:"), node.address
        addresses.append(node.address)
    return addresses


def start_home_node(tmp_path: Path, lab: Lab, topo: HomeBehindNat,
                    nodes: list[NodeProcess]) -> tuple[NodeProcess, Path, str, float, int]:
    """Two nodes outside as seeds, then the home node behind the router: (it, its home, id, start time,
    port)."""
    seeds = outside_nodes(tmp_path, lab, topo, nodes, 2)
    home = tmp_path / "home"
    home_id = init_home(home)
    started = time.monotonic()
    nodes.append(node := NodeProcess(home, "--listen", "0.0.0.0:0", "--no-lan", "--seed", seeds[0],
                                     "--seed", seeds[1], wrap=lab.exec(topo.home)))
    return node, home, home_id, started, parse_address(node.address).port


def test_upnp_maps_the_port_and_an_outside_node_reaches_home(tmp_path: Path, lab: Lab,
                                                             nodes: list[NodeProcess]) -> None:
    require_command("miniupnpd", "miniupnpd")
    topo = HomeBehindNat(lab, tmp_path, upnp=True)
    try:
        node, home, home_id, started, port = start_home_node(tmp_path, lab, topo, nodes)
        wait_for(lambda: status(home).get("reachability", {}).get("reachable") is True, WAIT_S,
                 "peers outside to reach home through the mapped port")
        print(f"figure: start to 'reachable: yes' behind the UPnP router: {time.monotonic() - started:.1f} s")
        info = status(home)
        assert info["port_mapping"]["state"] == "mapped", info["port_mapping"]
        assert info["port_mapping"]["external"] == f"{topo.ROUTER_WAN_IP}:{port}"
        assert info["address"] == f"{topo.ROUTER_WAN_IP}:{port}/{home_id}"
        assert f"dport {port} dnat ip to {topo.HOME_IP}:{port}" in topo.mappings()
        assert status_line(home, "reachable:").startswith(f"reachable: yes at {topo.ROUTER_WAN_IP}:{port} (checked by")
        assert "router port mapping (UPnP): mapped" in status_line(home, "router port mapping")

        # a node outside that only has the invite reaches home
        invite = run_cli(home, "invite").stdout.strip()
        newcomer = tmp_path / "newcomer"
        init_home(newcomer)
        assert run_cli(newcomer, "join", invite).returncode == 0
        nodes.append(NodeProcess(newcomer, "--listen", "0.0.0.0:0", "--no-lan", "--no-upnp",
                                 wrap=lab.exec(topo.net)))
        wait_for(lambda: any(p["id"] == home_id and p["direction"] == "outbound"
                             for p in status(newcomer).get("peers", [])), WAIT_S,
                 "the newcomer outside to connect to home at the mapped address")

        assert node.stop() == 0
        assert f"dport {port} " not in topo.mappings()  # the mapping was removed on exit
        # the address learned after start got a `listening` line of its own, with why
        assert later_listening_lines(node) in (
            [f"listening {topo.ROUTER_WAN_IP}:{port}/{home_id} (port opened by UPnP)"],
            [f"listening {topo.ROUTER_WAN_IP}:{port}/{home_id} (public address learned from 2 peers)"])
    finally:
        topo.close()


def test_without_upnp_home_is_reported_unreachable_with_the_reason(tmp_path: Path, lab: Lab,
                                                                  nodes: list[NodeProcess]) -> None:
    topo = HomeBehindNat(lab, tmp_path, upnp=False)
    try:
        seeds = outside_nodes(tmp_path, lab, topo, nodes, 2)
        home = tmp_path / "home"
        home_id = init_home(home)
        nodes.append(node := NodeProcess(home, "--listen", "0.0.0.0:0", "--no-lan", "--seed", seeds[0],
                                         "--seed", seeds[1], wrap=lab.exec(topo.home)))
        port = parse_address(node.address).port
        assert node.address.startswith(f"{topo.HOME_IP}:")  # before any peer: its own interface address
        wait_for(lambda: status(home).get("reachability", {}).get("reachable") is False, WAIT_S,
                 "the failed dial-back checks")
        wait_for(lambda: status(home)["port_mapping"]["state"] != "starting", WAIT_S, "the search for a router")
        info = status(home)
        # two peers outside saw it come from the router's address: that is its public IP now
        assert info["address"] == f"{topo.ROUTER_WAN_IP}:{port}/{home_id}"
        assert info["port_mapping"]["state"] == "failed"
        assert "UPnP: no UPnP router answered" in info["port_mapping"]["detail"]
        assert (f"NAT-PMP external address: the gateway {topo.ROUTER_LAN_IP} refused (nothing listens on its UDP "
                "port 5351") in info["port_mapping"]["detail"]
        assert status_line(home, "router port mapping").startswith("router port mapping (UPnP, NAT-PMP, PCP): failed:")
        line = status_line(home, "reachable:")
        assert line.startswith(f"reachable: no: peers could not connect to {topo.ROUTER_WAN_IP}:{port} "
                               f"({topo.ROUTER_WAN_IP}:{port}: connection refused"), line
        assert f"forward TCP port {port} on your router" in line
        assert node.stop() == 0
        assert later_listening_lines(node) == [
            f"listening {topo.ROUTER_WAN_IP}:{port}/{home_id} (public address learned from 2 peers)"]
    finally:
        topo.close()


def test_natpmp_maps_the_port_when_the_router_has_no_upnp(tmp_path: Path, lab: Lab,
                                                         nodes: list[NodeProcess]) -> None:
    require_command("miniupnpd", "miniupnpd")
    topo = HomeBehindNat(lab, tmp_path, upnp=False, natpmp=True)
    try:
        node, home, home_id, started, port = start_home_node(tmp_path, lab, topo, nodes)
        wait_for(lambda: status(home).get("reachability", {}).get("reachable") is True, WAIT_S,
                 "peers outside to reach home through the port mapped by NAT-PMP")
        print(f"figure: start to 'reachable: yes' behind the NAT-PMP router: {time.monotonic() - started:.1f} s")
        info = status(home)
        assert info["port_mapping"]["state"] == "mapped", info["port_mapping"]
        assert info["port_mapping"]["method"] == "NAT-PMP"
        assert info["port_mapping"]["external"] == f"{topo.ROUTER_WAN_IP}:{port}"
        assert info["address"] == f"{topo.ROUTER_WAN_IP}:{port}/{home_id}"
        assert f"dport {port} dnat ip to {topo.HOME_IP}:{port}" in topo.mappings()
        line = status_line(home, "router port mapping")
        assert line.startswith(f"router port mapping (NAT-PMP): mapped: port opened by NAT-PMP: the router forwards "
                               f"{topo.ROUTER_WAN_IP}:{port} to this node (lease 3600 s"), line
        assert "last renewed" in line
        assert status_line(home, "reachable:").startswith(f"reachable: yes at {topo.ROUTER_WAN_IP}:{port}")

        assert node.stop() == 0
        assert f"dport {port} " not in topo.mappings()  # deleted (lifetime 0) on exit
        assert later_listening_lines(node) in (
            [f"listening {topo.ROUTER_WAN_IP}:{port}/{home_id} (port opened by NAT-PMP)"],
            [f"listening {topo.ROUTER_WAN_IP}:{port}/{home_id} (public address learned from 2 peers)"])
    finally:
        topo.close()


PCP_CLIENT = """
import sys, trio
from p2pnode.pmp import PcpRouter, default_gateway
async def main():
    router = PcpRouter(default_gateway())
    ip, port, lease = await router.map(int(sys.argv[1]), 600)
    print(ip, port, lease, flush=True)
    sys.stdin.readline()
    await router.unmap(int(sys.argv[1]))
    print("removed", flush=True)
trio.run(main)
"""


def test_pcp_maps_and_deletes_a_port_on_the_router(tmp_path: Path, lab: Lab) -> None:
    require_command("miniupnpd", "miniupnpd")
    topo = HomeBehindNat(lab, tmp_path, upnp=False, natpmp=True)
    try:
        client = subprocess.Popen([*lab.exec(topo.home), sys.executable, "-c", PCP_CLIENT, "18765"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert client.stdout is not None and client.stdin is not None
            answer = client.stdout.readline().split()
            assert answer == [topo.ROUTER_WAN_IP, "18765", "600"], (answer, client.stderr)
            assert f"dport 18765 dnat ip to {topo.HOME_IP}:18765" in topo.mappings()
            client.stdin.write("\n")
            client.stdin.flush()
            assert client.stdout.readline().strip() == "removed"
            assert client.wait(timeout=30) == 0
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        assert "dport 18765 " not in topo.mappings()
    finally:
        topo.close()
