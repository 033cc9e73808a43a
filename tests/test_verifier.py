# Checking received batches (p2pnode/verifier.py, spec/log.md "Checking a batch"): real worker processes give
# the same answer as checking inline, for clean batches and for a bad entry in any position; a feed's run that
# forms a hash chain is proven by its last signature, so a damaged signature inside it is not trusted, only
# reported as unchecked, and a damaged last signature cuts the run back to the entry before it.
from __future__ import annotations

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.verifier import WORKER_BATCH, Verifier
from protocol.log import create_entry, signature_ok, verify_batch

KEY = nacl.signing.SigningKey(b"\x09" * 32)
KEYS = [nacl.signing.SigningKey(bytes([20 + i]) * 32) for i in range(40)]

Item = tuple[bytes, bytes, bytes | None]


def _chain(key: nacl.signing.SigningKey, n: int) -> list[Item]:
    items, previous = [], None
    for i in range(n):
        previous = create_entry(key, previous, {"type": "post", "text": f"entry {i}"}, 1_000 + i)
        items.append((previous.header_bytes, previous.signature, previous.payload))
    return items


def _many_feeds(n: int) -> list[Item]:
    """The first entries of n feeds: no chain proves one by another, so every signature is checked (the
    workers' case)."""
    return [_chain(key, 1)[0] for key in KEYS[:n]]


def _damage(items: list[Item], position: int, what: str) -> None:
    header, signature, payload = items[position]
    if what == "signature":
        signature = signature[:10] + bytes([signature[10] ^ 1]) + signature[11:]
    elif what == "header":
        header = header[:-1] + bytes([header[-1] ^ 1])
    else:
        assert payload is not None
        payload = payload.replace(b"entry", b"Entry")
    items[position] = (header, signature, payload)


@pytest.fixture(scope="module")
def workers() -> Verifier:
    verifier = Verifier(2)
    yield verifier
    verifier.close()


async def test_a_clean_chain_is_proven_by_its_last_signature(workers: Verifier) -> None:
    items = _chain(KEY, 40)
    entries, error, unchecked = await workers.verify(items)
    assert error is None and len(entries) == 40
    assert unchecked == {e.hash for e in entries[:-1]}  # only the last entry's own signature was checked
    assert (entries, error, unchecked) == verify_batch(items)


async def test_a_clean_batch_of_many_feeds_goes_through_the_workers(workers: Verifier) -> None:
    items = _many_feeds(40)
    entries, error, unchecked = await workers.verify(items)
    assert error is None and len(entries) == 40 and unchecked == set()
    assert workers.pool is not None  # it really went through the worker processes


@pytest.mark.parametrize("position", [0, 7, 19, 20, 33, 39])
@pytest.mark.parametrize("damage", ["signature", "header", "payload"])
async def test_first_bad_entry_matches_inline(workers: Verifier, position: int, damage: str) -> None:
    items = _many_feeds(40)
    _damage(items, position, damage)
    entries, error, unchecked = await workers.verify(items)
    inline_entries, inline_error, inline_unchecked = verify_batch(items)
    assert error is not None and inline_error is not None
    assert error.reason == inline_error.reason
    assert len(entries) == position == len(inline_entries)
    assert unchecked == inline_unchecked == set()


@pytest.mark.parametrize("position", [0, 7, 38])
async def test_a_damaged_signature_inside_a_chain_is_kept_unchecked(workers: Verifier, position: int) -> None:
    """The entry is the author's (the last entry's signature covers its hash), but its signature bytes are
    not: the node stores it as unchecked and never sends it on before checking it (test_store.py)."""
    items = _chain(KEY, 40)
    _damage(items, position, "signature")
    entries, error, unchecked = await workers.verify(items)
    assert error is None and len(entries) == 40
    assert entries[position].hash in unchecked


async def test_a_damaged_last_signature_cuts_the_chain_to_the_entry_before(workers: Verifier) -> None:
    items = _chain(KEY, 40)
    _damage(items, 39, "signature")
    entries, error, unchecked = await workers.verify(items)
    assert error is not None and error.reason == "invalid: bad signature"
    assert len(entries) == 39 and unchecked == {e.hash for e in entries[:-1]}  # entry 38 checked instead
    _damage(items, 38, "signature")  # and when that one is bad too, the cut moves on down
    entries, error, _ = await workers.verify(items)
    assert error is not None and len(entries) == 38


async def test_a_broken_link_means_every_signature_is_checked() -> None:
    items = _chain(KEY, 10)
    del items[4]  # entry 6 no longer follows the entry before it in the batch
    _damage(items, 2, "signature")
    entries, error, unchecked = verify_batch(items)
    assert error is not None and len(entries) == 2
    assert unchecked == {entries[0].hash}  # what is left, entries 1-2, is a chain again: entry 2 proves 1


async def test_an_entry_is_not_proven_by_a_signature_that_was_cut_away() -> None:
    """A's entries 1-2 lean on A's entry 3, which comes after B's bad entry: the cut at B leaves A's entry 2
    to be checked itself, and a damaged one cuts there."""
    a, b = _chain(KEYS[0], 3), _chain(KEYS[1], 1)
    items = [a[0], a[1], b[0], a[2]]
    _damage(items, 2, "signature")
    entries, error, unchecked = verify_batch(items)
    assert error is not None and len(entries) == 2 and unchecked == {verify_batch(a[:1])[0][0].hash}
    _damage(items, 1, "signature")
    entries, error, _ = verify_batch(items)
    assert error is not None and len(entries) == 1


CHAINS = {key: _chain(key, 6) for key in KEYS[:3]}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5), st.booleans()), max_size=14))
def test_every_entry_kept_is_proven_by_a_good_signature(picks: list[tuple[int, int, bool]]) -> None:
    """Any batch (feeds interleaved, entries repeated, skipped or out of order, signatures altered): what
    verify_batch keeps is a prefix of the batch, stops only at a bad signature, and every entry kept is signed
    itself or linked, entry by entry within what is kept, to a later entry of its feed whose signature is good."""
    items: list[Item] = []
    for feed, seq, alter in picks:
        items.append(CHAINS[KEYS[feed]][seq])
        if alter:
            _damage(items, len(items) - 1, "signature")
    kept, error, unchecked = verify_batch(items)
    assert [e.to_wire() for e in kept] == [list(item) for item in items[:len(kept)]]
    assert (error is None) == (len(kept) == len(items))
    for position, entry in enumerate(kept):
        if entry.hash not in unchecked:
            assert signature_ok(entry.header_bytes, entry.signature)
            continue
        proof = entry
        for later in kept[position + 1:]:
            if later.author == entry.author:
                assert later.seq == proof.seq + 1 and later.header.prev == proof.hash
                proof = later
        assert proof is not entry and signature_ok(proof.header_bytes, proof.signature)


LONG = 300  # over WORKER_BATCH: the batch's structure is checked in the workers, a chunk of 150 each
MANY_KEYS = [nacl.signing.SigningKey(i.to_bytes(2, "big") * 16) for i in range(LONG)]


def test_long_batches_go_to_the_workers_in_chunks() -> None:
    assert WORKER_BATCH <= LONG < 2 * WORKER_BATCH


@pytest.mark.parametrize("position", [0, 77, 149, 150, 298, 299])
@pytest.mark.parametrize("damage", ["signature", "header", "payload", None])
@pytest.mark.parametrize("shape", ["one feed", "many feeds"])
async def test_a_long_batch_checked_in_the_workers_matches_inline(workers: Verifier, position: int,
                                                                  damage: str | None, shape: str) -> None:
    items = _chain(KEY, LONG) if shape == "one feed" else [_chain(key, 1)[0] for key in MANY_KEYS]
    if damage is not None:
        _damage(items, position, damage)
    pending = workers.start(items)
    assert len(pending.structure) == 2  # it really went to the two worker processes, a chunk each
    entries, error, unchecked = await pending.result()
    inline_entries, inline_error, inline_unchecked = verify_batch(items)
    assert [e.hash for e in entries] == [e.hash for e in inline_entries]
    assert [e.to_wire() for e in entries] == [e.to_wire() for e in inline_entries]
    assert [e.decoded for e in entries] == [e.decoded for e in inline_entries]
    assert (error and error.reason) == (inline_error and inline_error.reason)
    assert unchecked == inline_unchecked
