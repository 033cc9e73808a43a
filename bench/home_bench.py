# Benchmark for a node on a home network (issue 10): time for two nodes in two network namespaces (one LAN, no
# seeds) to find each other over mDNS and sync N entries; initial sync of M entries directly and through a
# SOCKS5 proxy (Debian's microsocks on 127.0.0.1) and the ratio; time from start to "reachable: yes" behind a
# NAT router with UPnP (miniupnpd). Needs root, iproute2, nftables, miniupnpd, microsocks. Prints figures;
# not part of the test suite. Uses the test helpers (tests/netns.py, tests/nodeproc.py).
#
# usage: sudo .venv/bin/python bench/home_bench.py [--lan-entries 1000] [--proxy-entries 20000]
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import run_cli  # noqa: E402
from netns import HomeBehindNat, Lab  # noqa: E402
from nodeproc import NodeProcess, wait_for  # noqa: E402

from p2pnode.home import STORE_FILE, create_identity  # noqa: E402
from p2pnode.store import Store  # noqa: E402
from protocol.ids import feed_id  # noqa: E402


def make_home(path: Path, posts: int) -> str:
    key = create_identity(path)
    with Store(path / STORE_FILE, bytes(key.verify_key)) as store:
        for n in range(posts):
            store.publish(key, {"type": "post", "text": f"post {n} " + "x" * 100})
    return feed_id(bytes(key.verify_key))


def count(home: Path, author: str) -> int:
    result = run_cli(home, "feed", author, "--limit", "1", "--json")
    lines = result.stdout.splitlines()
    return json.loads(lines[0])["seq"] if lines else 0


def follower(path: Path, author: str) -> None:
    make_home(path, 0)
    assert run_cli(path, "follow", author).returncode == 0


def lan(tmp: Path, entries: int) -> None:
    lab = Lab()
    nodes: list[NodeProcess] = []
    try:
        a_ns, b_ns = lab.namespace("a"), lab.namespace("b")
        lab.link(a_ns, "10.79.0.1/24", b_ns, "10.79.0.2/24")
        a_id = make_home(tmp / "lan-a", entries)
        follower(tmp / "lan-b", a_id)
        nodes.append(NodeProcess(tmp / "lan-a", "--listen", "0.0.0.0:0", "--no-upnp", wrap=lab.exec(a_ns)))
        started = time.monotonic()
        nodes.append(NodeProcess(tmp / "lan-b", "--listen", "0.0.0.0:0", "--no-upnp", wrap=lab.exec(b_ns)))
        wait_for(lambda: any(p["id"] == a_id for p in json.loads(
            run_cli(tmp / "lan-b", "status", "--json").stdout).get("peers", [])), 60, "the LAN nodes to connect")
        found = time.monotonic() - started
        wait_for(lambda: count(tmp / "lan-b", a_id) == entries, 300, "the LAN sync")
        synced = time.monotonic() - started
        print(f"LAN: two nodes found each other over mDNS in {found:.1f} s and synced {entries} entries "
              f"{synced:.1f} s after the second started")
    finally:
        for node in nodes:
            node.stop()
        lab.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proxy(tmp: Path, entries: int) -> None:
    a_home = tmp / "px-a"
    a_id = make_home(a_home, entries)
    port = free_port()
    socks = subprocess.Popen(["microsocks", "-i", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    a = NodeProcess(a_home)
    times = {}
    try:
        for name, extra in (("direct", []), ("through SOCKS5", ["--proxy", f"socks5://127.0.0.1:{port}"])):
            home = tmp / f"px-{name.split()[0]}"
            follower(home, a_id)
            started = time.monotonic()
            b = NodeProcess(home, "--seed", a.address, *extra)
            try:
                wait_for(lambda h=home: count(h, a_id) == entries, 600, f"the {name} sync")
                times[name] = time.monotonic() - started
            finally:
                b.stop()
            print(f"sync of {entries} entries {name}: {times[name]:.1f} s ({entries / times[name]:,.0f} entries/s)")
    finally:
        a.stop()
        socks.terminate()
        socks.wait()
    print(f"SOCKS5 / direct time ratio: {times['through SOCKS5'] / times['direct']:.2f}")


def upnp(tmp: Path) -> None:
    lab = Lab()
    nodes: list[NodeProcess] = []
    topo = None
    try:
        (tmp / "nat").mkdir()
        topo = HomeBehindNat(lab, tmp / "nat", upnp=True)
        seeds = []
        for n in range(2):
            make_home(tmp / f"out{n}", 0)
            node = NodeProcess(tmp / f"out{n}", "--listen", "0.0.0.0:0", "--no-lan", "--no-upnp",
                               wrap=lab.exec(topo.net))
            nodes.append(node)
            seeds += ["--seed", node.address]
        make_home(tmp / "home", 0)
        started = time.monotonic()
        nodes.append(NodeProcess(tmp / "home", "--listen", "0.0.0.0:0", "--no-lan", *seeds, wrap=lab.exec(topo.home)))
        wait_for(lambda: json.loads(run_cli(tmp / "home", "status", "--json").stdout).get(
            "reachability", {}).get("reachable") is True, 120, "reachable: yes")
        print(f"UPnP: start to 'reachable: yes' behind the router: {time.monotonic() - started:.1f} s")
    finally:
        for node in reversed(nodes):
            node.stop()
        if topo is not None:
            topo.close()
        lab.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lan-entries", type=int, default=1000)
    parser.add_argument("--proxy-entries", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        upnp(Path(tmp))
        lan(Path(tmp), args.lan_entries)
        proxy(Path(tmp), args.proxy_entries)


if __name__ == "__main__":
    main()
