# Checks spec/vectors/transport/*.json: our implementation reproduces every valid vector exactly,
# fails every invalid one with the named error, and the generator's output equals the committed files.
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from protocol import boxstream, handshake

VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors" / "transport"


def _load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text())


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


HANDSHAKE = _load("handshake.json")
BOXSTREAM = _load("boxstream.json")


def _machines(v: dict[str, Any]) -> tuple[handshake.ClientHandshake, handshake.ServerHandshake]:
    nk = _h(v["network_key"])
    client = handshake.ClientHandshake(
        SigningKey(_h(v["client_seed"])), _h(v["server_public_key"]), _h(v["client_eph_secret"]), nk
    )
    server = handshake.ServerHandshake(SigningKey(_h(v["server_seed"])), _h(v["server_eph_secret"]), nk)
    return client, server


def test_generator_output_equals_committed_files() -> None:
    spec = importlib.util.spec_from_file_location("transport_vector_generator", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, content in module.build().items():
        assert module.render(content) == (VECTORS / name).read_text(), f"{name} is stale: rerun generate.py"


@pytest.mark.parametrize("v", HANDSHAKE["valid"], ids=lambda v: v["name"])
def test_valid_handshake_vectors(v: dict[str, Any]) -> None:
    client, server = _machines(v)
    assert bytes(SigningKey(_h(v["client_seed"])).verify_key).hex() == v["client_public_key"]
    hello = client.initiate()
    assert hello.hex() == v["client_hello"]
    assert hello[32:].hex() == v["client_eph_public"]
    assert server.receive_client_hello(hello).hex() == v["server_hello"]
    assert client.receive_server_hello(_h(v["server_hello"])).hex() == v["client_auth"]
    assert server.receive_client_auth(_h(v["client_auth"])).hex() == v["server_accept"]
    c = client.receive_server_accept(_h(v["server_accept"]))
    s = server.result
    assert s is not None
    assert c.remote_key.hex() == v["server_public_key"] and s.remote_key.hex() == v["client_public_key"]
    assert c.encrypt_key.hex() == s.decrypt_key.hex() == v["client_to_server_key"]
    assert c.encrypt_nonce.hex() == s.decrypt_nonce.hex() == v["client_to_server_nonce"]
    assert c.decrypt_key.hex() == s.encrypt_key.hex() == v["server_to_client_key"]
    assert c.decrypt_nonce.hex() == s.encrypt_nonce.hex() == v["server_to_client_nonce"]


@pytest.mark.parametrize("v", HANDSHAKE["invalid"], ids=lambda v: v["name"])
def test_invalid_handshake_vectors(v: dict[str, Any]) -> None:
    base = next(b for b in HANDSHAKE["valid"] if b["name"] == v["base"])
    client, server = _machines(base)
    message = _h(v["message"])
    error = getattr(handshake, v["error"])
    assert issubclass(error, handshake.HandshakeError)
    if v["step"] == "client_hello":
        call = server.receive_client_hello
    elif v["step"] == "client_auth":
        server.receive_client_hello(_h(base["client_hello"]))
        call = server.receive_client_auth
    elif v["step"] == "server_hello":
        client.initiate()
        call = client.receive_server_hello
    else:
        client.initiate()
        client.receive_server_hello(_h(base["server_hello"]))
        call = client.receive_server_accept
    with pytest.raises(error):
        call(message)


@pytest.mark.parametrize("v", BOXSTREAM["valid"], ids=lambda v: v["name"])
def test_valid_boxstream_vectors(v: dict[str, Any]) -> None:
    enc = boxstream.BoxStreamEncoder(_h(v["key"]), _h(v["nonce"]))
    stream = b"".join(enc.encrypt(_h(w)) for w in v["writes"]) + enc.goodbye()
    assert stream.hex() == v["stream"]
    dec = boxstream.BoxStreamDecoder(_h(v["key"]), _h(v["nonce"]))
    dec.receive_data(stream)
    got = bytearray()
    while isinstance(event := dec.next_event(), boxstream.Data):
        got += event.data
    assert event == boxstream.Goodbye()
    dec.eof()
    assert got.hex() == "".join(v["writes"])


@pytest.mark.parametrize("v", BOXSTREAM["invalid"], ids=lambda v: v["name"])
def test_invalid_boxstream_vectors(v: dict[str, Any]) -> None:
    dec = boxstream.BoxStreamDecoder(_h(v["key"]), _h(v["nonce"]))
    got = bytearray()
    error = getattr(boxstream, v["error"])
    with pytest.raises(error):
        dec.receive_data(_h(v["stream"]))
        while (event := dec.next_event()) is not boxstream.NEED_DATA:
            if isinstance(event, boxstream.Data):
                got += event.data
        dec.eof()
    assert got.hex() == v["data_before_error"]
