# Sans-I/O tests of protocol/handshake.py: two state machines talking with no sockets, every
# failure path, and fuzzing that bad bytes only ever raise our own HandshakeError.
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from protocol import handshake as hs


def _key(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


CLIENT = SigningKey(_key("client"))
SERVER = SigningKey(_key("server"))
SERVER_PK = bytes(SERVER.verify_key)
OTHER_NK = _key("other network")


def _pair(
    client_nk: bytes = hs.DEFAULT_NETWORK_KEY,
    server_nk: bytes = hs.DEFAULT_NETWORK_KEY,
    server_pk: bytes = SERVER_PK,
) -> tuple[hs.ClientHandshake, hs.ServerHandshake]:
    client = hs.ClientHandshake(CLIENT, server_pk, _key("c eph"), client_nk)
    server = hs.ServerHandshake(SERVER, _key("s eph"), server_nk)
    return client, server


def _transcript() -> list[bytes]:
    client, server = _pair()
    hello = client.initiate()
    server_hello = server.receive_client_hello(hello)
    auth = client.receive_server_hello(server_hello)
    accept = server.receive_client_auth(auth)
    client.receive_server_accept(accept)
    return [hello, server_hello, auth, accept]


def test_message_level_pair_agrees_on_keys() -> None:
    client, server = _pair()
    hello = client.initiate()
    assert len(hello) == hs.CLIENT_HELLO_SIZE
    server_hello = server.receive_client_hello(hello)
    assert len(server_hello) == hs.SERVER_HELLO_SIZE
    auth = client.receive_server_hello(server_hello)
    assert len(auth) == hs.CLIENT_AUTH_SIZE
    accept = server.receive_client_auth(auth)
    assert len(accept) == hs.SERVER_ACCEPT_SIZE
    c = client.receive_server_accept(accept)
    s = server.result
    assert client.complete and server.complete and s is not None
    assert c.remote_key == SERVER_PK
    assert s.remote_key == bytes(CLIENT.verify_key)
    assert (c.encrypt_key, c.encrypt_nonce) == (s.decrypt_key, s.decrypt_nonce)
    assert (c.decrypt_key, c.decrypt_nonce) == (s.encrypt_key, s.encrypt_nonce)
    assert c.encrypt_key != c.decrypt_key and len(c.encrypt_nonce) == 24


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_stream_level_pair_in_chunks(chunk: int) -> None:
    client, server = _pair()
    to_server, to_client = client.initiate(), b""
    while not (client.complete and server.complete):
        while to_server:
            piece, to_server = to_server[:chunk], to_server[chunk:]
            to_client += server.receive_data(piece)
        while to_client:
            piece, to_client = to_client[:chunk], to_client[chunk:]
            to_server += client.receive_data(piece)
    assert client.result is not None and server.result is not None
    assert client.result.encrypt_key == server.result.decrypt_key
    assert client.leftover == b"" and server.bytes_needed == 0


def test_stream_level_matches_message_level() -> None:
    client, server = _pair()
    out = [client.initiate()]
    out.append(server.receive_data(out[-1]))
    out.append(client.receive_data(out[-1]))
    out.append(server.receive_data(out[-1]))
    client.receive_data(out[-1])
    assert out == _transcript()


def test_bytes_after_server_accept_are_leftover_for_the_box_stream() -> None:
    client, server = _pair()
    auth = client.receive_data(server.receive_data(client.initiate()))
    accept = server.receive_data(auth)
    assert client.receive_data(accept + b"box stream bytes") == b""
    assert client.complete and client.leftover == b"box stream bytes"


def test_wrong_network_key_is_refused_by_server_which_sends_nothing() -> None:
    client, server = _pair(client_nk=OTHER_NK)
    with pytest.raises(hs.NetworkKeyMismatch, match="network key"):
        server.receive_data(client.initiate())
    assert server.failed
    with pytest.raises(hs.HandshakeStateError):
        server.receive_data(b"more")


def test_wrong_network_key_on_server_hello_is_refused_by_client() -> None:
    client, _ = _pair()
    foreign_client, foreign_server = _pair(client_nk=OTHER_NK, server_nk=OTHER_NK)
    client.initiate()
    with pytest.raises(hs.NetworkKeyMismatch):
        client.receive_data(foreign_server.receive_data(foreign_client.initiate()))
    assert client.failed


def test_client_dialling_wrong_server_key_is_refused() -> None:
    client, server = _pair(server_pk=bytes(SigningKey(_key("someone else")).verify_key))
    auth = client.receive_data(server.receive_data(client.initiate()))
    with pytest.raises(hs.ClientAuthInvalid, match="another server key"):
        server.receive_data(auth)


def test_impostor_server_accept_is_refused() -> None:
    client, server = _pair()
    server.receive_data(client.initiate())
    # Server hello is genuine but the accept is forged by flipping one bit.
    client2, server2 = _pair()
    auth = client2.receive_data(server2.receive_data(client2.initiate()))
    accept = bytearray(server2.receive_data(auth))
    accept[10] ^= 1
    with pytest.raises(hs.ServerAcceptInvalid):
        client2.receive_data(bytes(accept))


@pytest.mark.parametrize(
    ("method", "size"),
    [("receive_client_hello", 63), ("receive_client_hello", 65)],
)
def test_short_and_long_client_hello(method: str, size: int) -> None:
    _, server = _pair()
    with pytest.raises(hs.MessageSizeError, match="short" if size < 64 else "long"):
        getattr(server, method)(bytes(size))


def test_short_and_long_later_messages() -> None:
    hello, server_hello, auth, accept = _transcript()
    _, server = _pair()
    server.receive_client_hello(hello)
    with pytest.raises(hs.MessageSizeError):
        server.receive_client_auth(auth[:-1])
    client, _ = _pair()
    client.initiate()
    client.receive_server_hello(server_hello)
    with pytest.raises(hs.MessageSizeError):
        client.receive_server_accept(accept + b"\x00")


def test_surplus_bytes_before_our_reply_are_refused() -> None:
    hello, server_hello, auth, _ = _transcript()
    _, server = _pair()
    with pytest.raises(hs.MessageSizeError, match="too many"):
        server.receive_data(hello + b"x")
    client, _ = _pair()
    client.initiate()
    with pytest.raises(hs.MessageSizeError, match="too many"):
        client.receive_data(server_hello + b"x")


def test_out_of_order_use_is_a_state_error() -> None:
    client, server = _pair()
    with pytest.raises(hs.HandshakeStateError):
        client.receive_data(b"x")
    with pytest.raises(hs.HandshakeStateError):
        server.receive_client_auth(bytes(112))
    client.initiate()
    with pytest.raises(hs.HandshakeStateError):
        client.initiate()
    with pytest.raises(hs.HandshakeStateError):
        client.receive_server_accept(bytes(80))


def test_bad_server_key_and_bad_parameters() -> None:
    with pytest.raises(ValueError):
        hs.ClientHandshake(CLIENT, b"short", _key("e"))
    with pytest.raises(ValueError):
        hs.ServerHandshake(SERVER, _key("e"), b"short network key")
    with pytest.raises(ValueError):
        hs.ServerHandshake(SERVER, b"short eph")
    # The y coordinate 2 is not on the curve: not a valid Ed25519 key.
    with pytest.raises(hs.InvalidKey):
        hs.ClientHandshake(CLIENT, (2).to_bytes(32, "little"), _key("e"))


def test_low_order_ephemeral_key_is_refused() -> None:
    _, server = _pair()
    zero_point = bytes(32)
    hello = hs._auth(hs.DEFAULT_NETWORK_KEY, zero_point) + zero_point
    with pytest.raises(hs.InvalidKey):
        server.receive_data(hello)


# --- fuzzing: whatever the peer sends, we either wait for more or raise HandshakeError ---


def _feed_all(machine: hs.ClientHandshake | hs.ServerHandshake, chunks: list[bytes]) -> None:
    for chunk in chunks:
        if machine.complete:
            return
        try:
            machine.receive_data(chunk)
        except hs.HandshakeError:
            return


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=150), max_size=4))
def test_fuzz_random_bytes_to_server(chunks: list[bytes]) -> None:
    _, server = _pair()
    _feed_all(server, chunks)
    assert not server.complete


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=150), max_size=4))
def test_fuzz_random_bytes_to_client(chunks: list[bytes]) -> None:
    client, _ = _pair()
    client.initiate()
    _feed_all(client, chunks)
    assert not client.complete


@settings(max_examples=80, deadline=None)
@given(
    which=st.integers(0, 3),
    position=st.integers(0, 111),
    flip=st.integers(1, 255),
    cut=st.booleans(),
)
def test_fuzz_mutated_or_truncated_transcript_fails_cleanly(
    which: int, position: int, flip: int, cut: bool
) -> None:
    messages = _transcript()
    msg = bytearray(messages[which])
    position %= len(msg)
    if cut:
        msg = msg[:position]
    else:
        msg[position] ^= flip
    client, server = _pair()
    hello = client.initiate()
    steps: list[tuple[hs.ClientHandshake | hs.ServerHandshake, bytes]] = [
        (server, hello),
        (client, messages[1]),
        (server, messages[2]),
        (client, messages[3]),
    ]
    steps[which] = (steps[which][0], bytes(msg))
    if which >= 1:  # replay the genuine earlier steps so both sides reach the mutated one
        server.receive_client_hello(hello)
    if which >= 2:
        client.receive_server_hello(messages[1])
    if which >= 3:
        server.receive_client_auth(messages[2])
    machine, data = steps[which]
    if cut:
        # A truncated message is a short message at the message level, and "wait" at the stream level.
        method = [
            "receive_client_hello",
            "receive_server_hello",
            "receive_client_auth",
            "receive_server_accept",
        ]
        with pytest.raises(hs.MessageSizeError):
            getattr(machine, method[which])(data)
    else:
        with pytest.raises(hs.HandshakeError):
            machine.receive_data(data)
