# Generates the wire-message test vectors (messages.json): the exact bytes of one message of every type, and
# invalid messages with the reason prefix a receiver closes with. Run: python spec/vectors/wire/generate.py;
# tests/test_wire_vectors.py checks that the committed file is what this script produces, that every valid
# vector decodes to the stated fields and encodes back to the same bytes, and that every invalid one is refused.
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgpack

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from protocol import wire  # noqa: E402

A = bytes(range(32))
B = bytes(range(32, 64))
HEADER = bytes.fromhex("87a161c420") + A  # any bytes: entries are checked by spec/log.md, not by the framing
KEY = "@aoqqpp7tzyil4hlq3umoos6atft6jvrqtosq2xy53sdgiesvgg4f5ybec4"
_HELLO = {"type": "hello", "version": 1, "features": [], "address": None, "relay": False}


def _valid() -> list[tuple[str, wire.Message]]:
    return [
        ("hello", wire.Hello(1, (), "203.0.113.7:8765/@aoqqpp7tzyil4hlq3umoos6atft6jvrqtosq2xy53sdgiesvgg4f5ybec4",
                             False)),
        ("hello of a relay without an address", wire.Hello(1, (), None, True)),
        ("hello saying the connection comes from 198.51.100.7",
         wire.Hello(1, (), f"203.0.113.7:8765/{KEY}", False, "198.51.100.7")),
        ("hello with an IPv6 observed address", wire.Hello(1, (), None, False, "2001:db8::1")),
        ("hello of a relay stating its new-feed quota for the receiver: 600 now, 1,000 an hour, 19,000 in all",
         wire.Hello(1, (), None, True, None, (600, 1_000, 19_000))),
        ("check: dial me back at this address", wire.Check(f"203.0.113.7:8765/{KEY}")),
        ("checked: the dial-back worked", wire.Checked(f"203.0.113.7:8765/{KEY}", True, "")),
        ("checked: the dial-back failed, with what was found",
         wire.Checked(f"203.0.113.7:8765/{KEY}", False,
                      "203.0.113.7:8765: connection refused (no node listening there, or a firewall)")),
        ("want two feeds, drop none", wire.Want({A: 0, B: 3}, (), False)),
        ("want all (a relay), drop one", wire.Want({}, (B,), True)),
        ("have (a note)", wire.Have({A: 12})),
        ("stream one feed after seq 3, stop another", wire.Stream({A: 3}, (B,))),
        ("backfill: the entries below seq 951", wire.Backfill({A: 951})),
        ("entries, one with a payload and one without", wire.Entries(((HEADER, b"s" * 64, b"\x81\xa1a\x01"),
                                                                     (HEADER, b"t" * 64, None)))),
        ("fetch two entries again", wire.Fetch(((A, 3), (B, 1)))),
        ("peers", wire.Peers(("127.0.0.1:8765/@aoqqpp7tzyil4hlq3umoos6atft6jvrqtosq2xy53sdgiesvgg4f5ybec4",))),
        ("ping", wire.Ping(7)),
        ("pong", wire.Pong(7)),
        ("close", wire.Close("shutdown: node stopping")),
    ]


def _invalid() -> list[tuple[str, Any, str]]:
    return [
        ("not a map", [1, 2], "invalid"),
        ("no type", {"nonce": 1}, "invalid"),
        ("hello version 2", {"type": "hello", "version": 2, "features": [], "address": None, "relay": False},
         "unsupported"),
        ("want key of 31 bytes", {"type": "want", "feeds": {A[:31]: 0}, "drop": [], "all": False}, "invalid"),
        ("stream with a negative seq", {"type": "stream", "feeds": {A: -1}, "stop": []}, "invalid"),
        ("stream stop of a string", {"type": "stream", "feeds": {}, "stop": ["x"]}, "invalid"),
        ("entries over the count limit",
         {"type": "entries", "entries": [[b"h", b"s", None]] * (wire.MAX_ENTRIES_PER_MESSAGE + 1)}, "too-large"),
        ("entries item not a triple", {"type": "entries", "entries": [[HEADER, b"s"]]}, "invalid"),
        ("ping nonce of the wrong type", {"type": "ping", "nonce": "one"}, "invalid"),
        ("hello.observed not an IP address", {**_HELLO, "observed": "example.org"}, "invalid"),
        ("hello.observed not a string", {**_HELLO, "observed": 7}, "invalid"),
        ("hello.observed longer than 45 characters", {**_HELLO, "observed": "1" * 46}, "invalid"),
        ("hello.quota of two numbers", {**_HELLO, "relay": True, "quota": [1, 2]}, "invalid"),
        ("hello.quota with a negative number", {**_HELLO, "relay": True, "quota": [1, -2, 3]}, "invalid"),
        ("check without an address", {"type": "check"}, "invalid"),
        ("check.address over 300 characters", {"type": "check", "address": "a" * 301}, "invalid"),
        ("checked.ok not a bool", {"type": "checked", "address": f"203.0.113.7:8765/{KEY}", "ok": 1}, "invalid"),
        ("fetch of seq 0", {"type": "fetch", "entries": [[A, 0]]}, "invalid"),
        ("fetch key of 31 bytes", {"type": "fetch", "entries": [[A[:31], 1]]}, "invalid"),
        ("fetch over the count limit", {"type": "fetch", "entries": [[A, 1]] * (wire.MAX_REFS_PER_FETCH + 1)},
         "too-large"),
        ("a message of more than 40,000 values (an unknown type: refused before it is decoded)",
         {"type": "future", "pad": [0] * (wire.MAX_MESSAGE_VALUES - 4)}, "too-large"),
    ]


def _fields(message: wire.Message) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.hex()
        if isinstance(value, dict):
            return {plain(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value
    return {name: plain(getattr(message, name)) for name in message.__dataclass_fields__}


def build() -> dict[str, str]:
    valid = [{"description": d, "type": type(m).__name__.lower(), "fields": _fields(m), "bytes": wire.encode(m).hex()}
             for d, m in _valid()]
    invalid = [{"description": d, "bytes": msgpack.packb(obj, use_bin_type=True).hex(), "error": e}
               for d, obj, e in _invalid()]
    document = {"version": 1, "note": "spec/wire.md; bytes are the message inside the box stream, without the "
                                      "4-byte length", "valid": valid, "invalid": invalid}
    return {"messages.json": json.dumps(document, indent=1) + "\n"}


if __name__ == "__main__":
    for name, text in build().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")
