# Seeds a user manages (seeds, seeds add/remove), what a failed dial found (a non-p2pnode server, a key
# mismatch) shown in status and not dialled again, invite/join between two real nodes, and the home's
# config.toml with flags winning: real `p2pnode` subprocesses on 127.0.0.1.
from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from nodeproc import NodeProcess, feed_entries, init_home, wait_for

from protocol.errors import InvalidId
from protocol.ids import parse_address
from protocol.invite import make_invite, parse_invite

WAIT_S = 30.0


def cli_ok(home: Path, *args: str) -> str:
    result = run_cli(home, *args)
    assert result.returncode == 0, f"p2pnode {' '.join(args)}: {result.stderr}"
    return result.stdout


def one_line_error(home: Path, *args: str) -> str:
    result = run_cli(home, *args)
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def status(home: Path) -> dict[str, Any]:
    return json.loads(cli_ok(home, "status", "--json"))


def seed_rows(home: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in cli_ok(home, "seeds", "--json").splitlines()]


def other_id(tmp_path: Path, name: str) -> str:
    return init_home(tmp_path / name)


class HttpLikeServer:
    """A TCP server on 127.0.0.1 that is not a p2pnode node: it answers whatever arrives with an HTTP 400,
    as a web server does, and counts the connections it accepted."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 60\r\n"
                                 b"Connection: close\r\n\r\n<html><body><h1>400 Bad Request</h1></body></html>\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------ seeds add / remove / list


def test_seeds_add_list_remove(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home)
    friend = f"127.0.0.1:4567/{other_id(tmp_path, 'friend')}"
    assert cli_ok(home, "seeds") == ""
    assert "added" in cli_ok(home, "seeds", "add", friend)
    assert "already a seed" in cli_ok(home, "seeds", "add", friend)
    rows = seed_rows(home)
    assert [(r["address"], r["in_seeds_file"], r["connected"]) for r in rows] == [(friend, True, False)]
    assert (home / "seeds").read_text().splitlines() == [friend]
    assert friend in cli_ok(home, "seeds")
    assert friend in cli_ok(home, "peers", "--full")  # in the peer book too, so a running node dials it at once

    cli_ok(home, "seeds", "remove", friend)
    assert seed_rows(home) == []
    assert (home / "seeds").read_text() == ""
    assert friend not in cli_ok(home, "peers", "--full")


def test_seeds_remove_keeps_comments_and_other_lines(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home)
    a = f"127.0.0.1:4567/{other_id(tmp_path, 'a')}"
    b = f"127.0.0.1:4568/{other_id(tmp_path, 'b')}"
    (home / "seeds").write_text(f"# my seeds\n{a}  # alice\n{b}\n")
    cli_ok(home, "seeds", "remove", a)
    assert (home / "seeds").read_text() == f"# my seeds\n{b}\n"


def test_seeds_errors_are_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    me = init_home(home)
    friend = f"127.0.0.1:4567/{other_id(tmp_path, 'friend')}"
    assert "not an address" in one_line_error(home, "seeds", "add", "127.0.0.1:4567")
    assert "checksum" in one_line_error(home, "seeds", "add", friend[:-3] + "aaa")
    assert "own address" in one_line_error(home, "seeds", "add", f"127.0.0.1:1/{me}")
    assert "not a seed" in one_line_error(home, "seeds", "remove", friend)
    assert not (home / "seeds").exists()


# ------------------------------------------------------------ what a failed dial found


def test_non_p2pnode_server_is_named_and_not_dialled_again(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    server = HttpLikeServer()
    try:
        home = tmp_path / "home"
        init_home(home)
        wrong = f"127.0.0.1:{server.port}/{other_id(tmp_path, 'x')}"
        closed = socket.create_server(("127.0.0.1", 0))  # a port that refuses: its failures show time passing
        canary = f"127.0.0.1:{closed.getsockname()[1]}/{other_id(tmp_path, 'y')}"
        closed.close()
        nodes.append(node := NodeProcess(home, "--seed", wrong, "--seed", canary))

        def problem(address: str) -> dict[str, Any] | None:
            return next((p for p in status(home).get("dial_problems", []) if p["address"] == address), None)

        wait_for(lambda: problem(wrong) is not None, WAIT_S, "the dial problem of the HTTP server in status")
        found = problem(wrong)
        assert found is not None
        assert found["problem"] == f"127.0.0.1:{server.port} did not answer the handshake: not a p2pnode node?"
        assert found["kind"] == "not-p2pnode" and found["given_up"] is True
        text = cli_ok(home, "status")
        assert f"cannot dial {wrong}: 127.0.0.1:{server.port} did not answer the handshake" in text
        refused = problem(canary)
        assert refused is None or refused["kind"] == "refused"
        # the refusing seed is retried with backoff; by its third failure the HTTP server would have been
        # dialled again too, had it not been given up
        wait_for(lambda: (problem(canary) or {}).get("failures", 0) >= 3, WAIT_S, "three failed dials of the canary")
        assert server.accepted == 1, node.log_text()
        seeds = {row["address"]: row for row in seed_rows(home)}
        assert seeds[wrong]["given_up"] is True and "not a p2pnode node?" in seeds[wrong]["problem"]
        assert "connection refused" in seeds[canary]["problem"]

        # the peer book keeps it: `seeds` shows it with no node running, and a restarted node neither
        # redials the HTTP server (until its retry time, an hour on) nor forgets to show it
        assert node.stop() == 0
        seeds = {row["address"]: row for row in seed_rows(home)}
        assert seeds[wrong]["given_up"] is True and "not a p2pnode node?" in seeds[wrong]["problem"]
        assert seeds[wrong]["retry_at"] >= found["at"] + 3600
        before = seeds[canary]["failures"]
        nodes.append(restarted := NodeProcess(home, "--seed", wrong, "--seed", canary))
        wait_for(lambda: problem(wrong) is not None, WAIT_S, "the restarted node's status")
        found_again = problem(wrong)
        assert found_again is not None and found_again["given_up"] is True, found_again
        assert found_again["problem"] == found["problem"]
        assert f"cannot dial {wrong}: 127.0.0.1:{server.port} did not answer the handshake: not a p2pnode node? " \
               "(not dialled again before in 1 h" in cli_ok(home, "status")
        wait_for(lambda: (problem(canary) or {}).get("failures", 0) >= before + 2, WAIT_S,
                 "two more failed dials of the canary after the restart")
        assert server.accepted == 1, restarted.log_text()

        # adding it again says "try it now": the running node dials it again at once, not in an hour
        cli_ok(home, "seeds", "add", wrong)
        wait_for(lambda: server.accepted >= 2, WAIT_S, "the re-added seed dialled again by the running node")
        wait_for(lambda: problem(wrong) is not None, WAIT_S, "the re-added seed's new problem in status")
        assert "not a p2pnode node?" in (problem(wrong) or {})["problem"]
    finally:
        server.close()


def test_key_mismatch_is_reported_in_status(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    a_home, b_home = tmp_path / "a", tmp_path / "b"
    init_home(a_home)
    init_home(b_home)
    nodes.append(a := NodeProcess(a_home))
    somebody_else = other_id(tmp_path, "c")
    where = a.address.rsplit("/", 1)[0]
    wrong = f"{where}/{somebody_else}"
    nodes.append(NodeProcess(b_home, "--seed", wrong))

    def problems() -> list[dict[str, Any]]:
        return status(b_home).get("dial_problems", [])

    wait_for(lambda: bool(problems()), WAIT_S, "the key mismatch in b's status")
    [found] = problems()
    assert found["kind"] == "key-mismatch" and found["given_up"] is True
    assert found["problem"] == (f"key mismatch: {where} answers the handshake but does not hold the key "
                                f"{somebody_else}; check the address")
    assert "key mismatch" in cli_ok(b_home, "status")


# ------------------------------------------------------------ invite / join


def test_invite_and_join(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    a_home, b_home = tmp_path / "a", tmp_path / "b"
    a_id = init_home(a_home)
    init_home(b_home)
    assert "no node is running" in one_line_error(a_home, "invite")
    cli_ok(a_home, "post", "hello from a")
    nodes.append(a := NodeProcess(a_home))
    line = cli_ok(a_home, "invite").strip()
    assert len(line.splitlines()) == 1 and " " not in line
    key, addresses = parse_invite(line)
    assert a.address in {str(address) for address in addresses}

    assert "own invite" in one_line_error(a_home, "join", line)
    assert "not an invite" in one_line_error(b_home, "join", "hello")
    out = json.loads(cli_ok(b_home, "join", line, "--json"))
    assert out == {"id": a_id, "seeds_added": len(addresses), "followed": True}
    assert "already following" in cli_ok(b_home, "join", line)
    assert a.address in {row["address"] for row in seed_rows(b_home)}

    nodes.append(NodeProcess(b_home))
    wait_for(lambda: [e.get("text") for e in feed_entries(b_home, a_id)] == ["hello from a"], WAIT_S,
             "b to fetch a's post after joining a's invite")


def test_invite_format_round_trip_and_errors(tmp_path: Path) -> None:
    a_id = init_home(tmp_path / "a")
    addresses = [parse_address(f"203.0.113.5:8765/{a_id}"), parse_address(f"fd00::1:8765/{a_id}"),
                 parse_address(f"192.168.1.20:8765/{a_id}")]
    line = make_invite(addresses[0].key, addresses)
    assert line == f"p2pnode:{a_id}/203.0.113.5:8765,fd00::1:8765,192.168.1.20:8765"
    assert parse_invite(line) == (addresses[0].key, addresses)
    for bad in ("", "p2pnode:", f"p2pnode:{a_id}/", f"p2pnode:{a_id}/nohost", f"p2pnode:{a_id[:-1]}/1.2.3.4:5",
                f"p2pnode:{a_id}/" + ",".join(f"10.0.0.{i}:1" for i in range(9)), "x" * 3000):
        with pytest.raises(InvalidId):
            parse_invite(bad)


# ------------------------------------------------------------ config.toml


def test_config_file_settings_and_flags_winning(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    home = tmp_path / "home"
    init_home(home)
    (home / "config.toml").write_text('advertise = "127.0.0.9"\nhops = 1\nlog-level = "debug"\n')
    nodes.append(node := NodeProcess(home))
    assert node.address.startswith("127.0.0.9:"), node.address
    node.stop()
    nodes.append(node := NodeProcess(home, "--advertise", "127.0.0.8"))
    assert node.address.startswith("127.0.0.8:"), node.address


def test_seed_flags_add_to_the_config_files_seeds(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    home = tmp_path / "home"
    init_home(home)
    in_file = f"127.0.0.1:4567/{other_id(tmp_path, 'a')}"
    on_line = f"127.0.0.1:4568/{other_id(tmp_path, 'b')}"
    (home / "config.toml").write_text(f'seed = ["{in_file}"]\n')
    nodes.append(node := NodeProcess(home, "--seed", on_line))
    wait_for(lambda: len(status(home).get("dial_problems", [])) == 2, WAIT_S, "both seeds dialled")
    assert {p["address"] for p in status(home)["dial_problems"]} == {in_file, on_line}
    assert {row["address"] for row in seed_rows(home)} == {in_file, on_line}
    assert node.stop() == 0


@pytest.mark.parametrize("text, words", [
    ("hops = 9\n", ["config.toml", "hops must be an integer from 0 to 6"]),
    ("hops = \"two\"\n", ["hops must be an integer"]),
    ("colour = \"blue\"\n", ["unknown setting 'colour'"]),
    ("listen = \n", ["config.toml", "not valid TOML", "line 1"]),
    ("seed = [1]\n", ["seed must be a list of address strings"]),
])
def test_bad_config_file_is_one_line(tmp_path: Path, text: str, words: list[str]) -> None:
    home = tmp_path / "home"
    init_home(home)
    (home / "config.toml").write_text(text)
    line = one_line_error(home, "run", "--listen", "127.0.0.1:0")
    for word in words:
        assert word in line, line
