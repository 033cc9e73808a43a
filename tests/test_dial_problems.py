# What a failed dial found, kept across runs (spec/peers.md, "Dial failures"): the give-up rule in time
# (p2pnode/seeds.py DialProblems: given up at once or after 3 doubtful failures, dialled again an hour after
# the last failure), and the peer book's columns for it (store migration 5) on a real SQLite file, including a
# store made before that migration. The restart itself runs in tests/test_home_seeds.py.
from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from p2pnode.seeds import GIVE_UP_S, DialFailure, DialProblems
from p2pnode.store import MIGRATIONS, Store

OWNER = bytes(32)
KEY = bytes([7]) * 32
ADDRESS = "127.0.0.1:80/@" + "a" * 58
WRONG = DialFailure("not-p2pnode", "127.0.0.1:80 did not answer the handshake: not a p2pnode node?")
NO_HOST = DialFailure("no-such-host", "nowhere.invalid:80: no such host")


def test_a_wrong_address_is_given_up_for_an_hour_then_dialled_again() -> None:
    problems = DialProblems()
    record = problems.failed(ADDRESS, WRONG, now=1000.0)
    assert record.given_up and record.retry_at == 1000.0 + GIVE_UP_S
    assert problems.given_up(ADDRESS, now=1000.0 + GIVE_UP_S - 1)
    assert not problems.given_up(ADDRESS, now=1000.0 + GIVE_UP_S)  # its hour is over: one more dial
    again = problems.failed(ADDRESS, WRONG, now=1000.0 + GIVE_UP_S + 5)
    assert again.count == 2 and problems.given_up(ADDRESS, now=1000.0 + 2 * GIVE_UP_S)
    problems.connected(ADDRESS)
    assert not problems.given_up(ADDRESS, now=1000.0 + 2 * GIVE_UP_S) and problems.report() == []


def test_a_doubtful_address_is_given_up_after_three_in_a_row() -> None:
    problems = DialProblems()
    assert not problems.failed(ADDRESS, NO_HOST, now=10.0).given_up
    assert not problems.failed(ADDRESS, NO_HOST, now=20.0).given_up
    assert problems.failed(ADDRESS, NO_HOST, now=30.0).retry_at == 30.0 + GIVE_UP_S
    assert problems.given_up(ADDRESS, now=40.0)


def test_problems_round_trip_through_the_peer_book(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    problems = DialProblems()
    record = problems.failed(ADDRESS, WRONG, now=5000.0)
    with Store(path, OWNER) as store:
        store.add_peer(ADDRESS, KEY, "seed")
        store.peer_problem(ADDRESS, record.failure.kind, record.failure.text, record.count, int(record.at * 1000),
                           int(record.retry_at * 1000))
    with Store(path, OWNER) as store:  # the next run
        rows = store.peer_problems()
        assert rows == [(ADDRESS, "not-p2pnode", WRONG.text, 1, 5_000_000, int((5000 + GIVE_UP_S) * 1000))]
        loaded = DialProblems()
        loaded.load(rows)
        assert loaded.given_up(ADDRESS, now=5000.0 + GIVE_UP_S - 1)
        assert not loaded.given_up(ADDRESS, now=5000.0 + GIVE_UP_S)
        [row] = store.peer_book()
        assert row["problem_kind"] == "not-p2pnode" and row["problem"] == WRONG.text
        store.peer_connected(ADDRESS)  # a dial that works clears it
        assert store.peer_problems() == []


def test_migration_5_keeps_an_older_peer_book(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    with closing(sqlite3.connect(path)) as db:  # a store as the version before migration 5 left it
        db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
        for version, sql in MIGRATIONS:
            if version < 5:
                db.executescript(sql)
                db.execute("INSERT INTO schema_migrations VALUES (?, 0)", (version,))
        db.execute("INSERT INTO peers(address, key, source, added_at, failures) VALUES (?, ?, 'seed', 1, 4)",
                   (ADDRESS, KEY))
        db.commit()
    with Store(path, OWNER) as store:
        assert 5 in store.schema_versions()
        [row] = store.peer_book()
        assert (row["address"], row["failures"], row["problem"], row["retry_at"]) == (ADDRESS, 4, None, 0)
        assert store.peer_problems() == []
