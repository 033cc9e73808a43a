# Text forms of feed ids (Ed25519 public keys) and entry hashes: what a user copies, pastes and types.
# Each is a sigil, then lowercase base32 of the 32 bytes followed by a 4-byte checksum, so a mistyped
# character is reported as an error and never decodes to another key (spec/log.md, "Text forms").
import base64
import hashlib

from .errors import InvalidId

FEED_SIGIL = "@"
ENTRY_SIGIL = "%"
_CHECKSUM_SIZE = 4
_TEXT_LEN = 58  # base32 of 36 bytes, without padding


def _checksum(kind: str, raw: bytes) -> bytes:
    return hashlib.blake2b(kind.encode() + raw, digest_size=_CHECKSUM_SIZE).digest()


def _encode(sigil: str, kind: str, raw: bytes) -> str:
    if len(raw) != 32:
        raise ValueError(f"{kind} must be 32 bytes, got {len(raw)}")
    body = base64.b32encode(raw + _checksum(kind, raw)).decode("ascii").rstrip("=").lower()
    return sigil + body


def _decode(sigil: str, kind: str, text: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidId(f"{kind} must be text")
    stripped = text.strip()
    if not stripped.startswith(sigil):
        raise InvalidId(f"not a {kind}: {text!r} does not start with {sigil!r}")
    body = stripped[len(sigil):]
    if len(body) != _TEXT_LEN:
        raise InvalidId(f"not a {kind}: expected {_TEXT_LEN} characters after {sigil!r}, got {len(body)}")
    try:
        data = base64.b32decode(body.upper() + "======", casefold=False)
    except ValueError:
        raise InvalidId(f"not a {kind}: {text!r} has characters outside a-z and 2-7") from None
    raw, check = data[:32], data[32:]
    if _checksum(kind, raw) != check:
        raise InvalidId(f"{kind} checksum mismatch in {text!r}: a character is mistyped")
    if _encode(sigil, kind, raw) != sigil + body.lower():
        # the last character carries two unused bits; only the canonical spelling is accepted
        raise InvalidId(f"{kind} checksum mismatch in {text!r}: a character is mistyped")
    return raw


def feed_id(public_key: bytes) -> str:
    """The text form of a feed (an Ed25519 public key)."""
    return _encode(FEED_SIGIL, "feed id", public_key)


def parse_feed_id(text: str) -> bytes:
    """The 32-byte public key of a feed id; raises InvalidId."""
    return _decode(FEED_SIGIL, "feed id", text)


def entry_ref(entry_hash: bytes) -> str:
    """The text form of an entry hash."""
    return _encode(ENTRY_SIGIL, "entry hash", entry_hash)


def parse_entry_ref(text: str) -> bytes:
    """The 32-byte hash of an entry reference; raises InvalidId."""
    return _decode(ENTRY_SIGIL, "entry hash", text)
