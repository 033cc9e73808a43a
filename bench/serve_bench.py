# Benchmark: a node that holds 1,000,000 entries in 1,000 feeds, run as a real `p2pnode run` process, serving
# fresh peers (real `p2pnode run` processes over encrypted TCP on loopback) that follow some of its feeds: one
# takes a large share, a few take a little each, and one, already connected, starts following a 100,000-entry
# feed while the others sync (how soon its newest 50 entries are held). The serving process's RSS (VmRSS) is
# sampled the whole time; prints its peak and VmHWM against the 150 MB bound, and entries/s served.
# The store is built once (real signed entries, stored through the store's batch path) and kept in a cache
# folder; each run copies it. Not part of the test suite.
#
# usage: python bench/serve_bench.py [--bulk-feeds 400] [--small-peers 3] [--small-feeds 30]
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nacl.signing

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sync_bench import cpu_seconds, descendants, held, p2pnode_command, peak_rss_mb, start_node  # noqa: E402

from p2pnode.home import STORE_FILE, create_identity  # noqa: E402
from p2pnode.store import MIGRATIONS, Store  # noqa: E402
from protocol.ids import feed_id  # noqa: E402
from protocol.log import Entry, create_entry  # noqa: E402

RSS_BOUND_MB = 150.0
NEWEST_BOUND_S = 1.0
FEEDS = 1_000
TOTAL = 1_000_000
BIG_FEED = 100_900  # one long feed; the 999 others hold 900 each: 1,000,000 entries in all
TEXT = "p" * 100
BATCH = 5_000


def feed_sizes() -> list[int]:
    small = (TOTAL - BIG_FEED) // (FEEDS - 1)
    assert BIG_FEED + small * (FEEDS - 1) == TOTAL
    return [BIG_FEED] + [small] * (FEEDS - 1)


def author_seed(index: int) -> bytes:
    return b"\xb5" + index.to_bytes(31, "big")


def sign_part(job: tuple[int, int, int, Entry | None]) -> list[Entry]:
    """Entries start..stop (1-based seqs start+1..stop) of feed `index`, following `previous`."""
    index, start, stop, previous = job
    key = nacl.signing.SigningKey(author_seed(index))
    entries = []
    for number in range(start, stop):
        previous = create_entry(key, previous, {"type": "post", "text": f"{number:07} {TEXT}"},
                                1_764_000_000_000 + index * 1_000_000 + number)
        entries.append(previous)
    return entries


def feed_jobs(index: int, size: int) -> list[tuple[int, int, int]]:
    return [(index, start, min(size, start + BATCH)) for start in range(0, size, BATCH)]


def sign_feed(job: tuple[int, int]) -> list[list[Entry]]:
    """A whole feed in parts of BATCH entries (each part follows the one before it)."""
    index, size = job
    parts: list[list[Entry]] = []
    previous = None
    for _, start, stop in feed_jobs(index, size):
        parts.append(sign_part((index, start, stop, previous)))
        previous = parts[-1][-1]
    return parts


def build_home(cache: Path) -> tuple[Path, float]:
    """The serving node's home (identity and store), built into `cache` unless it is there; its build time
    (0 when it came from the cache)."""
    home = cache / f"serve-{FEEDS}x{TOTAL}-schema{MIGRATIONS[-1][0]}"
    done = home / "built"
    if done.exists():
        return home, 0.0
    shutil.rmtree(home, ignore_errors=True)
    t0 = time.perf_counter()
    key = create_identity(home)
    sizes = feed_sizes()
    workers = max(1, min(4, os.cpu_count() or 1))
    stored = 0
    with Store(home / STORE_FILE, bytes(key.verify_key)) as store, \
            multiprocessing.get_context("forkserver").Pool(workers) as pool:
        store.db.execute("PRAGMA cache_size=-262144")  # building the hash index wants a large page cache
        for parts in pool.imap_unordered(sign_feed, list(enumerate(sizes)), chunksize=4):
            for part in parts:
                result = store.ingest_verified(part)
                assert result.error is None, result.error
                stored += len(result.stored)
            if stored % 100_000 < sizes[-1]:
                print(f"  built {stored:,} entries in {time.perf_counter() - t0:.0f} s", flush=True)
    assert stored == TOTAL, stored
    done.write_text(json.dumps({"entries": stored, "seconds": round(time.perf_counter() - t0, 1)}))
    return home, time.perf_counter() - t0


def authors() -> list[bytes]:
    return [bytes(nacl.signing.SigningKey(author_seed(i)).verify_key) for i in range(FEEDS)]


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every `interval` s until stopped; keeps the peak and a short history."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        start = time.perf_counter()
        while not self.stopped.is_set():
            rss = vm_field(self.pid, "VmRSS")
            if rss is None:
                return
            self.peak_kb = max(self.peak_kb, rss)
            self.samples.append((time.perf_counter() - start, rss))
            self.stopped.wait(self.interval)


def vm_field(pid: int, name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peer_home(base: Path, name: str, follows: list[bytes]) -> tuple[Path, bytes]:
    home = base / name
    key = create_identity(home)
    with Store(home / STORE_FILE, bytes(key.verify_key)) as store:
        for author in follows:
            store.publish(key, {"type": "follow", "feed": author})
    return home, bytes(key.verify_key)


def held_total(db: Path, feeds: list[bytes]) -> int:
    """Entries held without a gap, summed over these feeds."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        total = 0
        for start in range(0, len(feeds), 500):
            chunk = feeds[start:start + 500]
            row = con.execute(f"SELECT coalesce(sum(head_seq - low_seq + 1), 0) FROM feeds WHERE author IN "
                              f"({','.join('?' * len(chunk))})", chunk).fetchone()
            total += row[0]
        return total
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def follow_by_cli(home: Path, author: bytes) -> None:
    env = dict(os.environ, P2PNODE_HOME=str(home))
    subprocess.run([*p2pnode_command(), "follow", feed_id(author)], env=env, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bulk-feeds", type=int, default=400, help="feeds the large peer follows (900 entries each)")
    parser.add_argument("--small-peers", type=int, default=3)
    parser.add_argument("--small-feeds", type=int, default=30)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "p2pnode-bench-cache",
                        help="where the serving node's store is built once and kept")
    parser.add_argument("--server-web", default="127.0.0.1:0",
                        help="the serving node's --web (as a user runs it: on; 'off' for none)")
    parser.add_argument("--timeout", type=float, default=1200.0)
    args = parser.parse_args()
    pause = threading.Event()
    load = os.getloadavg()

    source_home, build_s = build_home(args.cache)
    print(f"store: {TOTAL:,} entries in {FEEDS} feeds (one of {BIG_FEED:,}); "
          + (f"built in {build_s:.1f} s" if build_s else f"from the cache {source_home}"))
    feeds = authors()
    big, small = feeds[0], feeds[1:]
    with tempfile.TemporaryDirectory(prefix="p2pnode-serve-") as tmp:
        base = Path(tmp)
        t0 = time.perf_counter()
        server_home = base / "server"
        shutil.copytree(source_home, server_home)
        (server_home / "built").unlink()
        print(f"copied the store ({(server_home / STORE_FILE).stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t0:.1f} s")

        plans = {"bulk": small[:args.bulk_feeds]}
        for i in range(args.small_peers):
            first = args.bulk_feeds + i * args.small_feeds
            plans[f"small{i}"] = small[first:first + args.small_feeds]
        homes = {name: peer_home(base, name, follows) for name, follows in plans.items()}
        newest_home, _ = peer_home(base, "newest", [])

        server, address = start_node(server_home, "--no-lan", "--no-upnp", "--web", args.server_web)
        sampler = RssSampler(server.pid)
        sampler.start()
        rss_at_start = vm_field(server.pid, "VmRSS") or 0
        procs: dict[str, subprocess.Popen] = {}
        extra = ("--seed", address, "--no-lan", "--no-upnp", "--web", "off")
        newest, _ = start_node(newest_home, *extra)
        started = time.perf_counter()
        for name, (home, _) in homes.items():
            procs[name], _ = start_node(home, *extra)
        wanted = {name: len(follows) * feed_sizes()[1] for name, follows in plans.items()}
        done_at: dict[str, float] = {}
        newest_at = followed_at = newest_cli_s = None
        last_print = started
        while True:
            now = time.perf_counter() - started
            for name, follows in plans.items():
                if name not in done_at and held_total(homes[name][0] / STORE_FILE, follows) >= wanted[name]:
                    done_at[name] = now
            bulk_held = held_total(homes["bulk"][0] / STORE_FILE, plans["bulk"])
            if followed_at is None and (bulk_held >= wanted["bulk"] // 4 or "bulk" in done_at):
                t_cli = time.perf_counter()
                follow_by_cli(newest_home, big)  # while the bulk peer is syncing
                followed_at = time.perf_counter() - started
                newest_cli_s = followed_at - (t_cli - started)
            if followed_at is not None and newest_at is None:
                count, head = held(newest_home / STORE_FILE, big)
                if head == BIG_FEED and count >= 50:
                    newest_at = time.perf_counter() - started
            big_held = held(newest_home / STORE_FILE, big)[0]
            if len(done_at) == len(plans) and big_held >= BIG_FEED:
                done_at["newest"] = time.perf_counter() - started
                break
            dead = [n for n, p in [*procs.items(), ("server", server), ("newest", newest)] if p.poll() is not None]
            if dead or now > args.timeout:
                raise SystemExit(f"stopped after {now:.0f} s: exited {dead}; done {sorted(done_at)}")
            if time.perf_counter() - last_print > 10:
                last_print = time.perf_counter()
                print(f"  {now:.0f} s: bulk {bulk_held:,}/{wanted['bulk']:,}, newest {big_held:,}/{BIG_FEED:,}, "
                      f"server RSS {sampler.peak_kb / 1024:.1f} MB peak so far", flush=True)
            pause.wait(0.02 if followed_at is not None and newest_at is None else 0.2)
        elapsed = time.perf_counter() - started
        sampler.stopped.set()
        sampler.join()
        hwm_kb = vm_field(server.pid, "VmHWM") or 0
        tree = descendants(server.pid)
        tree_hwm = sum(peak_rss_mb(p) for p in tree)
        served = sum(wanted.values()) + BIG_FEED
        server_cpu = cpu_seconds(server.pid)
        load_after = os.getloadavg()
        for proc in [*procs.values(), newest, server]:
            proc.terminate()
        codes = [proc.wait(timeout=60) for proc in [*procs.values(), newest, server]]

    peak_mb, hwm_mb = sampler.peak_kb / 1024, hwm_kb / 1024
    print(f"peers: bulk follows {len(plans['bulk'])} feeds ({wanted['bulk']:,} entries), {args.small_peers} more "
          f"follow {args.small_feeds} each, one follows the {BIG_FEED:,}-entry feed mid-way")
    for name, at in sorted(done_at.items(), key=lambda item: item[1]):
        print(f"  {name}: complete after {at:.1f} s")
    print(f"served {served:,} entries in {elapsed:.1f} s = {served / elapsed:,.0f} entries/s "
          f"(all peers at once; server CPU {server_cpu:.1f} s)")
    print(f"serving node RSS: at start {rss_at_start / 1024:.1f} MB, peak sampled {peak_mb:.1f} MB, VmHWM "
          f"{hwm_mb:.1f} MB: ratio to the {RSS_BOUND_MB:.0f} MB bound {hwm_mb / RSS_BOUND_MB:.2f} "
          f"({len(sampler.samples)} samples; with its {len(tree) - 1} worker processes, summed HWM "
          f"{tree_hwm:.1f} MB)")
    if newest_at is not None and followed_at is not None:
        print(f"newest 50 of the newly followed {BIG_FEED:,}-entry feed held {newest_at - followed_at:.2f} s after "
              f"`p2pnode follow` returned (the command itself took {newest_cli_s:.2f} s; bound {NEWEST_BOUND_S:g} s: "
              f"ratio {(newest_at - followed_at) / NEWEST_BOUND_S:.2f}), while the bulk peer was syncing")
    print(f"load average: {load[0]:.2f} before, {load_after[0]:.2f} after (2 cores shared)")
    print(json.dumps({"entries_served": served, "seconds": round(elapsed, 1),
                      "entries_per_s": round(served / elapsed), "server_peak_rss_mb": round(peak_mb, 1),
                      "server_vmhwm_mb": round(hwm_mb, 1), "ratio_to_150mb": round(hwm_mb / RSS_BOUND_MB, 2),
                      "newest_50_s": None if newest_at is None else round(newest_at - followed_at, 2),
                      "build_s": round(build_s, 1), "exit_codes": codes, "load": [load[0], load_after[0]]}))


if __name__ == "__main__":
    main()
