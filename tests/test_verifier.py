# The signature workers (p2pnode/verifier.py): real worker processes give the same answer as verifying
# inline, for clean batches and for a bad entry in any position, including one only the workers check.
from __future__ import annotations

import nacl.signing
import pytest

from p2pnode.verifier import Verifier
from protocol.log import create_entry, verify_entries

KEY = nacl.signing.SigningKey(b"\x09" * 32)


def _batch(n: int) -> list[tuple[bytes, bytes, bytes | None]]:
    items, previous = [], None
    for i in range(n):
        previous = create_entry(KEY, previous, {"type": "post", "text": f"entry {i}"}, 1_000 + i)
        items.append((previous.header_bytes, previous.signature, previous.payload))
    return items


@pytest.fixture(scope="module")
def workers() -> Verifier:
    verifier = Verifier(2)
    yield verifier
    verifier.close()


async def test_clean_batch_matches_inline(workers: Verifier) -> None:
    items = _batch(40)
    entries, error = await workers.verify(items)
    assert error is None
    assert [e.hash for e in entries] == [e.hash for e in verify_entries(items)[0]]
    assert workers.pool is not None  # it really went through the worker processes


@pytest.mark.parametrize("position", [0, 7, 19, 20, 33, 39])
@pytest.mark.parametrize("damage", ["signature", "header", "payload"])
async def test_first_bad_entry_matches_inline(workers: Verifier, position: int, damage: str) -> None:
    items = _batch(40)
    header, signature, payload = items[position]
    if damage == "signature":
        signature = signature[:10] + bytes([signature[10] ^ 1]) + signature[11:]
    elif damage == "header":
        header = header[:-1] + bytes([header[-1] ^ 1])
    else:
        payload = payload.replace(b"entry", b"Entry")
    items[position] = (header, signature, payload)
    entries, error = await workers.verify(items)
    inline_entries, inline_error = verify_entries(items)
    assert error is not None and inline_error is not None
    assert error.reason == inline_error.reason
    assert len(entries) == position == len(inline_entries)
