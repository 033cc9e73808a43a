# Unit tests of the sans-I/O log format (protocol/log.py) and text ids (protocol/ids.py): round trips,
# tamper detection, strict canonical decoding, one test per validation rule, and fuzzing of every decoder.
from __future__ import annotations

import string
from typing import Any

import msgpack
import nacl.signing
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from protocol.errors import ForkDetected, InvalidEntry, InvalidId, ProtocolError, TooLarge
from protocol.ids import entry_ref, feed_id, parse_entry_ref, parse_feed_id
from protocol.log import (
    FORMAT_VERSION,
    MAX_ABOUT_CHARS,
    MAX_HEADER_SIZE,
    MAX_NAME_CHARS,
    MAX_PAYLOAD_SIZE,
    MAX_SEQ,
    MAX_TIMESTAMP,
    Entry,
    FeedHead,
    Header,
    check_link,
    create_entry,
    decode_header,
    decode_payload,
    encode_payload,
    entry_from_wire,
    entry_hash,
    sha256,
    validate_entry,
    verify_entry,
)

KEY = nacl.signing.SigningKey(b"\x01" * 32)
OTHER_KEY = nacl.signing.SigningKey(b"\x02" * 32)
AUTHOR = bytes(KEY.verify_key)
ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def post(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"type": "post", "text": text, **extra}


def chain(n: int, key: nacl.signing.SigningKey = KEY, ts: int = 1_000) -> list[Entry]:
    entries: list[Entry] = []
    for i in range(n):
        entries.append(create_entry(key, entries[-1] if entries else None, post(f"post {i}"), ts + i))
    return entries


def signed(header_bytes: bytes, key: nacl.signing.SigningKey = KEY) -> bytes:
    return key.sign(header_bytes).signature


def header_for(payload: bytes, seq: int = 1, prev: bytes | None = None, **changes: Any) -> Header:
    return Header(FORMAT_VERSION, AUTHOR, seq, prev, 1_000, sha256(payload), len(payload))._replace(**changes)


# ---------------------------------------------------------------- strategies

refs = st.binary(min_size=32, max_size=32)
texts = st.text(min_size=1, max_size=200).filter(lambda t: t.strip() != "")
names = st.text(min_size=1, max_size=MAX_NAME_CHARS).filter(lambda t: t.strip() != "")
payloads = st.one_of(
    st.builds(lambda t: {"type": "post", "text": t}, texts),
    st.builds(lambda t, r: {"type": "post", "text": t, "reply_to": r}, texts, refs),
    *[st.builds(lambda r, k=kind: {"type": k, "feed": r}, refs) for kind in ("follow", "unfollow", "block", "unblock")],
    st.builds(lambda n: {"type": "profile", "name": n}, names),
    st.builds(lambda n, a: {"type": "profile", "name": n, "about": a}, names, st.text(max_size=300)),
    st.builds(lambda r: {"type": "retract", "entry": r}, refs),
)
headers = st.builds(
    lambda seq, prev, ts, h, size: Header(FORMAT_VERSION, AUTHOR, seq, None if seq == 1 else prev, ts, h, size),
    st.one_of(st.just(1), st.integers(1, MAX_SEQ)), refs, st.integers(0, MAX_TIMESTAMP), refs,
    st.integers(1, MAX_PAYLOAD_SIZE))
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=10), inner, max_size=8),
    max_leaves=20)


# ---------------------------------------------------------------- round trips


@FAST
@given(headers)
def test_header_round_trip(header: Header) -> None:
    data = header.encode()
    assert len(data) <= MAX_HEADER_SIZE
    assert decode_header(data) == header


@FAST
@given(payloads)
def test_payload_round_trip(payload: dict[str, Any]) -> None:
    data = encode_payload(payload)
    assert decode_payload(data) == payload
    assert encode_payload(decode_payload(data)) == data


@FAST
@given(payloads, st.integers(0, MAX_TIMESTAMP))
def test_entry_round_trip(payload: dict[str, Any], timestamp: int) -> None:
    first = create_entry(KEY, None, post(), 1)
    entry = create_entry(KEY, first, payload, timestamp)
    again = entry_from_wire(msgpack.unpackb(pack(entry.to_wire())))
    assert again == entry
    assert again.content() == payload
    assert validate_entry(*entry.to_wire(), previous=first) == entry
    assert entry.hash == entry_hash(entry.header_bytes) == sha256(entry.header_bytes)
    assert entry.header == Header(FORMAT_VERSION, AUTHOR, 2, first.hash, timestamp, sha256(entry.payload or b""),
                                  len(entry.payload or b""))
    header_only = entry_from_wire([entry.header_bytes, entry.signature, None])
    assert header_only == entry.without_payload() and header_only.content() is None


def test_chain_validates_in_order() -> None:
    entries = chain(5)
    previous: Entry | None = None
    for entry in entries:
        validate_entry(entry.header_bytes, entry.signature, entry.payload, previous)
        previous = entry
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].header.prev is None
    assert all(b.header.prev == a.hash for a, b in zip(entries, entries[1:], strict=False))


# ---------------------------------------------------------------- tampering

SIGNED = create_entry(KEY, chain(1)[0], post("the signed text", reply_to=b"\x09" * 32), 123_456)


@FAST
@given(st.sampled_from(["header", "signature", "payload"]), st.integers(0, 10_000), st.integers(0, 255))
def test_any_single_byte_change_is_rejected(part: str, position: int, value: int) -> None:
    wire = {"header": SIGNED.header_bytes, "signature": SIGNED.signature, "payload": SIGNED.payload}
    original = wire[part]
    assert original is not None
    position %= len(original)
    assume(original[position] != value)
    wire[part] = original[:position] + bytes([value]) + original[position + 1:]
    with pytest.raises(InvalidEntry):
        verify_entry(wire["header"], wire["signature"], wire["payload"])


def test_every_single_bit_flip_is_rejected() -> None:
    parts = [SIGNED.header_bytes, SIGNED.signature, SIGNED.payload]
    for index, part in enumerate(parts):
        assert part is not None
        for position in range(len(part)):
            for bit in range(8):
                changed = list(parts)
                changed[index] = part[:position] + bytes([part[position] ^ (1 << bit)]) + part[position + 1:]
                with pytest.raises(InvalidEntry):
                    verify_entry(*changed)


@FAST
@given(st.sampled_from([0, 1, 2]), st.integers(0, 10_000), st.binary(min_size=1, max_size=4))
def test_truncation_and_extension_are_rejected(index: int, cut: int, extra: bytes) -> None:
    parts: list[Any] = [SIGNED.header_bytes, SIGNED.signature, SIGNED.payload]
    truncated = list(parts)
    truncated[index] = parts[index][: cut % len(parts[index])]
    extended = list(parts)
    extended[index] = parts[index] + extra
    for candidate in (truncated, extended):
        with pytest.raises(InvalidEntry):
            verify_entry(*candidate)


def test_signature_by_another_key_is_rejected() -> None:
    with pytest.raises(InvalidEntry, match="bad signature"):
        verify_entry(SIGNED.header_bytes, signed(SIGNED.header_bytes, OTHER_KEY), SIGNED.payload)


# ---------------------------------------------------------------- fuzzing the decoders


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_to_decoders_raise_only_protocol_errors(data: bytes) -> None:
    for decode in (decode_header, decode_payload):
        try:
            decode(data)
        except ProtocolError:
            pass
    try:
        entry_from_wire([data, data[:64], data])
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(msgpack_values)
def test_random_msgpack_to_decoders_raise_only_protocol_errors(value: Any) -> None:
    data = pack(value)
    for decode in (decode_header, decode_payload):
        try:
            decode(data)
        except ProtocolError:
            pass
    for item in (value, [value, value, value], [data, value, data], [SIGNED.header_bytes, value, value]):
        try:
            entry_from_wire(item)
        except ProtocolError:
            pass


@FAST
@given(msgpack_values, msgpack_values)
def test_random_payload_fields_raise_only_protocol_errors(key_value: Any, type_value: Any) -> None:
    for kind in ("post", "follow", "profile", "retract", type_value):
        payload = {"type": kind, "text": key_value, "feed": key_value, "name": key_value, "entry": key_value}
        try:
            data = pack(dict(sorted(payload.items())))
            decode_payload(data)
        except ProtocolError:
            pass


@pytest.mark.parametrize("value", [None, "text", 17, [], [b"a", b"b"], bytearray(b"x" * 10), memoryview(b"abc")])
def test_non_bytes_inputs_raise_protocol_errors(value: Any) -> None:
    calls = [lambda: decode_header(value), lambda: decode_payload(value), lambda: entry_from_wire(value),
             lambda: entry_from_wire([value, b"s" * 64, None]),
             lambda: verify_entry(SIGNED.header_bytes, value, None)]
    if value is not None:  # a missing (None) payload is allowed
        calls.append(lambda: verify_entry(SIGNED.header_bytes, SIGNED.signature, value))
    for call in calls:
        with pytest.raises(ProtocolError):
            call()


# ---------------------------------------------------------------- canonical encoding


def header_fields(header: Header) -> list[Any]:
    return list(header)


def manual_header(*encoded_fields: bytes) -> bytes:
    assert len(encoded_fields) <= 15
    return bytes([0x90 | len(encoded_fields)]) + b"".join(encoded_fields)


CANONICAL = header_for(encode_payload(post()), seq=2, prev=b"\x05" * 32)


def encoded(header: Header) -> list[bytes]:
    return [pack(value) for value in header]


@pytest.mark.parametrize(("index", "replacement"), [
    (0, b"\xcc\x01"),                           # version 1 as uint8 instead of a fixint
    (0, b"\xd0\x01"),                           # version as int8
    (2, b"\xcd\x00\x02"),                       # seq 2 as uint16
    (2, b"\xcf" + (2).to_bytes(8, "big")),      # seq 2 as uint64
    (2, b"\xcb" + bytes(8)),                    # a float
    (4, b"\xce" + (1_000).to_bytes(4, "big")),  # timestamp 1000 as uint32 instead of uint16
    (6, b"\xd1\x00\x14"),                       # payload size as int16
    (1, b"\xc5\x00\x20" + AUTHOR),             # author as bin16
    (1, b"\xd9\x20" + b"a" * 32),               # author as str8 (str instead of bin)
    (3, b"\xda\x00\x20" + b"\x05" * 32),        # prev as str16
    (5, b"\xc6\x00\x00\x00\x20" + b"\x06" * 32),  # payload hash as bin32
])
def test_non_canonical_header_encodings_are_rejected(index: int, replacement: bytes) -> None:
    fields = encoded(CANONICAL)
    fields[index] = replacement
    data = manual_header(*fields)
    with pytest.raises(InvalidEntry):
        decode_header(data)
    with pytest.raises(InvalidEntry):  # a valid signature over the odd bytes does not help
        verify_entry(data, signed(data), None)


def test_header_array_in_a_longer_form_is_rejected() -> None:
    canonical = CANONICAL.encode()
    for prefix in (b"\xdc\x00\x07", b"\xdd\x00\x00\x00\x07"):
        data = prefix + canonical[1:]
        with pytest.raises(InvalidEntry):
            verify_entry(data, signed(data), None)


def test_header_with_trailing_bytes_is_rejected() -> None:
    data = CANONICAL.encode() + b"\xc0"
    with pytest.raises(InvalidEntry, match="msgpack"):
        decode_header(data)


def fixmap(*pairs: tuple[bytes, bytes]) -> bytes:
    return bytes([0x80 | len(pairs)]) + b"".join(k + v for k, v in pairs)


def test_non_canonical_payload_encodings_are_rejected() -> None:
    text, kind = (pack("text"), pack("hi")), (pack("type"), pack("post"))
    canonical = fixmap(text, kind)
    assert canonical == encode_payload(post("hi")) and decode_payload(canonical) == post("hi")
    bad = {
        "unsorted keys": fixmap(kind, text),
        "duplicate key": fixmap(text, (pack("text"), pack("ho")), kind),
        "duplicate type": fixmap(text, kind, (pack("type"), pack("post"))),
        "str8 for a short str": fixmap((pack("text"), b"\xd9\x02hi"), kind),
        "str16 key": fixmap((b"\xda\x00\x04text", pack("hi")), kind),
        "map16": b"\xde\x00\x02" + canonical[1:],
        "bin instead of str text": fixmap((pack("text"), pack(b"hi")), kind),
        "bin key": fixmap((pack(b"text"), pack("hi")), kind),
        "int key": fixmap((pack(1), pack("hi")), kind),
        "trailing byte": canonical + b"\xc0",
        "array": pack(["post", "hi"]),
        "nested map non canonical": fixmap((pack("extra"), b"\xde\x00\x00"), (pack("type"), pack("poll"))),
    }
    for what, data in bad.items():
        with pytest.raises(InvalidEntry):
            decode_payload(data)
            pytest.fail(f"{what} was accepted")


def test_str_instead_of_bin_in_refs_is_rejected() -> None:
    for payload in ({"type": "follow", "feed": "x" * 32}, {"type": "retract", "entry": "y" * 32},
                    {"type": "post", "text": "hi", "reply_to": "z" * 32}):
        with pytest.raises(InvalidEntry, match="must be 32 bytes"):
            decode_payload(pack(dict(sorted(payload.items()))))


# ---------------------------------------------------------------- validation rules


def test_seq_gap_is_rejected() -> None:
    first, second, third = chain(3)
    with pytest.raises(InvalidEntry, match="seq gap"):
        check_link(third, first)
    with pytest.raises(InvalidEntry, match="seq gap"):
        check_link(second, None)
    with pytest.raises(InvalidEntry, match="seq gap"):
        check_link(first, FeedHead(AUTHOR, 1, first.hash))


def test_wrong_prev_is_rejected() -> None:
    first = chain(1)[0]
    forged_previous = FeedHead(AUTHOR, 1, b"\x44" * 32)
    second = create_entry(KEY, forged_previous, post(), 2)
    with pytest.raises(InvalidEntry, match="wrong prev"):
        validate_entry(second.header_bytes, second.signature, second.payload, first)


def test_wrong_author_is_rejected() -> None:
    mine, theirs = chain(2), chain(2, OTHER_KEY)
    with pytest.raises(InvalidEntry, match="another feed"):
        check_link(theirs[1], mine[0])
    with pytest.raises(ValueError):
        create_entry(KEY, theirs[0], post(), 1)


def test_first_entry_rules() -> None:
    payload = encode_payload(post())
    for header in (header_for(payload, seq=1, prev=b"\x01" * 32), header_for(payload, seq=2, prev=None),
                   header_for(payload, seq=2, prev=b"\x01" * 31), header_for(payload, seq=0)):
        data = header.encode()
        with pytest.raises(InvalidEntry):
            verify_entry(data, signed(data), payload)


def test_payload_size_and_hash_mismatch_are_rejected() -> None:
    payload = encode_payload(post("exact"))
    other = encode_payload(post("other"))
    assert len(payload) == len(other)
    wrong_size = header_for(payload, payload_size=len(payload) + 1).encode()
    with pytest.raises(InvalidEntry, match="the header says"):
        verify_entry(wrong_size, signed(wrong_size), payload)
    wrong_hash = header_for(other).encode()
    with pytest.raises(InvalidEntry, match="payload hash"):
        verify_entry(wrong_hash, signed(wrong_hash), payload)
    # without the payload, the same headers verify: the log stays valid when payloads are dropped
    assert verify_entry(wrong_hash, signed(wrong_hash), None).payload is None


def test_signed_header_over_an_invalid_payload_is_rejected() -> None:
    payload = pack({"text": "", "type": "post"})
    data = header_for(payload).encode()
    with pytest.raises(InvalidEntry, match="empty"):
        verify_entry(data, signed(data), payload)


def test_oversize_header_is_too_large() -> None:
    for data in (bytes(MAX_HEADER_SIZE + 1), CANONICAL.encode() + bytes(MAX_HEADER_SIZE)):
        with pytest.raises(TooLarge) as caught:
            decode_header(data)
        assert caught.value.reason.startswith("too-large:")


def test_oversize_payload_is_too_large() -> None:
    big = pack({"text": "x" * MAX_PAYLOAD_SIZE, "type": "post"})
    for call in (lambda: decode_payload(big), lambda: encode_payload({"type": "post", "text": "x" * MAX_PAYLOAD_SIZE}),
                 lambda: create_entry(KEY, None, {"type": "post", "text": "x" * MAX_PAYLOAD_SIZE}, 1)):
        with pytest.raises(TooLarge) as caught:
            call()
        assert caught.value.reason.startswith("too-large:")
        assert isinstance(caught.value, InvalidEntry)
    data = header_for(b"", payload_size=MAX_PAYLOAD_SIZE + 1).encode()
    with pytest.raises(TooLarge) as caught:
        verify_entry(data, signed(data), None)
    assert caught.value.reason.startswith("too-large:")


def test_payload_at_the_limit_is_accepted() -> None:
    text = "x" * (MAX_PAYLOAD_SIZE - 19)
    data = encode_payload(post(text))
    assert len(data) == MAX_PAYLOAD_SIZE
    entry = create_entry(KEY, None, post(text), 1)
    assert verify_entry(*entry.to_wire()).header.payload_size == MAX_PAYLOAD_SIZE


@pytest.mark.parametrize("fields", [
    [1, AUTHOR, 1, None, 0, b"\x01" * 32],                  # 6 fields
    [1, AUTHOR, 1, None, 0, b"\x01" * 32, 5, 0],            # 8 fields
    [],
    {"version": 1},
    [2, AUTHOR, 1, None, 0, b"\x01" * 32, 5],               # unknown version
    ["1", AUTHOR, 1, None, 0, b"\x01" * 32, 5],             # version as str
    [True, AUTHOR, 1, None, 0, b"\x01" * 32, 5],            # version as bool
    [1, AUTHOR[:31], 1, None, 0, b"\x01" * 32, 5],          # short author
    [1, AUTHOR, "1", None, 0, b"\x01" * 32, 5],             # seq as str
    [1, AUTHOR, -1, None, 0, b"\x01" * 32, 5],              # negative seq
    [1, AUTHOR, MAX_SEQ + 1, b"\x01" * 32, 0, b"\x01" * 32, 5],  # seq over 2^53-1
    [1, AUTHOR, 1, None, -5, b"\x01" * 32, 5],              # negative timestamp
    [1, AUTHOR, 1, None, 1.5, b"\x01" * 32, 5],             # float timestamp
    [1, AUTHOR, 1, None, MAX_TIMESTAMP + 1, b"\x01" * 32, 5],
    [1, AUTHOR, 1, None, 0, b"\x01" * 33, 5],               # long payload hash
    [1, AUTHOR, 1, None, 0, None, 5],
    [1, AUTHOR, 1, None, 0, b"\x01" * 32, 0],               # payload size 0
    [1, AUTHOR, 1, None, 0, b"\x01" * 32, False],
])
def test_malformed_headers_are_rejected(fields: Any) -> None:
    data = pack(fields)
    with pytest.raises(InvalidEntry):
        decode_header(data)
    if len(data) <= MAX_HEADER_SIZE:
        with pytest.raises(InvalidEntry):
            verify_entry(data, signed(data), None)


REF = b"\x07" * 32


@pytest.mark.parametrize("payload", [
    {"type": "post"},                                   # missing text
    {"text": "no type"},                                # missing type
    {"type": "post", "text": "hi", "extra": 1},         # extra field
    {"type": "post", "text": "hi", "reply_to": REF[:31]},
    {"type": "post", "text": b"bytes"},
    {"type": "post", "text": 5},
    {"type": "post", "text": ""},                       # empty post
    {"type": "post", "text": " \n\t "},
    {"type": "follow"},
    {"type": "follow", "feed": REF, "note": "x"},
    {"type": "block", "feed": None},
    {"type": "unfollow", "feed": [REF]},
    {"type": "unblock", "feed": REF + b"\x00"},
    {"type": "retract"},
    {"type": "retract", "entry": 1},
    {"type": "profile"},
    {"type": "profile", "name": ""},
    {"type": "profile", "name": "   "},
    {"type": "profile", "name": "n" * (MAX_NAME_CHARS + 1)},
    {"type": "profile", "name": "ok", "about": "a" * (MAX_ABOUT_CHARS + 1)},
    {"type": "profile", "name": "ok", "about": 3},
    {"type": 5},
    {"type": ""},
    {"type": "Post"},                                   # type names are lowercase
    {"type": "has space"},
    {"type": "x" * 33},
    {"type": b"post", "text": "hi"},
])
def test_invalid_payloads_are_rejected(payload: dict[str, Any]) -> None:
    with pytest.raises(InvalidEntry):
        encode_payload(payload)
    with pytest.raises(InvalidEntry):
        decode_payload(pack(dict(sorted(payload.items(), key=lambda kv: str(kv[0])))))


def test_payload_limits_are_inclusive() -> None:
    decode_payload(encode_payload({"type": "profile", "name": "n" * MAX_NAME_CHARS, "about": "a" * MAX_ABOUT_CHARS}))
    decode_payload(encode_payload({"type": "x" * 32}))


@pytest.mark.parametrize("payload", [
    {"type": "poll", "question": "tea?", "options": ["yes", "no", 3, None, [15, b"\x00"]], "open": True},
    {"type": "x-1"},
    {"type": "reaction", "entry": b"\x01" * 32, "emoji": "+1", "weight": 3},
])
def test_unknown_payload_types_are_accepted_when_well_formed(payload: dict[str, Any]) -> None:
    data = encode_payload(payload)
    assert decode_payload(data) == payload
    entry = create_entry(KEY, None, payload, 1)
    assert verify_entry(*entry.to_wire()).content() == payload


@pytest.mark.parametrize(("value", "message"), [
    (1.5, "type the format does not allow"), (-3, "must not be negative"),
    (msgpack.ExtType(1, b"x"), "type the format does not allow"),
])
def test_payload_values_outside_the_format_are_refused(value: Any, message: str) -> None:
    with pytest.raises(InvalidEntry, match=message):
        decode_payload(msgpack.packb({"type": "x", "value": value}, use_bin_type=True))
    with pytest.raises(InvalidEntry, match=message):
        encode_payload({"type": "x", "value": value})


@pytest.mark.parametrize("depth", [17, 600, 5000])
def test_deep_nesting_is_refused_without_exhausting_the_stack(depth: int) -> None:
    data = b"\x82" + msgpack.packb("a") + b"\x91" * depth + b"\x01" + msgpack.packb("type") + msgpack.packb("x")
    with pytest.raises(InvalidEntry):
        decode_payload(data)
    nested: Any = 1
    for _ in range(16):
        nested = [nested]
    assert decode_payload(encode_payload({"type": "x", "a": nested}))["a"] == nested  # 16 deep is allowed


def test_unknown_payload_types_may_nest_maps() -> None:
    data = fixmap((pack("inner"), fixmap((pack("a"), pack(2)), (pack("b"), pack(1)))), (pack("type"), pack("poll")))
    assert decode_payload(data) == {"inner": {"a": 2, "b": 1}, "type": "poll"}
    assert encode_payload({"type": "poll", "inner": {"a": 2, "b": 1}}) == data


def test_unknown_payload_type_must_still_be_canonical() -> None:
    for data in (fixmap((pack("n"), b"\xcd\x00\x01"), (pack("type"), pack("poll"))),   # 1 as uint16
                 fixmap((pack("s"), b"\xd9\x01x"), (pack("type"), pack("poll"))),      # str8 for a short str
                 fixmap((pack("type"), pack("poll")), (pack("n"), pack(1)))):           # unsorted keys
        with pytest.raises(InvalidEntry):
            decode_payload(data)


def test_errors_carry_machine_readable_prefixes() -> None:
    assert InvalidEntry("x").reason == "invalid: x"
    assert TooLarge("x").reason == "too-large: x"
    assert ForkDetected("x").reason == "fork: x"
    assert InvalidId("x").reason == "invalid: x"
    assert issubclass(TooLarge, InvalidEntry) and issubclass(InvalidEntry, ProtocolError)


# ---------------------------------------------------------------- ids

FEED = feed_id(AUTHOR)
ENTRY = entry_ref(SIGNED.hash)


@FAST
@given(st.binary(min_size=32, max_size=32))
def test_id_round_trip(raw: bytes) -> None:
    text = feed_id(raw)
    assert text.startswith("@") and len(text) == 59
    assert set(text[1:]) <= set(ALPHABET)
    assert parse_feed_id(text) == raw
    assert parse_entry_ref(entry_ref(raw)) == raw
    assert parse_feed_id(text.upper()) == raw  # uppercase is accepted
    assert parse_feed_id(f"  {text}\n") == raw


def test_every_single_character_mistype_is_rejected() -> None:
    for text, parse in ((FEED, parse_feed_id), (ENTRY, parse_entry_ref)):
        for position in range(1, len(text)):
            for char in ALPHABET:
                if char == text[position]:
                    continue
                with pytest.raises(InvalidId):
                    parse(text[:position] + char + text[position + 1:])


def test_adjacent_transpositions_are_rejected() -> None:
    for position in range(1, len(FEED) - 1):
        swapped = FEED[:position] + FEED[position + 1] + FEED[position] + FEED[position + 2:]
        if swapped != FEED:
            with pytest.raises(InvalidId):
                parse_feed_id(swapped)


def test_wrong_sigil_and_kind_are_rejected() -> None:
    for text in ("%" + FEED[1:], "&" + FEED[1:], FEED[1:], "@@" + FEED[1:]):
        with pytest.raises(InvalidId):
            parse_feed_id(text)
    with pytest.raises(InvalidId):
        parse_entry_ref(FEED)
    with pytest.raises(InvalidId):
        parse_feed_id(ENTRY)
    with pytest.raises(InvalidId, match="checksum"):  # same bytes, other kind: the checksum differs
        parse_entry_ref("%" + FEED[1:])


@pytest.mark.parametrize("text", ["", "@", "@" + "a" * 57, "@" + "a" * 59, FEED + "a", FEED[:-1], FEED[:30]])
def test_wrong_length_is_rejected(text: str) -> None:
    with pytest.raises(InvalidId, match="expected 58 characters|does not start"):
        parse_feed_id(text)


@pytest.mark.parametrize("text", ["@" + "0" * 58, "@" + "1" * 58, FEED[:-1] + "8", FEED[:5] + "=" + FEED[6:],
                                  FEED[:5] + "é" + FEED[6:], FEED[:5] + " " + FEED[6:]])
def test_characters_outside_the_alphabet_are_rejected(text: str) -> None:
    with pytest.raises(InvalidId):
        parse_feed_id(text)


@pytest.mark.parametrize("value", [None, b"@abc", 5, ["@"]])
def test_non_text_ids_are_rejected(value: Any) -> None:
    with pytest.raises(InvalidId):
        parse_feed_id(value)


@FAST
@given(st.text(alphabet=string.printable + "@%ü", max_size=70))
def test_random_text_to_id_parsers_raise_only_invalid_id(text: str) -> None:
    for parse in (parse_feed_id, parse_entry_ref):
        try:
            assert len(parse(text)) == 32
        except InvalidId:
            pass


def test_encoding_needs_32_bytes() -> None:
    for raw in (b"", b"\x00" * 31, b"\x00" * 33):
        with pytest.raises(ValueError):
            feed_id(raw)


def _pairs_bytes(pairs: list[tuple[Any, Any]]) -> bytes:
    """A msgpack map written pair by pair, in the given order and with repeats, as a hostile peer could."""
    out = bytearray()
    out += bytes([0x80 | len(pairs)]) if len(pairs) < 16 else b"\xde" + len(pairs).to_bytes(2, "big")
    for key, value in pairs:
        out += msgpack.packb(key, use_bin_type=True) + msgpack.packb(value, use_bin_type=True)
    return bytes(out)


_leaf = st.one_of(st.integers(-5, 2**64 - 1), st.text(max_size=5), st.binary(max_size=5), st.booleans(), st.none(),
                  st.floats(allow_nan=False), st.lists(st.integers(0, 3), max_size=2))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.one_of(st.sampled_from(["type", "text", "a", "zz"]), st.binary(max_size=2)), _leaf),
                max_size=5))
@example([("zz", 1), ("a", 2)])  # unsorted
@example([("a", 1), ("a", 1)])  # repeated
@example([("a", -1)])
@example([(b"a", 1)])
def test_the_flat_map_fast_path_accepts_exactly_what_the_full_check_accepts(pairs: list[tuple[Any, Any]]) -> None:
    from protocol.log import _flat_canonical_map, _pack, _Pairs, _plain, _unpack

    data = _pairs_bytes(pairs)
    fast = _flat_canonical_map(data)
    try:
        full = _unpack(data, "payload")
        full = _plain(full) if type(full) is _Pairs else None
        full = full if full is not None and _pack(full) == data else None
    except InvalidEntry:
        full = None
    if fast is not None:
        assert fast == full
    elif full is not None:  # the fast path may decline only what it does not cover: nested values
        assert any(type(value) in (dict, list) for value in full.values())
