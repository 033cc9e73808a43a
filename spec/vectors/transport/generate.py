# Generates the transport test vectors (handshake.json, boxstream.json) beside this file from fixed
# keys, using p2pnode's own protocol/ code. Run from the repo root: python spec/vectors/transport/generate.py
# tests/test_transport_vectors.py checks that this output equals the committed files.
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

import nacl.bindings  # noqa: E402
from nacl.signing import SigningKey  # noqa: E402

from protocol import boxstream, handshake  # noqa: E402

VERSION = 1


def _label(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def _handshake_case(name: str, network_key: bytes, tag: str) -> dict[str, str]:
    client_seed, server_seed = _label(f"{tag} client seed"), _label(f"{tag} server seed")
    client_eph, server_eph = _label(f"{tag} client ephemeral"), _label(f"{tag} server ephemeral")
    client_id, server_id = SigningKey(client_seed), SigningKey(server_seed)
    client = handshake.ClientHandshake(client_id, bytes(server_id.verify_key), client_eph, network_key)
    server = handshake.ServerHandshake(server_id, server_eph, network_key)
    hello = client.initiate()
    server_hello = server.receive_client_hello(hello)
    auth = client.receive_server_hello(server_hello)
    accept = server.receive_client_auth(auth)
    result = client.receive_server_accept(accept)
    assert server.result is not None
    return {
        "name": name,
        "network_key": network_key.hex(),
        "client_seed": client_seed.hex(),
        "client_public_key": bytes(client_id.verify_key).hex(),
        "server_seed": server_seed.hex(),
        "server_public_key": bytes(server_id.verify_key).hex(),
        "client_eph_secret": client_eph.hex(),
        "client_eph_public": nacl.bindings.crypto_scalarmult_base(client_eph).hex(),
        "server_eph_secret": server_eph.hex(),
        "server_eph_public": nacl.bindings.crypto_scalarmult_base(server_eph).hex(),
        "client_hello": hello.hex(),
        "server_hello": server_hello.hex(),
        "client_auth": auth.hex(),
        "server_accept": accept.hex(),
        "client_to_server_key": result.encrypt_key.hex(),
        "client_to_server_nonce": result.encrypt_nonce.hex(),
        "server_to_client_key": result.decrypt_key.hex(),
        "server_to_client_nonce": result.decrypt_nonce.hex(),
    }


def _invalid_handshakes(base: dict[str, str]) -> list[dict[str, object]]:
    nk = bytes.fromhex(base["network_key"])
    other_nk = _label("some private network")
    client_eph = bytes.fromhex(base["client_eph_secret"])
    server_eph = bytes.fromhex(base["server_eph_secret"])
    client_id = SigningKey(bytes.fromhex(base["client_seed"]))
    server_key = bytes.fromhex(base["server_public_key"])
    server_hello = bytes.fromhex(base["server_hello"])
    client_auth = bytes.fromhex(base["client_auth"])
    server_accept = bytes.fromhex(base["server_accept"])

    # A client that uses another network key: its hello fails the server's check.
    foreign_hello = handshake.ClientHandshake(client_id, server_key, client_eph, other_nk).initiate()
    # A server that uses another network key: its hello fails the client's check.
    foreign_server = handshake.ServerHandshake(SigningKey(_label("other server")), server_eph, other_nk)
    foreign_server_hello = foreign_server.receive_client_hello(
        handshake.ClientHandshake(client_id, server_key, client_eph, other_nk).initiate()
    )
    # A client that dialled another server key: its authenticate does not decrypt at the server.
    wrong = handshake.ClientHandshake(
        client_id, bytes(SigningKey(_label("not the server")).verify_key), client_eph, nk
    )
    wrong.initiate()
    wrong_auth = wrong.receive_server_hello(server_hello)
    # An authenticate that decrypts but carries a signature over the wrong bytes.
    ab = nacl.bindings.crypto_scalarmult(client_eph, bytes.fromhex(base["server_eph_public"]))
    ab_long = nacl.bindings.crypto_scalarmult(
        client_eph, nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(server_key)
    )
    secret2 = hashlib.sha256(nk + ab + ab_long).digest()
    bad_sig = client_id.sign(b"not what the protocol signs").signature
    bad_sig_auth = nacl.bindings.crypto_secretbox(bad_sig + bytes(client_id.verify_key), bytes(24), secret2)

    def case(name: str, step: str, message: bytes, error: str) -> dict[str, object]:
        return {"name": name, "base": base["name"], "step": step, "message": message.hex(), "error": error}

    return [
        case("client hello under another network key", "client_hello", foreign_hello, "NetworkKeyMismatch"),
        case("client hello too short", "client_hello", foreign_hello[:63], "MessageSizeError"),
        case("client hello too long", "client_hello", foreign_hello + b"\x00", "MessageSizeError"),
        case("server hello under another network key", "server_hello", foreign_server_hello,
             "NetworkKeyMismatch"),
        case("client authenticate for another server key", "client_auth", wrong_auth, "ClientAuthInvalid"),
        case("client authenticate with a flipped bit", "client_auth", _flip(client_auth, 40),
             "ClientAuthInvalid"),
        case("client authenticate with a bad signature", "client_auth", bad_sig_auth, "SignatureInvalid"),
        case("client authenticate too short", "client_auth", client_auth[:111], "MessageSizeError"),
        case("server accept with a flipped bit", "server_accept", _flip(server_accept, 20),
             "ServerAcceptInvalid"),
        case("server accept too long", "server_accept", server_accept + b"\x00", "MessageSizeError"),
    ]


def _stream(key: bytes, nonce: bytes, writes: list[bytes]) -> tuple[bytes, list[bytes]]:
    enc = boxstream.BoxStreamEncoder(key, nonce)
    frames = [enc.encrypt(w) for w in writes]
    return b"".join(frames) + enc.goodbye(), frames


def _boxstreams(key: bytes, nonce: bytes) -> dict[str, list[dict[str, object]]]:
    big = bytes(i % 251 for i in range(5000))
    valid_cases = [
        ("empty session: goodbye only", nonce, []),
        ("one short write", nonce, [b"hello, box stream"]),
        ("one write of 5000 bytes is split into 4096 + 904", nonce, [big]),
        ("two writes", nonce, [b"first", b"second"]),
        ("nonce carries across bytes", bytes(21) + b"\x00\xff\xfe", [b"a", b"b"]),
        ("nonce wraps around to zero", b"\xff" * 24, [b"wrap"]),
    ]
    valid = []
    for name, n, writes in valid_cases:
        stream, _ = _stream(key, n, writes)
        valid.append({"name": name, "key": key.hex(), "nonce": n.hex(), "writes": [w.hex() for w in writes],
                      "stream": stream.hex()})

    stream, frames = _stream(key, nonce, [b"one", b"two"])
    goodbye = stream[len(frames[0]) + len(frames[1]):]

    def forged_header(length: int) -> bytes:
        header = length.to_bytes(2, "big") + b"\x01" * 16  # 18 zero bytes would be the goodbye
        return nacl.bindings.crypto_secretbox(header, nonce, key)

    def case(name: str, data: bytes, received: bytes, error: str) -> dict[str, object]:
        return {"name": name, "key": key.hex(), "nonce": nonce.hex(), "stream": data.hex(),
                "data_before_error": received.hex(), "error": error}

    invalid = [
        case("header with a flipped bit", _flip(stream, 5), b"", "ForgedFrame"),
        case("body with a flipped bit", _flip(stream, 34), b"", "ForgedFrame"),
        case("frames in the wrong order", frames[1] + frames[0] + goodbye, b"", "ForgedFrame"),
        case("goodbye with a flipped bit", frames[0] + frames[1] + _flip(goodbye, 0), b"onetwo",
             "ForgedFrame"),
        case("ends without goodbye", frames[0] + frames[1], b"onetwo", "TruncatedStream"),
        case("ends inside a header", frames[0] + frames[1][:20], b"one", "TruncatedStream"),
        case("ends inside a body", frames[0] + frames[1][:35], b"one", "TruncatedStream"),
        case("data after goodbye", stream + b"\x00", b"onetwo", "DataAfterGoodbye"),
        case("authentic header announcing 0 bytes", forged_header(0), b"", "InvalidFrame"),
        case("authentic header announcing 4097 bytes", forged_header(4097), b"", "InvalidFrame"),
    ]
    return {"valid": valid, "invalid": invalid}


def build() -> dict[str, dict[str, object]]:
    """The vector files, by file name."""
    base = _handshake_case("default network", handshake.DEFAULT_NETWORK_KEY, "p2pnode vector 1")
    private = _handshake_case("private network", _label("a private network key"), "p2pnode vector 2")
    bs_key = bytes.fromhex(base["client_to_server_key"])
    bs_nonce = bytes.fromhex(base["client_to_server_nonce"])
    return {
        "handshake.json": {
            "version": VERSION,
            "description": "Secret Handshake v1 with fixed long-term and ephemeral keys; all values hex. "
            "Seeds are Ed25519 seeds; *_eph_secret are Curve25519 secret keys. An invalid case replays "
            "the named valid case up to `step` and feeds `message` there; it must fail with `error`.",
            "valid": [base, private],
            "invalid": _invalid_handshakes(base),
        },
        "boxstream.json": {
            "version": VERSION,
            "description": "Box stream: `writes` encrypted in order, then goodbye, give `stream`. "
            "An invalid `stream` must yield `data_before_error` (bodies decoded before the failure), "
            "then fail with `error` (at the latest when the stream ends).",
            **_boxstreams(bs_key, bs_nonce),
        },
    }


def render(content: dict[str, object]) -> str:
    return json.dumps(content, indent=2) + "\n"


def main() -> None:
    for name, content in build().items():
        (HERE / name).write_text(render(content))
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
