# A full disk is a state, not a crash: a node whose home sits on a small tmpfs that fills up stops storing
# (once in its log, and in `status`), stays up, connected and serving, and resumes by itself when space
# returns; it serves what it holds meanwhile; the CLI names the cause; a node SIGKILLed while the disk is full
# leaves a store that checks clean and completes its sync after a restart; --min-free stops storing before
# SQLite hits the wall.
# Needs root to mount a tmpfs: skipped on a plain machine with the reason, a failure under CI=true.
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from nodeproc import NodeProcess, init_home, wait_for

from p2pnode.home import STORE_FILE, load_identity
from p2pnode.store import Store
from protocol.ids import parse_feed_id

WAIT_S = 60.0
TEXT = "a post of some length, to fill a disk faster " * 6


def missing_prerequisite(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"cannot run under CI: {why}")
    pytest.skip(why)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs, unmounted afterwards."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    if os.geteuid() != 0:
        missing_prerequisite("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "p2pnode-test", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        missing_prerequisite(f"cannot mount a tmpfs: {result.stderr.strip() or result.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(mount_point: Path, leave: int) -> Path:
    """Fill the filesystem, then free `leave` bytes again."""
    filler = mount_point / f"filler-{len(list(mount_point.glob('filler-*')))}"
    chunk = b"\0" * 65536
    with open(filler, "ab", buffering=0) as handle:  # unbuffered: nothing left to flush (and fail) on close
        try:
            while True:
                handle.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def publish(home: Path, count: int, start: int) -> None:
    key = load_identity(home)
    with Store(home / STORE_FILE, bytes(key.verify_key)) as store:
        for number in range(start, start + count):
            store.publish(key, {"type": "post", "text": f"{number} {TEXT}"})


def status(home: Path) -> dict:
    result = run_cli(home, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def held(home: Path, author: str) -> int:
    """How many entries of the feed the store holds (a long feed may come newest first, so not its head seq)."""
    owner = parse_feed_id(run_cli(home, "whoami").stdout.strip())
    with Store(home / STORE_FILE, owner) as store:
        return store.db.execute("SELECT count(*) FROM entries WHERE author = ?", (parse_feed_id(author),)).fetchone()[0]


def test_full_disk_is_a_state_not_a_crash(tmp_path: Path, small_disk: Path) -> None:
    home, source = small_disk / "home", tmp_path / "source"
    init_home(home)
    source_id = init_home(source)
    publish(source, 3000, 0)
    assert run_cli(home, "follow", source_id).returncode == 0

    # 1. the disk fills up during the sync: the node stays up, connected, says so once; the CLI names the cause
    node = NodeProcess(home, "--min-free", "0", log_path=tmp_path / "home-1.log")  # logs off the small disk
    filler = fill(small_disk, leave=768 * 1024)
    src = NodeProcess(source, "--seed", node.address)
    try:
        wait_for(lambda: "is full" in node.log_text(), WAIT_S, "the node to notice the full disk")
        wait_for(lambda: status(home).get("storing") is False, WAIT_S, "status to say the node is not storing")
        info = status(home)
        assert info["running"] and "write failed" in info["disk_full"], info
        assert [p["id"] for p in info["peers"]] == [source_id], info
        assert 0 < held(home, source_id) < 3000
        last = fill(small_disk, leave=0)  # what room the failed batch left is taken too
        other = small_disk / "other"
        result = run_cli(other, "init")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip() == f"Error: the disk holding {other} is full: free some space and try again"
        assert not (other / "secret").exists()  # no half-written identity left behind

        # 2. space comes back: the node resumes by itself and gets the rest
        filler.unlink()
        last.unlink()
        wait_for(lambda: held(home, source_id) == 3000, WAIT_S, "the node to resume and complete the sync")
        assert status(home)["storing"] is True
        assert node.proc.poll() is None
        log = node.log_text()
        assert log.count("is full (") == 1 and "storing again" in log, log
        assert "Traceback" not in log

        # 3. full again while the source publishes more; SIGKILL the node in the middle of the episode
        filler = fill(small_disk, leave=128 * 1024)
        publish(source, 2000, 3000)
        wait_for(lambda: node.log_text().count("is full (") == 2, WAIT_S, "the second episode")
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(timeout=WAIT_S)
        node.log.close()
        check = run_cli(home, "check")
        assert check.returncode == 0 and check.stdout.startswith("ok"), check.stdout + check.stderr
        partial = held(home, source_id)
        assert 3000 <= partial < 5000
        filler.unlink()
        node = NodeProcess(home, "--min-free", "0", "--seed", src.address, log_path=tmp_path / "home-2.log")
        wait_for(lambda: held(home, source_id) == 5000, WAIT_S, "the sync to complete after the restart")
        assert node.stop() == 0

        # 4. below the --min-free floor the node stores nothing peers send, before SQLite hits the wall
        node = NodeProcess(home, "--min-free", "1G", "--seed", src.address, log_path=tmp_path / "home-3.log")
        wait_for(lambda: "below the floor" in node.log_text(), WAIT_S, "the floor to be noticed")
        publish(source, 10, 5000)
        wait_for(lambda: status(home).get("peers"), WAIT_S, "the node to connect to the source")
        assert status(home)["storing"] is False and "--min-free" in status(home)["disk_full"]
        assert held(home, source_id) == 5000
        text = run_cli(home, "status").stdout
        assert "disk full:" in text and "not storing" in text, text
        # and it still serves what it holds: a fresh node gets the whole feed from it
        fresh = tmp_path / "fresh"
        init_home(fresh)
        assert run_cli(fresh, "follow", source_id).returncode == 0
        reader = NodeProcess(fresh, "--seed", node.address)
        try:
            wait_for(lambda: held(fresh, source_id) >= 5000, WAIT_S, "a fresh node to sync from the full node")
        finally:
            assert reader.stop() == 0
        assert node.proc.poll() is None and status(home)["storing"] is False
        assert node.stop() == 0
    finally:
        if node.proc.poll() is None:
            node.stop()
        assert src.stop() == 0
    assert run_cli(home, "check").stdout.startswith("ok")
