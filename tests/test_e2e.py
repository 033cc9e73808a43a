# End to end with real `p2pnode` processes on 127.0.0.1: relay, follow, live push, and the feed
# outliving its author and the seed; a forged entry from a peer disconnects it and stores nothing.
from __future__ import annotations

import json
from pathlib import Path

import nacl.signing
import trio
from conftest import run_cli
from nodeproc import NodeProcess, feed_entries, init_home, wait_for

from p2pnode.connection import client_handshake
from protocol import wire
from protocol.ids import feed_id, parse_address
from protocol.log import create_entry

SYNC_TIMEOUT_S = 60.0


def test_feed_outlives_author_and_seed(tmp_path: Path) -> None:
    homes = {name: tmp_path / name for name in "arbc"}
    ids = {name: init_home(home) for name, home in homes.items()}
    for i in range(3):
        assert run_cli(homes["a"], "post", f"post {i} from a").returncode == 0
    relay = NodeProcess(homes["r"], "--relay")
    a = NodeProcess(homes["a"], "--seed", relay.address)
    b_follow = run_cli(homes["b"], "follow", ids["a"])
    assert b_follow.returncode == 0, b_follow.stderr
    b = NodeProcess(homes["b"], "--seed", relay.address)
    c = None
    try:
        wait_for(lambda: len(feed_entries(homes["b"], ids["a"])) == 3, SYNC_TIMEOUT_S, "B to get A's 3 posts")
        # a post A makes while both run reaches B (the CLI writes A's store; A's node pushes it)
        posted = run_cli(homes["a"], "post", "live from a", "--json")
        assert posted.returncode == 0, posted.stderr
        live_hash = json.loads(posted.stdout)["hash"]
        wait_for(lambda: any(e["hash"] == live_hash for e in feed_entries(homes["b"], ids["a"])),
                 SYNC_TIMEOUT_S, "A's live post to reach B")
        timeline = run_cli(homes["b"], "timeline", "--json")
        assert "live from a" in timeline.stdout
        # the author and the seed go away
        assert a.stop() == 0
        assert relay.stop() == 0
        # C knows only B, follows A, and gets all of A's posts from B
        assert run_cli(homes["c"], "follow", ids["a"]).returncode == 0
        c = NodeProcess(homes["c"], "--seed", b.address)
        wait_for(lambda: len(feed_entries(homes["c"], ids["a"])) == 4, SYNC_TIMEOUT_S, "C to get A's 4 posts from B")
        texts = {e["text"] for e in feed_entries(homes["c"], ids["a"])}
        assert texts == {"post 0 from a", "post 1 from a", "post 2 from a", "live from a"}
        assert run_cli(homes["c"], "check").returncode == 0
        status = json.loads(run_cli(homes["c"], "status", "--json").stdout)
        assert status["running"] and any(p["id"] == ids["b"] for p in status["peers"])
    finally:
        for node in (c, b, a, relay):
            if node is not None:
                node.stop()
    assert b.proc.returncode == 0 and c is not None and c.proc.returncode == 0


def test_forged_entry_disconnects_and_stores_nothing(tmp_path: Path) -> None:
    home = tmp_path / "victim"
    init_home(home)
    victim = NodeProcess(home, "--relay")
    forger_key = nacl.signing.SigningKey(b"\x07" * 32)
    good = create_entry(forger_key, None, {"type": "post", "text": "genuine"}, 1_000)
    second = create_entry(forger_key, good, {"type": "post", "text": "will be altered"}, 2_000)
    altered_payload = second.payload.replace(b"altered", b"ALTERED")
    close_reason: list[str] = []

    async def attack() -> None:
        target = parse_address(victim.address)
        stream = await trio.open_tcp_stream(target.host, target.port)
        conn = await client_handshake(stream, forger_key, target.key)
        await conn.send(wire.encode(wire.Hello(wire.PROTOCOL_VERSION)))
        batch = wire.Entries(((good.header_bytes, good.signature, good.payload),
                              (second.header_bytes, second.signature, altered_payload)))
        await conn.send(wire.encode(batch))
        with trio.fail_after(SYNC_TIMEOUT_S):
            while True:
                try:
                    message = wire.decode(await conn.receive())
                except Exception:  # the victim hung up after its close message
                    return
                if isinstance(message, wire.Close):
                    close_reason.append(message.reason)

    try:
        trio.run(attack)
        assert close_reason and close_reason[0].startswith("invalid: payload does not match"), close_reason
        entries = feed_entries(home, feed_id(bytes(forger_key.verify_key)))
        # the verified entry before the forged one is kept; nothing of the forged one is stored
        assert [e["seq"] for e in entries] == [1]
        assert all(e.get("text") != "will be ALTERED" for e in entries)
        assert run_cli(home, "check").returncode == 0
        assert "invalid entry" in victim.log_text()
    finally:
        assert victim.stop() == 0


def test_a_lost_store_comes_back_from_peers(tmp_path: Path) -> None:
    """The user loses the store but keeps the key: `run` fetches the feed back, and posting goes on at the
    next seq instead of forking the feed. Then the machine is lost: the backup words (export-key) restore the
    identity on a new one (init --import), which gets its feed back from peers and goes on at the next seq."""
    a_home, b_home = tmp_path / "a", tmp_path / "b"
    a_id, _ = init_home(a_home), init_home(b_home)
    for i in range(3):
        assert run_cli(a_home, "post", f"kept {i}").returncode == 0
    assert run_cli(b_home, "follow", a_id).returncode == 0
    a = NodeProcess(a_home)
    b = NodeProcess(b_home, "--seed", a.address)
    try:
        wait_for(lambda: len(feed_entries(b_home, a_id)) == 3, SYNC_TIMEOUT_S, "B to get A's posts")
        assert a.stop() == 0
        for path in a_home.glob("store.sqlite3*"):
            path.unlink()
        refused = run_cli(a_home, "post", "too early")
        assert refused.returncode != 0 and "p2pnode run" in refused.stderr
        a = NodeProcess(a_home, "--seed", b.address)
        wait_for(lambda: len(feed_entries(a_home, a_id)) == 3, SYNC_TIMEOUT_S, "A to get its own feed back")
        posted = run_cli(a_home, "post", "after the restore", "--json")
        assert posted.returncode == 0, posted.stderr
        assert json.loads(posted.stdout)["seq"] == 4
        wait_for(lambda: len(feed_entries(b_home, a_id)) == 4, SYNC_TIMEOUT_S, "B to get the new post")
        assert json.loads(run_cli(b_home, "status", "--json").stdout)["forked"] == []

        # then the whole machine is lost; the backup words restore the identity on a new one
        words = run_cli(a_home, "export-key")
        assert words.returncode == 0 and len(words.stdout.split()) == 24
        assert a.stop() == 0
        new_home = tmp_path / "a-new-machine"
        restored = run_cli(new_home, "init", "--import", input=words.stdout)
        assert restored.returncode == 0 and a_id in restored.stdout, restored.stderr
        refused = run_cli(new_home, "post", "too early")
        assert refused.returncode != 0 and "p2pnode run" in refused.stderr
        a = NodeProcess(new_home, "--seed", b.address)
        wait_for(lambda: len(feed_entries(new_home, a_id)) == 4, SYNC_TIMEOUT_S, "the new machine to get the feed")
        posted = run_cli(new_home, "post", "from the new machine", "--json")
        assert posted.returncode == 0, posted.stderr
        assert json.loads(posted.stdout)["seq"] == 5
        wait_for(lambda: len(feed_entries(b_home, a_id)) == 5, SYNC_TIMEOUT_S, "B to get the new machine's post")
        assert json.loads(run_cli(b_home, "status", "--json").stdout)["forked"] == []
        assert run_cli(new_home, "check").returncode == 0
    finally:
        a.stop()
        assert b.stop() == 0
