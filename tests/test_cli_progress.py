# Sync progress as a person sees it, against a real `p2pnode run` process: a scripted peer announces 1,000
# entries of a followed feed and sends only 300, so the sync stays half done for as long as the test needs.
# `status` (text and JSON) says how much is left per peer and per feed, `status --watch` refreshes, and
# the node's log reports the sync every few seconds, then that it is done.
from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import nacl.signing
import pytest
import trio
from conftest import cli_command, cli_env, run_cli
from memnodes import chain
from nodeproc import NodeProcess, init_home

from p2pnode.connection import Connection, TransportError, client_handshake
from protocol import wire
from protocol.ids import feed_id, parse_address

WAIT_S = 30.0
TOTAL, FIRST = 1_000, 300


async def wait_until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll a (blocking) condition in a thread until it holds; fail after WAIT_S."""
    with trio.fail_after(WAIT_S):
        while not await trio.to_thread.run_sync(condition):
            await trio.sleep(0.1)
    assert what


async def answer(conn: Connection) -> None:
    """Read what the node sends (so that it never waits on us) and answer its pings."""
    while True:
        try:
            message = wire.decode(await conn.receive())
        except TransportError:
            return
        if isinstance(message, wire.Ping):
            await conn.send(wire.encode(wire.Pong(message.nonce)))


def cli_json(home: Path, *args: str) -> dict:
    result = run_cli(home, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_status_and_log_show_how_much_is_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2PNODE_PROGRESS_INTERVAL", "0.3")
    home = tmp_path / "node"
    init_home(home)
    author = nacl.signing.SigningKey(b"\x3c" * 32)
    author_id = feed_id(bytes(author.verify_key))
    entries = chain(author, [f"entry {i}" for i in range(TOTAL)])
    assert run_cli(home, "follow", author_id).returncode == 0
    assert run_cli(home, "profile", "--name", "me").returncode == 0
    node = NodeProcess(home)
    peer_key = nacl.signing.SigningKey(b"\x3d" * 32)
    peer_id = feed_id(bytes(peer_key.verify_key))

    def left_is(count: int) -> bool:
        peers = cli_json(home, "status").get("peers", [])
        return any(p["id"] == peer_id and p.get("left") == count for p in peers)

    async def scenario() -> None:
        target = parse_address(node.address)
        stream = await trio.open_tcp_stream(target.host, target.port)
        conn = await client_handshake(stream, peer_key, target.key)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer, conn)
            await conn.send(wire.encode(wire.Hello(wire.PROTOCOL_VERSION)))
            await conn.send(wire.encode(wire.Have({bytes(author.verify_key): TOTAL})))
            for start in range(0, FIRST, 100):
                batch = tuple((e.header_bytes, e.signature, e.payload) for e in entries[start:start + 100])
                await conn.send(wire.encode(wire.Entries(batch)))
            await wait_until(lambda: left_is(TOTAL - FIRST), "status to show 700 left")

            status = cli_json(home, "status")
            (peer,) = [p for p in status["peers"] if p["id"] == peer_id]
            assert peer["feeds"] == [{"feed": author_id, "held": FIRST, "of": TOTAL, "rate": peer["feeds"][0]["rate"]}]
            assert peer["feeds_behind"] == 1 and peer["received"] == FIRST
            text = run_cli(home, "status").stdout
            assert f"syncing: {TOTAL - FIRST:,} entries left" in text, text
            assert f"    {author_id[:9]}: {FIRST:,} of {TOTAL:,}" in text, text
            assert f"syncing {author_id[:9]}: {FIRST:,} of {TOTAL:,}" in text, text
            assert status["syncing"] == [{"id": author_id, "held": FIRST, "seen": TOTAL}]
            await wait_until(lambda: "sync from" in node.log_text() and "700 entries left" in node.log_text(),
                             "the node to log the sync's progress")

            # status --watch refreshes until Ctrl-C, and exits 0
            watch = subprocess.Popen([*cli_command(), "status", "--watch", "--interval", "0.2", "--json"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(home))
            assert watch.stdout is not None
            lines = [await trio.to_thread.run_sync(watch.stdout.readline) for _ in range(3)]
            watch.send_signal(signal.SIGINT)
            out, err = await trio.to_thread.run_sync(lambda: watch.communicate(timeout=WAIT_S))
            assert watch.returncode == 0 and "Traceback" not in err, err
            assert all(json.loads(line)["peers"][0]["left"] == TOTAL - FIRST for line in lines)

            for start in range(FIRST, TOTAL, 100):
                batch = tuple((e.header_bytes, e.signature, e.payload) for e in entries[start:start + 100])
                await conn.send(wire.encode(wire.Entries(batch)))
            await wait_until(lambda: left_is(0), "status to show nothing left")
            await wait_until(lambda: "up to date" in node.log_text(), "the node to log that the sync is done")
            assert f"peer {peer_id[:9]}" in run_cli(home, "status").stdout
            await conn.aclose()
            nursery.cancel_scope.cancel()

    try:
        trio.run(scenario)
    finally:
        assert node.stop() == 0
