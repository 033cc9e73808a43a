# The scaling simulation (bench/sim.py) at 100 nodes, as CI runs it: every post reaches every node that wants
# its feed, each entry arrives about once per node, entries take no more hops than the follow graph's diameter
# plus two, and after the authors, the relays and half the other nodes are gone the posted feeds survive.
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SIM = Path(__file__).resolve().parents[1] / "bench" / "sim.py"


def load_sim() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sim", SIM)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sim"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_hundred_nodes_deliver_every_post_about_once() -> None:
    sim = load_sim()
    figures = sim.run(sim.parse(["--nodes", "100", "--posts", "60", "--warmup", "90"]))
    print(sim.report(figures))
    assert figures.follower_pairs > 0 and figures.follower_delivered == figures.follower_pairs
    assert figures.wanting_delivered == figures.wanting_pairs
    assert figures.receptions_per_entry_per_node <= 1.3
    assert 0 < figures.max_hops <= figures.follow_diameter + 2
    assert figures.retrievable["lost"] == 0


def test_prepared_stores_hold_what_ingesting_the_same_feeds_writes(tmp_path: Path) -> None:
    """The simulator fills each node's store by copying rows from one source store (fast at 1,000 nodes):
    the result must be the very rows that ingesting those feeds' entries, feed after feed, writes."""
    import random

    import nacl.signing

    from p2pnode.store import Store

    sim = load_sim()
    rng = random.Random(3)
    keys = [nacl.signing.SigningKey(rng.randbytes(32)) for _ in range(12)]
    owners = [bytes(k.verify_key) for k in keys]
    graph = sim.follow_graph(12, 2, rng)
    follows = sim.sign_follows(keys, owners, graph)
    source = sim.prepare_source(tmp_path, follows)
    wanted = sorted(sim.wanted_by(graph, 0, 1))
    assert 1 < len(wanted) < 12
    with Store(tmp_path / "ingested.sqlite3", owners[0]) as ingested, \
            Store(tmp_path / "loaded.sqlite3", owners[0]) as loaded:
        for j in wanted:
            assert ingested.ingest_verified(follows[j]).error is None
        sim.load_feeds(loaded, source, [owners[j] for j in wanted])
        for table in ("entries ORDER BY id", "contacts ORDER BY author, target", "feeds ORDER BY author",
                      "profiles ORDER BY author"):
            rows = ingested.db.execute(f"SELECT * FROM {table}").fetchall()
            assert loaded.db.execute(f"SELECT * FROM {table}").fetchall() == rows
        assert len(loaded.db.execute("SELECT * FROM entries").fetchall()) == 2 * len(wanted)
        assert loaded.check() == []
        assert loaded.wanted_feeds(1) == {owners[j] for j in wanted}
