# Text forms of feed ids (Ed25519 public keys) and entry hashes: what a user copies, pastes and types.
# Each is a sigil, then lowercase base32 of the 32 bytes followed by a 4-byte checksum, so a mistyped
# character is reported as an error and never decodes to another key (spec/log.md, "Text forms").
import base64
import hashlib
import ipaddress
from typing import NamedTuple

from .errors import InvalidId

FEED_SIGIL = "@"
ENTRY_SIGIL = "%"
_CHECKSUM_SIZE = 4
_TEXT_LEN = 58  # base32 of 36 bytes, without padding


def _checksum(kind: str, raw: bytes) -> bytes:
    return hashlib.blake2b(kind.encode() + raw, digest_size=_CHECKSUM_SIZE).digest()


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


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
        raise InvalidId(f"not {_article(kind)} {kind}: {text!r} does not start with {sigil!r}")
    body = stripped[len(sigil):]
    if len(body) != _TEXT_LEN:
        raise InvalidId(f"not {_article(kind)} {kind}: expected {_TEXT_LEN} characters after {sigil!r}, "
                        f"got {len(body)}")
    try:
        data = base64.b32decode(body.upper() + "======", casefold=False)
    except ValueError:
        raise InvalidId(f"not {_article(kind)} {kind}: {text!r} has characters outside a-z and 2-7") from None
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


class Address(NamedTuple):
    """Where a node can be dialled, and the key it must prove: `HOST:PORT/@FEEDID` as one shell-safe token."""

    host: str
    port: int
    key: bytes

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{feed_id(self.key)}"


_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def _valid_host(host: str) -> bool:
    """An IPv4 or IPv6 address, or a DNS name of 1-63-character labels of letters, digits and '-'."""
    if ":" in host or host.replace(".", "").isdigit():
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True
    labels = host.split(".")
    return len(host) <= 253 and all(
        0 < len(label) <= 63 and set(label) <= _LABEL_CHARS and label[0] != "-" and label[-1] != "-"
        for label in labels)


def parse_address(text: str) -> Address:
    """Parse `HOST:PORT/@FEEDID` (IPv6 hosts without brackets: the port is after the last colon)."""
    if not isinstance(text, str) or "/" not in text:
        raise InvalidId(f"not an address: {text!r} (expected HOST:PORT/@FEEDID)")
    where, _, key_text = text.strip().rpartition("/")
    host, _, port_text = where.rpartition(":")
    if (not host or not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5
            or not 1 <= int(port_text) <= 65535):
        raise InvalidId(f"not an address: {text!r} needs HOST:PORT with a port from 1 to 65535")
    if not _valid_host(host):
        raise InvalidId(f"not an address: bad host {host!r}")
    return Address(host, int(port_text), parse_feed_id(key_text))
