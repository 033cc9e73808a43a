# Tests of the SQLite store (p2pnode/store.py) on real files: schema and migrations, batch ingest and its
# atomicity, duplicates, forks, timeline, clock, follows/blocks, retraction, header-only entries, and a
# writer process killed with SIGKILL in the middle of a batch.
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import msgpack
import nacl.signing
import pytest

from p2pnode.store import MIGRATIONS, Store, StoreError
from protocol.errors import ForkDetected, InvalidEntry
from protocol.ids import feed_id
from protocol.log import Entry, create_entry

OWNER_KEY = nacl.signing.SigningKey(b"\x10" * 32)
ALICE_KEY = nacl.signing.SigningKey(b"\x11" * 32)
BOB_KEY = nacl.signing.SigningKey(b"\x12" * 32)
CAROL_KEY = nacl.signing.SigningKey(b"\x13" * 32)
OWNER, ALICE, BOB, CAROL = (bytes(k.verify_key) for k in (OWNER_KEY, ALICE_KEY, BOB_KEY, CAROL_KEY))

Wire = tuple[bytes, bytes, bytes | None]


def make_feed(key: nacl.signing.SigningKey, n: int, first_ts: int = 1_000, text: str = "post",
              after: Entry | None = None) -> list[Entry]:
    entries: list[Entry] = []
    previous = after
    for i in range(n):
        previous = create_entry(key, previous, {"type": "post", "text": f"{text} {i}"}, first_ts + i)
        entries.append(previous)
    return entries


def append(entries: list[Entry], key: nacl.signing.SigningKey, payload: dict[str, Any], ts: int) -> Entry:
    entry = create_entry(key, entries[-1] if entries else None, payload, ts)
    entries.append(entry)
    return entry


def wire(entries: Sequence[Entry], with_payload: bool = True) -> list[Wire]:
    return [(e.header_bytes, e.signature, e.payload if with_payload else None) for e in entries]


def seqs(store: Store, author: bytes) -> list[int]:
    return [row[0] for row in store.db.execute("SELECT seq FROM entries WHERE author = ? ORDER BY seq", (author,))]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store.sqlite3", OWNER) as opened:
        yield opened


# ---------------------------------------------------------------- schema


def test_wal_mode_and_migrations_recorded(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    with Store(path, OWNER) as first:
        assert first.schema_versions() == [version for version, _ in MIGRATIONS]
        applied = first.db.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
        first.ingest(wire(make_feed(ALICE_KEY, 3)))
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with Store(path, OWNER) as again:  # reopening applies nothing twice and keeps the data
        assert again.db.execute("SELECT version, applied_at FROM schema_migrations").fetchall() == applied
        assert again.counts() == {"feeds": 1, "entries": 3}
        assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    Store(path, OWNER).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("INSERT INTO schema_migrations VALUES (99, 0)")
        db.commit()
    with pytest.raises(StoreError, match="newer"):
        Store(path, OWNER)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open store"):
        Store(path, OWNER)


# ---------------------------------------------------------------- ingest


def test_ingest_validates_against_the_stored_head(store: Store) -> None:
    feed = make_feed(ALICE_KEY, 10)
    result = store.ingest(wire(feed[:5]))
    assert result.error is None and [e.seq for e in result.stored] == [1, 2, 3, 4, 5]
    gap = store.ingest(wire(feed[6:]))  # seq 7.. while the head is 5
    assert isinstance(gap.error, InvalidEntry) and "seq gap" in gap.error.message
    assert gap.stored == [] and seqs(store, ALICE) == [1, 2, 3, 4, 5]
    assert store.ingest(wire(feed[5:])).error is None
    assert seqs(store, ALICE) == list(range(1, 11))
    assert store.head(ALICE) is not None and store.head(ALICE).hash == feed[-1].hash
    assert store.check() == []


def test_next_entry_with_another_prev_is_a_fork(store: Store) -> None:
    """Seq n+1 validly signed by the author but following another seq n: the author signed two entries n."""
    feed = make_feed(ALICE_KEY, 5)
    assert store.ingest(wire(feed)).error is None
    other_chain = make_feed(ALICE_KEY, 6, text="other")[5]  # seq 6 whose prev is another seq 5
    result = store.ingest(wire([other_chain]))
    assert isinstance(result.error, ForkDetected) and result.error.reason.startswith("fork:")
    assert store.forked_feeds() == [ALICE]
    proofs = store.fork_proofs(ALICE)
    assert [(seq, header_a, header_b) for seq, header_a, header_b in proofs] == [
        (5, feed[4].header_bytes, other_chain.header_bytes)]
    assert seqs(store, ALICE) == [1, 2, 3, 4, 5]
    assert ALICE not in store.wanted_feeds(2) or ALICE == store.owner
    problems = store.check()
    assert len(problems) == 1 and problems[0].what.startswith("forked:")
    assert problems[0].kind == ("corrupt" if ALICE == store.owner else "evidence")


def test_first_entry_must_be_seq_1(store: Store) -> None:
    result = store.ingest(wire(make_feed(ALICE_KEY, 3)[1:]))
    assert result.error is not None and "seq gap" in result.error.message
    assert store.counts() == {"feeds": 0, "entries": 0}


def test_duplicates_are_idempotent(store: Store) -> None:
    feed = make_feed(ALICE_KEY, 5)
    assert store.ingest(wire(feed)).error is None
    before = store.db.execute("SELECT * FROM entries ORDER BY id").fetchall()
    for batch in (wire(feed), wire(feed[2:4]), wire(feed) + wire(feed)):
        result = store.ingest(batch)
        assert result.error is None and result.stored == [] and result.duplicates == len(batch)
    assert store.db.execute("SELECT * FROM entries ORDER BY id").fetchall() == before
    # a batch of duplicates followed by new entries stores the new ones
    more = make_feed(ALICE_KEY, 2, first_ts=9_000, after=feed[-1])
    result = store.ingest(wire(feed) + wire(more))
    assert result.duplicates == 5 and [e.seq for e in result.stored] == [6, 7]


def test_invalid_entry_stops_the_batch_and_keeps_the_valid_prefix(store: Store) -> None:
    alice, bob = make_feed(ALICE_KEY, 10), make_feed(BOB_KEY, 4)
    batch = wire(alice[:3]) + wire(bob[:2]) + wire(alice[3:10]) + wire(bob[2:])
    header, signature, payload = batch[7]  # alice seq 6
    batch[7] = (header, bytes([signature[0] ^ 1]) + signature[1:], payload)
    result = store.ingest(batch)
    assert isinstance(result.error, InvalidEntry) and "bad signature" in result.error.reason
    assert [(e.author, e.seq) for e in result.stored] == (
        [(ALICE, s) for s in (1, 2, 3)] + [(BOB, 1), (BOB, 2)] + [(ALICE, 4), (ALICE, 5)])
    assert seqs(store, ALICE) == [1, 2, 3, 4, 5] and seqs(store, BOB) == [1, 2]
    assert store.clock() == {ALICE: 5, BOB: 2}
    assert store.check() == []
    # the rest arrives again later and links to what was kept
    assert store.ingest(wire(alice[5:]) + wire(bob[2:])).error is None
    assert store.clock() == {ALICE: 10, BOB: 4}


def test_payload_not_matching_its_header_is_refused(store: Store) -> None:
    feed = make_feed(ALICE_KEY, 2)
    other = make_feed(ALICE_KEY, 2, text="PoSt")  # same sizes, different bytes
    result = store.ingest([(feed[0].header_bytes, feed[0].signature, other[0].payload)])
    assert result.error is not None and "payload hash" in result.error.message
    assert store.counts()["entries"] == 0


def test_fork_is_detected_kept_and_freezes_the_feed(store: Store) -> None:
    feed = make_feed(ALICE_KEY, 3)
    assert store.ingest(wire(feed)).error is None
    fork = create_entry(ALICE_KEY, feed[1], {"type": "post", "text": "another seq 3"}, 5_000)
    assert fork.seq == 3 and fork.hash != feed[2].hash
    result = store.ingest(wire([fork]))
    assert isinstance(result.error, ForkDetected) and result.error.reason.startswith("fork:")
    assert store.forked_feeds() == [ALICE]
    ((seq, header_a, header_b),) = store.fork_proofs(ALICE)
    assert (seq, header_a, header_b) == (3, feed[2].header_bytes, fork.header_bytes)
    # the proof is two validly signed headers
    signatures = store.db.execute("SELECT signature_a, signature_b FROM forks").fetchone()
    ALICE_KEY.verify_key.verify(header_a, signatures[0])
    ALICE_KEY.verify_key.verify(header_b, signatures[1])
    # no more entries on either branch; duplicates are still fine
    for next_entry in (create_entry(ALICE_KEY, feed[2], {"type": "post", "text": "4"}, 6_000),
                       create_entry(ALICE_KEY, fork, {"type": "post", "text": "4"}, 6_000)):
        refused = store.ingest(wire([next_entry]))
        assert isinstance(refused.error, ForkDetected)
    assert store.ingest(wire(feed)).error is None
    assert seqs(store, ALICE) == [1, 2, 3] and store.head(ALICE).hash == feed[2].hash
    problems = store.check()
    assert [(p.author, p.seq) for p in problems] == [(ALICE, 3)] and "forked" in problems[0].what


def test_fork_within_one_batch_freezes_the_feed(store: Store) -> None:
    feed = make_feed(ALICE_KEY, 3)
    fork = create_entry(ALICE_KEY, feed[1], {"type": "post", "text": "another seq 3"}, 5_000)
    result = store.ingest(wire(feed) + wire([fork]))
    assert isinstance(result.error, ForkDetected)
    assert len(store.fork_proofs(ALICE)) == 1
    assert store.forked_feeds() == [ALICE]
    later = create_entry(ALICE_KEY, feed[2], {"type": "post", "text": "4"}, 6_000)
    assert isinstance(store.ingest(wire([later])).error, ForkDetected)


def test_fork_at_seq_1(store: Store) -> None:
    assert store.ingest(wire(make_feed(ALICE_KEY, 1))).error is None
    result = store.ingest(wire(make_feed(ALICE_KEY, 1, text="other first")))
    assert isinstance(result.error, ForkDetected)
    assert store.forked_feeds() == [ALICE]


# ---------------------------------------------------------------- reading


def test_timeline_own_and_followed_newest_first_blocked_excluded(store: Store) -> None:
    store.publish(OWNER_KEY, {"type": "post", "text": "mine"}, timestamp=2_500)
    store.publish(OWNER_KEY, {"type": "follow", "feed": ALICE}, timestamp=2_600)
    store.publish(OWNER_KEY, {"type": "follow", "feed": BOB}, timestamp=2_700)
    alice, bob, carol = make_feed(ALICE_KEY, 3, 1_000), make_feed(BOB_KEY, 2, 3_000), make_feed(CAROL_KEY, 2, 4_000)
    assert store.ingest(wire(alice) + wire(bob) + wire(carol)).error is None

    timeline = [(s.entry.author, s.entry.header.timestamp) for s in store.timeline()]
    assert timeline == [(BOB, 3_001), (BOB, 3_000), (OWNER, 2_700), (OWNER, 2_600), (OWNER, 2_500),
                        (ALICE, 1_002), (ALICE, 1_001), (ALICE, 1_000)]
    assert [s.entry.header.timestamp for s in store.timeline(limit=3)] == [3_001, 3_000, 2_700]

    store.publish(OWNER_KEY, {"type": "unfollow", "feed": ALICE}, timestamp=2_800)
    store.publish(OWNER_KEY, {"type": "block", "feed": BOB}, timestamp=2_900)
    assert {s.entry.author for s in store.timeline()} == {OWNER}


def test_follow_whose_payload_arrives_late_still_counts(store: Store) -> None:
    """Following and blocking each follow their own latest entry: a follow's payload that arrives after a
    later block of the same feed still makes the author follow it (spec/log.md: the latest follow decides)."""
    entries: list[Entry] = []
    append(entries, ALICE_KEY, {"type": "follow", "feed": BOB}, 1_000)
    append(entries, ALICE_KEY, {"type": "block", "feed": BOB}, 2_000)
    assert store.ingest(wire(entries[:1], with_payload=False)).error is None
    assert store.ingest(wire(entries[1:])).error is None
    assert BOB not in store.follows(ALICE)
    late = store.ingest(wire(entries[:1]))  # the follow again, now with its payload
    assert late.error is None and late.duplicates == 1
    assert store.follows(ALICE) == {BOB}
    append(entries, ALICE_KEY, {"type": "unfollow", "feed": BOB}, 3_000)
    assert store.ingest(wire(entries[2:])).error is None
    assert store.follows(ALICE) == set()


def test_blocking_forgets_the_feeds_peer_addresses(store: Store) -> None:
    store.add_peer(f"127.0.0.1:9/{feed_id(BOB)}", BOB, "seed")
    store.publish(OWNER_KEY, {"type": "block", "feed": BOB})
    assert store.peer_book() == []


def test_clock(store: Store) -> None:
    assert store.clock() == {}
    store.ingest(wire(make_feed(ALICE_KEY, 4)) + wire(make_feed(BOB_KEY, 2)))
    store.publish(OWNER_KEY, {"type": "post", "text": "x"})
    assert store.clock() == {ALICE: 4, BOB: 2, OWNER: 1}
    assert store.clock([ALICE, CAROL]) == {ALICE: 4, CAROL: 0}
    assert store.clock([]) == {}


def test_follows_and_blocks_come_from_the_owners_log(store: Store) -> None:
    store.publish(OWNER_KEY, {"type": "follow", "feed": ALICE})
    store.publish(OWNER_KEY, {"type": "follow", "feed": BOB})
    alice: list[Entry] = []
    append(alice, ALICE_KEY, {"type": "follow", "feed": CAROL}, 1)
    append(alice, ALICE_KEY, {"type": "block", "feed": BOB}, 2)
    assert store.ingest(wire(alice)).error is None
    assert store.follows() == {ALICE, BOB}            # Alice's block of Bob is hers, not ours
    assert store.blocked() == set()
    assert store.follows(ALICE) == {CAROL}
    assert store.wanted_feeds(1) == {OWNER, ALICE, BOB}
    assert store.wanted_feeds(2) == {OWNER, ALICE, BOB, CAROL}
    store.publish(OWNER_KEY, {"type": "unfollow", "feed": BOB})
    store.publish(OWNER_KEY, {"type": "block", "feed": CAROL})
    assert store.follows() == {ALICE} and store.blocked() == {CAROL}
    assert store.wanted_feeds(2) == {OWNER, ALICE}
    store.publish(OWNER_KEY, {"type": "unblock", "feed": CAROL})
    assert store.blocked() == set()


def test_profiles_follow_the_latest_entry(store: Store) -> None:
    alice: list[Entry] = []
    append(alice, ALICE_KEY, {"type": "profile", "name": "Alice"}, 1)
    append(alice, ALICE_KEY, {"type": "profile", "name": "Alice B", "about": "hi"}, 2)
    store.ingest(wire(alice))
    assert store.profile_name(ALICE) == "Alice B"
    assert store.profile_name(BOB) is None


def test_publish_keeps_the_authors_clock_monotonic_and_rejects_bad_payloads(store: Store) -> None:
    first = store.publish(OWNER_KEY, {"type": "post", "text": "a"}, timestamp=10_000)
    second = store.publish(OWNER_KEY, {"type": "post", "text": "b"}, timestamp=5_000)
    assert second.header.timestamp == 10_000 and second.header.prev == first.hash
    with pytest.raises(InvalidEntry):
        store.publish(OWNER_KEY, {"type": "post", "text": "  "})
    assert store.clock() == {OWNER: 2}


# ---------------------------------------------------------------- retraction


def test_retraction_deletes_the_payload_and_keeps_the_header(store: Store) -> None:
    target = store.publish(OWNER_KEY, {"type": "post", "text": "regret"})
    kept = store.publish(OWNER_KEY, {"type": "post", "text": "fine"})
    store.publish(OWNER_KEY, {"type": "retract", "entry": target.hash})
    stored = store.entry_by_hash(target.hash)
    assert stored is not None and stored.retracted and stored.entry.payload is None and stored.content is None
    assert stored.entry.header_bytes == target.header_bytes
    assert store.entry_by_hash(kept.hash).content == {"type": "post", "text": "fine"}
    assert store.check() == []
    # a later copy with the payload (from a peer that still has it) does not bring it back
    result = store.ingest(wire([target]))
    assert result.error is None and result.duplicates == 1
    assert store.entry_by_hash(target.hash).entry.payload is None
    assert store.db.execute("SELECT count(*) FROM entries WHERE payload LIKE ?", ("%regret%",)).fetchone()[0] == 0


def test_foreign_retraction_only_touches_its_own_feed(store: Store) -> None:
    own = store.publish(OWNER_KEY, {"type": "post", "text": "mine"})
    alice = make_feed(ALICE_KEY, 1)
    append(alice, ALICE_KEY, {"type": "retract", "entry": own.hash}, 50)   # not hers: no effect
    append(alice, ALICE_KEY, {"type": "retract", "entry": alice[0].hash}, 60)
    result = store.ingest(wire(alice))
    assert result.error is None and result.retracted == [alice[0].hash]
    assert store.entry_by_hash(own.hash).content == {"type": "post", "text": "mine"}
    assert store.entry_by_hash(alice[0].hash).retracted
    assert store.check() == []


def test_retraction_arriving_header_only_then_filled(store: Store) -> None:
    alice = make_feed(ALICE_KEY, 1)
    retraction = append(alice, ALICE_KEY, {"type": "retract", "entry": alice[0].hash}, 60)
    assert store.ingest(wire(alice[:1]) + wire([retraction], with_payload=False)).error is None
    assert store.entry_by_hash(alice[0].hash).content is not None
    assert store.ingest(wire([retraction])).error is None
    assert store.entry_by_hash(alice[0].hash).retracted
    assert store.entry_by_hash(alice[0].hash).entry.payload is None


# ---------------------------------------------------------------- blocks


def test_block_purges_the_feed_and_refuses_it(store: Store) -> None:
    alice, bob = make_feed(ALICE_KEY, 5), make_feed(BOB_KEY, 2)
    assert store.ingest(wire(alice) + wire(bob)).error is None
    block = store.publish(OWNER_KEY, {"type": "block", "feed": ALICE})
    assert store.entry_by_hash(block.hash) is not None
    assert seqs(store, ALICE) == [] and store.head(ALICE) is None and ALICE not in store.clock()
    assert seqs(store, BOB) == [1, 2]
    for batch in (wire(alice), wire(alice[:1])):
        result = store.ingest(batch)
        assert result.error is not None and result.error.reason.startswith("blocked:")
        assert result.stored == []
    assert seqs(store, ALICE) == [] and store.check() == []
    store.publish(OWNER_KEY, {"type": "unblock", "feed": ALICE})
    assert store.ingest(wire(alice)).error is None and seqs(store, ALICE) == [1, 2, 3, 4, 5]


def test_block_in_the_middle_of_a_batch(store: Store) -> None:
    owner: list[Entry] = []
    append(owner, OWNER_KEY, {"type": "block", "feed": ALICE}, 100)
    alice = make_feed(ALICE_KEY, 3)
    result = store.ingest(wire(alice[:2]) + wire(owner) + wire(alice[2:]))
    assert result.error is not None and result.error.reason.startswith("blocked:")
    assert result.purged_feeds == [ALICE]
    assert seqs(store, ALICE) == [] and store.clock() == {OWNER: 1}
    assert store.check() == []


def test_another_feeds_block_does_not_purge(store: Store) -> None:
    bob: list[Entry] = []
    append(bob, BOB_KEY, {"type": "block", "feed": ALICE}, 1)
    assert store.ingest(wire(make_feed(ALICE_KEY, 2)) + wire(bob)).error is None
    assert seqs(store, ALICE) == [1, 2]


# ---------------------------------------------------------------- header-only entries


def test_header_only_entries_are_stored_and_filled_in_later(store: Store) -> None:
    alice: list[Entry] = []
    append(alice, ALICE_KEY, {"type": "post", "text": "one"}, 1)
    append(alice, ALICE_KEY, {"type": "follow", "feed": CAROL}, 2)
    append(alice, ALICE_KEY, {"type": "post", "text": "three"}, 3)
    result = store.ingest(wire(alice, with_payload=False))
    assert result.error is None and len(result.stored) == 3
    assert all(store.entry_by_hash(e.hash).content is None for e in alice)
    assert not store.entry_by_hash(alice[0].hash).retracted
    assert store.follows(ALICE) == set() and store.check() == []
    assert store.db.execute("SELECT count(*) FROM entries WHERE type IS NULL").fetchone()[0] == 3

    filled = store.ingest(wire(alice[:2]))
    assert filled.error is None and filled.duplicates == 2 and filled.stored == []
    assert store.entry_by_hash(alice[0].hash).content == {"type": "post", "text": "one"}
    assert store.follows(ALICE) == {CAROL}             # derived state applied when the payload arrives
    assert store.entry_by_hash(alice[2].hash).content is None
    assert store.db.execute("SELECT type FROM entries WHERE hash = ?", (alice[1].hash,)).fetchone()[0] == "follow"
    assert store.check() == []


def test_a_header_only_copy_does_not_remove_a_held_payload(store: Store) -> None:
    feed = make_feed(ALICE_KEY, 2)
    store.ingest(wire(feed))
    assert store.ingest(wire(feed, with_payload=False)).duplicates == 2
    assert all(store.entry_by_hash(e.hash).content is not None for e in feed)


# ---------------------------------------------------------------- check


def test_check_reports_tampering(store: Store) -> None:
    store.ingest(wire(make_feed(ALICE_KEY, 4)))
    assert store.check() == []
    store.db.execute("UPDATE entries SET payload = ? WHERE author = ? AND seq = 2",
                     (msgpack.packb({"text": "post X", "type": "post"}), ALICE))
    store.db.execute("DELETE FROM entries WHERE author = ? AND seq = 4", (ALICE,))
    problems = {(p.seq, p.what.split(":")[0]) for p in store.check()}
    assert (2, "payload does not match the header's payload hash and size") in problems
    assert any(seq == 4 for seq, _ in problems)  # the head no longer matches the entries


# ---------------------------------------------------------------- kill -9 in the middle of a batch

BATCH = 500
BATCHES = 40

WRITER = textwrap.dedent("""
    import sys
    import msgpack
    from p2pnode.store import Store

    db_path, data_path, owner_hex, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with open(data_path, "rb") as handle:
        items = [tuple(item) for item in msgpack.unpackb(handle.read())]
    store = Store(db_path, bytes.fromhex(owner_hex))
    for start in range(0, len(items), batch):
        result = store.ingest(items[start:start + batch])
        if result.error is not None:
            sys.exit(f"ingest failed: {result.error.reason}")
    store.close()
""")


@pytest.fixture(scope="module")
def foreign_feed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Entry]]:
    feed = make_feed(ALICE_KEY, BATCH * BATCHES, text="a post long enough to look like one")
    path = tmp_path_factory.mktemp("kill") / "feed.msgpack"
    path.write_bytes(msgpack.packb([list(item) for item in wire(feed)], use_bin_type=True))
    return path, feed


def count_entries(path: Path) -> int:
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)) as db:
            return db.execute("SELECT count(*) FROM entries").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.parametrize("kill_after", [1, BATCH * 8 + 1, BATCH * 20 + 1])
def test_kill_during_ingest_leaves_whole_batches(tmp_path: Path, foreign_feed: tuple[Path, list[Entry]],
                                                 kill_after: int) -> None:
    data_path, feed = foreign_feed
    db_path = tmp_path / "store.sqlite3"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    writer = subprocess.Popen([sys.executable, str(script), str(db_path), str(data_path), OWNER.hex(), str(BATCH)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pause = threading.Event()
    deadline = time.monotonic() + 60
    try:
        while count_entries(db_path) < kill_after:
            assert writer.poll() is None, f"writer ended early: {writer.communicate()}"
            assert time.monotonic() < deadline, "the writer made no progress"
            pause.wait(0.002)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=30)
    writer.stdout.close()
    writer.stderr.close()
    assert writer.returncode == -signal.SIGKILL

    with Store(db_path, OWNER) as store:
        assert store.check() == []
        stored = seqs(store, ALICE)
        k = len(stored)
        assert kill_after <= k < len(feed), "the kill did not land in the middle of the run"
        assert stored == list(range(1, k + 1)) and k % BATCH == 0
        assert store.clock() == {ALICE: k}
        hashes = [row[0] for row in store.db.execute("SELECT hash FROM entries ORDER BY seq")]
        assert hashes == [e.hash for e in feed[:k]]
        # the store carries on where the killed writer stopped
        assert store.ingest(wire(feed[k:k + BATCH])).error is None
        assert store.clock() == {ALICE: k + BATCH}
    assert not os.path.exists(str(db_path) + "-journal")


# ---------------------------------------------------------------- partial feeds (newest first)


def test_an_empty_feed_starts_above_seq_1_only_where_the_node_asked_for_it(store: Store) -> None:
    feed = make_feed(ALICE_KEY, 100)
    refused = store.ingest_verified(feed[90:])
    assert refused.error is not None and "seq gap" in refused.error.message and store.head(ALICE) is None
    wrong_start = store.ingest_verified(feed[90:], {ALICE: {80}})
    assert wrong_start.error is not None and store.head(ALICE) is None
    started = store.ingest_verified(feed[90:], {ALICE: {90}})
    assert started.error is None and started.lows == {ALICE: 91}
    assert store.lows() == {ALICE: 91} and store.head(ALICE).seq == 100
    assert store.check() == []


def test_the_past_of_a_partial_feed_is_stored_when_it_links_backwards(store: Store) -> None:
    feed = make_feed(ALICE_KEY, 100)
    store.ingest_verified(feed[90:], {ALICE: {90}})
    unlinked = store.ingest_verified(feed[10:50])  # ends at 50, not at 90: nothing to link to yet
    assert unlinked.stored == [] and store.lows() == {ALICE: 91}
    filled = store.ingest_verified(feed[40:90])
    assert filled.error is None and filled.lows == {ALICE: 41} and seqs(store, ALICE) == list(range(41, 101))
    store.ingest_verified(feed[:40])
    assert store.lows() == {} and seqs(store, ALICE) == list(range(1, 101))
    assert store.check() == []


def test_a_past_that_does_not_link_is_the_authors_fork(store: Store) -> None:
    feed = make_feed(ALICE_KEY, 100)
    other = make_feed(ALICE_KEY, 99, text="other")  # another seq 99, validly signed
    store.ingest_verified(feed[99:], {ALICE: {99}})
    result = store.ingest_verified(other[98:99])
    assert isinstance(result.error, ForkDetected) and store.forked_feeds() == [ALICE]
    assert seqs(store, ALICE) == [100]


def test_keep_latest_cuts_a_feed_to_its_newest_entries(store: Store) -> None:
    feed = make_feed(ALICE_KEY, 100)
    store.ingest_verified(feed)
    assert store.keep_latest([ALICE], 30) == {ALICE: 71}
    assert seqs(store, ALICE) == list(range(71, 101)) and store.check() == []
    assert store.keep_latest([ALICE], 30) == {}
    assert store.ingest_verified(make_feed(ALICE_KEY, 1, after=feed[-1])).error is None


# ---------------------------------------------------------------- signatures proven by a later one


def _altered(entry: Entry) -> Entry:
    """The entry with one bit of its signature flipped (what a hostile peer can do to an entry that a later
    signature proves: spec/log.md, "Checking a batch")."""
    signature = entry.signature[:3] + bytes([entry.signature[3] ^ 1]) + entry.signature[4:]
    return Entry(entry.header_bytes, signature, entry.payload, entry.header, entry.hash, entry.decoded)


def test_unchecked_signatures_are_checked_before_they_are_sent(store: Store) -> None:
    feed = make_feed(ALICE_KEY, 10)
    feed[4] = _altered(feed[4])
    result = store.ingest_verified(feed, None, {e.hash for e in feed[:-1]})
    assert result.error is None and result.unchecked == 9
    alice = bytes(ALICE_KEY.verify_key)
    assert store.feeds_unchecked(10) == [alice]
    # sending stops before the altered signature, read forwards (a stream) or backwards (a backfill)
    assert [row[0] for row in store.raw_entries_after(alice, 0, 100)] == [1, 2, 3, 4]
    assert [row[0] for row in store.raw_entries_before(alice, 11, 100)] == [6, 7, 8, 9, 10]
    assert store.entries_at([(alice, 5)]) == []  # nor is it an answer to a fetch
    # the quiet-time check records what it found; the altered entry stays held, and unsent
    rows = store.unchecked_after(alice, 0, 100)
    assert [row[0] for row in rows] == list(range(1, 10))
    store.signatures_checked(alice, [(h, sig) for seq, h, _, sig in rows if seq != 5],
                             [(h, sig) for seq, h, _, sig in rows if seq == 5], True)
    assert store.unchecked_after(alice, 0, 100) == [] and store.feeds_unchecked(10) == []
    assert seqs(store, alice) == list(range(1, 11))
    assert [row[0] for row in store.raw_entries_after(alice, 0, 100)] == [1, 2, 3, 4]
    assert [row[0] for row in store.raw_entries_after(alice, 5, 100)] == [6, 7, 8, 9, 10]


def test_a_fork_proof_needs_the_received_header_signed(store: Store) -> None:
    feed = make_feed(ALICE_KEY, 3)
    assert store.ingest_verified(feed[:2]).error is None
    other = make_feed(ALICE_KEY, 3, text="other")  # the author's second history
    # its seq 3 follows another seq 2: a fork, but only with a good signature on the header that shows it
    refused = store.ingest_verified([_altered(other[2])], None, {other[2].hash})
    assert isinstance(refused.error, InvalidEntry) and not isinstance(refused.error, ForkDetected)
    assert store.db.execute("SELECT count(*) FROM forks").fetchone()[0] == 0
    proven = store.ingest_verified([other[2]], None, {other[2].hash})
    assert isinstance(proven.error, ForkDetected)


def test_migration_6_keeps_older_entries_as_checked(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    with Store(path, OWNER_KEY.verify_key.encode()) as old:
        old.ingest(wire(make_feed(ALICE_KEY, 3)))
        old.db.execute("ALTER TABLE entries DROP COLUMN signature_state")  # as the version before 6 left it
        old.db.execute("ALTER TABLE feeds DROP COLUMN unchecked")
        old.db.execute("DELETE FROM schema_migrations WHERE version = 6")
    with Store(path, OWNER_KEY.verify_key.encode()) as store:
        assert 6 in store.schema_versions()
        alice = bytes(ALICE_KEY.verify_key)
        assert store.unchecked_after(alice, 0, 10) == [] and store.feeds_unchecked(10) == []
        assert [row[0] for row in store.raw_entries_after(alice, 0, 10)] == [1, 2, 3]
