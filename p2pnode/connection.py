# The encrypted, authenticated transport over any trio.abc.Stream: runs the secret handshake,
# then carries whole wire messages (4-byte length + bytes) inside a box stream. Owns timeouts,
# size limits, locking and closing; the byte-level protocol lives in protocol/ (sans-I/O).
from __future__ import annotations

from collections.abc import Callable

import nacl.signing
import nacl.utils
import trio

from protocol import boxstream, handshake, msgframing
from protocol.handshake import DEFAULT_NETWORK_KEY

__all__ = [
    "DEFAULT_NETWORK_KEY",
    "MAX_MESSAGE_SIZE",
    "Connection",
    "ConnectionClosed",
    "HandshakeFailed",
    "IdleTimeout",
    "MessageTooLarge",
    "TransportError",
    "client_handshake",
    "server_handshake",
]

MAX_MESSAGE_SIZE = 1_048_576
RECEIVE_SIZE = 65_536  # most bytes asked from the stream at once
CLOSE_TIMEOUT = 2.0  # how long aclose() may spend trying to deliver the goodbye

_NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError)


class TransportError(Exception):
    """Base of transport failures. `reason` is "<prefix>: <text>", e.g. "invalid: bad box stream frame"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HandshakeFailed(TransportError):
    """The secret handshake did not complete (prefixes: invalid, timeout, closed, network). `answered`: the
    server had sent a valid reply to our first message (so it speaks the handshake on our network key)."""

    def __init__(self, reason: str, answered: bool = False) -> None:
        super().__init__(reason)
        self.answered = answered


class ConnectionClosed(TransportError):
    """The connection ended: "closed:" after a goodbye or local close, "truncated:" after a bare EOF."""


class MessageTooLarge(TransportError):
    """A message exceeds max_message_size; reason starts with "too-large:"."""


class IdleTimeout(TransportError):
    """Nothing arrived within idle_timeout; reason starts with "idle:". The connection stays open."""


class Connection:
    """An authenticated, encrypted message connection. Build it with client_handshake/server_handshake."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        result: handshake.HandshakeResult,
        *,
        leftover: bytes = b"",
        idle_timeout: float = 120.0,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        self.remote_key: bytes = result.remote_key
        self.idle_timeout = idle_timeout
        self.max_message_size = max_message_size
        self._stream = stream
        self._encoder = boxstream.BoxStreamEncoder(result.encrypt_key, result.encrypt_nonce)
        self._decoder = boxstream.BoxStreamDecoder(result.decrypt_key, result.decrypt_nonce)
        self._messages = msgframing.MessageDecoder(max_message_size)
        self._send_lock = trio.Lock()
        self._receive_lock = trio.Lock()
        self._receive_error: TransportError | None = None  # sticky: every later receive() raises it
        self._broken: TransportError | None = None  # set once the stream is closed
        if leftover:
            self._decoder.receive_data(leftover)

    def __repr__(self) -> str:
        return f"<Connection remote={self.remote_key.hex()[:16]}… open={self._broken is None}>"

    async def send(self, message: bytes) -> None:
        """Send one whole wire message (1..max_message_size bytes). Safe from several tasks at once."""
        if not message:
            raise ValueError("cannot send an empty message")
        if len(message) > self.max_message_size:
            raise MessageTooLarge(
                f"too-large: message of {len(message)} bytes exceeds the limit of "
                f"{self.max_message_size} bytes; nothing was sent"
            )
        framed = msgframing.encode_message(message)
        async with self._send_lock:
            if self._broken is not None:
                raise self._copy(self._broken)
            # a cancelled sender stops here, before the encryptor's nonce moves: the connection stays usable
            # (to say `close`). From here to the stream's own first check nothing yields, so a cancellation
            # can only land once bytes of this frame may have gone out, and then the stream is broken.
            await trio.lowlevel.checkpoint_if_cancelled()
            data = self._encoder.encrypt(framed)
            try:
                await self._stream.send_all(data)
            except _NETWORK_ERRORS as exc:
                await self._fail(TransportError(f"network: send failed: {exc!r}"))
                raise self._copy(self._broken) from exc  # type: ignore[arg-type]
            except BaseException:
                # Cancelled (or worse) in the middle of a frame: the stream can no longer be trusted.
                await self._fail(TransportError("network: a send was interrupted; connection closed"))
                raise

    async def receive(self) -> bytes:
        """Receive one whole wire message.

        Raises ConnectionClosed on goodbye/EOF, IdleTimeout when nothing arrives within idle_timeout,
        MessageTooLarge when the announced length exceeds max_message_size, and TransportError("invalid: ...")
        on any forged or malformed frame. After those two, every receive fails the same way, sending still
        works (to say `close` with the reason), and the caller closes the connection.
        """
        async with self._receive_lock:
            if self._receive_error is not None:
                raise self._copy(self._receive_error)
            while True:
                try:
                    message = self._messages.next_message()
                    if message is not None:
                        return message
                    event = self._decoder.next_event()
                # The peer broke the rules: receiving is over, but our sending direction still works, so the
                # caller can tell the peer why (a `close` message) before it closes the connection.
                except msgframing.MessageTooLargeError as exc:
                    self._refuse_receive(MessageTooLarge(f"too-large: {exc}"), exc)
                except msgframing.FramingError as exc:
                    self._refuse_receive(TransportError(f"invalid: bad message framing: {exc}"), exc)
                except boxstream.BoxStreamError as exc:
                    self._refuse_receive(TransportError(f"invalid: bad box stream frame: {exc}"), exc)
                if isinstance(event, boxstream.Data):
                    self._messages.receive_data(event.data)
                    continue
                if isinstance(event, boxstream.Goodbye):
                    if self._messages.in_message:
                        await self._fail_receive(
                            ConnectionClosed("truncated: peer said goodbye in the middle of a message")
                        )
                    self._receive_error = ConnectionClosed("closed: peer said goodbye")
                    raise self._copy(self._receive_error)
                await self._read_more()

    async def _read_more(self) -> None:
        if self._broken is not None:
            self._receive_error = self._broken
            raise self._copy(self._broken)
        try:
            with trio.move_on_after(self.idle_timeout) as scope:
                data = await self._stream.receive_some(RECEIVE_SIZE)
        except _NETWORK_ERRORS as exc:
            if self._broken is not None:  # closed by us meanwhile
                await self._fail_receive(self._broken, exc)
            await self._fail_receive(TransportError(f"network: receive failed: {exc!r}"), exc)
        if scope.cancelled_caught:
            raise IdleTimeout(f"idle: nothing received for {self.idle_timeout:g} s")
        if data:
            self._decoder.receive_data(data)
            return
        try:
            self._decoder.eof()
        except boxstream.BoxStreamError as exc:
            await self._fail_receive(ConnectionClosed(f"truncated: peer closed the stream: {exc}"), exc)

    async def aclose(self) -> None:
        """Send the goodbye (if possible) and close the stream. Idempotent; never raises (but Cancelled)."""
        if self._broken is not None:
            return
        try:
            with trio.move_on_after(CLOSE_TIMEOUT):
                async with self._send_lock:
                    if self._broken is None and not self._encoder.closed:
                        await self._stream.send_all(self._encoder.goodbye())
        except Exception:  # closing must not fail
            pass
        finally:
            await self._fail(ConnectionClosed("closed: connection closed locally"))

    async def _fail(self, error: TransportError) -> None:
        if self._broken is None:
            self._broken = error
        await trio.aclose_forcefully(self._stream)

    def _refuse_receive(self, error: TransportError, cause: BaseException) -> None:
        self._receive_error = error
        raise self._copy(error) from cause

    async def _fail_receive(self, error: TransportError, cause: BaseException | None = None) -> None:
        self._receive_error = error
        await self._fail(error)
        raise self._copy(error) from cause

    @staticmethod
    def _copy(error: TransportError) -> TransportError:
        # A fresh instance per raise, so tracebacks of earlier raises do not pile up.
        return type(error)(error.reason)


async def _handshake(
    stream: trio.abc.Stream,
    machine: handshake.ClientHandshake | handshake.ServerHandshake,
    first: bytes,
    handshake_timeout: float,
    who: str,
) -> handshake.HandshakeResult:
    failure: HandshakeFailed | None = None
    cause: BaseException | None = None
    answered = False  # a client got a valid server hello
    try:
        with trio.move_on_after(handshake_timeout) as scope:
            if first:
                await stream.send_all(first)
            while not machine.complete:
                data = await stream.receive_some(machine.bytes_needed)
                if not data:
                    hint = " (it may use another network key, or not hold the key we dialled)"
                    failure = HandshakeFailed(
                        f"closed: {who} closed the connection during the handshake"
                        + (hint if who == "server" else "")
                    )
                    break
                reply = machine.receive_data(data)
                if reply:
                    answered = True
                    await stream.send_all(reply)
        if scope.cancelled_caught:
            failure = HandshakeFailed(f"timeout: handshake did not finish within {handshake_timeout:g} s")
    except handshake.HandshakeError as exc:
        failure, cause = HandshakeFailed(f"invalid: {exc}"), exc
    except _NETWORK_ERRORS as exc:
        failure, cause = HandshakeFailed(f"network: {exc!r}"), exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    if failure is not None:
        failure.answered = answered
        await trio.aclose_forcefully(stream)
        raise failure from cause
    assert machine.result is not None
    return machine.result


async def client_handshake(
    stream: trio.abc.Stream,
    identity: nacl.signing.SigningKey,
    server_key: bytes,
    *,
    network_key: bytes = DEFAULT_NETWORK_KEY,
    handshake_timeout: float = 10.0,
    idle_timeout: float = 120.0,
    max_message_size: int = MAX_MESSAGE_SIZE,
) -> Connection:
    """Dial side: authenticate to the server whose Ed25519 public key is `server_key`."""
    return await _open(stream, lambda: handshake.ClientHandshake(identity, server_key, nacl.utils.random(32),
                                                                 network_key),
                       "server", handshake_timeout, idle_timeout, max_message_size)


async def server_handshake(
    stream: trio.abc.Stream,
    identity: nacl.signing.SigningKey,
    *,
    network_key: bytes = DEFAULT_NETWORK_KEY,
    handshake_timeout: float = 10.0,
    idle_timeout: float = 120.0,
    max_message_size: int = MAX_MESSAGE_SIZE,
) -> Connection:
    """Listen side: authenticate whichever client knows the network key; see Connection.remote_key."""
    return await _open(stream, lambda: handshake.ServerHandshake(identity, nacl.utils.random(32), network_key),
                       "client", handshake_timeout, idle_timeout, max_message_size)


async def _open(
    stream: trio.abc.Stream,
    make_machine: Callable[[], handshake.ClientHandshake | handshake.ServerHandshake],
    who: str,
    handshake_timeout: float,
    idle_timeout: float,
    max_message_size: int,
) -> Connection:
    """Run either side's handshake on `stream` and wrap the result in a Connection."""
    try:
        machine = make_machine()
    except (handshake.HandshakeError, ValueError) as exc:
        await trio.aclose_forcefully(stream)
        raise HandshakeFailed(f"invalid: {exc}") from exc
    first = machine.initiate() if isinstance(machine, handshake.ClientHandshake) else b""
    result = await _handshake(stream, machine, first, handshake_timeout, who)
    return Connection(stream, result, leftover=machine.leftover, idle_timeout=idle_timeout,
                      max_message_size=max_message_size)
