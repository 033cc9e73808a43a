# spec/vectors/wire: the committed file is what its generator produces; protocol/wire.py decodes each valid
# message as described (and re-encodes it to the same bytes) and refuses each invalid one.
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from protocol import wire

WIRE_VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors" / "wire"
VECTORS = json.loads((WIRE_VECTORS / "messages.json").read_text())


def test_committed_vectors_match_generator() -> None:
    spec = importlib.util.spec_from_file_location("wire_vectors", WIRE_VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (WIRE_VECTORS / "messages.json").read_text() == module.render(), "run spec/vectors/wire/generate.py"


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["description"])
def test_valid(case: dict) -> None:
    data = bytes.fromhex(case["msgpack"])
    message = wire.decode(data)
    for name, value in case["fields"].items():
        assert getattr(message, name) == value
    assert wire.encode(message) == data


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["description"])
def test_invalid(case: dict) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(bytes.fromhex(case["msgpack"]))
