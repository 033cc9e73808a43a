# Secret Handshake v1 (sans-I/O): the client and server state machines that authenticate two
# Ed25519 identities under a 32-byte network key and derive the box-stream keys and nonces.
# Byte-compatible with the published protocol (npm `secret-handshake`); see spec/transport.md.
from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
import nacl.signing

DEFAULT_NETWORK_KEY = bytes.fromhex("52d6f0aee9b929250741f24fc65408d36754181d10c15094043e3849f14c6e25")
"""sha256(b"p2pnode public network v1"): the network key of the public p2pnode network."""

KEY_SIZE = 32
CLIENT_HELLO_SIZE = 64
SERVER_HELLO_SIZE = 64
CLIENT_AUTH_SIZE = 112
SERVER_ACCEPT_SIZE = 80
BOX_NONCE_SIZE = 24

_ZERO_NONCE = bytes(24)


class HandshakeError(Exception):
    """Base of every handshake failure. `str(err)` is a one-line human-readable reason."""


class HandshakeStateError(HandshakeError):
    """We (the local side) used the state machine out of order."""


class MessageSizeError(HandshakeError):
    """A handshake message was shorter or longer than its fixed size."""


class NetworkKeyMismatch(HandshakeError):
    """The peer's hello was not authenticated with our network key."""


class ClientAuthInvalid(HandshakeError):
    """The client's authenticate message did not decrypt (wrong server key or network key)."""


class SignatureInvalid(HandshakeError):
    """A handshake signature did not verify."""


class ServerAcceptInvalid(HandshakeError):
    """The server's accept message did not decrypt (the server does not hold the key we dialled)."""


class InvalidKey(HandshakeError):
    """A public key is not usable (malformed Ed25519 key, or a weak Curve25519 point)."""


@dataclass(frozen=True)
class HandshakeResult:
    """The outcome of a successful handshake, as seen by one side."""

    remote_key: bytes  # the peer's long-term Ed25519 public key (32 bytes)
    encrypt_key: bytes  # box-stream key for what we send (32 bytes)
    encrypt_nonce: bytes  # first box-stream nonce for what we send (24 bytes)
    decrypt_key: bytes  # box-stream key for what we receive
    decrypt_nonce: bytes  # first box-stream nonce for what we receive


class _State(enum.Enum):
    SEND_HELLO = "send client hello"
    AWAIT_HELLO = "await hello"
    AWAIT_CLIENT_AUTH = "await client authenticate"
    AWAIT_SERVER_ACCEPT = "await server accept"
    DONE = "done"
    FAILED = "failed"


def _sha256(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def _auth(key: bytes, msg: bytes) -> bytes:
    """crypto_auth: HMAC-SHA-512 truncated to 32 bytes."""
    return hmac.new(key, msg, hashlib.sha512).digest()[:32]


def _scalarmult(secret: bytes, public: bytes) -> bytes:
    try:
        return nacl.bindings.crypto_scalarmult(secret, public)
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise InvalidKey("weak or invalid Curve25519 public key in handshake") from exc


def _ed25519_pk_to_curve(public: bytes) -> bytes:
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public)
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise InvalidKey("long-term public key is not a valid Ed25519 key") from exc


def _verify(public: bytes, msg: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public).verify(msg, signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


def _secretbox_open(box: bytes, key: bytes) -> bytes | None:
    try:
        return nacl.bindings.crypto_secretbox_open(box, _ZERO_NONCE, key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return None


def _check_size(name: str, msg: bytes, size: int) -> None:
    if len(msg) != size:
        kind = "short" if len(msg) < size else "long"
        raise MessageSizeError(f"{name} is {kind}: {len(msg)} bytes, expected {size}")


def _check_network_key(network_key: bytes) -> bytes:
    network_key = bytes(network_key)
    if len(network_key) != KEY_SIZE:
        raise ValueError(f"network key must be {KEY_SIZE} bytes, got {len(network_key)}")
    return network_key


def _check_ephemeral(ephemeral: bytes) -> bytes:
    ephemeral = bytes(ephemeral)
    if len(ephemeral) != KEY_SIZE:
        raise ValueError(f"ephemeral secret key must be {KEY_SIZE} bytes, got {len(ephemeral)}")
    return ephemeral


class _Side:
    """What the client and server share: hello messages, buffering, and the final key derivation."""

    _hello_name = ""

    def __init__(self, identity: nacl.signing.SigningKey, ephemeral: bytes, network_key: bytes) -> None:
        self._network_key = _check_network_key(network_key)
        self._identity = identity
        self._public = bytes(identity.verify_key)
        self._eph_secret = _check_ephemeral(ephemeral)
        self._eph_public = nacl.bindings.crypto_scalarmult_base(self._eph_secret)
        self._local_mac = _auth(self._network_key, self._eph_public)
        self._remote_eph = b""
        self._remote_mac = b""
        self._ab = b""  # shared secret of the two ephemeral keys
        self._buffer = bytearray()
        self._state = _State.FAILED
        self.result: HandshakeResult | None = None
        self.leftover = b""

    @property
    def complete(self) -> bool:
        return self._state is _State.DONE

    @property
    def failed(self) -> bool:
        return self._state is _State.FAILED

    def _hello(self) -> bytes:
        return self._local_mac + self._eph_public

    def _take_hello(self, msg: bytes) -> None:
        _check_size(self._hello_name, msg, CLIENT_HELLO_SIZE)
        mac, eph = msg[:32], msg[32:]
        if not hmac.compare_digest(mac, _auth(self._network_key, eph)):
            raise NetworkKeyMismatch(f"{self._hello_name} is not authenticated with our network key")
        self._remote_mac = mac
        self._remote_eph = eph
        self._ab = _scalarmult(self._eph_secret, eph)

    def _finish(self, remote_key: bytes, secret3: bytes) -> HandshakeResult:
        shared = _sha256(secret3)
        self.result = HandshakeResult(
            remote_key=remote_key,
            encrypt_key=_sha256(shared, remote_key),
            encrypt_nonce=self._remote_mac[:BOX_NONCE_SIZE],
            decrypt_key=_sha256(shared, self._public),
            decrypt_nonce=self._local_mac[:BOX_NONCE_SIZE],
        )
        self._state = _State.DONE
        return self.result

    @property
    def bytes_needed(self) -> int:
        """How many more bytes complete the next expected message (0 when none is expected)."""
        size = self._expected_size()
        return max(0, size - len(self._buffer)) if size else 0

    def _expected_size(self) -> int:
        raise NotImplementedError

    def _guard(self, step: Callable[[bytes], bytes], msg: bytes) -> bytes:
        try:
            return step(msg)
        except HandshakeError:
            self._state = _State.FAILED
            raise

    def _process(self, msg: bytes) -> bytes:
        raise NotImplementedError

    def receive_data(self, data: bytes) -> bytes:
        """Feed bytes from the peer; returns the bytes to send to the peer (possibly empty).

        Bytes after the final handshake message (only possible on the client) are kept in
        `leftover`: they are the start of the box stream. Any other surplus is a protocol error.
        """
        if self._state in (_State.DONE, _State.FAILED, _State.SEND_HELLO):
            raise HandshakeStateError(f"cannot receive data in state {self._state.value!r}")
        self._buffer += data
        size = self._expected_size()
        if len(self._buffer) < size:
            return b""
        msg = bytes(self._buffer[:size])
        rest = bytes(self._buffer[size:])
        self._buffer.clear()
        try:
            out = self._process(msg)
            if rest:
                if self._state is _State.DONE and isinstance(self, ClientHandshake):
                    self.leftover = rest
                else:
                    raise MessageSizeError(
                        f"peer sent {len(rest)} bytes too many: it must wait for our reply"
                    )
        except HandshakeError:
            self._state = _State.FAILED
            raise
        return out


class ClientHandshake(_Side):
    """The dialling side. Call `initiate()`, send its bytes, then feed replies to `receive_data`."""

    _hello_name = "server hello"

    def __init__(
        self,
        identity: nacl.signing.SigningKey,
        server_key: bytes,
        ephemeral: bytes,
        network_key: bytes = DEFAULT_NETWORK_KEY,
    ) -> None:
        super().__init__(identity, ephemeral, network_key)
        server_key = bytes(server_key)
        if len(server_key) != KEY_SIZE:
            raise ValueError(f"server key must be {KEY_SIZE} bytes, got {len(server_key)}")
        self._server_key = server_key
        self._server_curve = _ed25519_pk_to_curve(server_key)
        self._hello_sig = b""
        self._secret2 = b""
        self._aB = b""
        self._state = _State.SEND_HELLO

    def _expected_size(self) -> int:
        return {
            _State.AWAIT_HELLO: SERVER_HELLO_SIZE,
            _State.AWAIT_SERVER_ACCEPT: SERVER_ACCEPT_SIZE,
        }.get(self._state, 0)

    def initiate(self) -> bytes:
        """The client hello (64 bytes): hmac(network_key, eph_pk) || eph_pk."""
        if self._state is not _State.SEND_HELLO:
            raise HandshakeStateError("client hello was already sent")
        self._state = _State.AWAIT_HELLO
        return self._hello()

    def receive_server_hello(self, msg: bytes) -> bytes:
        """Check the 64-byte server hello; returns the 112-byte client authenticate."""
        if self._state is not _State.AWAIT_HELLO:
            raise HandshakeStateError(f"not expecting a server hello in state {self._state.value!r}")
        return self._guard(self._on_server_hello, msg)

    def receive_server_accept(self, msg: bytes) -> HandshakeResult:
        """Check the 80-byte server accept; returns the handshake outcome."""
        if self._state is not _State.AWAIT_SERVER_ACCEPT:
            raise HandshakeStateError(f"not expecting a server accept in state {self._state.value!r}")
        self._guard(self._on_server_accept, msg)
        assert self.result is not None
        return self.result

    def _process(self, msg: bytes) -> bytes:
        if self._state is _State.AWAIT_HELLO:
            return self._on_server_hello(msg)
        self._on_server_accept(msg)
        return b""

    def _on_server_hello(self, msg: bytes) -> bytes:
        self._take_hello(msg)
        self._aB = _scalarmult(self._eph_secret, self._server_curve)
        self._secret2 = _sha256(self._network_key, self._ab, self._aB)
        signed = self._network_key + self._server_key + _sha256(self._ab)
        self._hello_sig = self._identity.sign(signed).signature
        self._state = _State.AWAIT_SERVER_ACCEPT
        return nacl.bindings.crypto_secretbox(self._hello_sig + self._public, _ZERO_NONCE, self._secret2)

    def _on_server_accept(self, msg: bytes) -> bytes:
        _check_size("server accept", msg, SERVER_ACCEPT_SIZE)
        curve_secret = self._identity.to_curve25519_private_key().encode()
        Ab = _scalarmult(curve_secret, self._remote_eph)
        secret3 = _sha256(self._network_key, self._ab, self._aB, Ab)
        sig = _secretbox_open(msg, secret3)
        if sig is None:
            raise ServerAcceptInvalid(
                "server accept did not decrypt: the server does not hold the key we dialled"
            )
        signed = self._network_key + self._hello_sig + self._public + _sha256(self._ab)
        if not _verify(self._server_key, signed, sig):
            raise SignatureInvalid("server accept signature does not verify with the server key")
        self._finish(self._server_key, secret3)
        return b""


class ServerHandshake(_Side):
    """The listening side. Feed the client's bytes to `receive_data` and send what it returns."""

    _hello_name = "client hello"

    def __init__(
        self,
        identity: nacl.signing.SigningKey,
        ephemeral: bytes,
        network_key: bytes = DEFAULT_NETWORK_KEY,
    ) -> None:
        super().__init__(identity, ephemeral, network_key)
        self._state = _State.AWAIT_HELLO

    def _expected_size(self) -> int:
        return {
            _State.AWAIT_HELLO: CLIENT_HELLO_SIZE,
            _State.AWAIT_CLIENT_AUTH: CLIENT_AUTH_SIZE,
        }.get(self._state, 0)

    def receive_client_hello(self, msg: bytes) -> bytes:
        """Check the 64-byte client hello; returns the 64-byte server hello."""
        if self._state is not _State.AWAIT_HELLO:
            raise HandshakeStateError(f"not expecting a client hello in state {self._state.value!r}")
        return self._guard(self._on_client_hello, msg)

    def receive_client_auth(self, msg: bytes) -> bytes:
        """Check the 112-byte client authenticate; returns the 80-byte server accept."""
        if self._state is not _State.AWAIT_CLIENT_AUTH:
            raise HandshakeStateError(f"not expecting a client authenticate in state {self._state.value!r}")
        return self._guard(self._on_client_auth, msg)

    def _process(self, msg: bytes) -> bytes:
        if self._state is _State.AWAIT_HELLO:
            return self._on_client_hello(msg)
        return self._on_client_auth(msg)

    def _on_client_hello(self, msg: bytes) -> bytes:
        self._take_hello(msg)
        self._state = _State.AWAIT_CLIENT_AUTH
        return self._hello()

    def _on_client_auth(self, msg: bytes) -> bytes:
        _check_size("client authenticate", msg, CLIENT_AUTH_SIZE)
        curve_secret = self._identity.to_curve25519_private_key().encode()
        aB = _scalarmult(curve_secret, self._remote_eph)
        secret2 = _sha256(self._network_key, self._ab, aB)
        hello = _secretbox_open(msg, secret2)
        if hello is None:
            raise ClientAuthInvalid(
                "client authenticate did not decrypt: the client dialled another server key or network key"
            )
        sig, client_key = hello[:64], hello[64:]
        signed = self._network_key + self._public + _sha256(self._ab)
        if not _verify(client_key, signed, sig):
            raise SignatureInvalid("client authenticate signature does not verify")
        Ab = _scalarmult(self._eph_secret, _ed25519_pk_to_curve(client_key))
        secret3 = _sha256(self._network_key, self._ab, aB, Ab)
        signed_accept = self._network_key + hello + _sha256(self._ab)
        accept_sig = self._identity.sign(signed_accept).signature
        self._finish(client_key, secret3)
        return nacl.bindings.crypto_secretbox(accept_sig, _ZERO_NONCE, secret3)
