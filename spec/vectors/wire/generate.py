# Generates wire-message test vectors (messages.json) for the hello `observed` field and the `check` /
# `checked` messages, packed straight from msgpack maps (not through protocol/wire.py).
# Run: python spec/vectors/wire/generate.py; tests/test_wire_vectors.py checks that the committed file is what
# this script produces, that our decoder accepts each valid message as described and refuses each invalid one,
# and that our encoder produces the valid ones' exact bytes.
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack

HERE = Path(__file__).resolve().parent
KEY = "@aoqqpp7tzyil4hlq3umoos6atft6jvrqtosq2xy53sdgiesvgg4f5ybec4"


def _pack(obj: dict[str, Any]) -> str:
    return msgpack.packb(obj, use_bin_type=True).hex()


def _hello(**extra: Any) -> dict[str, Any]:
    return {"type": "hello", "version": 1, "features": [], "address": f"203.0.113.5:8765/{KEY}", "relay": False,
            **extra}


def build() -> dict[str, Any]:
    valid = [
        {"description": "hello without observed (the field is optional)", "msgpack": _pack(_hello()),
         "fields": {"observed": None}},
        {"description": "hello: the sender sees the connection come from 198.51.100.7",
         "msgpack": _pack(_hello(observed="198.51.100.7")), "fields": {"observed": "198.51.100.7"}},
        {"description": "hello with an IPv6 observed address", "msgpack": _pack(_hello(observed="2001:db8::1")),
         "fields": {"observed": "2001:db8::1"}},
        {"description": "check: dial me back at this address",
         "msgpack": _pack({"type": "check", "address": f"203.0.113.5:8765/{KEY}"}),
         "fields": {"address": f"203.0.113.5:8765/{KEY}"}},
        {"description": "checked: the dial-back worked",
         "msgpack": _pack({"type": "checked", "address": f"203.0.113.5:8765/{KEY}", "ok": True, "reason": ""}),
         "fields": {"address": f"203.0.113.5:8765/{KEY}", "ok": True, "reason": ""}},
        {"description": "checked: the dial-back failed, with what was found",
         "msgpack": _pack({"type": "checked", "address": f"203.0.113.5:8765/{KEY}", "ok": False,
                           "reason": "203.0.113.5:8765: connection refused (no node listening there, or a firewall)"}),
         "fields": {"ok": False}},
    ]
    invalid = [
        {"description": "hello.observed is not an IP address", "msgpack": _pack(_hello(observed="example.org"))},
        {"description": "hello.observed is not a string", "msgpack": _pack(_hello(observed=7))},
        {"description": "hello.observed is longer than 45 characters",
         "msgpack": _pack(_hello(observed="1" * 46))},
        {"description": "check without an address", "msgpack": _pack({"type": "check"})},
        {"description": "check.address longer than 300 characters",
         "msgpack": _pack({"type": "check", "address": "a" * 301})},
        {"description": "checked.ok is not a bool",
         "msgpack": _pack({"type": "checked", "address": f"203.0.113.5:8765/{KEY}", "ok": 1})},
    ]
    return {"valid": valid, "invalid": invalid}


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    (HERE / "messages.json").write_text(render())
