# End-to-end tests of the command line through real `p2pnode` subprocesses: every command's happy path,
# its --json output, and every kind of bad input (one line on stderr, non-zero exit, nothing written).
from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import nacl.signing
import pytest
from conftest import run_cli

import cli
from p2pnode.store import Store
from protocol.ids import entry_ref, feed_id, parse_entry_ref, parse_feed_id
from protocol.log import create_entry, entry_hash

ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
# the longest post text that fits the 64 KiB payload: {"text": str16(L), "type": "post"} is L + 19 bytes
MAX_ASCII_POST = 65_536 - 19


# ---------------------------------------------------------------- helpers


def ok(home: Path, *args: str, input: str | None = None) -> str:
    """Run a command that must succeed; its stdout."""
    result = run_cli(home, *args, input=input)
    assert result.returncode == 0, f"p2pnode {' '.join(args)} failed: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def ok_json(home: Path, *args: str, input: str | None = None) -> dict[str, Any]:
    return json.loads(ok(home, *args, "--json", input=input))


def json_lines(home: Path, *args: str) -> list[dict[str, Any]]:
    out = ok(home, *args, "--json")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def entry_count(home: Path) -> int | None:
    path = home / "store.sqlite3"
    if not path.exists():
        return None
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT count(*) FROM entries").fetchone()[0]


def snapshot(home: Path) -> tuple[dict[str, bytes], int | None]:
    """Every file of the home with its bytes (taken first), then the store's entry count."""
    files = {}
    if home.exists():
        for path in sorted(home.rglob("*")):
            if path.is_file():
                files[str(path.relative_to(home))] = path.read_bytes()
    return files, entry_count(home)


def assert_rejected(home: Path, *args: str, input: str | None = None, match: str | None = None) -> str:
    """The command fails with exactly one line on stderr, no traceback, and changes nothing in the home."""
    before = snapshot(home)
    result = run_cli(home, *args, input=input)
    after = snapshot(home)
    lines = result.stderr.splitlines()
    assert result.returncode != 0, f"p2pnode {args!r} was accepted: {result}"
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].strip(), "the error line is blank"
    assert before == after, f"p2pnode {args!r} changed the home although it failed"
    if match is not None:
        assert re.search(match, lines[0]), f"{lines[0]!r} does not match {match!r}"
    return lines[0]


def init(home: Path) -> str:
    return ok_json(home, "init")["id"]


def other_id(seed_byte: int = 7) -> str:
    return feed_id(bytes(nacl.signing.SigningKey(bytes([seed_byte]) * 32).verify_key))


def mistype(text: str, position: int = 10) -> str:
    """The same text with one character of the base32 body replaced by another letter of the alphabet."""
    old = text[position]
    new = ALPHABET[(ALPHABET.index(old) + 1) % len(ALPHABET)]
    return text[:position] + new + text[position + 1:]


def ingest_foreign(home: Path, owner_id: str, seed_byte: int, texts: list[str], first_ts: int) -> list[str]:
    """Store posts of another feed in the home's store directly (what sync would do); their hashes."""
    key = nacl.signing.SigningKey(bytes([seed_byte]) * 32)
    previous = None
    items = []
    for offset, text in enumerate(texts):
        entry = create_entry(key, previous, {"type": "post", "text": text}, first_ts + offset)
        items.append((entry.header_bytes, entry.signature, entry.payload))
        previous = entry
    with Store(home / "store.sqlite3", parse_feed_id(owner_id)) as store:
        result = store.ingest(items)
        assert result.error is None
    return [entry_ref(entry_hash(item[0])) for item in items]


# ---------------------------------------------------------------- help and init


@pytest.mark.parametrize("command", [None, *sorted(cli.main.commands)])
def test_help_for_every_command(tmp_path: Path, command: str | None) -> None:
    args = ["--help"] if command is None else [command, "--help"]
    result = run_cli(tmp_path / "home", *args)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert not (tmp_path / "home").exists()


def test_init_creates_private_secret_and_prints_id(home: Path) -> None:
    identity = init(home)
    parse_feed_id(identity)
    secret = home / "secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert (home / "store.sqlite3").is_file()
    assert ok(home, "whoami").strip() == identity
    assert ok_json(home, "whoami") == {"id": identity}


def test_init_text_output_names_the_id(home: Path) -> None:
    out = ok(home, "init")
    identity = ok(home, "whoami").strip()
    assert identity in out


def test_second_init_is_refused_and_keeps_the_key(home: Path) -> None:
    identity = init(home)
    secret = (home / "secret").read_bytes()
    assert_rejected(home, "init", match="already has an identity")
    assert_rejected(home, "init", "--json", match="already has an identity")
    assert (home / "secret").read_bytes() == secret
    assert ok(home, "whoami").strip() == identity


# ---------------------------------------------------------------- publishing and reading


def test_post_and_feed(home: Path) -> None:
    identity = init(home)
    first = ok_json(home, "post", "hello world")
    assert first["seq"] == 1
    parse_entry_ref(first["hash"])
    second = ok_json(home, "post", "-", input="line one\nline two ünïcode\n")
    assert second["seq"] == 2
    plain = ok(home, "post", "third").strip()
    parse_entry_ref(plain)

    items = json_lines(home, "feed")
    assert [item["seq"] for item in items] == [3, 2, 1]
    assert [item["hash"] for item in items][1:] == [second["hash"], first["hash"]]
    assert all(item["author"] == identity and item["type"] == "post" for item in items)
    assert items[1]["text"] == "line one\nline two ünïcode"  # `post -` drops the trailing newline
    assert items[2]["text"] == "hello world"
    assert json_lines(home, "feed", identity, "--limit", "2") == items[:2]
    assert len(json_lines(home, "feed", "--limit", "1")) == 1

    text = ok(home, "feed", "--full")
    assert "hello world" in text and first["hash"] in text and "seq 1" in text


def test_post_at_the_payload_limit(home: Path) -> None:
    init(home)
    assert ok_json(home, "post", "-", input="x" * MAX_ASCII_POST)["seq"] == 1
    assert_rejected(home, "post", "-", input="x" * (MAX_ASCII_POST + 1), match="too-large")
    assert_rejected(home, "post", "-", input="y" * 70_000, match="too-large")


def test_reply(home: Path) -> None:
    init(home)
    parent = ok_json(home, "post", "parent")["hash"]
    child = ok_json(home, "reply", parent, "a reply")
    assert child["seq"] == 2
    child2 = ok_json(home, "reply", parent, "-", input="from stdin")
    items = {item["hash"]: item for item in json_lines(home, "feed")}
    assert items[child["hash"]]["reply_to"] == parent
    assert items[child["hash"]]["text"] == "a reply"
    assert items[child2["hash"]]["text"] == "from stdin"
    assert "reply to" in ok(home, "feed", "--limit", "1")


def test_follow_unfollow_block_unblock(home: Path) -> None:
    init(home)
    friend, foe = other_id(1), other_id(2)
    written = ok_json(home, "follow", friend)
    assert written["seq"] == 1
    # doing it again writes nothing and says so on stderr, exit 0
    before = snapshot(home)
    again = run_cli(home, "follow", friend)
    assert again.returncode == 0 and "already following" in again.stderr
    assert snapshot(home) == before
    assert ok_json(home, "status")["following"] == 1

    ok_json(home, "block", foe)
    assert ok_json(home, "status")["blocking"] == 1
    ok_json(home, "unfollow", friend)
    ok_json(home, "unblock", foe)
    status = ok_json(home, "status")
    assert (status["following"], status["blocking"]) == (0, 0)
    for command in ("unfollow", "unblock"):
        before = snapshot(home)
        result = run_cli(home, command, friend if command == "unfollow" else foe)
        assert result.returncode == 0 and "nothing written" in result.stderr
        assert snapshot(home) == before

    items = json_lines(home, "feed")
    assert [(item["type"], item["feed"]) for item in items] == [
        ("unblock", foe), ("unfollow", friend), ("block", foe), ("follow", friend)]


def test_profile(home: Path) -> None:
    identity = init(home)
    written = ok_json(home, "profile", "--name", "Alice", "--about", "writes things")
    (item,) = json_lines(home, "feed")
    assert item["hash"] == written["hash"]
    assert (item["type"], item["name"], item["about"]) == ("profile", "Alice", "writes things")
    assert item["author"] == identity and item["author_name"] == "Alice"
    ok_json(home, "profile", "--name", "Alice B")
    assert json_lines(home, "feed")[0]["author_name"] == "Alice B"


def test_timeline(home: Path) -> None:
    identity = init(home)
    friend_key_seed, stranger_seed = 11, 12
    friend = feed_id(bytes(nacl.signing.SigningKey(bytes([friend_key_seed]) * 32).verify_key))
    mine = ok_json(home, "post", "my post")["hash"]
    ok_json(home, "follow", friend)
    friend_hashes = ingest_foreign(home, identity, friend_key_seed, ["old friend post", "new friend post"],
                                   first_ts=1_000)
    stranger_hashes = ingest_foreign(home, identity, stranger_seed, ["stranger post"], first_ts=2_000)
    reply = ok_json(home, "reply", friend_hashes[1], "replying")["hash"]

    items = json_lines(home, "timeline")
    hashes = [item["hash"] for item in items]
    assert set(hashes) >= {mine, reply, *friend_hashes}
    assert not set(stranger_hashes) & set(hashes)
    timestamps = [item["timestamp"] for item in items]
    assert timestamps == sorted(timestamps, reverse=True)
    for item in items:
        assert {"author", "seq", "hash", "timestamp", "type"} <= item.keys()
        if item["type"] == "post":
            assert isinstance(item["text"], str)
    by_hash = {item["hash"]: item for item in items}
    assert by_hash[reply]["reply_to"] == friend_hashes[1]
    assert by_hash[friend_hashes[0]] == {"author": friend, "seq": 1, "hash": friend_hashes[0], "timestamp": 1_000,
                                         "type": "post", "text": "old friend post"}
    assert by_hash[mine]["author"] == identity
    assert json_lines(home, "timeline", "--limit", "2") == items[:2]
    assert "new friend post" in ok(home, "timeline")

    ok_json(home, "block", friend)
    after_block = {item["hash"] for item in json_lines(home, "timeline")}
    assert not after_block & set(friend_hashes)
    assert json_lines(home, "feed", friend) == []


def test_feed_of_unknown_valid_id_is_empty(home: Path) -> None:
    init(home)
    assert ok(home, "feed", other_id(3)) == ""


def test_retract(home: Path) -> None:
    init(home)
    secret_text = "please forget this"
    target = ok_json(home, "post", secret_text)["hash"]
    ok_json(home, "post", "keep this")
    retraction = ok_json(home, "retract", target)
    assert retraction["seq"] == 3

    items = json_lines(home, "feed")
    assert [item["seq"] for item in items] == [3, 2, 1]
    retracted = items[2]
    assert retracted["hash"] == target and retracted["type"] is None and retracted["retracted"] is True
    assert "text" not in retracted
    assert items[0]["type"] == "retract" and items[0]["entry"] == target
    assert secret_text not in ok(home, "feed") + ok(home, "timeline") + ok(home, "feed", "--json")
    assert "[retracted]" in ok(home, "feed")
    with closing(sqlite3.connect(home / "store.sqlite3")) as db:
        payload, header = db.execute("SELECT payload, header FROM entries WHERE seq = 1").fetchone()
    assert payload is None and header
    assert "ok" in ok(home, "check")


# ---------------------------------------------------------------- check


def corrupt(home: Path, sql: str, params: tuple[Any, ...]) -> None:
    with closing(sqlite3.connect(home / "store.sqlite3")) as db:
        db.execute(sql, params)
        db.commit()


def test_check_detects_a_changed_payload(home: Path) -> None:
    identity = init(home)
    ok_json(home, "post", "one")
    ok_json(home, "post", "two")
    assert ok(home, "check").startswith("ok")
    assert ok(home, "check", "--json") == ""
    forged = msgpack.packb({"text": "ONE", "type": "post"}, use_bin_type=True)
    corrupt(home, "UPDATE entries SET payload = ? WHERE seq = 1", (forged,))
    result = run_cli(home, "check")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{identity} seq 1:" in result.stdout
    assert "seq 2" not in result.stdout
    problems = [json.loads(line) for line in run_cli(home, "check", "--json").stdout.splitlines()]
    assert len(problems) == 1 and problems[0]["feed"] == identity and problems[0]["seq"] == 1


def test_check_detects_a_changed_header(home: Path) -> None:
    identity = init(home)
    for text in ("one", "two", "three"):
        ok_json(home, "post", text)
    with closing(sqlite3.connect(home / "store.sqlite3")) as db:
        header = db.execute("SELECT header FROM entries WHERE seq = 2").fetchone()[0]
    changed = header[:-1] + bytes([header[-1] ^ 0x01])  # the payload size, still a canonical header
    corrupt(home, "UPDATE entries SET header = ? WHERE seq = 2", (changed,))
    result = run_cli(home, "check")
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    assert f"{identity} seq 2:" in result.stdout


def test_check_detects_a_changed_signature(home: Path) -> None:
    identity = init(home)
    ok_json(home, "post", "one")
    with closing(sqlite3.connect(home / "store.sqlite3")) as db:
        signature = db.execute("SELECT signature FROM entries WHERE seq = 1").fetchone()[0]
    corrupt(home, "UPDATE entries SET signature = ? WHERE seq = 1", (bytes([signature[0] ^ 0x80]) + signature[1:],))
    result = run_cli(home, "check")
    assert result.returncode == 1
    assert f"{identity} seq 1: bad signature" in result.stdout


# ---------------------------------------------------------------- bad input


@dataclass
class Prepared:
    home: Path
    id: str
    post: str
    retracted: str
    foreign: str


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """One home with a post, a retracted post and another feed's entry; every bad input runs against it."""
    home = tmp_path_factory.mktemp("prepared") / "home"
    identity = init(home)
    post = ok_json(home, "post", "a post")["hash"]
    retracted = ok_json(home, "post", "to retract")["hash"]
    ok_json(home, "retract", retracted)
    (foreign,) = ingest_foreign(home, identity, 21, ["not yours"], first_ts=5_000)
    return Prepared(home, identity, post, retracted, foreign)


BAD_INPUTS: list[tuple[str, Callable[[Prepared], list[str]], str | None, str]] = [
    ("malformed id", lambda p: ["follow", "notanid"], None, "not a feed id"),
    ("id without body", lambda p: ["follow", "@"], None, "not a feed id"),
    ("id of wrong length", lambda p: ["block", other_id()[:-1]], None, "expected 58 characters"),
    ("id with bad characters", lambda p: ["follow", "@" + "1" * 58], None, "outside a-z"),
    ("mistyped id (follow)", lambda p: ["follow", mistype(other_id())], None, "mistyped"),
    ("mistyped id (unfollow)", lambda p: ["unfollow", mistype(other_id(), 40)], None, "mistyped"),
    ("mistyped id (block)", lambda p: ["block", mistype(other_id(), 58)], None, "mistyped"),
    ("mistyped id (unblock)", lambda p: ["unblock", mistype(other_id(), 1)], None, "mistyped"),
    ("mistyped id (feed)", lambda p: ["feed", mistype(p.id)], None, "mistyped"),
    ("entry hash given as id", lambda p: ["follow", p.post], None, "not a feed id"),
    ("follow yourself", lambda p: ["follow", p.id], None, "your own feed"),
    ("block yourself", lambda p: ["block", p.id], None, "your own feed"),
    ("unfollow yourself", lambda p: ["unfollow", p.id], None, "your own feed"),
    ("bad hash (retract)", lambda p: ["retract", "%abc"], None, "not a entry hash|not an entry hash"),
    ("bad hash (reply)", lambda p: ["reply", "nothash", "text"], None, "does not start with '%'"),
    ("feed id given as hash", lambda p: ["retract", p.id], None, "does not start with '%'"),
    ("mistyped hash (retract)", lambda p: ["retract", mistype(p.post)], None, "mistyped"),
    ("mistyped hash (reply)", lambda p: ["reply", mistype(p.post, 30), "hi"], None, "mistyped"),
    ("reply to unknown hash", lambda p: ["reply", entry_ref(b"\x01" * 32), "hi"], None, "no entry"),
    ("retract unknown hash", lambda p: ["retract", entry_ref(b"\x02" * 32)], None, "no entry"),
    ("retract someone else's", lambda p: ["retract", p.foreign], None, "not yours"),
    ("retract twice", lambda p: ["retract", p.retracted], None, "already retracted"),
    ("empty post", lambda p: ["post", ""], None, "empty post"),
    ("whitespace post", lambda p: ["post", "  \n\t "], None, "empty post"),
    ("empty stdin", lambda p: ["post", "-"], "", "empty post"),
    ("whitespace stdin", lambda p: ["post", "-", "--json"], " \n\n", "empty post"),
    ("empty reply", lambda p: ["reply", p.post, " "], None, "empty post"),
    ("oversize post", lambda p: ["post", "-"], "z" * 65_600, "^Error: too-large: "),
    ("oversize reply", lambda p: ["reply", p.post, "-"], "z" * 65_600, "too-large"),
    ("empty profile name", lambda p: ["profile", "--name", " "], None, "profile name"),
    ("long profile name", lambda p: ["profile", "--name", "n" * 65], None, "profile name"),
]


@pytest.mark.parametrize(("args", "stdin", "match"), [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_and_writes_nothing(prepared: Prepared, args: Callable[[Prepared], list[str]],
                                                  stdin: str | None, match: str) -> None:
    assert_rejected(prepared.home, *args(prepared), input=stdin, match=match)


def test_bad_input_leaves_a_working_home(prepared: Prepared) -> None:
    assert ok(prepared.home, "check").startswith("ok")
    assert [item["seq"] for item in json_lines(prepared.home, "feed")] == [3, 2, 1]


USAGE_ERRORS = [
    ("--limit 0 (feed)", ["feed", "--limit", "0"]),
    ("--limit 0 (timeline)", ["timeline", "--limit", "0"]),
    ("--limit not a number", ["feed", "--limit", "many"]),
    ("post without text", ["post"]),
    ("unknown option", ["post", "--bogus", "x"]),
]


@pytest.mark.parametrize("args", [case[1] for case in USAGE_ERRORS], ids=[case[0] for case in USAGE_ERRORS])
def test_usage_errors_are_one_line(prepared: Prepared, args: list[str]) -> None:
    assert_rejected(prepared.home, *args)


@pytest.mark.parametrize("args", [case[1] for case in USAGE_ERRORS], ids=[case[0] for case in USAGE_ERRORS])
def test_usage_errors_fail_cleanly_and_write_nothing(prepared: Prepared, args: list[str]) -> None:
    before = snapshot(prepared.home)
    result = run_cli(prepared.home, *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Error: ")
    assert snapshot(prepared.home) == before


def test_undecodable_text_is_one_line(prepared: Prepared) -> None:
    # "\udcff" reaches the child's argv as the raw byte 0xff, which Python decodes back to "\udcff"
    assert_rejected(prepared.home, "post", "\udcff")


@pytest.mark.parametrize("args", [["whoami"], ["post", "-"], ["timeline"], ["check"], ["follow", other_id()],
                                  ["retract", entry_ref(b"\x03" * 32)]])
def test_uninitialised_home(tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "missing"
    assert_rejected(missing, *args, input="text", match="no identity .* run 'p2pnode init' first")
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_rejected(empty, *args, input="text", match="no identity")
    assert list(empty.iterdir()) == []


def test_secret_key_readable_by_others_is_refused(home: Path) -> None:
    init(home)
    secret = home / "secret"
    os.chmod(secret, 0o644)
    for args in (["whoami"], ["post", "hi"], ["feed"]):
        line = assert_rejected(home, *args, match="accessible by group or others")
        assert "chmod 600" in line
    os.chmod(secret, 0o640)
    assert_rejected(home, "post", "hi", match="mode 640")
    os.chmod(secret, 0o600)
    assert ok_json(home, "post", "hi")["seq"] == 1


@pytest.mark.parametrize("content", [b"", b"garbage\n", b'{"type": "ed25519", "seed": "abcd"}',
                                     b'{"type": "rsa", "seed": "' + b"00" * 32 + b'"}', b'["seed"]'])
def test_damaged_key_file_is_refused(home: Path, content: bytes) -> None:
    init(home)
    secret = home / "secret"
    secret.write_bytes(content)
    for args in (["whoami"], ["post", "hi"]):
        assert_rejected(home, *args, match="damaged")
    assert_rejected(home, "init", match="already has an identity")
    assert secret.read_bytes() == content



# ---------------------------------------------------------------- the second review's findings


def test_a_home_whose_store_is_lost_refuses_to_post(home: Path) -> None:
    """Posting into a new empty store would restart the feed at seq 1 and fork it for good."""
    init(home)
    ok(home, "post", "the first post")
    for path in home.glob("store.sqlite3*"):
        path.unlink()
    for args in (["post", "again"], ["feed"], ["follow", other_id(3)]):
        assert_rejected(home, *args, match="no store.*p2pnode run")
    assert not (home / "store.sqlite3").exists()
    assert ok(home, "whoami").strip().startswith("@")  # the identity is intact; run.sh relies on this


def test_init_refuses_a_store_without_its_secret(home: Path) -> None:
    init(home)
    ok(home, "post", "kept")
    (home / "secret").unlink()
    assert_rejected(home, "init", match="store but no identity")


def test_foreign_text_cannot_reach_the_terminal_raw(home: Path) -> None:
    owner = init(home)
    ingest_foreign(home, owner, 31, ["red \x1b[31malert\x1b[0m\x07 bell"], 2**53 - 1)
    ok(home, "follow", other_id(31))
    out = ok(home, "timeline")
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[31malert" in out
    assert f"timestamp {2**53 - 1}" in out  # a far-future clock is shown, not a traceback


def test_a_huge_limit_is_one_line(home: Path) -> None:
    init(home)
    assert_rejected(home, "feed", "--limit", str(10**20))
    assert ok(home, "feed", "--limit", str(2**63 - 1)) == ""


def test_a_damaged_store_is_one_line(home: Path) -> None:
    init(home)
    for i in range(4):
        ok(home, "post", f"post {i} " + "x" * 300)
    ingest_foreign(home, ok_json(home, "whoami")["id"], 33, [f"entry {i} " + "y" * 300 for i in range(300)], 1_000)
    with open(home / "store.sqlite3", "r+b") as handle:
        handle.seek(8192)
        handle.write(bytes(4096))
    for args in (["check"], ["post", "y"]):
        result = run_cli(home, *args)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr


def test_unchanged_contact_with_json_prints_json(home: Path) -> None:
    init(home)
    assert ok_json(home, "unfollow", other_id(5)) == {"hash": None, "seq": None, "unchanged": True}
