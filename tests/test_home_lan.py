# LAN discovery (p2pnode/lan.py) between real `p2pnode run` processes in two network namespaces joined by a
# veth link, as two machines on one Wi-Fi with no internet: no seeds, they find each other over mDNS, prove
# their keys in the handshake and sync. --no-lan keeps a node silent. Needs root (tests/netns.py).
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from netns import Lab, open_lab
from nodeproc import NodeProcess, feed_entries, init_home, wait_for
from nodeproc import status_json as status

from p2pnode.lan import lan_enabled

WAIT_S = 40.0
pytestmark = pytest.mark.netns


@pytest.fixture
def lab() -> Iterator[Lab]:
    with open_lab() as made:
        yield made


def peer_ids(home: Path) -> set[str]:
    return {p["id"] for p in status(home).get("peers", [])}


def test_lan_discovery_only_off_loopback() -> None:
    assert lan_enabled("0.0.0.0", False) and lan_enabled("192.168.1.20", False) and lan_enabled("::", False)
    assert not lan_enabled("127.0.0.1", False) and not lan_enabled("::1", False)
    assert not lan_enabled("0.0.0.0", True)


def test_two_lan_nodes_find_each_other_without_seeds_and_sync(tmp_path: Path, lab: Lab,
                                                              nodes: list[NodeProcess]) -> None:
    a_ns, b_ns = lab.namespace("a"), lab.namespace("b")
    lab.link(a_ns, "10.77.0.1/24", b_ns, "10.77.0.2/24")
    a_home, b_home = tmp_path / "a", tmp_path / "b"
    a_id, b_id = init_home(a_home), init_home(b_home)
    for n in range(20):
        assert run_cli(a_home, "post", f"post {n}").returncode == 0
    assert run_cli(b_home, "follow", a_id).returncode == 0
    nodes.append(a := NodeProcess(a_home, "--listen", "0.0.0.0:0", wrap=lab.exec(a_ns)))
    assert a.address.startswith("10.77.0.1:"), a.address  # its LAN address, not 127.0.0.1
    nodes.append(b := NodeProcess(b_home, "--listen", "0.0.0.0:0", wrap=lab.exec(b_ns)))
    assert b.address.startswith("10.77.0.2:"), b.address
    wait_for(lambda: a_id in peer_ids(b_home) or b_id in peer_ids(b_home) or b_id in peer_ids(a_home), WAIT_S,
             "the two nodes to find each other over mDNS and connect")
    wait_for(lambda: len(feed_entries(b_home, a_id)) == 20, WAIT_S, "b to sync a's 20 posts")
    # whichever found the other first dialled it: its peer book holds the other's address from the LAN
    found = [(row["id"], row["address"]) for home in (a_home, b_home) for row in book(home) if row["source"] == "lan"]
    assert found and set(found) <= {(a_id, a.address), (b_id, b.address)}, found


def book(home: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run_cli(home, "peers", "--json").stdout.splitlines()]


def test_no_lan_keeps_a_node_silent(tmp_path: Path, lab: Lab, nodes: list[NodeProcess]) -> None:
    a_ns, b_ns = lab.namespace("a"), lab.namespace("b")
    lab.link(a_ns, "10.78.0.1/24", b_ns, "10.78.0.2/24")
    a_home, b_home, c_home = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a_id, _, c_id = init_home(a_home), init_home(b_home), init_home(c_home)
    nodes.append(NodeProcess(a_home, "--listen", "0.0.0.0:0", "--no-lan", wrap=lab.exec(a_ns)))
    # c, in a's namespace with discovery on, shows that b's browsing works: b finds c but never a
    nodes.append(NodeProcess(c_home, "--listen", "0.0.0.0:0", wrap=lab.exec(a_ns)))
    nodes.append(NodeProcess(b_home, "--listen", "0.0.0.0:0", wrap=lab.exec(b_ns)))
    wait_for(lambda: c_id in peer_ids(b_home), WAIT_S, "b to find c over mDNS")
    assert a_id not in run_cli(b_home, "peers", "--json").stdout
