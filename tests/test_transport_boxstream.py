# Sans-I/O tests of protocol/boxstream.py and protocol/msgframing.py: round trips, frame sizes,
# goodbye and EOF rules, and fuzzing that damaged streams only raise our own errors.
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import boxstream as bs
from protocol import msgframing as mf

KEY = hashlib.sha256(b"box key").digest()
NONCE = hashlib.sha256(b"box nonce").digest()[:24]


def _decode(stream: bytes, chunk: int = 1 << 20, eof: bool = True) -> tuple[bytes, bool]:
    dec = bs.BoxStreamDecoder(KEY, NONCE)
    data, goodbye = bytearray(), False
    for i in range(0, len(stream), chunk):
        dec.receive_data(stream[i : i + chunk])
        while (event := dec.next_event()) is not bs.NEED_DATA:
            if isinstance(event, bs.Goodbye):
                goodbye = True
            else:
                assert isinstance(event, bs.Data)
                data += event.data
    if eof:
        dec.eof()
    return bytes(data), goodbye


def test_round_trip_and_frame_sizes() -> None:
    enc = bs.BoxStreamEncoder(KEY, NONCE)
    payload = bytes(range(256)) * 40  # 10,240 bytes: 4096 + 4096 + 2048
    frames = enc.encrypt(payload)
    assert len(frames) == len(payload) + 3 * bs.HEADER_SIZE
    bye = enc.goodbye()
    assert len(bye) == bs.HEADER_SIZE
    assert _decode(frames + bye) == (payload, True)


def test_empty_write_sends_nothing_and_encrypt_after_goodbye_fails() -> None:
    enc = bs.BoxStreamEncoder(KEY, NONCE)
    assert enc.encrypt(b"") == b""
    enc.goodbye()
    with pytest.raises(bs.EncoderClosed):
        enc.encrypt(b"x")
    with pytest.raises(bs.EncoderClosed):
        enc.goodbye()


def test_bodies_never_exceed_4096() -> None:
    enc = bs.BoxStreamEncoder(KEY, NONCE)
    dec = bs.BoxStreamDecoder(KEY, NONCE)
    dec.receive_data(enc.encrypt(b"z" * 9000))
    sizes = []
    while isinstance(event := dec.next_event(), bs.Data):
        sizes.append(len(event.data))
    assert sizes == [4096, 4096, 808]


def test_eof_rules() -> None:
    enc = bs.BoxStreamEncoder(KEY, NONCE)
    frame = enc.encrypt(b"hello")
    with pytest.raises(bs.TruncatedStream, match="without goodbye"):
        _decode(frame)
    with pytest.raises(bs.TruncatedStream, match="inside a frame"):
        _decode(frame[:-1])
    with pytest.raises(bs.TruncatedStream):
        _decode(b"")
    # Frames buffered before EOF are still delivered, then the error is raised.
    dec = bs.BoxStreamDecoder(KEY, NONCE)
    dec.receive_data(frame)
    with pytest.raises(bs.TruncatedStream):
        dec.eof()
    assert dec.next_event() == bs.Data(b"hello")
    with pytest.raises(bs.TruncatedStream):
        dec.next_event()


def test_data_after_goodbye() -> None:
    enc = bs.BoxStreamEncoder(KEY, NONCE)
    stream = enc.encrypt(b"a") + enc.goodbye()
    with pytest.raises(bs.DataAfterGoodbye):
        _decode(stream + b"\x00")
    dec = bs.BoxStreamDecoder(KEY, NONCE)
    dec.receive_data(stream)
    assert dec.next_event() == bs.Data(b"a")
    assert dec.next_event() == bs.Goodbye()
    dec.receive_data(b"late")
    with pytest.raises(bs.DataAfterGoodbye):
        dec.next_event()


def test_errors_are_sticky() -> None:
    dec = bs.BoxStreamDecoder(KEY, NONCE)
    dec.receive_data(bytes(40))
    with pytest.raises(bs.ForgedFrame):
        dec.next_event()
    with pytest.raises(bs.ForgedFrame):
        dec.next_event()
    with pytest.raises(bs.ForgedFrame):
        dec.receive_data(b"x")


def test_wrong_key_or_nonce_is_forged() -> None:
    enc = bs.BoxStreamEncoder(KEY, NONCE)
    stream = enc.encrypt(b"secret") + enc.goodbye()
    dec = bs.BoxStreamDecoder(KEY, bytes(24))
    dec.receive_data(stream)
    with pytest.raises(bs.ForgedFrame):
        dec.next_event()


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        bs.BoxStreamEncoder(b"short", NONCE)
    with pytest.raises(ValueError):
        bs.BoxStreamDecoder(KEY, b"short")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=6000), max_size=5), st.integers(1, 5000))
def test_fuzz_any_writes_any_chunking_round_trip(writes: list[bytes], chunk: int) -> None:
    enc = bs.BoxStreamEncoder(KEY, NONCE)
    stream = b"".join(enc.encrypt(w) for w in writes) + enc.goodbye()
    assert _decode(stream, chunk) == (b"".join(writes), True)


def _valid_stream() -> bytes:
    enc = bs.BoxStreamEncoder(KEY, NONCE)
    return enc.encrypt(b"first message") + enc.encrypt(b"m" * 5000) + enc.goodbye()


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 255))
def test_fuzz_any_bit_flip_is_detected(position: int, flip: int) -> None:
    stream = bytearray(_valid_stream())
    stream[position % len(stream)] ^= flip
    with pytest.raises(bs.BoxStreamError):
        _decode(bytes(stream))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10_000))
def test_fuzz_any_truncation_is_detected(cut: int) -> None:
    stream = _valid_stream()
    with pytest.raises(bs.TruncatedStream):
        _decode(stream[: cut % len(stream)])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 64))
def test_fuzz_random_bytes_raise_only_our_errors(data: bytes, chunk: int) -> None:
    try:
        _decode(data, chunk)
    except bs.BoxStreamError:
        pass
    else:  # only an authentic stream ends cleanly; random bytes never are one
        raise AssertionError("random bytes decoded as a valid stream")


# --- message framing ---


def test_framing_round_trip_across_arbitrary_splits() -> None:
    messages = [b"a", b"b" * 5000, b"c" * 3]
    wire = b"".join(mf.encode_message(m) for m in messages)
    dec = mf.MessageDecoder(10_000)
    got = []
    for i in range(0, len(wire), 3):
        dec.receive_data(wire[i : i + 3])
        while (m := dec.next_message()) is not None:
            got.append(m)
    assert got == messages and not dec.in_message


def test_framing_errors() -> None:
    with pytest.raises(mf.EmptyMessage):
        mf.encode_message(b"")
    dec = mf.MessageDecoder(100)
    dec.receive_data(bytes(4))
    with pytest.raises(mf.EmptyMessage):
        dec.next_message()
    dec = mf.MessageDecoder(100)
    dec.receive_data((101).to_bytes(4, "big"))
    with pytest.raises(mf.MessageTooLargeError) as info:
        dec.next_message()
    assert (info.value.length, info.value.limit) == (101, 100)
    with pytest.raises(ValueError):
        mf.MessageDecoder(0)
