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
