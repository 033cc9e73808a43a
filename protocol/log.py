# The log entry format: a signed header that commits to a separate payload by hash and size
# (spec/log.md). Encoding is canonical msgpack; the signature and the entry hash cover the exact header
# bytes, which are stored and forwarded as received and never re-serialised. Pure: no I/O, no clock.
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.signing

from .errors import InvalidEntry, TooLarge

FORMAT_VERSION = 1
MAX_HEADER_SIZE = 128
MAX_PAYLOAD_SIZE = 65_536
MAX_SEQ = 2**53 - 1
MAX_TIMESTAMP = 2**53 - 1
MAX_NAME_CHARS = 64
MAX_ABOUT_CHARS = 2_000
MAX_TYPE_CHARS = 32
MAX_PAYLOAD_DEPTH = 16
HASH_SIZE = 32
KEY_SIZE = 32
SIGNATURE_SIZE = 64

# payload type -> (required fields, optional fields), each field -> its kind
_STR, _REF = "str", "ref"
PAYLOAD_SCHEMAS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "post": ({"text": _STR}, {"reply_to": _REF}),
    "follow": ({"feed": _REF}, {}),
    "unfollow": ({"feed": _REF}, {}),
    "block": ({"feed": _REF}, {}),
    "unblock": ({"feed": _REF}, {}),
    "profile": ({"name": _STR}, {"about": _STR}),
    "retract": ({"entry": _REF}, {}),
}
CONTACT_TYPES = frozenset({"follow", "unfollow", "block", "unblock"})


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _unpack(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True,
                               object_pairs_hook=_pairs)
    except Exception as exc:  # msgpack raises many types (ExtraData, FormatError, ValueError, ...)
        raise InvalidEntry(f"{what} is not valid msgpack ({type(exc).__name__})") from None


class _Pairs(list):
    """A decoded msgpack map kept as its key/value pairs, so duplicates and key order can be checked."""


def _pairs(pairs: list[tuple[Any, Any]]) -> _Pairs:
    return _Pairs(pairs)


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# ---------------------------------------------------------------- header


class Header(NamedTuple):
    version: int
    author: bytes
    seq: int
    prev: bytes | None
    timestamp: int
    payload_hash: bytes
    payload_size: int

    def encode(self) -> bytes:
        return _pack(list(self))


def _is_uint(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _is_bin(value: Any, size: int) -> bool:
    return type(value) is bytes and len(value) == size


def decode_header(data: bytes) -> Header:
    """Strictly decode header bytes; raises InvalidEntry unless they are a canonical header."""
    if type(data) is not bytes:
        raise InvalidEntry("header must be bytes")
    if len(data) > MAX_HEADER_SIZE:
        raise TooLarge(f"header is {len(data)} bytes, the limit is {MAX_HEADER_SIZE}")
    fields = _unpack(data, "header")
    if type(fields) is not list or len(fields) != 7:
        raise InvalidEntry("header must be an array of 7 fields")
    version, author, seq, prev, timestamp, payload_hash, payload_size = fields
    if type(version) is not int or version != FORMAT_VERSION:
        raise InvalidEntry(f"unsupported format version {version!r}")
    if not _is_bin(author, KEY_SIZE):
        raise InvalidEntry("author must be 32 bytes")
    if not _is_uint(seq, 1, MAX_SEQ):
        raise InvalidEntry("seq must be an integer from 1")
    if seq == 1:
        if prev is not None:
            raise InvalidEntry("the first entry (seq 1) must have prev nil")
    elif not _is_bin(prev, HASH_SIZE):
        raise InvalidEntry("prev must be a 32-byte hash for seq > 1")
    if not _is_uint(timestamp, 0, MAX_TIMESTAMP):
        raise InvalidEntry("timestamp must be a non-negative integer (ms)")
    if not _is_bin(payload_hash, HASH_SIZE):
        raise InvalidEntry("payload hash must be 32 bytes")
    if not _is_uint(payload_size, 1, MAX_PAYLOAD_SIZE):
        if type(payload_size) is int and payload_size > MAX_PAYLOAD_SIZE:
            raise TooLarge(f"payload size {payload_size} is over the limit of {MAX_PAYLOAD_SIZE}")
        raise InvalidEntry("payload size must be an integer from 1")
    header = Header(version, author, seq, prev, timestamp, payload_hash, payload_size)
    if header.encode() != data:
        raise InvalidEntry("header is not canonically encoded")
    return header


# ---------------------------------------------------------------- payload


def encode_payload(payload: dict[str, Any]) -> bytes:
    """Canonical bytes of a payload (keys sorted); raises InvalidEntry if it does not validate."""
    try:
        data = _pack(_sorted_maps(payload))
    except UnicodeEncodeError:
        raise InvalidEntry("payload text is not valid Unicode (it holds undecodable bytes)") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidEntry(f"payload cannot be encoded: {exc}") from None
    decode_payload(data)
    return data


def _sorted_maps(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_maps(value[k]) for k in sorted(value)}
    if type(value) in (list, tuple):  # exactly: msgpack's ExtType is a tuple, and must stay an ext
        return [_sorted_maps(v) for v in value]
    return value


def decode_payload(data: bytes) -> dict[str, Any]:
    """Strictly decode and validate payload bytes; raises InvalidEntry."""
    if type(data) is not bytes:
        raise InvalidEntry("payload must be bytes")
    if len(data) > MAX_PAYLOAD_SIZE:
        raise TooLarge(f"payload is {len(data)} bytes, the limit is {MAX_PAYLOAD_SIZE}")
    payload = _flat_canonical_map(data)
    if payload is None:  # anything but a canonical flat map takes the full check, which names what is wrong
        pairs = _unpack(data, "payload")
        if type(pairs) is not _Pairs:
            raise InvalidEntry("payload must be a map")
        payload = _plain(pairs)
        if _pack(payload) != data:
            raise InvalidEntry("payload is not canonically encoded")
    kind = payload.get("type")
    if type(kind) is not str or not _is_type_name(kind):
        raise InvalidEntry("payload type must be 1-32 characters of a-z, 0-9 and '-'")
    schema = PAYLOAD_SCHEMAS.get(kind)
    if schema is None:
        return payload  # unknown types are kept and forwarded, and shown by no client (spec/log.md)
    required, optional = schema
    for name in required:
        if name not in payload:
            raise InvalidEntry(f"{kind} payload is missing {name!r}")
    for name, value in payload.items():
        if name == "type":
            continue
        field_kind = required.get(name) or optional.get(name)
        if field_kind is None:
            raise InvalidEntry(f"{kind} payload has an unknown field {name!r}")
        if field_kind == _REF and not _is_bin(value, HASH_SIZE):
            raise InvalidEntry(f"{kind}.{name} must be 32 bytes")
        if field_kind == _STR and type(value) is not str:
            raise InvalidEntry(f"{kind}.{name} must be a string")
    _check_text_limits(kind, payload)
    return payload


def _flat_canonical_map(data: bytes) -> dict[str, Any] | None:
    """The payload as a dict when it is a canonical map of string keys to leaf values (every known type's
    payload), else None. Decoding into a dict costs a third of the pair-by-pair check in _plain; it accepts
    exactly what that check accepts for such maps: a duplicated key makes the dict encode to fewer bytes, so
    the re-encoding differs, and unsorted keys are caught by the sort."""
    try:
        payload = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception:  # msgpack raises many types; the full check reports them
        return None
    if type(payload) is not dict:
        return None
    keys = list(payload)
    for value in payload.values():
        kind = type(value)
        if kind not in _LEAF_TYPES or (kind is int and value < 0):
            return None
    if any(type(key) is not str for key in keys) or keys != sorted(keys) or _pack(payload) != data:
        return None
    return payload


def _plain(value: Any, depth: int = 0) -> Any:
    """A decoded value with its maps as dicts, checking what spec/log.md allows: maps with unique sorted
    string keys, arrays, non-negative integers, strings, bytes, booleans and nil, nested at most
    MAX_PAYLOAD_DEPTH deep (so that checking it can never exhaust the stack)."""
    kind = type(value)
    if depth > MAX_PAYLOAD_DEPTH and kind in (_Pairs, list):
        raise InvalidEntry(f"payload nests maps and arrays more than {MAX_PAYLOAD_DEPTH} deep")
    if kind is _Pairs:
        keys = [key for key, _ in value]
        if any(type(key) is not str for key in keys):
            raise InvalidEntry("payload map keys must be strings")
        if keys != sorted(set(keys)):
            raise InvalidEntry("payload keys must be unique and sorted")
        return {k: _plain(v, depth + 1) for k, v in value}
    if kind is list:  # checked in place: the decoder's fresh list is ours, and a copy would double the memory
        for index, item in enumerate(value):
            plain = _plain(item, depth + 1)
            if plain is not item:
                value[index] = plain
        return value
    if kind is int and value < 0:
        raise InvalidEntry("payload integers must not be negative")
    if kind not in _LEAF_TYPES:
        raise InvalidEntry(f"payload holds a value of a type the format does not allow ({kind.__name__})")
    return value


_LEAF_TYPES = frozenset({int, str, bytes, bool, type(None)})


def _is_type_name(kind: str) -> bool:
    return 0 < len(kind) <= MAX_TYPE_CHARS and all(c in "abcdefghijklmnopqrstuvwxyz0123456789-" for c in kind)


def _check_text_limits(kind: str, payload: dict[str, Any]) -> None:
    if kind == "post" and not payload["text"].strip():
        raise InvalidEntry("post text must not be empty")
    if kind == "profile":
        name = payload["name"]
        if not name.strip() or len(name) > MAX_NAME_CHARS:
            raise InvalidEntry(f"profile name must be 1-{MAX_NAME_CHARS} characters")
        if len(payload.get("about", "")) > MAX_ABOUT_CHARS:
            raise InvalidEntry(f"profile about must be at most {MAX_ABOUT_CHARS} characters")


# ---------------------------------------------------------------- entries


class FeedHead(NamedTuple):
    """The latest entry of a feed as a store knows it: what the next entry must follow."""

    author: bytes
    seq: int
    hash: bytes


class HasHead(Protocol):
    @property
    def author(self) -> bytes: ...
    @property
    def seq(self) -> int: ...
    @property
    def hash(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Entry:
    """A verified entry: the exact header bytes, their signature, and the payload if it is held."""

    header_bytes: bytes
    signature: bytes
    payload: bytes | None
    header: Header
    hash: bytes
    decoded: dict[str, Any] | None = field(default=None, compare=False, repr=False)  # the payload, decoded once

    @property
    def author(self) -> bytes:
        return self.header.author

    @property
    def seq(self) -> int:
        return self.header.seq

    def content(self) -> dict[str, Any] | None:
        """The decoded payload, or None when it is not held (retracted, withheld or purged)."""
        if self.payload is None:
            return None
        return self.decoded if self.decoded is not None else decode_payload(self.payload)

    def without_payload(self) -> Entry:
        return Entry(self.header_bytes, self.signature, None, self.header, self.hash)

    def to_wire(self) -> list[Any]:
        """The entry as it crosses the wire and sits in vectors: [header, signature, payload or nil]."""
        return [self.header_bytes, self.signature, self.payload]


def entry_hash(header_bytes: bytes) -> bytes:
    """The entry hash: SHA-256 of the exact signed header bytes."""
    return sha256(header_bytes)


def verify_entries(items: list[tuple[bytes, bytes, bytes | None]], *,
                   signatures_checked: bool = False) -> tuple[list[Entry], InvalidEntry | None]:
    """verify_entry over a batch: the verified entries before the first invalid one, and its error.

    `signatures_checked=True` skips step 3: the caller checks the signatures the batch needs (`authenticate`,
    in worker processes or inline); every other check still runs here."""
    verified = []
    for header_bytes, signature, payload in items:
        try:
            verified.append(_verify(header_bytes, signature, payload, not signatures_checked))
        except InvalidEntry as exc:
            return verified, exc
    return verified, None


def verify_entries_compact(items: list[tuple[bytes, bytes, bytes | None]],
                           ) -> tuple[list[tuple[Header, bytes, dict[str, Any] | None]], bool]:
    """verify_entries(signatures_checked=True) for a worker process: of each entry before the first invalid
    one, what rebuilds its Entry from the bytes the caller holds (header, hash, decoded payload), and whether
    an invalid entry followed them (the caller checks that one itself, to name what is wrong)."""
    entries, error = verify_entries(items, signatures_checked=True)
    return [(entry.header, entry.hash, entry.decoded) for entry in entries], error is not None


def signatures_to_check(entries: list[Entry]) -> list[int]:
    """Step 3 for a batch (spec/log.md, "Checking a batch"): the positions of the entries whose own signatures
    must be checked. Of each feed's entries in the batch, when they form one hash chain in batch order (each
    the seq after the one before it and naming that one's hash as prev), only the last: its signature covers
    its prev, and so, hash by hash, every entry before it. Otherwise every one of them."""
    last: dict[bytes, Entry] = {}  # author -> its latest entry so far in the batch
    position: dict[bytes, int] = {}
    unlinked: set[bytes] = set()  # feeds whose entries in the batch are not one chain
    for index, entry in enumerate(entries):
        header = entry.header
        author = header.author
        before = last.get(author)
        if before is not None and (header.seq != before.header.seq + 1 or header.prev != before.hash):
            unlinked.add(author)
        last[author] = entry
        position[author] = index
    if not unlinked:
        return sorted(position.values())
    return sorted([i for i, entry in enumerate(entries) if entry.header.author in unlinked]
                  + [i for author, i in position.items() if author not in unlinked])


def authenticate(entries: list[Entry], signature_valid: Callable[[int], bool]) -> tuple[list[Entry], bool, set[bytes]]:
    """Step 3 for a batch whose other steps passed: (the entries before the first one not proven authentic,
    whether a signature failed, the hashes of the entries kept whose own signatures went unchecked). A failed
    signature cuts the batch there, and the entries before it are proven again by the last of each feed's
    entries that remain, so nothing kept leans on a signature that was not checked or was cut away.
    `signature_valid(position)` checks one entry's signature (and may answer from checks done elsewhere)."""
    kept, failed = entries, False
    results: dict[int, bool] = {}

    def valid(position: int) -> bool:
        if position not in results:
            results[position] = signature_valid(position)
        return results[position]

    while True:
        to_check = signatures_to_check(kept)
        bad = next((i for i in to_check if not valid(i)), None)
        if bad is None:
            checked = set(to_check)
            return kept, failed, {entry.hash for index, entry in enumerate(kept) if index not in checked}
        kept, failed = kept[:bad], True


def verify_batch(items: list[tuple[bytes, bytes, bytes | None]]) -> tuple[list[Entry], InvalidEntry | None,
                                                                           set[bytes]]:
    """Steps 1 to 4 over a batch, checking only the signatures that `authenticate` needs: the entries before
    the first invalid one, its error, and the hashes of the entries whose own signatures went unchecked (a
    node checks those before it sends them on: spec/log.md, "Checking a batch")."""
    entries, error = verify_entries(items, signatures_checked=True)
    kept, failed, unchecked = authenticate(
        entries, lambda i: signature_ok(entries[i].header_bytes, entries[i].signature))
    return kept, (InvalidEntry("bad signature") if failed else error), unchecked


def payload_matches(header_bytes: bytes, payload: bytes) -> bool:
    """Whether `payload` is the one the header commits to (its SHA-256 and size): how a node checks a payload
    it has stored before showing or sending it (a stored header was verified when it came in)."""
    try:
        fields = msgpack.unpackb(header_bytes, raw=False, use_list=True)
    except Exception:  # msgpack raises many types for malformed input
        return False
    return (type(fields) is list and len(fields) == 7 and fields[6] == len(payload)
            and fields[5] == sha256(payload))


def peek_author(header_bytes: bytes) -> bytes | None:
    """The author key where a valid header keeps it (array of 7, version 1, bin 8 of 32 bytes: decode_header
    accepts no other layout), without decoding; None if the bytes do not start that way. For cheap
    decisions before verification (which feed is this?), never instead of it."""
    if type(header_bytes) is bytes and len(header_bytes) > 36 and header_bytes[:4] == b"\x97\x01\xc4\x20":
        return header_bytes[4:36]
    return None


def signature_ok(header_bytes: bytes, signature: bytes) -> bool:
    """Step 3 by itself, with the key from peek_author, so this needs no decoding and can run in a worker
    process."""
    author = peek_author(header_bytes)
    if author is None or not _is_bin(signature, SIGNATURE_SIZE):
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + header_bytes, author)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


def bad_signatures(items: list[tuple[bytes, bytes]]) -> list[int]:
    """The indexes of the (header, signature) pairs whose signatures do not verify."""
    return [index for index, (header_bytes, signature) in enumerate(items) if not signature_ok(header_bytes, signature)]


def verify_entry(header_bytes: bytes, signature: bytes, payload: bytes | None) -> Entry:
    """Check everything an entry carries by itself: header, signature, payload. Raises InvalidEntry."""
    return _verify(header_bytes, signature, payload, True)


def _verify(header_bytes: bytes, signature: bytes, payload: bytes | None, check_signature: bool) -> Entry:
    header = decode_header(header_bytes)
    if not _is_bin(signature, SIGNATURE_SIZE):
        raise InvalidEntry("signature must be 64 bytes")
    if check_signature and not signature_ok(header_bytes, signature):
        raise InvalidEntry("bad signature")
    decoded = None
    if payload is not None:
        if type(payload) is not bytes:
            raise InvalidEntry("payload must be bytes or nil")
        if len(payload) != header.payload_size:
            raise InvalidEntry(f"payload is {len(payload)} bytes, the header says {header.payload_size}")
        if sha256(payload) != header.payload_hash:
            raise InvalidEntry("payload does not match the header's payload hash")
        decoded = decode_payload(payload)
        if decoded["type"] not in PAYLOAD_SCHEMAS:
            # an unknown type can hold up to 64 KiB of tiny values: keep only the bytes while the entry
            # waits in a batch, and decode again when it is needed (content())
            decoded = None
    return Entry(header_bytes, signature, payload, header, entry_hash(header_bytes), decoded)


def check_link(entry: Entry, previous: HasHead | None) -> None:
    """Check that a verified entry directly follows `previous` in its feed (None: the feed is empty)."""
    if previous is None:
        if entry.seq != 1:
            raise InvalidEntry(f"seq gap: the feed is empty, so the next entry is seq 1, not {entry.seq}")
        return
    if previous.author != entry.author:
        raise InvalidEntry("entry is from another feed than the previous entry")
    if entry.seq != previous.seq + 1:
        raise InvalidEntry(f"seq gap: expected seq {previous.seq + 1}, got {entry.seq}")
    if entry.header.prev != previous.hash:
        raise InvalidEntry(f"wrong prev hash at seq {entry.seq}")


def validate_entry(header_bytes: bytes, signature: bytes, payload: bytes | None,
                   previous: HasHead | None) -> Entry:
    """The one validation function: the entry by itself, then its link to the previous entry of its feed."""
    entry = verify_entry(header_bytes, signature, payload)
    check_link(entry, previous)
    return entry


def entry_from_wire(item: Any) -> Entry:
    """Verify an entry given as [header, signature, payload or nil] (no chain check)."""
    if type(item) is not list or len(item) != 3:
        raise InvalidEntry("an entry is an array of [header, signature, payload or nil]")
    header_bytes, signature, payload = item
    if type(header_bytes) is not bytes:
        raise InvalidEntry("header must be bytes")
    return verify_entry(header_bytes, signature, payload)


def create_entry(signing_key: nacl.signing.SigningKey, previous: HasHead | None,
                 payload: dict[str, Any], timestamp: int) -> Entry:
    """Sign a new entry that follows `previous` (None for a new feed)."""
    payload_bytes = encode_payload(payload)
    author = bytes(signing_key.verify_key)
    if previous is not None and previous.author != author:
        raise ValueError("previous entry belongs to another feed")
    header = Header(FORMAT_VERSION, author, 1 if previous is None else previous.seq + 1,
                    None if previous is None else previous.hash, timestamp,
                    sha256(payload_bytes), len(payload_bytes))
    header_bytes = header.encode()
    signature = signing_key.sign(header_bytes).signature
    return Entry(header_bytes, signature, payload_bytes, header, entry_hash(header_bytes),
                 decode_payload(payload_bytes))
