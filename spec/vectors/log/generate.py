# Generates the log-format test vectors (valid.json, invalid.json) from fixed seed keys.
# Run: python spec/vectors/log/generate.py [--check]; tests/test_vectors.py checks that the committed
# files are exactly what this script produces and that our implementation agrees with each vector.
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import msgpack
import nacl.signing

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from protocol.ids import entry_ref, feed_id  # noqa: E402
from protocol.log import Entry, Header, create_entry, encode_payload, sha256  # noqa: E402

ALICE = nacl.signing.SigningKey(bytes(range(32)))
BOB = nacl.signing.SigningKey(hashlib.sha256(b"p2pnode test vector key: bob").digest())
T0 = 1_764_300_000_000


def _hex(data: bytes | None) -> str | None:
    return None if data is None else data.hex()


def _case(description: str, entry_or_parts: Entry | tuple[bytes, bytes, bytes | None],
          previous: Entry | None, **extra: Any) -> dict[str, Any]:
    if isinstance(entry_or_parts, Entry):
        header, signature, payload = entry_or_parts.header_bytes, entry_or_parts.signature, entry_or_parts.payload
    else:
        header, signature, payload = entry_or_parts
    case: dict[str, Any] = {
        "description": description,
        "header": _hex(header),
        "signature": _hex(signature),
        "payload": _hex(payload),
        "previous": None if previous is None else {"author": previous.author.hex(), "seq": previous.seq,
                                                    "hash": previous.hash.hex()},
    }
    case.update(extra)
    return case


def _resign(header: Header | list[Any], key: nacl.signing.SigningKey = ALICE) -> tuple[bytes, bytes]:
    header_bytes = msgpack.packb(list(header), use_bin_type=True)
    return header_bytes, key.sign(header_bytes).signature


def valid_cases() -> tuple[list[dict[str, Any]], list[Entry]]:
    payloads = [
        {"type": "post", "text": "hello, world"},
        {"type": "follow", "feed": bytes(BOB.verify_key)},
        {"type": "profile", "name": "alice", "about": "first of the test feeds"},
        None,  # reply to seq 1, filled in below
        {"type": "block", "feed": bytes(BOB.verify_key)},
        {"type": "unblock", "feed": bytes(BOB.verify_key)},
        {"type": "unfollow", "feed": bytes(BOB.verify_key)},
        None,  # retract seq 1
        {"type": "x-custom", "data": "unknown types are kept and forwarded"},
    ]
    chain: list[Entry] = []
    cases = []
    for index, payload in enumerate(payloads):
        if index == 3:
            payload = {"type": "post", "text": "a reply: héllo ✓", "reply_to": chain[0].hash}
        if index == 7:
            payload = {"type": "retract", "entry": chain[0].hash}
        previous = chain[-1] if chain else None
        entry = create_entry(ALICE, previous, payload, T0 + 1000 * index)
        chain.append(entry)
        cases.append(_case(f"alice seq {entry.seq}: {payload['type']}", entry, previous,
                           hash=entry.hash.hex(), hash_text=entry_ref(entry.hash),
                           author_text=feed_id(entry.author), seq=entry.seq))
    header_only = chain[1]
    cases.append(_case("header without its payload (retracted or withheld): still valid",
                       (header_only.header_bytes, header_only.signature, None), chain[0],
                       hash=header_only.hash.hex(), hash_text=entry_ref(header_only.hash),
                       author_text=feed_id(header_only.author), seq=header_only.seq))
    return cases, chain


def invalid_cases(chain: list[Entry]) -> list[dict[str, Any]]:
    first, second = chain[0], chain[1]
    h1 = first.header
    cases = []

    def bad(description: str, parts: tuple[bytes, bytes, bytes | None], previous: Entry | None,
            error: str = "invalid") -> None:
        cases.append(_case(description, parts, previous, error=error))

    flipped = bytearray(first.header_bytes)
    flipped[-1] ^= 1
    bad("header byte changed after signing: bad signature", (bytes(flipped), first.signature, first.payload), None)
    sig = bytearray(first.signature)
    sig[0] ^= 0x80
    bad("signature byte changed", (first.header_bytes, bytes(sig), first.payload), None)
    bad("signed by another key than the author", (first.header_bytes, BOB.sign(first.header_bytes).signature,
                                                   first.payload), None)
    bad("payload does not match its hash", (first.header_bytes, first.signature,
                                            encode_payload({"type": "post", "text": "hello, World"})), None)
    bad("payload longer than the header says", (first.header_bytes, first.signature, first.payload + b"\x00"), None)
    bad("seq 2 given as the first entry of a feed", (second.header_bytes, second.signature, second.payload), None)
    bad("seq gap: seq 3 after seq 1", (chain[2].header_bytes, chain[2].signature, chain[2].payload), first)
    wrong_prev = h1._replace(seq=2, prev=b"\x00" * 32)
    bad("wrong prev hash", (*_resign(wrong_prev), first.payload), first)
    bad("seq 1 with a prev hash", (*_resign(h1._replace(prev=first.hash)), first.payload), None)
    bad("format version 2", (*_resign(h1._replace(version=2)), first.payload), None)
    bad("seq 0", (*_resign(h1._replace(seq=0)), first.payload), None)
    bad("negative timestamp", (*_resign(h1._replace(timestamp=-1)), first.payload), None)
    bad("author is 31 bytes", (*_resign(h1._replace(author=h1.author[:31])), first.payload), None)
    bad("header with 8 fields", (*_resign([*h1, 0]), first.payload), None)
    bad("header as a map", (*_resign_raw({"v": 1}), None), None)
    long_seq = bytearray(first.header_bytes)
    # seq 1 is encoded as the fixint 0x01 right after the 34-byte author; spell it as uint8 0xcc 0x01
    position = 1 + 1 + 34
    assert long_seq[position] == 0x01
    non_canonical = bytes(long_seq[:position]) + b"\xcc\x01" + bytes(long_seq[position + 1:])
    bad("non-canonical integer encoding (seq 1 as uint8)", (non_canonical, ALICE.sign(non_canonical).signature,
                                                            first.payload), None)
    as_str = msgpack.packb([1, h1.author.decode("latin-1"), 1, None, h1.timestamp, h1.payload_hash,
                            h1.payload_size], use_bin_type=True)
    bad("author encoded as str, not bin", (as_str, ALICE.sign(as_str).signature, first.payload), None)
    big = 65_537
    bad("payload size over 64 KiB", (*_resign(h1._replace(payload_size=big)), None), None, error="too-large")
    bad("header over 128 bytes", (*_resign_raw([*h1, b"x" * 80]), None), None, error="too-large")

    def payload_case(description: str, payload_bytes: bytes) -> None:
        header = h1._replace(payload_hash=sha256(payload_bytes), payload_size=len(payload_bytes))
        bad(description, (*_resign(header), payload_bytes), None)

    pack = lambda obj: msgpack.packb(obj, use_bin_type=True)  # noqa: E731
    payload_case("payload keys not sorted", pack({"type": "post", "text": "x"}))
    payload_case("payload with duplicate keys", b"\x83" + pack("text")[0:] + pack("x") + pack("text") + pack("y")
                 + pack("type") + pack("post"))
    payload_case("empty post text", pack({"text": " ", "type": "post"}))
    payload_case("post without text", pack({"type": "post"}))
    payload_case("post with an extra field", pack({"text": "x", "title": "y", "type": "post"}))
    payload_case("follow with a 31-byte feed", pack({"feed": b"\x01" * 31, "type": "follow"}))
    payload_case("reply_to as str", pack({"reply_to": "abc", "text": "x", "type": "post"}))
    payload_case("payload is an array", pack(["post", "x"]))
    payload_case("type with capitals", pack({"type": "Post"}))
    payload_case("trailing bytes after the payload", pack({"text": "x", "type": "post"}) + b"\xc0")
    payload_case("profile name over 64 characters", pack({"name": "n" * 65, "type": "profile"}))
    nested: Any = 1
    for _ in range(17):
        nested = [nested]
    payload_case("unknown type with a float", pack({"type": "x-poll", "weight": 1.5}))
    payload_case("unknown type with a negative integer", pack({"type": "x-poll", "weight": -1}))
    payload_case("arrays nested 17 deep", pack({"a": nested, "type": "x-poll"}))
    return cases


def _resign_raw(obj: Any) -> tuple[bytes, bytes]:
    data = msgpack.packb(obj, use_bin_type=True)
    return data, ALICE.sign(data).signature


def build() -> dict[str, str]:
    valid, chain = valid_cases()
    invalid = invalid_cases(chain)
    keys = {"alice_seed": bytes(ALICE).hex(), "alice_public": bytes(ALICE.verify_key).hex(),
            "bob_seed": bytes(BOB).hex(), "bob_public": bytes(BOB.verify_key).hex()}
    meta = {"format": "p2pnode log vectors", "version": 1, "keys": keys}
    return {
        "valid.json": json.dumps({**meta, "cases": valid}, indent=1, ensure_ascii=False) + "\n",
        "invalid.json": json.dumps({**meta, "cases": invalid}, indent=1, ensure_ascii=False) + "\n",
    }


def main() -> int:
    files = build()
    if "--check" in sys.argv:
        stale = [name for name, text in files.items() if (HERE / name).read_text() != text]
        print("stale: " + ", ".join(stale) if stale else "vectors are up to date")
        return 1 if stale else 0
    for name, text in files.items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
