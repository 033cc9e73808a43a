# `p2pnode run` and the CLI beside a running node, through real subprocesses on 127.0.0.1: the listening
# line, whoami/status/peers while running, clean stops on SIGINT and SIGTERM, seeds files, one-line errors
# for bad options, a second run refused, log levels, and post/follow/block taking effect without a restart.
from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from conftest import CliResult, cli_command, cli_env, run_cli
from nodeproc import NodeProcess, feed_entries, init_home, wait_for

from p2pnode.home import RUNTIME_FILE, STORE_FILE
from p2pnode.store import Store
from protocol.ids import feed_id, parse_address, parse_entry_ref, parse_feed_id
from protocol.log import Entry, create_entry

WAIT_S = 20.0
ERROR_TIMEOUT_S = 20.0  # a bad `run` must fail at once; if it starts a node instead, it is killed after this
LISTENING_RE = re.compile(r"^listening \S+:\d+/@[a-z2-7]{58}$")

Start = Callable[..., NodeProcess]


@pytest.fixture
def start() -> Iterator[Start]:
    """start(home, *args): a running NodeProcess; every one still running is stopped at teardown."""
    started: list[NodeProcess] = []

    def starter(home: Path, *args: str) -> NodeProcess:
        node = NodeProcess(home, *args)
        started.append(node)
        return node

    yield starter
    for node in reversed(started):
        node.stop()


def cli_ok(home: Path, *args: str) -> str:
    result = run_cli(home, *args)
    assert result.returncode == 0, f"p2pnode {' '.join(args)}: {result.stderr}"
    return result.stdout


def cli_json(home: Path, *args: str) -> Any:
    return json.loads(cli_ok(home, *args, "--json"))


def peer_ids(home: Path) -> set[str]:
    """The ids of the peers the running node at `home` is connected to (status --json)."""
    return {peer["id"] for peer in cli_json(home, "status").get("peers", [])}


def assert_one_line_error(result: CliResult, *words: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def stop_with(node: NodeProcess, signum: signal.Signals) -> int:
    node.proc.send_signal(signum)
    try:
        return node.proc.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        node.proc.kill()
        node.proc.wait()
        raise AssertionError(f"node did not stop after {signum.name}; log: {node.log_text()}") from None


def chain(key: nacl.signing.SigningKey, texts: list[str]) -> list[Entry]:
    entries: list[Entry] = []
    previous = None
    for number, text in enumerate(texts):
        previous = create_entry(key, previous, {"type": "post", "text": text}, 1_000 + number)
        entries.append(previous)
    return entries


def plant(home: Path, entries: list[Entry]) -> None:
    """Put another author's valid entries into a (stopped) node's store, as if it had received them."""
    owner = parse_feed_id(json.loads(cli_ok(home, "whoami", "--json"))["id"])
    with Store(home / STORE_FILE, owner) as store:
        result = store.ingest((e.header_bytes, e.signature, e.payload) for e in entries)
        assert result.error is None and len(result.stored) == len(entries)


def holds(home: Path, author: str) -> int:
    return len(feed_entries(home, author))


# ------------------------------------------------------------ the listening line, whoami, stopping


def test_listening_line_whoami_and_second_run_refused(tmp_path: Path, start: Start) -> None:
    home = tmp_path / "n"
    own_id = init_home(home)
    node = start(home)
    line = f"listening {node.address}"
    assert LISTENING_RE.match(line), line
    address = parse_address(node.address)
    assert address.host == "127.0.0.1" and address.port > 0 and feed_id(address.key) == own_id
    assert cli_json(home, "whoami") == {"id": own_id, "address": node.address}
    assert cli_ok(home, "whoami").splitlines() == [own_id]  # one line, so $(p2pnode whoami) is the id

    second = run_cli(home, "run", "--listen", "127.0.0.1:0", timeout=ERROR_TIMEOUT_S)
    assert_one_line_error(second, "already running")
    assert node.proc.poll() is None

    assert node.stop() == 0
    assert node.proc.stdout is not None
    assert node.proc.stdout.read() == "", "stdout carries nothing but the listening line"
    log = node.log_path.read_text()
    assert "INFO p2pnode.run" in log and "received SIGTERM" in log, log  # logs go to stderr
    assert cli_json(home, "whoami") == {"id": own_id}
    assert not (home / RUNTIME_FILE).exists()


def test_log_level_warning_keeps_stderr_quiet(tmp_path: Path, start: Start) -> None:
    home = tmp_path / "n"
    init_home(home)
    node = start(home, "--log-level", "warning")
    assert node.stop() == 0
    assert " INFO " not in node.log_path.read_text()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly_and_says_goodbye(tmp_path: Path, start: Start, signum: signal.Signals) -> None:
    seed_home, home = tmp_path / "seed", tmp_path / "n"
    init_home(seed_home)
    own_id = init_home(home)
    cli_ok(home, "post", "before stopping")
    seed = start(seed_home)
    node = start(home, "--seed", seed.address)
    wait_for(lambda: own_id in peer_ids(seed_home), WAIT_S, "the seed to list the node as connected")

    assert stop_with(node, signum) == 0, node.log_text()
    assert not (home / RUNTIME_FILE).exists()
    assert f"received {signum.name}" in node.log_text()
    checked = run_cli(home, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert cli_json(home, "status")["running"] is False
    # the seed was told: it drops the peer and logs the node's `shutdown:` reason
    wait_for(lambda: own_id not in peer_ids(seed_home), WAIT_S, "the seed to drop the stopped node")
    assert "peer closed: shutdown:" in seed.log_text()
    assert seed.proc.poll() is None


# ------------------------------------------------------------ seeds


def test_seeds_file_skips_comment_blank_and_malformed_line(tmp_path: Path, start: Start) -> None:
    seed_home, home = tmp_path / "seed", tmp_path / "n"
    seed_id = init_home(seed_home)
    init_home(home)
    seed = start(seed_home)
    seeds = tmp_path / "my-seeds"
    seeds.write_text(f"# my seeds\n\nnot-an-address\n{seed.address}  # the good one\n")
    node = start(home, "--seeds", str(seeds))
    wait_for(lambda: seed_id in peer_ids(home), WAIT_S, "the node to connect to the good seed")
    warnings = [line for line in node.log_text().splitlines() if str(seeds) in line]
    assert len(warnings) == 1 and f"{seeds}:3:" in warnings[0] and "skipped" in warnings[0], warnings
    assert node.stop() == 0


def test_home_seeds_file_is_read_by_default(tmp_path: Path, start: Start) -> None:
    seed_home, home = tmp_path / "seed", tmp_path / "n"
    seed_id = init_home(seed_home)
    init_home(home)
    seed = start(seed_home)
    (home / "seeds").write_text(f"{seed.address}\n")
    start(home)
    wait_for(lambda: seed_id in peer_ids(home), WAIT_S, "the node to connect to the seed in <home>/seeds")
    book = [json.loads(line) for line in cli_ok(home, "peers", "--json").splitlines()]
    assert [(p["address"], p["source"]) for p in book] == [(seed.address, "seed")]


# ------------------------------------------------------------ one-line errors


BAD_RUNS: list[tuple[str, list[str], str]] = [
    ("missing seeds file", ["--seeds", "{tmp}/no-such-seeds"], "does not exist"),
    ("listen without port", ["--listen", "127.0.0.1"], "--listen"),
    ("listen port too big", ["--listen", "127.0.0.1:70000"], "--listen"),
    ("listen port not a number", ["--listen", "127.0.0.1:http"], "--listen"),
    ("seed not an address", ["--seed", "bogus"], "--seed"),
    ("seed with a mistyped key", ["--seed", "127.0.0.1:1/@" + "a" * 58], "--seed"),
    ("seed without port", ["--seed", "127.0.0.1/@" + "a" * 58], "--seed"),
    ("hops out of range", ["--hops", "9"], "--hops"),
    ("unknown log level", ["--log-level", "loud"], "--log-level"),
]


@pytest.mark.parametrize(("args", "word"), [pytest.param(a, w, id=name) for name, a, w in BAD_RUNS])
def test_bad_option_is_one_line_error(tmp_path: Path, args: list[str], word: str) -> None:
    home = tmp_path / "n"
    init_home(home)
    result = run_cli(home, "run", "--listen", "127.0.0.1:0",
                     *[a.replace("{tmp}", str(tmp_path)) for a in args], timeout=ERROR_TIMEOUT_S)
    assert_one_line_error(result, word)
    assert not (home / RUNTIME_FILE).exists()


def test_run_on_uninitialised_home_is_one_line_error(tmp_path: Path) -> None:
    home = tmp_path / "never-initialised"
    result = run_cli(home, "run", "--listen", "127.0.0.1:0", timeout=ERROR_TIMEOUT_S)
    assert_one_line_error(result, "p2pnode init")


def test_port_in_use_is_one_line_error(tmp_path: Path, start: Start) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    init_home(first)
    init_home(second)
    port = parse_address(start(first).address).port
    result = run_cli(second, "run", "--listen", f"127.0.0.1:{port}", timeout=ERROR_TIMEOUT_S)
    assert result.returncode != 0
    assert_one_line_error(result, str(port))


def test_unresolvable_listen_host_is_one_line_error(tmp_path: Path) -> None:
    home = tmp_path / "n"
    init_home(home)
    result = run_cli(home, "run", "--listen", "no-such-host.invalid:0", timeout=ERROR_TIMEOUT_S)
    assert_one_line_error(result, "no-such-host.invalid")


def start_together(home: Path, count: int) -> tuple[list[subprocess.Popen[str]], list[subprocess.Popen[str]]]:
    """Start `count` runs on one home at once; (those that print a listening line, those that exit)."""
    procs = [subprocess.Popen([*cli_command(), "run", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=cli_env(home), cwd=str(home.parent))
             for _ in range(count)]
    running: list[subprocess.Popen[str]] = []
    refused: list[subprocess.Popen[str]] = []
    selector = selectors.DefaultSelector()
    for proc in procs:
        assert proc.stdout is not None
        selector.register(proc.stdout, selectors.EVENT_READ, proc)
    deadline = time.monotonic() + WAIT_S
    while len(running) + len(refused) < count and time.monotonic() < deadline:
        for key, _ in selector.select(0.05):
            proc = key.data
            selector.unregister(key.fileobj)
            (running if proc.stdout.readline().startswith("listening ") else refused).append(proc)
    selector.close()
    for proc in procs:
        if proc not in running and proc not in refused:  # neither listened nor exited in time
            proc.kill()
            refused.append(proc)
    return running, refused


def test_runs_started_together_on_one_home_start_only_one(tmp_path: Path) -> None:
    home = tmp_path / "n"
    init_home(home)
    for _ in range(12):  # a race: each round shows it about half the time; stop at the first that does
        running, refused = start_together(home, 3)
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc in running + refused:
            proc.wait(timeout=WAIT_S)
            assert proc.stdout is not None
            proc.stdout.close()
        assert len(running) == 1, f"{len(running)} nodes ran at once on one home"


# ------------------------------------------------------------ the CLI beside a running node


def test_cli_beside_running_nodes(tmp_path: Path, start: Start) -> None:
    """A holds a post and a feed C; B follows A. With both running: reading commands, status, peers;
    a post on A reaches B within seconds; B's follow of C makes B fetch it; B's block of A drops A."""
    a_home, b_home = tmp_path / "a", tmp_path / "b"
    a_id, b_id = init_home(a_home), init_home(b_home)
    cli_ok(a_home, "post", "hello from a")
    c_key = nacl.signing.SigningKey(b"\x0c" * 32)
    c_id = feed_id(bytes(c_key.verify_key))
    plant(a_home, chain(c_key, ["c one", "c two"]))
    cli_ok(b_home, "follow", a_id)
    a = start(a_home)
    start(b_home, "--seed", a.address)
    wait_for(lambda: holds(b_home, a_id) == 1, WAIT_S, "B to fetch A's post")

    def synced() -> bool:
        peers = cli_json(b_home, "status")["peers"]
        return [(p["id"], p["in_sync"]) for p in peers] == [(a_id, True)]

    wait_for(synced, WAIT_S, "B to report A in sync")
    status = cli_json(b_home, "status")
    assert status["id"] == b_id and status["running"] is True
    assert LISTENING_RE.match(f"listening {status['address']}")
    assert status["feeds"] == 2 and status["entries"] == 2 and status["forked"] == []
    assert cli_ok(b_home, "status").count(f"peer {a_id} {a.address} in sync") == 1
    peers = [json.loads(line) for line in cli_ok(b_home, "peers", "--json").splitlines()]
    seed_rows = [p for p in peers if p["id"] == a_id]
    assert len(seed_rows) == 1 and seed_rows[0]["address"] == a.address
    assert seed_rows[0]["source"] == "seed" and seed_rows[0]["connected"] is True
    a_peers = [json.loads(line) for line in cli_ok(a_home, "peers", "--json").splitlines()]
    assert any(p["id"] == b_id and p["connected"] for p in a_peers), a_peers

    # reading commands while both run
    for home in (a_home, b_home):
        for args in (["feed"], ["feed", a_id], ["timeline"], ["peers"], ["status"], ["check"],
                     ["timeline", "--json"], ["feed", a_id, "--json"]):
            cli_ok(home, *args)
    assert "hello from a" in cli_ok(b_home, "timeline")

    # a post on A reaches B without a restart, within a bounded wait
    posted = json.loads(cli_ok(a_home, "post", "live from a", "--json"))
    written = time.monotonic()
    post_hash = parse_entry_ref(posted["hash"])
    b_owner = parse_feed_id(b_id)

    def b_has_post() -> bool:
        with Store(b_home / STORE_FILE, b_owner) as store:
            return store.entry_by_hash(post_hash) is not None

    wait_for(b_has_post, WAIT_S, "A's live post to reach B")
    assert time.monotonic() - written < 3.0, "a post beside a running node should reach a peer within seconds"

    # follow while running: B fetches C's feed from A
    assert holds(b_home, c_id) == 0
    cli_ok(b_home, "follow", c_id)
    wait_for(lambda: holds(b_home, c_id) == 2, WAIT_S, "B to fetch C's feed after following it")

    # block while running: B drops the connection to A and purges A's feed
    cli_ok(b_home, "block", a_id)
    wait_for(lambda: a_id not in peer_ids(b_home), WAIT_S, "B to drop its connection to A")
    assert holds(b_home, a_id) == 0
    assert [p["id"] for p in cli_json(b_home, "status")["peers"]] == []
    wait_for(lambda: "peer closed: blocked:" in a.log_text(), WAIT_S, "A to be told it is blocked")
    checked = run_cli(b_home, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_hops_limit_what_is_fetched(tmp_path: Path, start: Start) -> None:
    """A follows D and holds D's feed; three nodes follow A with --hops 2 (default), 1 and 0."""
    a_home = tmp_path / "a"
    a_id = init_home(a_home)
    d_key = nacl.signing.SigningKey(b"\x0d" * 32)
    d_id = feed_id(bytes(d_key.verify_key))
    plant(a_home, chain(d_key, ["d one"]))
    cli_ok(a_home, "follow", d_id)
    cli_ok(a_home, "post", "from a")
    a = start(a_home)
    homes: dict[str, Path] = {}
    for hops in ("default", "1", "0"):
        homes[hops] = tmp_path / f"b-{hops}"
        init_home(homes[hops])
        cli_ok(homes[hops], "follow", a_id)
        start(homes[hops], "--seed", a.address, *([] if hops == "default" else ["--hops", hops]))
    wait_for(lambda: holds(homes["default"], d_id) == 1, WAIT_S, "the default node to fetch D at hop 2")
    assert holds(homes["default"], a_id) == 2
    wait_for(lambda: holds(homes["1"], a_id) == 2, WAIT_S, "the --hops 1 node to fetch A")
    for hops, home in homes.items():
        b_id = json.loads(cli_ok(home, "whoami", "--json"))["id"]
        wait_for(lambda b_id=b_id: b_id in peer_ids(a_home), WAIT_S, f"A to list the --hops {hops} node")
    assert holds(homes["1"], d_id) == 0
    assert holds(homes["0"], a_id) == 0 and holds(homes["0"], d_id) == 0


def test_leftover_node_json_with_a_live_pid_does_not_stop_run(tmp_path: Path, start: Start) -> None:
    """After a SIGKILL in a container the next process may get the same pid: whether a node runs is told by
    run.lock alone, so a node.json naming a live process (this test's own) neither blocks `run` nor shows a
    node as running."""
    home = tmp_path / "n"
    init_home(home)
    (home / RUNTIME_FILE).write_text(json.dumps({"pid": os.getpid(), "address": "127.0.0.1:1/@x", "peers": []}))
    assert cli_json(home, "status")["running"] is False
    node = start(home, "--listen", "127.0.0.1:0")
    assert cli_json(home, "status")["running"] is True
    assert node.stop() == 0
    assert cli_json(home, "status")["running"] is False
