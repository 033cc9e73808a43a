# Bounded decoding (spec/wire.md, "Limits"): a wire message costs at most a small multiple of its size to
# decode, whatever its bytes, measured with tracemalloc: 1 MiB of empty arrays or maps is refused before
# any object is built, a message at the value limit and a full batch of junk payloads stay within a few MiB.
from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import msgpack
import nacl.signing
import pytest

from protocol import wire
from protocol.errors import TooLarge
from protocol.log import FORMAT_VERSION, Header, entry_hash, sha256, verify_entries
from protocol.msgcount import within_value_count

MiB = 1 << 20
KEY = nacl.signing.SigningKey(b"\x07" * 32)


def peak_bytes(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        action()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def container_of(kind: str, size: int) -> bytes:
    """A msgpack array32 (map32) of empty arrays (maps), `size` bytes in all."""
    count = size - 5
    if kind == "array":
        return b"\xdd" + count.to_bytes(4, "big") + b"\x90" * count
    return b"\xdf" + (count // 2).to_bytes(4, "big") + b"\x80" * (count // 2 * 2)


@pytest.mark.parametrize("kind", ["array", "map"])
def test_one_mib_of_empty_containers_is_refused_cheaply(kind: str) -> None:
    data = container_of(kind, wire.MAX_MESSAGE_SIZE)
    outcome: list[BaseException] = []

    def decode() -> None:
        try:
            wire.decode(data)
        except TooLarge as exc:
            outcome.append(exc)

    peak = peak_bytes(decode)
    assert outcome and outcome[0].reason.startswith("too-large:") and "values" in outcome[0].reason
    assert peak < MiB // 8, f"{peak} bytes to refuse a {len(data)}-byte message"


@pytest.mark.parametrize("empty", [b"\x90", b"\x80"], ids=["arrays", "maps"])
def test_message_at_the_value_limit_costs_a_few_mib(empty: bytes) -> None:
    # an unknown message type (ignored by receivers) padded with empty containers up to the limit
    values = wire.MAX_MESSAGE_VALUES - 10
    data = msgpack.packb({"type": "future", "pad": []}, use_bin_type=True)[:-1] + b"\xdd" + values.to_bytes(4, "big")
    data += empty * values
    assert within_value_count(data, wire.MAX_MESSAGE_VALUES)
    message: list[object] = []
    peak = peak_bytes(lambda: message.append(wire.decode(data)))
    assert message == [wire.UnknownMessage("future")]
    assert peak < 4 * MiB, f"{peak / MiB:.1f} MiB to decode {len(data)} bytes"


def test_one_value_too_many_is_refused() -> None:
    # the map, two keys, "future" and the array are 5 values; its elements make up the rest
    data = msgpack.packb({"type": "future", "pad": [0] * (wire.MAX_MESSAGE_VALUES - 5)}, use_bin_type=True)
    assert isinstance(wire.decode(data), wire.UnknownMessage)
    data = msgpack.packb({"type": "future", "pad": [0] * (wire.MAX_MESSAGE_VALUES - 4)}, use_bin_type=True)
    with pytest.raises(TooLarge):
        wire.decode(data)


def test_the_largest_messages_of_the_catalogue_are_within_the_limit() -> None:
    keys = [i.to_bytes(32, "big") for i in range(wire.MAX_FEEDS_PER_WANT)]
    want = wire.Want({k: 2**53 - 1 for k in keys}, tuple(keys), True)
    assert wire.decode(wire.encode(want)) == want
    entries = wire.Entries(tuple((b"h" * 100, b"s" * 64, None) for _ in range(wire.MAX_ENTRIES_PER_MESSAGE)))
    assert wire.decode(wire.encode(entries)) == entries


def test_full_batch_of_junk_payloads_costs_a_small_multiple_of_its_size() -> None:
    # valid entries of an unknown payload type, each payload 64 KiB of empty arrays (the most objects per byte
    # a valid payload can hold), as many as fit in one message; decoded and verified as a node does
    payload = msgpack.packb({"type": "x", "z": [[]] * 65_000}, use_bin_type=True)
    items, previous = [], None
    for seq in range(1, 16):
        header = Header(FORMAT_VERSION, bytes(KEY.verify_key), seq, previous, 1, sha256(payload), len(payload)).encode()
        items.append((header, KEY.sign(header).signature, payload))
        previous = entry_hash(header)
    data = wire.encode(wire.Entries(tuple(items)))
    results: list[object] = []

    def receive() -> None:
        message = wire.decode(data)
        assert isinstance(message, wire.Entries)
        results.append(verify_entries(list(message.raw)))

    peak = peak_bytes(receive)
    entries, error = results[0]
    assert error is None and len(entries) == 15
    assert entries[3].content() == {"type": "x", "z": [[]] * 65_000}  # still readable when needed
    assert peak < 8 * len(data), f"{peak / MiB:.1f} MiB for a {len(data) / MiB:.2f} MiB message"
