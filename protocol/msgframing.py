# Wire-message framing inside the box stream (sans-I/O): each message is a 4-byte big-endian
# length (1..max) followed by that many bytes; messages and box-stream frames are independent.
from __future__ import annotations

LENGTH_SIZE = 4
MAX_LENGTH = (1 << 32) - 1


class FramingError(Exception):
    """Base of message-framing failures; `str(err)` is a one-line reason."""


class EmptyMessage(FramingError):
    """A message announced length 0, which is invalid."""


class MessageTooLargeError(FramingError):
    """A message announced a length above the receiver's limit."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"message of {length} bytes exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit


def encode_message(message: bytes) -> bytes:
    """Frame one message: 4-byte big-endian length, then the bytes."""
    if not message:
        raise EmptyMessage("cannot send an empty message")
    if len(message) > MAX_LENGTH:
        raise MessageTooLargeError(len(message), MAX_LENGTH)
    return len(message).to_bytes(LENGTH_SIZE, "big") + bytes(message)


class MessageDecoder:
    """Reassembles whole messages from decrypted box-stream bytes."""

    def __init__(self, max_message_size: int) -> None:
        if not 0 < max_message_size <= MAX_LENGTH:
            raise ValueError(f"max_message_size must be in 1..{MAX_LENGTH}")
        self.max_message_size = max_message_size
        self._buffer = bytearray()
        self._length = 0  # announced length of the message being assembled, 0 if none yet

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    @property
    def in_message(self) -> bool:
        """True if part of a message (or of its length) is buffered."""
        return bool(self._buffer) or self._length > 0

    def next_message(self) -> bytes | None:
        """The next whole message, or None if more bytes are needed. Raises FramingError."""
        buf = self._buffer
        if not self._length:
            if len(buf) < LENGTH_SIZE:
                return None
            length = int.from_bytes(buf[:LENGTH_SIZE], "big")
            if length == 0:
                raise EmptyMessage("peer sent a message of length 0")
            if length > self.max_message_size:
                raise MessageTooLargeError(length, self.max_message_size)
            del buf[:LENGTH_SIZE]
            self._length = length
        if len(buf) < self._length:
            return None
        message = bytes(buf[: self._length])
        del buf[: self._length]
        self._length = 0
        return message
