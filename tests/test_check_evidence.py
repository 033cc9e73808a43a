# `check` tells damage to this store (exit 1) from evidence it holds about others (issue 8): a stranger's
# fork with a proof whose two headers verify is reported with exit 0; the owner's own fork, and a fork proof
# that does not verify, are damage.
from __future__ import annotations

import json
from pathlib import Path

import nacl.signing
from conftest import run_cli
from memnodes import chain
from nodeproc import init_home

from p2pnode.home import STORE_FILE, load_identity
from p2pnode.store import Store
from protocol.ids import feed_id, parse_feed_id

STRANGER = nacl.signing.SigningKey(b"\x51" * 32)


def fork_into(store: Store, key: nacl.signing.SigningKey) -> None:
    first, second = chain(key, ["one", "two"])
    [other] = chain(key, ["two, otherwise"], start=first)
    assert store.ingest_verified([first, second]).error is None
    assert store.ingest_verified([other]).error is not None  # the fork, kept as a proof


def check(home: Path) -> tuple[int, list[dict]]:
    result = run_cli(home, "check", "--json")
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]


def test_a_strangers_fork_is_evidence_and_exits_0(tmp_path: Path) -> None:
    home = tmp_path / "home"
    owner = parse_feed_id(init_home(home))
    with Store(home / STORE_FILE, owner) as store:
        fork_into(store, STRANGER)
    code, problems = check(home)
    assert code == 0
    assert [(p["feed"], p["seq"], p["kind"]) for p in problems] == [
        (feed_id(bytes(STRANGER.verify_key)), 2, "evidence")]
    text = run_cli(home, "check")
    assert text.returncode == 0 and "evidence about another author" in text.stdout


def test_a_proof_that_does_not_verify_is_damage(tmp_path: Path) -> None:
    home = tmp_path / "home"
    owner = parse_feed_id(init_home(home))
    with Store(home / STORE_FILE, owner) as store:
        fork_into(store, STRANGER)
        with store.db:
            store.db.execute("UPDATE forks SET signature_b = zeroblob(64)")
    code, problems = check(home)
    assert code == 1
    assert [p["kind"] for p in problems] == ["corrupt"]
    assert problems[0]["problem"].startswith("fork proof does not verify")


def test_the_owners_own_fork_is_damage(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home)
    key = load_identity(home)
    with Store(home / STORE_FILE, bytes(key.verify_key)) as store:
        fork_into(store, key)
    code, problems = check(home)
    assert code == 1
    assert [p["kind"] for p in problems] == ["corrupt"]
