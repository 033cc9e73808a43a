# The wire messages that travel inside the box stream after the handshake (spec/wire.md): their catalogue,
# strict validation of each one received, and encoding. Pure: bytes in, typed messages out.
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .errors import ProtocolError, TooLarge
from .log import KEY_SIZE, MAX_SEQ, Entry
from .msgcount import within_value_count

PROTOCOL_VERSION = 1
MAX_MESSAGE_SIZE = 1_048_576
MAX_FEEDS_PER_WANT = 10_000
MAX_ENTRIES_PER_MESSAGE = 1_000
MAX_ADDRESSES_PER_MESSAGE = 32
MAX_ADDRESS_CHARS = 300
MAX_REASON_CHARS = 500
MAX_FEATURES = 32
MAX_REFS_PER_FETCH = 1_000
# values in one message, counting every container, element, map key and map value (the largest message
# of this catalogue, a `want` of 10,000 feeds and 10,000 drops, holds 30,010): decoding a message then
# costs at most a few MiB, whatever its bytes (spec/wire.md, "Limits")
MAX_MESSAGE_VALUES = 40_000
MAX_IP_CHARS = 45  # the longest IPv6 text form
MAX_QUOTA = 2**32 - 1  # each number in hello.quota


class WireError(ProtocolError):
    """A wire message that breaks spec/wire.md; the connection is closed with `reason`."""


class Unsupported(WireError):
    prefix = "unsupported"


@dataclass(frozen=True)
class Hello:
    version: int
    features: tuple[str, ...] = ()
    address: str | None = None
    relay: bool = False
    observed: str | None = None  # the IP address the sender sees this connection come from (spec/wire.md)
    quota: tuple[int, int, int] | None = None  # a relay's new-feed quota for the receiver: now, per hour, in total


@dataclass(frozen=True)
class Want:
    """The sender wants these feeds from seq+1 on (seq 0: from the start); `drop`: no longer wanted.
    `all`: the sender (a relay) also wants every other feed the receiver holds."""

    feeds: dict[bytes, int] = field(default_factory=dict)
    drop: tuple[bytes, ...] = ()
    all: bool = False


@dataclass(frozen=True)
class Have:
    """The sender holds these feeds up to these seqs."""

    feeds: dict[bytes, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Stream:
    """Redundancy control (spec/replication.md): "send me the entries of these feeds after these seqs, and
    every new one as you get it"; `stop`: send no more entries of these feeds, only notes (`have`)."""

    feeds: dict[bytes, int] = field(default_factory=dict)
    stop: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Backfill:
    """Newest first: "send me the entries of these feeds below these seqs, the nearest first", filling the
    past of a partial feed behind what was streamed (spec/replication.md)."""

    feeds: dict[bytes, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Entries:
    """A batch of entries, each feed's in order; `raw` is each [header, signature, payload or nil]."""

    raw: tuple[tuple[bytes, bytes, bytes | None], ...]


@dataclass(frozen=True)
class Fetch:
    """"Send me these entries again, with their payloads": (feed, seq) of entries the sender holds without a
    usable payload (spec/replication.md, "Repair")."""

    refs: tuple[tuple[bytes, int], ...]


@dataclass(frozen=True)
class Peers:
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Ping:
    nonce: int


@dataclass(frozen=True)
class Pong:
    nonce: int


@dataclass(frozen=True)
class Close:
    reason: str


@dataclass(frozen=True)
class Check:
    """"Dial me back at `address` and tell me whether it worked" (spec/wire.md, spec/peers.md "Reachability")."""

    address: str


@dataclass(frozen=True)
class Checked:
    """The answer to a `check`: whether the sender reached `address` (a handshake proving the asker's key)."""

    address: str
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class UnknownMessage:
    """A message of a type this version does not know: ignored, for forward compatibility."""

    type: str


Message = (Hello | Want | Have | Stream | Backfill | Entries | Fetch | Peers | Ping | Pong | Close | Check | Checked
           | UnknownMessage)


def encode(message: Message) -> bytes:
    """The bytes of one message. Raises TooLarge if they would exceed MAX_MESSAGE_SIZE."""
    data = msgpack.packb(_to_map(message), use_bin_type=True)
    if len(data) > MAX_MESSAGE_SIZE:
        raise TooLarge(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return data


def _to_map(message: Message) -> dict[str, Any]:
    if isinstance(message, Hello):
        hello = {"type": "hello", "version": message.version, "features": list(message.features),
                 "address": message.address, "relay": message.relay}
        if message.observed is not None:  # optional: absent rather than nil, so older encodings are unchanged
            hello["observed"] = message.observed
        if message.quota is not None:
            hello["quota"] = list(message.quota)
        return hello
    if isinstance(message, Check):
        return {"type": "check", "address": message.address}
    if isinstance(message, Checked):
        return {"type": "checked", "address": message.address, "ok": message.ok,
                "reason": message.reason[:MAX_REASON_CHARS]}
    if isinstance(message, Want):
        return {"type": "want", "feeds": message.feeds, "drop": list(message.drop), "all": message.all}
    if isinstance(message, Have):
        return {"type": "have", "feeds": message.feeds}
    if isinstance(message, Stream):
        return {"type": "stream", "feeds": message.feeds, "stop": list(message.stop)}
    if isinstance(message, Backfill):
        return {"type": "backfill", "feeds": message.feeds}
    if isinstance(message, Entries):
        return {"type": "entries", "entries": [list(item) for item in message.raw]}
    if isinstance(message, Fetch):
        return {"type": "fetch", "entries": [[author, seq] for author, seq in message.refs]}
    if isinstance(message, Peers):
        return {"type": "peers", "addresses": list(message.addresses)}
    if isinstance(message, Ping):
        return {"type": "ping", "nonce": message.nonce}
    if isinstance(message, Pong):
        return {"type": "pong", "nonce": message.nonce}
    if isinstance(message, Close):
        return {"type": "close", "reason": message.reason[:MAX_REASON_CHARS]}
    raise TypeError(f"cannot encode {message!r}")


def entries_message(entries: list[Entry]) -> Entries:
    return Entries(tuple((e.header_bytes, e.signature, e.payload) for e in entries))


def decode(data: bytes) -> Message:
    """Strictly decode one received message; raises WireError (or TooLarge) naming what is wrong."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise TooLarge(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    if not within_value_count(data, MAX_MESSAGE_VALUES):
        raise TooLarge(f"message holds more than {MAX_MESSAGE_VALUES} values")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True,
                              max_str_len=MAX_MESSAGE_SIZE, max_bin_len=MAX_MESSAGE_SIZE, max_ext_len=MAX_MESSAGE_SIZE,
                              max_array_len=MAX_MESSAGE_VALUES, max_map_len=MAX_MESSAGE_VALUES // 2)
    except Exception as exc:  # msgpack raises many types for malformed input
        raise WireError(f"message is not valid msgpack ({type(exc).__name__})") from None
    if type(obj) is not dict:
        raise WireError("message must be a map")
    kind = obj.get("type")
    if type(kind) is not str:
        raise WireError("message has no type")
    decoder = _DECODERS.get(kind)
    if decoder is None:
        return UnknownMessage(kind[:64])
    return decoder(obj)


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if name not in obj:
        if default is ...:
            raise WireError(f"{obj['type']} message is missing {name!r}")
        return default
    value = obj[name]
    if not isinstance(value, kind) or (kind is int and type(value) is bool):
        raise WireError(f"{obj['type']}.{name} has the wrong type")
    return value


def _seq_map(obj: dict[str, Any], name: str) -> dict[bytes, int]:
    feeds = _field(obj, name, dict, {})
    if len(feeds) > MAX_FEEDS_PER_WANT:
        raise TooLarge(f"{obj['type']}.{name} lists {len(feeds)} feeds, the limit is {MAX_FEEDS_PER_WANT}")
    for author, seq in feeds.items():
        if type(author) is not bytes or len(author) != KEY_SIZE:
            raise WireError(f"{obj['type']}.{name} has a key that is not 32 bytes")
        if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
            raise WireError(f"{obj['type']}.{name} has a seq that is not an integer from 0")
    return feeds


def _hello(obj: dict[str, Any]) -> Hello:
    version = _field(obj, "version", int)
    if version != PROTOCOL_VERSION:
        raise Unsupported(f"protocol version {version}; this node speaks {PROTOCOL_VERSION}")
    features = _field(obj, "features", list, [])
    if len(features) > MAX_FEATURES or any(type(f) is not str or len(f) > 64 for f in features):
        raise WireError("hello.features must be at most 32 short strings")
    address = _field(obj, "address", (str, type(None)), None)
    if address is not None and len(address) > MAX_ADDRESS_CHARS:
        raise WireError("hello.address is too long")
    observed = _field(obj, "observed", (str, type(None)), None)
    if observed is not None:
        try:
            if len(observed) > MAX_IP_CHARS:
                raise ValueError
            observed = str(ipaddress.ip_address(observed))
        except ValueError:
            raise WireError("hello.observed is not an IP address") from None
    quota = _field(obj, "quota", (list, type(None)), None)
    if quota is not None and (len(quota) != 3 or any(type(n) is not int or not 0 <= n <= MAX_QUOTA for n in quota)):
        raise WireError("hello.quota must be three integers from 0 to 2^32 - 1")
    return Hello(version, tuple(features), address, bool(_field(obj, "relay", bool, False)), observed,
                 tuple(quota) if quota is not None else None)


def _address_field(obj: dict[str, Any]) -> str:
    address = _field(obj, "address", str)
    if len(address) > MAX_ADDRESS_CHARS:
        raise WireError(f"{obj['type']}.address is too long")
    return address


def _checked(obj: dict[str, Any]) -> Checked:
    return Checked(_address_field(obj), _field(obj, "ok", bool), _field(obj, "reason", str, "")[:MAX_REASON_CHARS])


def _keys(obj: dict[str, Any], name: str) -> tuple[bytes, ...]:
    keys = _field(obj, name, list, [])
    if len(keys) > MAX_FEEDS_PER_WANT or any(type(a) is not bytes or len(a) != KEY_SIZE for a in keys):
        raise WireError(f"{obj['type']}.{name} must be a list of at most {MAX_FEEDS_PER_WANT} 32-byte keys")
    return tuple(keys)


def _want(obj: dict[str, Any]) -> Want:
    return Want(_seq_map(obj, "feeds"), _keys(obj, "drop"), _field(obj, "all", bool, False))


def _stream(obj: dict[str, Any]) -> Stream:
    return Stream(_seq_map(obj, "feeds"), _keys(obj, "stop"))


def _have(obj: dict[str, Any]) -> Have:
    return Have(_seq_map(obj, "feeds"))


def _entries(obj: dict[str, Any]) -> Entries:
    items = _field(obj, "entries", list)
    if len(items) > MAX_ENTRIES_PER_MESSAGE:
        raise TooLarge(f"entries message carries {len(items)} entries, the limit is {MAX_ENTRIES_PER_MESSAGE}")
    raw = []
    for item in items:
        if (type(item) is not list or len(item) != 3 or type(item[0]) is not bytes or type(item[1]) is not bytes
                or not (item[2] is None or type(item[2]) is bytes)):
            raise WireError("each entry must be [header: bin, signature: bin, payload: bin or nil]")
        raw.append((item[0], item[1], item[2]))
    return Entries(tuple(raw))


def _fetch(obj: dict[str, Any]) -> Fetch:
    items = _field(obj, "entries", list)
    if len(items) > MAX_REFS_PER_FETCH:
        raise TooLarge(f"fetch names {len(items)} entries, the limit is {MAX_REFS_PER_FETCH}")
    refs = []
    for item in items:
        if (type(item) is not list or len(item) != 2 or type(item[0]) is not bytes or len(item[0]) != KEY_SIZE
                or type(item[1]) is not int or not 1 <= item[1] <= MAX_SEQ):
            raise WireError("each fetch entry must be [feed: 32-byte key, seq: integer from 1]")
        refs.append((item[0], item[1]))
    return Fetch(tuple(refs))


def _peers(obj: dict[str, Any]) -> Peers:
    addresses = _field(obj, "addresses", list)
    if len(addresses) > MAX_ADDRESSES_PER_MESSAGE:
        raise TooLarge(f"peers message lists {len(addresses)} addresses, the limit is {MAX_ADDRESSES_PER_MESSAGE}")
    if any(type(a) is not str or len(a) > MAX_ADDRESS_CHARS for a in addresses):
        raise WireError("peers.addresses must be short strings")
    return Peers(tuple(addresses))


def _nonce(obj: dict[str, Any]) -> int:
    nonce = _field(obj, "nonce", int)
    if not 0 <= nonce < 2**64:
        raise WireError(f"{obj['type']}.nonce out of range")
    return nonce


def _close(obj: dict[str, Any]) -> Close:
    return Close(_field(obj, "reason", str, "")[:MAX_REASON_CHARS])


_DECODERS = {
    "hello": _hello,
    "want": _want,
    "have": _have,
    "stream": _stream,
    "backfill": lambda obj: Backfill(_seq_map(obj, "feeds")),
    "entries": _entries,
    "fetch": _fetch,
    "peers": _peers,
    "ping": lambda obj: Ping(_nonce(obj)),
    "pong": lambda obj: Pong(_nonce(obj)),
    "close": _close,
    "check": lambda obj: Check(_address_field(obj)),
    "checked": _checked,
}

