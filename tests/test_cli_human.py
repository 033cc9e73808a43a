# The CLI as people read it, through real `p2pnode` subprocesses: hostile names and posts cannot forge
# lines, short ids and names, local times with the zone, replies and threads, limits, empty results,
# conventions (--home/--json anywhere, --version, completion, closed pipes, addresses), mute, profiles
# after a retraction, and the identity backup (export-key, init --import).
from __future__ import annotations

import json
import re
import stat
import subprocess
import unicodedata
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from click.testing import CliRunner
from conftest import cli_command, cli_env, run_cli
from test_cli import assert_rejected, init, json_lines, ok, ok_json, snapshot

import cli
from p2pnode import backup
from p2pnode.local import UserError
from p2pnode.render import terminal_lines, terminal_text
from p2pnode.store import Store
from protocol.ids import entry_ref, feed_id, parse_entry_ref, parse_feed_id
from protocol.log import create_entry, entry_hash

HEADER_RE = re.compile(r"^%[a-z2-7]{8,}  \S")
BIDI_AND_INVISIBLE = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200b\u200c\u200d\u200e\u200f\ufeff\u2060"


def key_of(seed: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([seed]) * 32)


def plant(home: Path, owner: str, seed: int, payloads: list[dict[str, Any]], first_ts: int) -> list[str]:
    """Store another feed's entries in the home's store directly (what sync does); their hashes."""
    key = key_of(seed)
    with Store(home / "store.sqlite3", parse_feed_id(owner)) as store:
        head = store.head(bytes(key.verify_key))
        previous = None
        if head is not None:
            previous = store.entry_by_hash(head.hash).entry  # type: ignore[union-attr]
        items = []
        for offset, payload in enumerate(payloads):
            entry = create_entry(key, previous, payload, first_ts + offset)
            items.append((entry.header_bytes, entry.signature, entry.payload))
            previous = entry
        result = store.ingest(items)
        assert result.error is None, result.error
    return [entry_ref(entry_hash(item[0])) for item in items]


def run_env(home: Path, *args: str, env: dict[str, str], input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*cli_command(), *args], input=input or "", capture_output=True, text=True,
                          env={**cli_env(home), **env}, timeout=60)


def assert_safe_layout(out: str) -> None:
    """Every line is one of ours: a header (a short hash at column 0) or an indented body line; nothing
    that moves the cursor, reorders or hides text reaches the terminal."""
    for line in out.splitlines():
        assert HEADER_RE.match(line) or line.startswith("    "), f"a line the CLI did not make: {line!r}"
        for char in line:
            assert unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp"), f"{char!r} reached the terminal"


# ---------------------------------------------------------------- the renderer


@pytest.mark.parametrize("text", [
    "\x1b[2J\x1b[Hcleared", "a\nb", "a\rb", "a\tb", "\x07bell", "\x9b31m", "\u202egnp.exe", "ali\u200bce",
    "x\u2028y", "\u2066iso\u2069", "\ufeffbom", "e" + "\u0301" * 30, "\U000e0041tag", "\u3164", "\ud800",
])
def test_terminal_text_leaves_nothing_that_acts(text: str) -> None:
    shown = terminal_text(text)
    assert "\n" not in shown and "\r" not in shown
    for char in shown:
        assert unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp", "Cs"), (text, shown)
        assert ord(char) not in (0x3164, 0x115F)
    assert sum(1 for c in shown if unicodedata.category(c) == "Mn") <= 4


def test_terminal_text_keeps_ordinary_text() -> None:
    for text in ("hello, world", "ünïcode 日本語 עברית", "emoji 👍🏽 and 👨\u200d👩\u200d👧 and ❤\ufe0f"):
        assert terminal_text(text) == text
    assert terminal_text("a\\x1b b") == "a\\\\x1b b" and terminal_text("é\\") == "é\\\\"  # unambiguous
    assert terminal_text("\x1b") == "\\x1b" and terminal_text("\u202e") == "\\u202e"
    assert terminal_lines("one\r\ntwo\tthree\n") == ["one", "two three", ""]


# ---------------------------------------------------------------- hostile names and posts


FORGED_NAME = "alice)\n%aaaaaaaa  bob  just now (12:00 UTC)\n    i owe bob 100 EUR\x1b[2K\u202e"


def test_a_hostile_name_cannot_forge_lines(home: Path) -> None:
    owner = init(home)
    ok(home, "follow", feed_id(bytes(key_of(41).verify_key)))
    plant(home, owner, 41, [{"type": "profile", "name": FORGED_NAME[:64], "about": "\x1b]0;title\x07about"},
                            {"type": "post", "text": "hi\n%bbbbbbbb  carol  1 min ago\n\u202eevil\u200b"}], 1_000)
    for args in (["timeline"], ["timeline", "--full"], ["feed", feed_id(bytes(key_of(41).verify_key))]):
        out = ok(home, *args)
        assert_safe_layout(out)
        assert "i owe bob" in out  # shown, but on one line with the rest of the name
        assert "\\u202eevil\\u200b" in out and "\\x1b]0;title\\x07about" in out
    status = ok(home, "status")
    assert "\x1b" not in status and "\u202e" not in status


def test_names_that_look_like_ids_or_repeat_show_the_id(home: Path) -> None:
    owner = init(home)
    impostor, original = key_of(42), key_of(43)
    for key in (impostor, original):
        ok(home, "follow", feed_id(bytes(key.verify_key)))
    plant(home, owner, 43, [{"type": "profile", "name": "carol"}, {"type": "post", "text": "real carol"}], 1_000)
    plant(home, owner, 42, [{"type": "profile", "name": "  carol "}, {"type": "post", "text": "fake carol"}], 2_000)
    plant(home, owner, 44, [{"type": "profile", "name": "dave (@abcdefgh)"}], 3_000)
    ok(home, "follow", feed_id(bytes(key_of(44).verify_key)))
    out = ok(home, "timeline")
    for key in (impostor, original):
        short = feed_id(bytes(key.verify_key))[:9]
        assert f"carol ({short})" in out
    assert f"dave (@abcdefgh) ({feed_id(bytes(key_of(44).verify_key))[:9]})" in out


# ---------------------------------------------------------------- short ids, times, replies, threads


def test_short_ids_names_and_full(home: Path) -> None:
    owner = init(home)
    ok(home, "profile", "--name", "alice")
    posted = ok_json(home, "post", "hello")["hash"]
    out = ok(home, "feed")
    first = out.splitlines()[0]
    assert first.startswith(posted[:9] + "  alice  ") and posted not in out and owner not in out
    full = ok(home, "feed", "--full")
    assert posted in full and owner in full and "seq 2" in full
    # a unique prefix works wherever a hash or an id is asked for
    reply = ok_json(home, "reply", posted[:7], "a reply")
    assert json_lines(home, "feed")[0]["reply_to"] == posted
    assert ok_json(home, "retract", reply["hash"][:12])["seq"] == 4
    assert_rejected(home, "reply", "%zzzzzz", "x", match="no entry %zzzzzz")
    assert ok(home, "thread", posted[:9]).startswith(posted[:9])


def test_an_ambiguous_prefix_is_refused(home: Path) -> None:
    init(home)
    seen: dict[str, bytes] = {}
    pair = None
    for seed in range(1, 20_000):
        key = bytes(nacl.signing.SigningKey(seed.to_bytes(32, "big")).verify_key)
        prefix = feed_id(key)[:5]
        if prefix in seen:
            pair = (seen[prefix], key)
            break
        seen[prefix] = key
    assert pair is not None
    for key in pair:
        ok(home, "follow", feed_id(key))
    prefix = feed_id(pair[0])[:5]
    assert_rejected(home, "feed", prefix, match="ambiguous")
    longer = feed_id(pair[0])[:12]
    assert run_cli(home, "feed", longer).returncode == 0
    # the short form shown is unique in this store and longer than the shared part
    assert_rejected(home, "unfollow", feed_id(pair[1])[:5], match="ambiguous")


def test_times_are_local_and_relative_with_the_zone(home: Path) -> None:
    owner = init(home)
    ok(home, "follow", feed_id(bytes(key_of(45).verify_key)))
    june_1_2026_16_25_utc = 1_780_331_100_000
    plant(home, owner, 45, [{"type": "post", "text": "in new york"}], june_1_2026_16_25_utc)
    result = run_env(home, "timeline", env={"TZ": "EST5EDT,M3.2.0,M11.1.0"})
    assert result.returncode == 0, result.stderr
    assert "ago (2026-06-01 12:25 EDT)" in result.stdout or "ago (Jun 01 12:25 EDT)" in result.stdout, result.stdout
    full = run_env(home, "timeline", "--full", env={"TZ": "UTC0"})
    assert "2026-06-01 16:25:00 UTC" in full.stdout


def test_replies_show_whom_and_what_they_answer(home: Path) -> None:
    owner = init(home)
    bob = feed_id(bytes(key_of(46).verify_key))
    ok(home, "follow", bob)
    parent = plant(home, owner, 46, [{"type": "profile", "name": "bob"},
                                     {"type": "post", "text": "trains are great\nreally " + "x" * 100}], 1_000)[1]
    child = ok_json(home, "reply", parent, "agreed")["hash"]
    ok(home, "reply", child, "me too")
    out = ok(home, "timeline")
    assert "in reply to bob: \u201ctrains are great really xxx" in out and "\u2026\u201d" in out
    missing = bytes(31) + b"\x01"
    ok(home, "follow", feed_id(bytes(key_of(52).verify_key)))
    plant(home, owner, 52, [{"type": "post", "text": "answer", "reply_to": missing}], 3_000)
    assert f"in reply to {entry_ref(missing)[:9]}" in ok(home, "timeline") and "(not held here)" in ok(home, "timeline")
    thread = ok(home, "thread", child)
    lines = thread.splitlines()
    assert lines[0].startswith(parent[:9]) and "bob" in lines[0]
    assert lines[1] == "  | trains are great"
    depth1 = [line for line in lines if line.startswith("    %")]
    depth2 = [line for line in lines if line.startswith("        %")]
    assert len(depth1) == 1 and len(depth2) == 1
    assert "in reply to" not in thread
    as_json = [json.loads(line) for line in ok(home, "thread", child, "--json").splitlines()]
    assert [item["depth"] for item in as_json] == [0, 1, 2]
    assert as_json[0]["hash"] == parent and as_json[1]["hash"] == child


def publish_many(home: Path, texts: list[str]) -> None:
    """Posts of the home's own feed, written in one process (as 25 `post` commands would)."""
    owner = ok(home, "whoami").strip()
    key = nacl.signing.SigningKey(bytes.fromhex(json.loads((home / "secret").read_text())["seed"]))
    with Store(home / "store.sqlite3", parse_feed_id(owner)) as store:
        for text in texts:
            store.publish(key, {"type": "post", "text": text})


def test_default_limit_all_and_json(home: Path) -> None:
    init(home)
    publish_many(home, [f"post {i}" for i in range(25)])
    result = run_cli(home, "timeline")
    assert result.stdout.count("\n%") + 1 == 20 and "post 24" in result.stdout and "post 4\n" not in result.stdout
    assert "showing the newest 20 of 25" in result.stderr
    assert ok(home, "timeline", "--all").count("    post ") == 25
    assert ok(home, "feed", "--limit", "3").count("    post ") == 3
    assert len(json_lines(home, "feed")) == 25  # JSON output is as before: everything unless --limit
    help_text = ok(home, "timeline", "--help")
    assert "9223372036854775807" not in help_text and "--all" in help_text


def test_post_from_stdin_drops_the_trailing_newline(home: Path) -> None:
    init(home)
    ok(home, "post", "-", input="hello\n")
    assert json_lines(home, "feed")[0]["text"] == "hello"


def test_empty_results_say_so_on_stderr(home: Path) -> None:
    init(home)
    for args, words in ((["timeline"], "timeline is empty"), (["peers"], "no peers"),
                        (["feed", feed_id(bytes(key_of(47).verify_key))], "no entries"), (["check", "--json"], "ok"),
                        (["mute"], "no muted feeds")):
        result = run_cli(home, *args)
        assert result.returncode == 0 and result.stdout == "", (args, result)
        assert words in result.stderr, (args, result.stderr)


# ---------------------------------------------------------------- profiles


def test_a_retracted_profile_no_longer_names_the_feed(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a_id, b_id = init(a), init(b)
    first = ok_json(a, "profile", "--name", "alice")["hash"]
    second = ok_json(a, "profile", "--name", "alice two")["hash"]
    ok(a, "post", "hello")
    assert json_lines(a, "feed")[0]["author_name"] == "alice two"
    ok(a, "retract", second)
    assert json_lines(a, "feed")[0]["author_name"] == "alice"  # the previous profile counts again
    ok(a, "retract", first)
    assert "author_name" not in json_lines(a, "feed")[0]
    assert "alice" not in ok(a, "timeline").split("\n")[0]
    # B gets A's log the way sync delivers it, and shows no name either
    with Store(a / "store.sqlite3", parse_feed_id(a_id)) as source:
        raw = [(h, s, p) for _, h, s, p in source.raw_entries_after(parse_feed_id(a_id), 0, 100)]
    ok(b, "follow", a_id)
    with Store(b / "store.sqlite3", parse_feed_id(b_id)) as target:
        assert target.ingest(raw).error is None
    items = json_lines(b, "feed", a_id)
    assert len(items) == 5 and all("author_name" not in item for item in items)


# ---------------------------------------------------------------- conventions


def test_home_and_json_before_or_after_the_command(tmp_path: Path) -> None:
    home = tmp_path / "h"
    elsewhere = tmp_path / "elsewhere"
    identity = json.loads(run_cli(elsewhere, "--home", str(home), "init", "--json").stdout)["id"]
    for args in (["status", "--home", str(home), "--json"], ["--json", "status", "--home", str(home)],
                 ["--home", str(home), "--json", "status"], ["status", "--json", "--home", str(home)]):
        result = run_cli(elsewhere, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert json.loads(result.stdout)["id"] == identity
    assert not elsewhere.exists()


def test_version_completion_and_clean_help(home: Path) -> None:
    version = ok(home, "--version")
    assert re.fullmatch(r"p2pnode \d+\.\d+\.\d+\n", version)
    script = ok(home, "completion", "bash")
    assert "_P2PNODE_COMPLETE" in script
    completed = run_env(home, env={"_P2PNODE_COMPLETE": "bash_complete", "COMP_WORDS": "p2pnode tim",
                                   "COMP_CWORD": "1"})
    assert "timeline" in completed.stdout
    runner = CliRunner()
    for command in sorted(cli.main.commands):  # every help text, in process (test_cli runs each as a process)
        text = runner.invoke(cli.main, [command, "--help"], prog_name="p2pnode").output
        assert "Usage: p2pnode" in text
        assert "9223372036854775807" not in text and "<=x<=" not in text
    for command in ("follow", "block"):
        assert "public entry" in " ".join(ok(home, command, "--help").split())
    assert "privately" in " ".join(ok(home, "mute", "--help").split())


def test_a_closed_pipe_ends_quietly(home: Path) -> None:
    owner = init(home)
    key = nacl.signing.SigningKey(bytes.fromhex(json.loads((home / "secret").read_text())["seed"]))
    with Store(home / "store.sqlite3", parse_feed_id(owner)) as store:
        for i in range(400):
            store.publish(key, {"type": "post", "text": f"bulk {i} " + "z" * 300})
    for args in (["feed", "--all"], ["feed", "--json"], ["timeline", "--all", "--full"]):
        command = " ".join([*cli_command(), *args]) + " | head -n 1"
        shell = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True,
                               env=cli_env(home), timeout=60)
        assert shell.returncode == 0, (args, shell.stderr)
        assert shell.stderr == "", shell.stderr
        assert shell.stdout.count("\n") == 1


def test_follow_and_block_take_an_address(home: Path) -> None:
    init(home)
    friend = feed_id(bytes(key_of(49).verify_key))
    foe = feed_id(bytes(key_of(50).verify_key))
    ok_json(home, "follow", f"127.0.0.1:9/{friend}")
    book = json_lines(home, "peers")
    assert [(p["address"], p["id"], p["source"]) for p in book] == [(f"127.0.0.1:9/{friend}", friend, "seed")]
    ok_json(home, "block", f"example.org:8765/{foe}")
    contacts = {(item["type"], item["feed"]) for item in json_lines(home, "feed")}
    assert contacts == {("follow", friend), ("block", foe)}
    assert_rejected(home, "follow", "127.0.0.1:0/" + friend, match="port from 1 to 65535")


# ---------------------------------------------------------------- mute


def test_mute_is_private_and_local(home: Path) -> None:
    owner = init(home)
    noisy = feed_id(bytes(key_of(51).verify_key))
    ok(home, "follow", noisy)
    mine = ok_json(home, "post", "my post")["hash"]
    plant(home, owner, 51, [{"type": "post", "text": "noise", "reply_to": bytes(32)}], 1_000)
    noisy_reply = plant(home, owner, 51, [{"type": "post", "text": "noisy reply",
                                           "reply_to": parse_hash(mine)}], 2_000)[0]
    assert "noise" in ok(home, "timeline")
    _, entries_before = snapshot(home)
    result = run_cli(home, "mute", noisy[:10])
    assert result.returncode == 0 and "nothing published" in result.stderr
    assert snapshot(home)[1] == entries_before  # no entry was written
    assert (home / "muted").read_text().splitlines()[-1] == noisy
    assert "noise" not in ok(home, "timeline")
    assert all(item["author"] != noisy for item in json_lines(home, "timeline"))
    thread = run_cli(home, "thread", mine)
    assert "noisy reply" not in thread.stdout and "1 replies from muted feeds" in thread.stderr
    assert noisy_reply
    assert "noise" in ok(home, "feed", noisy)  # asking for the feed by name still shows it
    assert ok(home, "mute").split()[0] == noisy
    assert ok_json(home, "status")["muting"] == 1
    again = run_cli(home, "mute", noisy)
    assert again.returncode == 0 and "already muted" in again.stderr
    assert_rejected(home, "mute", owner, match="your own feed")
    ok(home, "unmute", noisy)
    assert "noise" in ok(home, "timeline")


def parse_hash(text: str) -> bytes:
    return parse_entry_ref(text)


# ---------------------------------------------------------------- identity backup


def test_export_key_and_import(tmp_path: Path) -> None:
    home, restored = tmp_path / "home", tmp_path / "restored"
    identity = init(home)
    result = run_cli(home, "export-key")
    words = result.stdout.strip()
    assert result.returncode == 0 and len(words.split()) == 24 and "warning" in result.stderr
    backup_file = tmp_path / "backup.txt"
    written = run_cli(home, "export-key", "--file", str(backup_file))
    assert written.returncode == 0 and written.stdout == "" and "warning" in written.stderr
    assert stat.S_IMODE(backup_file.stat().st_mode) == 0o600
    assert backup_file.read_text().strip() == words
    assert_rejected(home, "export-key", "--file", str(backup_file), match="already exists")

    out = ok(restored, "init", "--import", input=backup_file.read_text())
    assert identity in out
    assert ok(restored, "whoami").strip() == identity
    assert stat.S_IMODE((restored / "secret").stat().st_mode) == 0o600
    assert not (restored / "store.sqlite3").exists()  # `run` must fetch the feed back first
    assert_rejected(restored, "post", "too early", match="p2pnode run")
    assert_rejected(restored, "init", "--import", input=words, match="already has an identity")


@pytest.mark.parametrize(("mangle", "match"), [
    (lambda w: " ".join(w.split()[:23]), "24 words; got 23"),
    (lambda w: w.replace(w.split()[4], "notaword", 1), "word 5"),
    (lambda w: " ".join([w.split()[1], w.split()[0], *w.split()[2:]]), "checksum"),
    (lambda w: "", "24 words; got 0"),
])
def test_bad_backup_words_are_one_line(tmp_path: Path, mangle: Any, match: str) -> None:
    words = BACKUP_VECTORS["valid"][1]["words"]  # fixed words, so that each mangling fails the same way
    target = tmp_path / "target"
    assert_rejected(target, "init", "--import", input=mangle(words), match=match)
    assert not target.exists() or not (target / "secret").exists()


def test_import_is_case_and_space_tolerant(tmp_path: Path) -> None:
    home = tmp_path / "home"
    identity = init(home)
    words = run_cli(home, "export-key").stdout.strip()
    messy = "# my p2pnode backup\n  " + "\n".join(w.upper() for w in words.split()) + "\n"
    assert identity in ok(tmp_path / "other", "init", "--import", input=messy)


# ---------------------------------------------------------------- the backup vectors


BACKUP_VECTORS = json.loads((Path(__file__).resolve().parents[1] / "spec" / "vectors" / "backup" / "words.json")
                            .read_text())


@pytest.mark.parametrize("case", BACKUP_VECTORS["valid"], ids=lambda c: c["seed"][:8])
def test_backup_vectors_valid(case: dict[str, str]) -> None:
    seed = bytes.fromhex(case["seed"])
    assert backup.seed_from_words(case["words"]) == seed
    assert feed_id(bytes(nacl.signing.SigningKey(seed).verify_key)) == case["id"]


@pytest.mark.parametrize("case", BACKUP_VECTORS["invalid"], ids=lambda c: c["error"])
def test_backup_vectors_invalid(case: dict[str, str]) -> None:
    with pytest.raises(UserError, match=case["error"]):
        backup.seed_from_words(case["words"])


def test_import_of_a_vector_gives_its_id(tmp_path: Path) -> None:
    case = BACKUP_VECTORS["valid"][1]
    home = tmp_path / "home"
    ok(home, "init", "--import", input=case["words"] + "\n")
    assert ok(home, "whoami").strip() == case["id"]
    assert ok(home, "export-key").strip() == case["words"]


def test_peers_table_names_peers_safely(home: Path) -> None:
    owner = init(home)
    peer = feed_id(bytes(key_of(53).verify_key))
    ok(home, "follow", f"203.0.113.9:8765/{peer}")
    plant(home, owner, 53, [{"type": "profile", "name": "\x1b[31mevil\nname\u202e"}], 1_000)
    out = ok(home, "peers")
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].split()[:3] == ["peer", "address", "state"]
    assert "\x1b" not in out and "\u202e" not in out
    assert "\\x1b[31mevil name\\u202e" in lines[1] and "203.0.113.9:8765" in lines[1] and "known" in lines[1]
    assert peer not in out and peer in ok(home, "peers", "--full")
