# Box stream (sans-I/O): the encrypted, authenticated framing that follows the secret handshake.
# Byte-compatible with npm `pull-box-stream`: 34-byte boxed header (body length + body MAC), body of
# at most 4,096 bytes, nonces counting up by one per box, and an authenticated goodbye frame.
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions

KEY_SIZE = 32
NONCE_SIZE = 24
MAC_SIZE = 16
HEADER_PLAIN_SIZE = 18  # 2-byte big-endian body length + 16-byte body MAC
HEADER_SIZE = HEADER_PLAIN_SIZE + MAC_SIZE  # 34
MAX_BODY_SIZE = 4096
_NONCE_MOD = 1 << (8 * NONCE_SIZE)
_GOODBYE_PLAIN = bytes(HEADER_PLAIN_SIZE)


class BoxStreamError(Exception):
    """Base of every box-stream failure; `str(err)` is a one-line reason."""


class ForgedFrame(BoxStreamError):
    """A header or body did not authenticate (tampered, reordered, or wrong key/nonce)."""


class InvalidFrame(BoxStreamError):
    """An authentic header announced an impossible body length."""


class DataAfterGoodbye(BoxStreamError):
    """Bytes arrived after the peer's goodbye frame."""


class TruncatedStream(BoxStreamError):
    """The underlying stream ended without a goodbye (possibly inside a frame)."""


class EncoderClosed(BoxStreamError):
    """We tried to encrypt after sending our own goodbye (a local error)."""


@dataclass(frozen=True)
class Data:
    """One decrypted body (1..4096 bytes). Frame boundaries carry no meaning."""

    data: bytes


@dataclass(frozen=True)
class Goodbye:
    """The peer ended its direction of the stream cleanly."""


class NeedData:
    """Returned by `next_event` when more bytes are needed."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()
Event = Data | Goodbye


def _check(key: bytes, nonce: bytes) -> tuple[bytes, int]:
    key, nonce = bytes(key), bytes(nonce)
    if len(key) != KEY_SIZE:
        raise ValueError(f"box stream key must be {KEY_SIZE} bytes, got {len(key)}")
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"box stream nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    return key, int.from_bytes(nonce, "big")


class BoxStreamEncoder:
    """Encrypts one direction of a box stream."""

    def __init__(self, key: bytes, nonce: bytes) -> None:
        self._key, self._nonce = _check(key, nonce)
        self.closed = False

    def encrypt(self, data: bytes) -> bytes:
        """Box `data` as one or more frames of at most 4,096 body bytes; empty data gives b""."""
        if self.closed:
            raise EncoderClosed("cannot encrypt after goodbye")
        view = memoryview(data)
        out: list[bytes] = []
        box = nacl.bindings.crypto_secretbox
        key = self._key
        n = self._nonce
        for start in range(0, len(view), MAX_BODY_SIZE):
            chunk = bytes(view[start : start + MAX_BODY_SIZE])
            boxed = box(chunk, ((n + 1) % _NONCE_MOD).to_bytes(NONCE_SIZE, "big"), key)
            header = len(chunk).to_bytes(2, "big") + boxed[:MAC_SIZE]
            out.append(box(header, n.to_bytes(NONCE_SIZE, "big"), key))
            out.append(boxed[MAC_SIZE:])
            n = (n + 2) % _NONCE_MOD
        self._nonce = n
        return b"".join(out)

    def goodbye(self) -> bytes:
        """The 34-byte goodbye frame: a boxed header of 18 zero bytes. Ends this direction."""
        if self.closed:
            raise EncoderClosed("goodbye was already sent")
        self.closed = True
        return nacl.bindings.crypto_secretbox(
            _GOODBYE_PLAIN, self._nonce.to_bytes(NONCE_SIZE, "big"), self._key
        )


class BoxStreamDecoder:
    """Decrypts one direction of a box stream: `receive_data`, then `next_event` until NEED_DATA."""

    def __init__(self, key: bytes, nonce: bytes) -> None:
        self._key, self._nonce = _check(key, nonce)
        self._buffer = bytearray()
        self._events: deque[Event] = deque()
        self._body_len = 0  # of the frame whose header is decoded but whose body has not arrived
        self._body_mac = b""
        self._error: BoxStreamError | None = None
        self.goodbye_received = False
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer."""
        if self._error is not None:
            raise self._error
        if self._eof:
            self._fail(DataAfterGoodbye("data received after end of stream"))
        self._buffer += data

    @property
    def pending(self) -> bool:
        """True while part of a frame is buffered (a frame has started and not finished)."""
        return bool(self._buffer) or self._body_len > 0

    def next_event(self) -> Data | Goodbye | NeedData:
        """The next decrypted body or the goodbye, or NEED_DATA. Raises BoxStreamError on bad input."""
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise self._error
        event = self._parse_one()
        if event is None:
            if self._eof and not self.goodbye_received:
                self._fail(TruncatedStream("stream ended without goodbye"))
            return NEED_DATA
        return event

    def eof(self) -> None:
        """The underlying stream has ended. Raises TruncatedStream unless the goodbye was received.

        Complete frames still buffered are decoded first and stay available from `next_event`.
        """
        if self._error is not None:
            raise self._error
        self._eof = True
        while (event := self._parse_one()) is not None:
            self._events.append(event)
        if not self.goodbye_received:
            where = "inside a frame" if self._buffer or self._body_len else "without goodbye"
            self._fail(TruncatedStream(f"stream ended {where}"))

    def _fail(self, error: BoxStreamError) -> None:
        self._error = error
        raise error

    def _open(self, boxed: bytes, what: str) -> bytes:
        nonce = self._nonce.to_bytes(NONCE_SIZE, "big")
        try:
            plain = nacl.bindings.crypto_secretbox_open(boxed, nonce, self._key)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            self._fail(ForgedFrame(f"box stream {what} does not authenticate"))
        self._nonce = (self._nonce + 1) % _NONCE_MOD
        return plain

    def _parse_one(self) -> Event | None:
        buf = self._buffer
        if self.goodbye_received:
            if buf:
                self._fail(DataAfterGoodbye(f"{len(buf)} bytes received after goodbye"))
            return None
        if not self._body_len:
            if len(buf) < HEADER_SIZE:
                return None
            header = self._open(bytes(buf[:HEADER_SIZE]), "header")
            del buf[:HEADER_SIZE]
            if header == _GOODBYE_PLAIN:
                self.goodbye_received = True
                if buf:
                    self._fail(DataAfterGoodbye(f"{len(buf)} bytes received after goodbye"))
                return Goodbye()
            length = int.from_bytes(header[:2], "big")
            if not 0 < length <= MAX_BODY_SIZE:
                self._fail(InvalidFrame(f"box stream header announces a body of {length} bytes"))
            self._body_len = length
            self._body_mac = header[2:]
        length = self._body_len
        if len(buf) < length:
            return None
        body = self._open(self._body_mac + bytes(buf[:length]), "body")
        del buf[:length]
        self._body_len = 0
        return Data(body)
