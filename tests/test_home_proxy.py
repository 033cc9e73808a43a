# --proxy socks5://HOST:PORT: a real `p2pnode run` dials its peer through Debian's microsocks on 127.0.0.1,
# syncs, and the peer sees the connection come from the proxy's outgoing address (127.0.0.2), not the node's;
# `.onion` hosts are refused without a proxy; a bad --proxy is one line. Needs `microsocks` (test.sh installs it).
from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from netns import require_command
from nodeproc import NodeProcess, feed_entries, init_home, wait_for
from nodeproc import status_json as status

WAIT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def socks_proxy() -> Iterator[int]:
    """microsocks on 127.0.0.1:PORT whose outgoing connections come from 127.0.0.2; yields PORT."""
    binary = require_command("microsocks", "microsocks")
    port = free_port()
    proc = subprocess.Popen([binary, "-i", "127.0.0.1", "-p", str(port), "-b", "127.0.0.2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    try:
        wait_for(listening, WAIT_S, "microsocks to listen")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_dial_through_socks5_proxy_and_peer_sees_the_proxy(tmp_path: Path, socks_proxy: int,
                                                          nodes: list[NodeProcess]) -> None:
    a_home, b_home = tmp_path / "a", tmp_path / "b"
    a_id, b_id = init_home(a_home), init_home(b_home)
    assert run_cli(a_home, "post", "through the proxy").returncode == 0
    assert run_cli(b_home, "follow", a_id).returncode == 0
    nodes.append(a := NodeProcess(a_home))
    nodes.append(NodeProcess(b_home, "--proxy", f"socks5://127.0.0.1:{socks_proxy}", "--seed", a.address))
    wait_for(lambda: [e.get("text") for e in feed_entries(b_home, a_id)] == ["through the proxy"], WAIT_S,
             "b to fetch a's post through the proxy")
    [seen_by_a] = [p for p in status(a_home)["peers"] if p["id"] == b_id]
    assert seen_by_a["remote_ip"] == "127.0.0.2" and seen_by_a["direction"] == "inbound"
    [seen_by_b] = [p for p in status(b_home)["peers"] if p["id"] == a_id]
    assert seen_by_b["remote_ip"] is None  # b only knows the proxy's end


def test_proxy_failure_names_the_proxy(tmp_path: Path, socks_proxy: int, nodes: list[NodeProcess]) -> None:
    home = tmp_path / "b"
    init_home(home)
    closed = free_port()
    target = f"127.0.0.1:{closed}/{init_home(tmp_path / 'x')}"
    unused_proxy = free_port()
    other = f"127.0.0.1:{free_port()}/{init_home(tmp_path / 'y')}"
    nodes.append(NodeProcess(home, "--proxy", f"socks5://127.0.0.1:{socks_proxy}", "--seed", target))
    wait_for(lambda: bool(status(home).get("dial_problems")), WAIT_S, "the failed dial through the proxy")
    [problem] = status(home)["dial_problems"]
    assert problem["problem"].startswith(f"127.0.0.1:{closed}: the proxy 127.0.0.1:{socks_proxy} could not "
                                         f"connect to 127.0.0.1:{closed}"), problem
    home2 = tmp_path / "c"
    init_home(home2)
    nodes.append(NodeProcess(home2, "--proxy", f"socks5://127.0.0.1:{unused_proxy}", "--seed", other))
    wait_for(lambda: bool(status(home2).get("dial_problems")), WAIT_S, "the failed dial to a missing proxy")
    assert f"cannot reach the proxy 127.0.0.1:{unused_proxy}" in status(home2)["dial_problems"][0]["problem"]


def test_onion_address_needs_a_proxy(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    home = tmp_path / "b"
    init_home(home)
    onion = "p2pnodeexampleaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.onion"
    seed = f"{onion}:8765/{init_home(tmp_path / 'x')}"
    nodes.append(NodeProcess(home, "--seed", seed))
    wait_for(lambda: bool(status(home).get("dial_problems")), WAIT_S, "the refused onion dial")
    [problem] = status(home)["dial_problems"]
    assert problem["problem"] == (f"{onion}:8765: {onion} is an onion address: it can be dialled only through a "
                                  "Tor SOCKS proxy (--proxy socks5://127.0.0.1:9050)")


@pytest.mark.parametrize("value", ["http://127.0.0.1:8080", "socks5://", "socks5://u:p@127.0.0.1:1080",
                                   "socks5://127.0.0.1:99999"])
def test_bad_proxy_is_one_line(tmp_path: Path, value: str) -> None:
    home = tmp_path / "home"
    init_home(home)
    result = run_cli(home, "run", "--listen", "127.0.0.1:0", "--proxy", value)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --proxy"), result.stderr
