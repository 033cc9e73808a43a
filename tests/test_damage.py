# A payload damaged on disk is never shown or served, and comes back from peers: bytes flipped in a real store
# file, then `feed` (the damage is reported, the altered text is not shown), a fresh peer served by the damaged
# node (it gets every entry, the damaged ones without payload), the node repairing itself from a second peer,
# and `check --repair` on demand.
from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import msgpack
import nacl.signing
import pytest
from conftest import run_cli
from nodeproc import NodeProcess, feed_entries, init_home, wait_for

from p2pnode.home import STORE_FILE
from p2pnode.store import Store
from protocol import wire
from protocol.errors import TooLarge
from protocol.ids import entry_ref, feed_id, parse_feed_id
from protocol.log import create_entry

WAIT_S = 30.0
AUTHOR = nacl.signing.SigningKey(b"\x42" * 32)
COUNT = 50


def text(seq: int) -> str:
    return f"entry {seq:03d} of the feed, intact"


def plant_feed(home: Path) -> list[bytes]:
    """Store the author's 50 entries in `home` (a stopped node) and follow the author; the entry hashes."""
    owner = parse_feed_id(init_home(home))
    entries, previous = [], None
    for seq in range(1, COUNT + 1):
        previous = create_entry(AUTHOR, previous, {"type": "post", "text": text(seq)}, 1_000 + seq)
        entries.append(previous)
    with Store(home / STORE_FILE, owner) as store:
        result = store.ingest((e.header_bytes, e.signature, e.payload) for e in entries)
        assert result.error is None and len(result.stored) == COUNT
    assert run_cli(home, "follow", author_id()).returncode == 0
    return [e.hash for e in entries]


def author_id() -> str:
    return feed_id(bytes(AUTHOR.verify_key))


def flip(home: Path, seq: int) -> None:
    """Flip one bit of entry `seq`'s payload in the store file itself (the node is stopped, so the file holds
    every page: the write-ahead log was checkpointed and removed when the store was closed)."""
    path = home / STORE_FILE
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    data = bytearray(path.read_bytes())
    where = data.find(text(seq).encode())
    assert where >= 0 and data.find(text(seq).encode(), where + 1) < 0
    where += text(seq).index("intact")
    data[where] ^= 0x20  # "intact" -> "Intact": still valid text, so only the hash can tell
    path.write_bytes(bytes(data))


def missing_payloads(home: Path) -> int:
    with closing(sqlite3.connect(home / STORE_FILE)) as db:
        return db.execute("SELECT count(*) FROM entries WHERE payload IS NULL").fetchone()[0]


def texts(home: Path) -> dict[int, str | None]:
    return {item["seq"]: item.get("text") for item in feed_entries(home, author_id())}


def test_damaged_payload_is_not_shown_not_served_and_comes_back(tmp_path: Path) -> None:
    damaged, second, fresh = tmp_path / "damaged", tmp_path / "second", tmp_path / "fresh"
    hashes = plant_feed(damaged)
    plant_feed(second)
    init_home(fresh)
    assert run_cli(fresh, "follow", author_id()).returncode == 0
    for seq in (10, 20, 30):
        flip(damaged, seq)

    # feed: the damaged entry in view is reported and shown as damaged, never with the altered text
    result = run_cli(damaged, "feed", author_id(), "--limit", "35")
    assert result.returncode == 0, result.stderr
    assert "Intact" not in result.stdout
    assert "payload damaged on disk" in result.stdout
    assert result.stderr.count("damaged on disk") == 2, result.stderr  # seqs 20 and 30 (50 to 16 are shown)
    assert f"entry {entry_ref(hashes[19])} is damaged on disk" in result.stderr
    assert f"entry {entry_ref(hashes[29])} is damaged on disk" in result.stderr
    shown = run_cli(damaged, "feed", author_id(), "--json")
    assert "Intact" not in shown.stdout  # entry 10 is checked on this read
    assert {json.loads(line)["seq"] for line in shown.stdout.splitlines() if "text" not in json.loads(line)} == \
        {10, 20, 30}

    # serve a fresh peer: it gets all 50 entries (11-50 too), the damaged ones without payload
    flip(damaged, 40)  # damaged after the reads above: found when it is sent
    node = NodeProcess(damaged)
    try:
        peer = NodeProcess(fresh, "--seed", node.address)
        try:
            wait_for(lambda: len(texts(fresh)) == COUNT, WAIT_S, "the fresh peer to hold the whole feed")
        finally:
            assert peer.stop() == 0
    finally:
        assert node.stop() == 0
    got = texts(fresh)
    assert got == {seq: None if seq in (10, 20, 30, 40) else text(seq) for seq in range(1, COUNT + 1)}
    assert f"entry {entry_ref(hashes[39])} is damaged on disk" in node.log_path.read_text()

    # repair from a second peer: by itself for what it knows is missing, and with check --repair on demand
    flip(damaged, 45)
    source = NodeProcess(second)
    try:
        node = NodeProcess(damaged, "--seed", source.address)
        try:
            # (not read through `feed`, which would find entry 45 damaged before check --repair does)
            wait_for(lambda: missing_payloads(damaged) == 0, WAIT_S, "the node to fetch the missing payloads again")
            result = run_cli(damaged, "check", "--repair", "--wait", str(WAIT_S))
            assert result.returncode == 0, result.stdout + result.stderr
            assert "seq 45: payload damaged on disk, fetched again from a peer" in result.stdout, result.stdout
            assert "ok: every stored entry verifies" in result.stdout
        finally:
            assert node.stop() == 0
    finally:
        assert source.stop() == 0
    assert texts(damaged) == {seq: text(seq) for seq in range(1, COUNT + 1)}
    assert run_cli(damaged, "check").stdout.startswith("ok")


# ---------------------------------------------------------------- the pieces, without processes


def test_store_sends_a_damaged_payload_as_nil_and_counts_it_missing(tmp_path: Path) -> None:
    entries, previous = [], None
    for seq in range(1, 6):
        previous = create_entry(AUTHOR, previous, {"type": "post", "text": text(seq)}, 1_000 + seq)
        entries.append(previous)
    with Store(tmp_path / "s.sqlite3", b"\x01" * 32) as store:
        store.ingest((e.header_bytes, e.signature, e.payload) for e in entries)
        author = bytes(AUTHOR.verify_key)
        store.db.execute("UPDATE entries SET payload = ? WHERE seq = 3", (entries[2].payload.replace(b"i", b"I"),))
        assert store.missing_payloads(10) == []
        sent = store.raw_entries_after(author, 0, 10)
        assert [payload for _, _, _, payload in sent] == [e.payload if e.seq != 3 else None for e in entries]
        assert store.missing_payloads(10) == [(author, 3)] and store.missing_changed
        # a peer's copy fills it in, and so it does for a payload still damaged on disk
        store.db.execute("UPDATE entries SET payload = ? WHERE seq = 4", (entries[3].payload.replace(b"i", b"I"),))
        result = store.ingest([(e.header_bytes, e.signature, e.payload) for e in entries[2:4]])
        assert result.error is None and result.duplicates == 2
        assert [item[2] for item in store.entries_at([(author, 3), (author, 4), (author, 9)])] == \
            [entries[2].payload, entries[3].payload]
        assert store.missing_payloads(10) == [] and store.check() == []


def test_fetch_message_round_trip_and_limits() -> None:
    message = wire.Fetch(((b"\x01" * 32, 3), (b"\x02" * 32, 2**53 - 1)))
    assert wire.decode(wire.encode(message)) == message
    too_many = wire.Fetch(tuple((b"\x01" * 32, seq) for seq in range(1, wire.MAX_REFS_PER_FETCH + 2)))
    with pytest.raises(TooLarge):
        wire.decode(wire.encode(too_many))
    for bad in ([[b"\x01" * 31, 1]], [[b"\x01" * 32, 0]], [[b"\x01" * 32, "1"]], [b"x"], [[b"\x01" * 32, 1, 2]]):
        with pytest.raises(wire.WireError):
            wire.decode(msgpack.packb({"type": "fetch", "entries": bad}, use_bin_type=True))
