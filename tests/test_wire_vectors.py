# The spec's wire vectors: the committed file is what the generator produces; every valid vector decodes to
# its stated fields and re-encodes to the same bytes; every invalid one is refused with the stated prefix.
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from protocol import wire
from protocol.errors import ProtocolError

WIRE_VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors" / "wire"
DOCUMENT = json.loads((WIRE_VECTORS / "messages.json").read_text())


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wire_vectors", WIRE_VECTORS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_vectors_match_generator() -> None:
    for name, text in _generator().build().items():
        assert (WIRE_VECTORS / name).read_text() == text, f"{name} is stale: run spec/vectors/wire/generate.py"


def test_every_message_type_has_a_vector() -> None:
    types = {case["type"] for case in DOCUMENT["valid"]}
    assert types == {"hello", "want", "have", "stream", "backfill", "entries", "fetch", "peers", "ping", "pong",
                     "close", "check", "checked"}


@pytest.mark.parametrize("case", DOCUMENT["valid"], ids=lambda c: c["description"])
def test_valid_vector(case: dict) -> None:
    data = bytes.fromhex(case["bytes"])
    message = wire.decode(data)
    assert type(message).__name__.lower() == case["type"]
    assert _generator()._fields(message) == case["fields"]
    assert wire.encode(message) == data


@pytest.mark.parametrize("case", DOCUMENT["invalid"], ids=lambda c: c["description"])
def test_invalid_vector(case: dict) -> None:
    with pytest.raises(ProtocolError) as caught:
        wire.decode(bytes.fromhex(case["bytes"]))
    assert caught.value.reason.startswith(case["error"] + ":")
