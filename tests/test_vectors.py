# The spec's log vectors: the committed files are what the generator produces, and our implementation
# accepts every valid vector (with the stated hash) and rejects every invalid one with the stated error.
import importlib.util
import json
from pathlib import Path

import pytest

from protocol.errors import ProtocolError
from protocol.ids import entry_ref, feed_id
from protocol.log import FeedHead, validate_entry

LOG_VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors" / "log"


def _load(name: str) -> list[dict]:
    return json.loads((LOG_VECTORS / name).read_text())["cases"]


def _bytes(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


def _previous(case: dict) -> FeedHead | None:
    p = case["previous"]
    return None if p is None else FeedHead(bytes.fromhex(p["author"]), p["seq"], bytes.fromhex(p["hash"]))


def test_committed_vectors_match_generator() -> None:
    spec = importlib.util.spec_from_file_location("log_vectors", LOG_VECTORS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, text in module.build().items():
        assert (LOG_VECTORS / name).read_text() == text, f"{name} is stale: run spec/vectors/log/generate.py"


@pytest.mark.parametrize("case", _load("valid.json"), ids=lambda c: c["description"])
def test_valid_vector(case: dict) -> None:
    entry = validate_entry(_bytes(case["header"]), _bytes(case["signature"]), _bytes(case["payload"]),
                           _previous(case))
    assert entry.hash.hex() == case["hash"]
    assert entry_ref(entry.hash) == case["hash_text"]
    assert feed_id(entry.author) == case["author_text"]
    assert entry.seq == case["seq"]


@pytest.mark.parametrize("case", _load("invalid.json"), ids=lambda c: c["description"])
def test_invalid_vector(case: dict) -> None:
    with pytest.raises(ProtocolError) as caught:
        validate_entry(_bytes(case["header"]), _bytes(case["signature"]), _bytes(case["payload"]), _previous(case))
    assert caught.value.reason.startswith(case["error"] + ":")
