# Does replication scale? Runs N real nodes (real handshakes, real SQLite files, the real replication code) in
# one process on the in-process memory network under a virtual clock, with a random follow graph, relays, and
# authors posting; prints delivery, hops, receptions per entry per node, bytes and messages per node, wall
# time and peak RSS, then removes the authors, the relays (the seeds) and a share of the other nodes and
# reports which feeds stay retrievable from the survivors.
#   python bench/sim.py --nodes 100            (CI runs this size through tests/test_sim.py)
#   python bench/sim.py --nodes 1000 --hops 1
# Before posting, every node holds the follow entries of the feeds it wants (a network that has converged on
# its follow graph); the measured phase is the posts, so receptions count only post entries.
from __future__ import annotations

import argparse
import cProfile
import gc
import json
import random
import resource
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing
import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pnode.memnet import MemoryNetwork  # noqa: E402
from p2pnode.node import Node, NodeConfig  # noqa: E402
from p2pnode.store import Store  # noqa: E402
from protocol.ids import Address  # noqa: E402
from protocol.log import Entry, create_entry  # noqa: E402

PORT = 8765


@dataclass
class Figures:
    nodes: int
    relays: int
    hops: int
    posts: int
    follower_pairs: int = 0
    follower_delivered: int = 0
    wanting_pairs: int = 0
    wanting_delivered: int = 0
    worst_post_follower_share: float = 1.0
    posts_reaching_all_followers: int = 0
    receptions: int = 0
    max_hops: int = 0
    mean_hops: float = 0.0
    follow_diameter: int = 0
    bytes_per_node: float = 0.0
    messages_per_node: float = 0.0
    virtual_s: float = 0.0
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0
    # phase -> (wall s, CPU s, messages sent by all nodes)
    phases: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    retrievable: dict[str, Any] = field(default_factory=dict)

    @property
    def receptions_per_entry_per_node(self) -> float:
        return self.receptions / max(1, self.wanting_delivered)


PHASES = ["set-up", "initial sync", "posting", "removal"]


class PhaseClock:
    """Wall and CPU time of each phase of a run, and the messages the nodes sent in it."""

    def __init__(self, profile: str | None = None) -> None:
        self.wall0 = self.wall = time.monotonic()
        self.cpu0 = self.cpu = time.process_time()
        self.messages = 0
        # "PHASE:FILE": profile that phase alone (cProfile) and write the stats to FILE
        self.profiled, _, self.profile_file = (profile or "").partition(":")
        self.profiler = cProfile.Profile() if profile else None
        if self.profiler is not None and self.profiled == PHASES[0]:
            self.profiler.enable()

    def lap(self, figures: Figures, phase: str, nodes: list[Node]) -> None:
        wall, cpu = time.monotonic(), time.process_time()
        messages = sum(node.stats.messages_out for node in nodes)
        figures.phases[phase] = (wall - self.wall, cpu - self.cpu, messages - self.messages)
        self.wall, self.cpu, self.messages = wall, cpu, messages
        if self.profiler is not None:
            if phase == self.profiled:
                self.profiler.disable()
                self.profiler.dump_stats(self.profile_file)
            elif PHASES.index(phase) + 1 < len(PHASES) and PHASES[PHASES.index(phase) + 1] == self.profiled:
                self.profiler.enable()
        print(f"  {phase} done: wall {wall - self.wall0:.1f} s, CPU {cpu - self.cpu0:.1f} s so far", file=sys.stderr,
              flush=True)


def sign_follows(keys: list[nacl.signing.SigningKey], owners: list[bytes], graph: list[list[int]]) -> list[list[Entry]]:
    """Each node's follow entries, as its author signs them."""
    follow_entries: list[list[Entry]] = []
    for i, key in enumerate(keys):
        chain: list[Entry] = []
        for number, target in enumerate(graph[i]):
            chain.append(create_entry(key, chain[-1] if chain else None,
                                      {"type": "follow", "feed": owners[target]}, 1_000 + number))
        follow_entries.append(chain)
    return follow_entries


def prepare_source(workdir: Path, follow_entries: list[list[Entry]]) -> Path:
    """A store holding every node's follow entries, stored through the store's own ingest (checks, contacts
    and feed heads derived as for any entry): the rows every node's store copies from."""
    path = workdir / "follows.sqlite3"
    with Store(path, bytes(32)) as source:
        result = source.ingest_verified([entry for chain in follow_entries for entry in chain])
        assert result.error is None, result.error
    return path


def prepare_template(workdir: Path) -> Path:
    """An empty store with every migration applied, copied as each node's store file."""
    path = workdir / "template.sqlite3"
    Store(path, bytes(32)).close()
    return path


SOURCE_TABLES = {  # what ingesting a feed's entries writes, per table: the columns copied from the source store
    "entries": "author, seq, hash, header, signature, payload, type, timestamp, retracted",
    "contacts": "author, target, following, blocking, follow_seq, block_seq",
    "feeds": "author, head_seq, head_hash, forked, low_seq",
    "profiles": "author, name, about, seq",
}


def load_feeds(store: Store, source: Path, authors: list[bytes]) -> None:
    """Give `store` these feeds of the source store, in one transaction: the same rows, in the same order
    (feed after feed as listed, each by seq), that ingesting the feeds' entries one feed after another writes
    (tests/test_sim.py checks that they are equal)."""
    db = store.db
    db.execute("ATTACH DATABASE ? AS source", (str(source),))
    try:
        db.execute("CREATE TEMP TABLE wanted (author BLOB PRIMARY KEY, position INTEGER NOT NULL)")
        db.executemany("INSERT INTO temp.wanted VALUES (?, ?)", [(a, k) for k, a in enumerate(authors)])
        db.execute("BEGIN IMMEDIATE")
        try:
            for table, columns in SOURCE_TABLES.items():
                picked = ", ".join(f"t.{c.strip()}" for c in columns.split(","))
                order = "w.position, t.seq" if table == "entries" else "w.position"
                db.execute(f"INSERT INTO main.{table} ({columns}) SELECT {picked} FROM source.{table} AS t "
                           f"JOIN temp.wanted AS w ON w.author = t.author ORDER BY {order}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("DROP TABLE temp.wanted")
    finally:
        db.execute("DETACH DATABASE source")


def follow_graph(n: int, follows: int, rng: random.Random) -> list[list[int]]:
    return [rng.sample([j for j in range(n) if j != i], min(follows, n - 1)) for i in range(n)]


def wanted_by(graph: list[list[int]], i: int, hops: int) -> set[int]:
    wanted, frontier = {i}, {i}
    for _ in range(hops):
        frontier = {t for f in frontier for t in graph[f]} - wanted
        wanted |= frontier
    return wanted


def diameter(graph: list[list[int]], sample: int, rng: random.Random) -> int:
    """Longest shortest follow path from a sample of nodes (the follow graph is directed)."""
    longest = 0
    for start in rng.sample(range(len(graph)), min(sample, len(graph))):
        seen = {start: 0}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for nxt in graph[node]:
                if nxt not in seen:
                    seen[nxt] = seen[node] + 1
                    queue.append(nxt)
        longest = max(longest, max(seen.values()))
    return longest


async def simulate(args: argparse.Namespace, workdir: Path) -> Figures:
    clock = PhaseClock(args.profile)
    rng = random.Random(args.seed)
    n, relays = args.nodes, args.relays
    keys = [nacl.signing.SigningKey(rng.randbytes(32)) for _ in range(n)]
    owners = [bytes(k.verify_key) for k in keys]
    graph = follow_graph(n, args.follows, rng)
    hosts = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(n)]
    seeds = [Address(hosts[r], PORT, owners[r]) for r in range(relays)]
    figures = Figures(n, relays, args.hops, args.posts)
    figures.follow_diameter = diameter(graph, 50, rng)

    # the follow entries, signed once and stored once (through the store's own ingest) in a source store;
    # each node's store then gets the rows of the feeds its node wants (load_feeds), and its schema from a
    # template file
    follow_entries = sign_follows(keys, owners, graph)
    source = prepare_source(workdir, follow_entries)
    template = prepare_template(workdir)
    wanting = [wanted_by(graph, i, args.hops) if i >= relays else set(range(n)) for i in range(n)]

    network = MemoryNetwork()
    nodes: list[Node] = []
    scopes: list[trio.CancelScope] = []
    first_source: dict[tuple[int, bytes], bytes | None] = {}
    index_of = {owner: i for i, owner in enumerate(owners)}
    measuring = False

    def observer_for(i: int):  # noqa: ANN202
        def observe(entries: list[Entry], source: bytes | None) -> None:
            if measuring:
                for entry in entries:
                    first_source.setdefault((i, entry.hash), source)
        return observe

    def open_store(i: int) -> Store:
        path = workdir / f"node{i}.sqlite3"
        shutil.copyfile(template, path)
        store = Store(path, owners[i])
        store.db.execute("PRAGMA cache_size=-256")  # 256 KiB a node: a thousand page caches add up
        load_feeds(store, source, [owners[j] for j in sorted(wanting[i]) if follow_entries[j]])
        return store

    stores = [open_store(i) for i in range(n)]  # every store ready before the first node starts
    clock.lap(figures, "set-up", nodes)

    async def run_node(i: int, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        store = stores[i]
        config = NodeConfig(listen_host=hosts[i], listen_port=PORT, hops=args.hops, relay=i < relays,
                            verify_workers=0, store_thread=False, poll_interval=3600.0, replication_tick=1.0)
        node = Node(keys[i], store, config, network.interface(hosts[i]), random.Random(i))
        node.observer = observer_for(i)
        nodes.append(node)
        try:
            with trio.CancelScope() as scope:
                scopes.append(scope)
                await node.run([s for s in seeds if s.key != owners[i]], task_status=task_status)
        finally:
            store.close()

    async with trio.open_nursery() as nursery:
        for i in range(n):
            await nursery.start(run_node, i)
        by_index = {bytes(node.key.verify_key): node for node in nodes}
        ordered = [by_index[o] for o in owners]
        # (nodes start one after another, and those started already dial and sync meanwhile: that is part of
        # the initial sync)
        await trio.sleep(args.warmup)  # the peer graph forms (dials, peer exchange, address checks)
        clock.lap(figures, "initial sync", nodes)
        before = [(node.stats.bytes_out, node.stats.messages_out, node.stats.entries_in) for node in ordered]
        measuring = True
        start = trio.current_time()
        posts: list[tuple[int, Entry]] = []
        for number in range(args.posts):
            author = rng.randrange(relays, n) if n > relays else 0
            entry = await ordered[author].publish({"type": "post", "text": f"post {number}"})
            posts.append((author, entry))
            await trio.sleep(args.interval)
        wanting_of = {a: [i for i in range(n) if a in wanting[i] and i != a] for a, _ in posts}

        def delivered() -> bool:
            return all(ordered[i].store.head(owners[a]) is not None
                       and ordered[i].store.head(owners[a]).seq >= e.seq for a, e in posts for i in wanting_of[a])

        with trio.move_on_after(args.settle):
            while not delivered():
                await trio.sleep(1.0)
        figures.virtual_s = trio.current_time() - start
        measuring = False
        for (bytes_out, messages_out, _), node in zip(before, ordered, strict=True):
            figures.bytes_per_node += (node.stats.bytes_out - bytes_out) / n
            figures.messages_per_node += (node.stats.messages_out - messages_out) / n
        figures.receptions = sum(node.stats.entries_in - entries_in
                                 for (_, _, entries_in), node in zip(before, ordered, strict=True))

        clock.lap(figures, "posting", nodes)
        hop_counts = []
        for author, entry in posts:
            followers = [i for i in range(n) if owners[author] in {owners[t] for t in graph[i]} and i >= relays]
            got = [i for i in followers if ordered[i].store.entry_by_hash(entry.hash) is not None]
            figures.follower_pairs += len(followers)
            figures.follower_delivered += len(got)
            if followers:
                share = len(got) / len(followers)
                figures.worst_post_follower_share = min(figures.worst_post_follower_share, share)
                figures.posts_reaching_all_followers += share == 1.0
            for i in wanting_of[author]:
                figures.wanting_pairs += 1
                if ordered[i].store.entry_by_hash(entry.hash) is not None:
                    figures.wanting_delivered += 1
                    hop_counts.append(_hops(i, entry.hash, author, first_source, index_of))
        known = [h for h in hop_counts if h is not None]
        figures.max_hops = max(known, default=0)
        figures.mean_hops = sum(known) / max(1, len(known))

        # remove the authors, the relays (also the seeds) and a share of the rest; what stays retrievable?
        authors = {a for a, _ in posts}
        others = [i for i in range(relays, n) if i not in authors]
        removed = set(authors) | set(range(relays)) | set(rng.sample(others, int(len(others) * args.remove_share)))
        survivors = [i for i in range(n) if i not in removed]
        for i in removed:
            network.down.add(hosts[i])
        complete = 0
        partial = 0
        for author in sorted(authors):
            head = ordered[author].store.head(owners[author])
            holders = [i for i in survivors if ordered[i].store.head(owners[author]) is not None]
            if any(ordered[i].store.head(owners[author]).seq == head.seq for i in holders):
                complete += 1
            elif holders:
                partial += 1
        figures.retrievable = {"authors": len(authors), "removed_nodes": len(removed), "survivors": len(survivors),
                               "complete_on_a_survivor": complete, "partial_only": partial,
                               "lost": len(authors) - complete - partial}
        nursery.cancel_scope.cancel()
    clock.lap(figures, "removal", nodes)
    figures.cpu_s = time.process_time() - clock.cpu0
    figures.wall_s = time.monotonic() - clock.wall0
    figures.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return figures


def _hops(node: int, entry_hash: bytes, author: int, first_source: dict[tuple[int, bytes], bytes | None],
          index_of: dict[bytes, int]) -> int | None:
    hops = 0
    current = node
    while current != author:
        source = first_source.get((current, entry_hash))
        if source is None or hops > 64:
            return None
        current = index_of[source]
        hops += 1
    return hops


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--relays", type=int, default=None, help="default: max(3, nodes // 100)")
    parser.add_argument("--follows", type=int, default=20)
    parser.add_argument("--hops", type=int, default=2)
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.5, help="virtual seconds between posts")
    parser.add_argument("--warmup", type=float, default=180.0, help="virtual seconds before posting")
    parser.add_argument("--settle", type=float, default=300.0, help="virtual seconds to wait for delivery")
    parser.add_argument("--remove-share", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--profile", default=None, metavar="PHASE:FILE",
                        help=f"profile one phase ({', '.join(PHASES)}) with cProfile, stats to FILE")
    args = parser.parse_args(argv)
    if args.relays is None:
        args.relays = max(3, args.nodes // 100)
    return args


# Python's cyclic garbage collector scans the young objects every 700 allocations and, every tenth time, the
# older ones too. One process holding a thousand nodes holds a thousand nodes' objects, so those scans cost
# more than the nodes themselves (measured at 300 nodes: 230 CPU-s with the default thresholds, 108 with
# these); a real node holds one node's objects. The simulation therefore collects less often.
GC_THRESHOLDS = (50_000, 20, 100)


def run(args: argparse.Namespace) -> Figures:
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        with tempfile.TemporaryDirectory(prefix="p2pnode-sim-") as workdir:
            return trio.run(simulate, args, Path(workdir), clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        gc.set_threshold(*thresholds)


def report(f: Figures) -> str:
    follower = f.follower_delivered / max(1, f.follower_pairs)
    wanting = f.wanting_delivered / max(1, f.wanting_pairs)
    lines = [
        f"nodes {f.nodes} (relays {f.relays}), hops {f.hops}, posts {f.posts}",
        f"delivery to direct followers: {follower:.2%} ({f.follower_delivered}/{f.follower_pairs}); worst post "
        f"{f.worst_post_follower_share:.2%}; posts reaching all followers {f.posts_reaching_all_followers}/{f.posts}",
        f"delivery to every node that wants the feed: {wanting:.2%} ({f.wanting_delivered}/{f.wanting_pairs})",
        f"receptions per entry per wanting node: {f.receptions_per_entry_per_node:.3f} (target <= 1.3: ratio "
        f"{f.receptions_per_entry_per_node / 1.3:.2f})",
        f"hops: max {f.max_hops}, mean {f.mean_hops:.2f}; follow graph diameter (sampled) {f.follow_diameter}, "
        f"bound diameter + 2 = {f.follow_diameter + 2}",
        f"per node during the posts: {f.bytes_per_node / 1024:.1f} KiB and {f.messages_per_node:.0f} messages sent",
        f"virtual time to deliver {f.virtual_s:.1f} s; wall time {f.wall_s:.1f} s; peak RSS {f.peak_rss_mb:.0f} MB",
        "phases (wall s / CPU s / messages sent): "
        + ", ".join(f"{name} {w:.1f}/{c:.1f}/{m:,}" for name, (w, c, m) in f.phases.items())
        + f"; total wall {f.wall_s:.1f} s, CPU {f.cpu_s:.1f} s",
        f"after removing {f.retrievable['removed_nodes']} nodes (authors, relays, {f.retrievable['survivors']} "
        f"survivors): feeds complete on a survivor {f.retrievable['complete_on_a_survivor']}/"
        f"{f.retrievable['authors']}, partial only {f.retrievable['partial_only']}, lost {f.retrievable['lost']}",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse()
    figures = run(args)
    if args.json:
        data = dict(figures.__dict__, receptions_per_entry_per_node=figures.receptions_per_entry_per_node)
        print(json.dumps(data))
    else:
        print(report(figures))


if __name__ == "__main__":
    main()
