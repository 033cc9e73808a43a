# The signature workers die with their node: a SIGKILLed `p2pnode run` leaves none of its processes
# behind (workers, multiprocessing forkserver, resource tracker), so a restart never finds an old
# generation. Counted by the node's process group (it runs in a session of its own).
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from conftest import run_cli
from nodeproc import NodeProcess, feed_entries, init_home, wait_for

from p2pnode.home import STORE_FILE, load_identity
from p2pnode.store import Store
from protocol.ids import parse_feed_id

WAIT_S = 30.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def live_members(pgid: int) -> list[int]:
    """Pids of the processes in process group `pgid` that are not zombies (an orphaned zombie waits for
    a pid 1 that may never reap it; it holds no memory)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def test_sigkilled_run_leaves_no_worker_behind(tmp_path: Path) -> None:
    source, home = tmp_path / "source", tmp_path / "n"
    source_id = init_home(source)
    own_id = init_home(home)
    key = load_identity(source)
    with Store(source / STORE_FILE, parse_feed_id(source_id)) as store:
        for number in range(300):
            store.publish(key, {"type": "post", "text": f"post {number}"})
    assert run_cli(home, "follow", source_id).returncode == 0
    seed = NodeProcess(source)
    try:
        for generation in range(2):
            node = NodeProcess(home, "--seed", seed.address, new_session=True)
            pgid = node.proc.pid
            assert os.getpgid(pgid) == pgid
            # the node, the forkserver, the resource tracker and two workers (started by the first batch)
            wait_for(lambda pgid=pgid: len(live_members(pgid)) >= 5, WAIT_S,
                     f"the signature workers of generation {generation}")
            wait_for(lambda: len(feed_entries(home, source_id)) == 300, WAIT_S, "the sync")
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(timeout=WAIT_S)
            node.log.close()
            wait_for(lambda pgid=pgid: not live_members(pgid), WAIT_S, "every process of the killed node to end")
            if generation == 0:  # the next generation starts from an empty store of the feed again
                with Store(home / STORE_FILE, parse_feed_id(own_id)) as store:
                    store.db.execute("DELETE FROM entries WHERE author = ?", (parse_feed_id(source_id),))
                    store.db.execute("DELETE FROM feeds WHERE author = ?", (parse_feed_id(source_id),))
    finally:
        assert seed.stop() == 0

