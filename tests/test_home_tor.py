# --tor-control PORT against a real local `tor` process (Debian's), run with DisableNetwork so that it never
# contacts the Tor network: the node gets an onion service from it, advertises HOST.onion:PORT, keeps the key
# so the address survives a restart, and the service goes when the node stops; a wrong control port is one
# line in status. Not tested here (it needs the Tor network): publication of the descriptor, and a peer
# reaching the node through Tor's SOCKS port at the .onion address.
from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from netns import require_command
from nodeproc import NodeProcess, init_home, wait_for

WAIT_S = 30.0
ONION_RE = re.compile(r"^[a-z2-7]{56}\.onion$")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tor(tmp_path: Path) -> Iterator[int]:
    """A local tor with its control port on 127.0.0.1 (no authentication) and the network disabled."""
    binary = require_command("tor", "tor")
    data = tmp_path / "tor-data"
    data.mkdir(mode=0o700)
    port = free_port()
    torrc = tmp_path / "torrc"
    torrc.write_text(f"DataDirectory {data}\nControlPort 127.0.0.1:{port}\nSocksPort 0\nDisableNetwork 1\n"
                     "CookieAuthentication 0\nLog notice stdout\n")
    log = open(tmp_path / "tor.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([binary, "-f", str(torrc)], stdout=log, stderr=subprocess.STDOUT)

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return proc.poll() is not None  # tor died: stop waiting, the test fails below

    try:
        wait_for(listening, WAIT_S, "tor's control port")
        assert proc.poll() is None, (tmp_path / "tor.log").read_text()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def add_onion_with_key(control_port: int, key_file: Path) -> str | None:
    """Ask tor, on our own control connection, for an onion service with the node's saved key: None when tor
    made it (so no other service holds that key now; ours goes when this connection closes), else tor's error."""
    from stem.control import Controller
    kind, _, content = key_file.read_text().strip().partition(":")
    with Controller.from_port(address="127.0.0.1", port=control_port) as controller:
        controller.authenticate()
        try:
            controller.create_ephemeral_hidden_service({1: "127.0.0.1:1"}, key_type=kind, key_content=content,
                                                        await_publication=False)
        except Exception as exc:
            return str(exc)
    return None


def onion_of_key(key_file: Path) -> str:
    """The v3 onion address of an ED25519-V3 key as tor exports it (the 64-byte expanded secret key)."""
    import base64
    import hashlib

    import nacl.bindings
    expanded = base64.b64decode(key_file.read_text().strip().partition(":")[2])
    public = nacl.bindings.crypto_scalarmult_ed25519_base_noclamp(expanded[:32])
    checksum = hashlib.sha3_256(b".onion checksum" + public + b"\x03").digest()[:2]
    return base64.b32encode(public + checksum + b"\x03").decode().lower() + ".onion"


def status(home: Path) -> dict[str, Any]:
    result = run_cli(home, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_onion_service_is_published_advertised_and_kept(tmp_path: Path, tor: int) -> None:
    home = tmp_path / "home"
    node_id = init_home(home)
    node = NodeProcess(home, "--tor-control", str(tor))
    try:
        wait_for(lambda: (status(home).get("onion") or {}).get("state") == "published", WAIT_S,
                 "the onion service")
        info = status(home)
        onion = info["onion"]["onion"]
        port = int(node.address.rsplit("/", 1)[0].rsplit(":", 1)[1])
        assert ONION_RE.match(onion), onion
        assert info["address"] == f"{onion}:{port}/{node_id}"
        assert json.loads(run_cli(home, "whoami", "--json").stdout)["address"] == info["address"]
        assert run_cli(home, "invite").stdout.strip() == f"p2pnode:{node_id}/{onion}:{port}"
        assert "onion service (Tor): published" in run_cli(home, "status").stdout
        key = home / "onion_key"
        assert key.stat().st_mode & 0o777 == 0o600 and key.read_text().startswith("ED25519-V3:")
        assert onion_of_key(key) == onion  # the kept key is the published service's
        refused = add_onion_with_key(tor, key)
        assert refused is not None and "collision" in refused.lower(), refused  # tor holds it for the node
    finally:
        assert node.stop() == 0
    assert add_onion_with_key(tor, key) is None  # the service went with the node

    again = NodeProcess(home, "--tor-control", str(tor))
    try:
        wait_for(lambda: (status(home).get("onion") or {}).get("state") == "published", WAIT_S,
                 "the onion service after a restart")
        assert status(home)["onion"]["onion"] == onion  # the same address: the key was kept
    finally:
        assert again.stop() == 0


def test_wrong_control_port_is_one_line_in_status(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home)
    port = free_port()
    node = NodeProcess(home, "--tor-control", str(port))
    try:
        wait_for(lambda: (status(home).get("onion") or {}).get("state") == "failed", WAIT_S, "the failure")
        detail = status(home)["onion"]["detail"]
        assert detail.startswith(f"cannot connect to Tor's control port 127.0.0.1:{port}"), detail
        assert status(home)["address"].startswith("127.0.0.1:")  # it goes on with its ordinary address
    finally:
        assert node.stop() == 0
