# Benchmark: initial sync of one feed from one node process to a fresh one over real, encrypted TCP on
# loopback (entries/s, peak memory of each node), then post-to-peer latency (p50, p99) between the two
# running nodes. Prints figures and their ratio to the bounds of the issue. Not part of the test suite.
#
# usage: python bench/sync_bench.py [--entries 100000] [--latency-posts 200]
from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2pnode.home import STORE_FILE, create_identity  # noqa: E402
from p2pnode.store import Store  # noqa: E402
from protocol.ids import feed_id  # noqa: E402
from protocol.log import create_entry  # noqa: E402

TARGET_RATE = 15_000
HYPERCORE_RATE = 10_347
SSB_RATE = 3_963
LATENCY_BOUND_MS = 50.0


def p2pnode_command() -> list[str]:
    script = Path(sys.executable).parent / "p2pnode"
    return [str(script)] if script.exists() else [sys.executable, "-c", "import cli; cli.main()"]


def start_node(home: Path, *args: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, P2PNODE_HOME=str(home))
    proc = subprocess.Popen([*p2pnode_command(), "run", "--listen", "127.0.0.1:0", "--log-level", "warning", *args],
                            stdout=subprocess.PIPE, stderr=open(home.parent / f"{home.name}.log", "w"), text=True,
                            env=env)
    line = proc.stdout.readline().strip()
    if not line.startswith("listening "):
        raise SystemExit(f"node did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def descendants(pid: int) -> list[int]:
    """The process and every process below it (the node's signature workers and their forkserver)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            found.extend(descendants(int(child)))
    return found


def tree_peak_rss_mb(pid: int) -> float:
    return sum(peak_rss_mb(p) for p in descendants(pid))


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in descendants(pid))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def held(db: Path, author: bytes) -> tuple[int, int]:
    """(entries held without a gap, head seq): a feed arrives newest first, so the head comes before the rest."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        row = con.execute("SELECT head_seq - low_seq + 1, head_seq FROM feeds WHERE author = ?", (author,)).fetchone()
        return (row[0], row[1]) if row else (0, 0)
    except sqlite3.OperationalError:
        return 0, 0
    finally:
        con.close()


def unchecked(db: Path) -> int:
    """Entries whose own signatures the node has not checked yet."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("SELECT count(*) FROM entries WHERE signature_state = 0").fetchone()[0]
    finally:
        con.close()


def count(db: Path, author: bytes) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        row = con.execute("SELECT head_seq FROM feeds WHERE author = ?", (author,)).fetchone()
        return row[0] if row else 0
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--latency-posts", type=int, default=200)
    parser.add_argument("--hypercore", type=Path, default=None, metavar="DIR",
                        help="a folder with hypercore@11 installed and shared/anchors/hypercore-bench.mjs: run it "
                             "right after ours, with the same entry count, and print the ratio")
    args = parser.parse_args()
    pause = threading.Event()
    with tempfile.TemporaryDirectory(prefix="p2pnode-sync-") as tmp:
        source_home, target_home = Path(tmp) / "source", Path(tmp) / "target"
        source_key = create_identity(source_home)
        target_key = create_identity(target_home)
        author = bytes(source_key.verify_key)
        text = "x" * 200
        t0 = time.perf_counter()
        with Store(source_home / STORE_FILE, author) as store:
            previous = None
            for start in range(0, args.entries, 1000):
                batch = []
                for i in range(start, min(args.entries, start + 1000)):
                    previous = create_entry(source_key, previous, {"type": "post", "text": text}, 1_764_300_000_000 + i)
                    batch.append((previous.header_bytes, previous.signature, previous.payload))
                result = store.ingest(batch)
                assert result.error is None
        print(f"prepared {args.entries} entries of 200-byte posts in {time.perf_counter() - t0:.1f} s")
        with Store(target_home / STORE_FILE, bytes(target_key.verify_key)) as store:
            store.publish(target_key, {"type": "follow", "feed": author})

        source, source_address = start_node(source_home)
        t_start = time.perf_counter()
        target, _ = start_node(target_home, "--seed", source_address)
        # hypercore's figure starts once both cores are open (after `ready()`), before the connection: ours
        # from the target's `listening` line is the same point; the figure from the process start adds Python's
        # start-up and the node's (store, web app, LAN discovery)
        t_up = time.perf_counter()
        if os.environ.get("SYNC_BENCH_PROFILE"):
            subprocess.Popen(["py-spy", "record", "-o", os.environ["SYNC_BENCH_PROFILE"], "-f", "raw", "-t", "--gil",
                              "--pid", str(target.pid), "-d", os.environ.get("SYNC_BENCH_PROFILE_S", "3")])
        target_db = target_home / STORE_FILE
        newest_at = None
        while (progress := held(target_db, author))[0] < args.entries:
            if newest_at is None and progress[1] == args.entries:
                newest_at = time.perf_counter() - t_start
            if target.poll() is not None or time.perf_counter() - t_start > 1800:
                raise SystemExit("sync failed or took over 30 minutes")
            pause.wait(0.01 if newest_at is None else 0.05)
        elapsed = time.perf_counter() - t_start
        newest_at = elapsed if newest_at is None else newest_at
        rate = args.entries / elapsed
        up_elapsed = elapsed - (t_up - t_start)
        up_rate = args.entries / up_elapsed
        source_rss, target_rss = peak_rss_mb(source.pid), peak_rss_mb(target.pid)
        target_tree_rss = tree_peak_rss_mb(target.pid)
        source_cpu, target_cpu = cpu_seconds(source.pid), cpu_seconds(target.pid)
        target_tree_cpu = tree_cpu_seconds(target.pid)
        print(f"initial sync: {args.entries} entries in {elapsed:.2f} s = {rate:,.0f} entries/s "
              f"(includes the target's start-up and handshake)")
        print(f"  from the target's `listening` line (as hypercore's figure): {up_elapsed:.2f} s = "
              f"{up_rate:,.0f} entries/s; its start-up took {t_up - t_start:.2f} s")
        print(f"  the newest 50 entries were shown {newest_at:.2f} s after the target started "
              f"(including its start-up and handshake; bound 1 s: ratio {newest_at:.2f})")
        print(f"  ratio to the 15,000/s target: {rate / TARGET_RATE:.2f}; to hypercore 11 (10,347/s): "
              f"{rate / HYPERCORE_RATE:.2f}; to ssb-db2+ebt (3,963/s): {rate / SSB_RATE:.2f}")
        print(f"  peak RSS: source node {source_rss:.1f} MB, target node {target_rss:.1f} MB "
              f"({target_tree_rss:.1f} MB with its signature workers, summed)")
        print(f"  CPU time so far: source node {source_cpu:.2f} s, target node {target_cpu:.2f} s "
              f"({target_tree_cpu:.2f} s with its workers; wall {elapsed:.2f} s, 2 cores)")

        # the signatures that the last one of each batch proved (spec/log.md, "Checking a batch") are checked
        # once the node is quiet: how long after the sync that takes
        while unchecked(target_db) > 0:
            if target.poll() is not None or time.perf_counter() - t_start > 1800:
                raise SystemExit("the signature checks failed or took over 30 minutes")
            pause.wait(0.05)
        checked_after = time.perf_counter() - t_start - elapsed
        print(f"  every entry's own signature checked {checked_after:.2f} s after the sync (the node checks them "
              f"once quiet for 1 s; CPU so far: target node {cpu_seconds(target.pid):.2f} s, "
              f"{tree_cpu_seconds(target.pid):.2f} s with its workers)")

        latencies = []
        with Store(source_home / STORE_FILE, author) as store:
            for i in range(args.latency_posts):
                entry = store.publish(source_key, {"type": "post", "text": f"latency probe {i}"})
                sent = time.perf_counter()
                while count(target_db, author) < entry.seq:
                    pause.wait(0.0005)
                latencies.append((time.perf_counter() - sent) * 1000)
                pause.wait(0.01)
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"post-to-peer latency over {len(latencies)} posts (another process writes the source's store, as "
              f"the CLI does): p50 {p50:.1f} ms, p99 {p99:.1f} ms; p50 ratio to the 50 ms bound: "
              f"{p50 / LATENCY_BOUND_MS:.2f}")
        for proc in (target, source):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        hypercore_rate = None
        if args.hypercore is not None:
            out = subprocess.run(["node", "hypercore-bench.mjs", str(args.entries)], cwd=args.hypercore,
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            hypercore_rate = json.loads(out)["entries_per_s_synced"]
            print(f"hypercore 11, same machine, right after: {hypercore_rate:,.0f} entries/s; ours is "
                  f"{up_rate / hypercore_rate:.2f} x from `listening`, {rate / hypercore_rate:.2f} x from the "
                  f"process start (target 2 x)")
        print(json.dumps({"entries": args.entries, "sync_entries_per_s": round(rate), "sync_seconds": round(elapsed, 2),
                          "sync_entries_per_s_from_listening": round(up_rate),
                          "target_startup_s": round(t_up - t_start, 2),
                          "newest_50_shown_s": round(newest_at, 2), "hypercore_entries_per_s": hypercore_rate,
                          "signatures_checked_after_s": round(checked_after, 2),
                          "ratio_to_target": round(rate / TARGET_RATE, 2), "source_peak_rss_mb": round(source_rss, 1),
                          "target_peak_rss_mb": round(target_rss, 1),
                          "target_with_workers_peak_rss_mb": round(target_tree_rss, 1), "latency_p50_ms": round(p50, 1),
                          "latency_p99_ms": round(p99, 1), "exit_codes": [target.returncode, source.returncode],
                          "target_feed_id": feed_id(author)}))


if __name__ == "__main__":
    main()
