# Invite lines (spec/peers.md, "Invites"): one shell-safe token that names a node's key and the addresses
# that reach it, `p2pnode:@FEEDID/HOST:PORT,HOST:PORT`, made by `p2pnode invite` and read by `p2pnode join`.
from __future__ import annotations

from .errors import InvalidId
from .ids import Address, feed_id, parse_address, parse_feed_id

PREFIX = "p2pnode:"
MAX_INVITE_ADDRESSES = 8
MAX_INVITE_CHARS = 2_500


def make_invite(key: bytes, addresses: list[Address]) -> str:
    """The invite line for `key` reachable at `addresses` (each must name `key`; at most 8 are kept)."""
    hosts = []
    for address in addresses:
        if address.key != key:
            raise ValueError("an invite's addresses must all name its key")
        where = f"{address.host}:{address.port}"
        if where not in hosts:
            hosts.append(where)
    if not hosts:
        raise ValueError("an invite needs at least one address")
    return f"{PREFIX}{feed_id(key)}/{','.join(hosts[:MAX_INVITE_ADDRESSES])}"


def parse_invite(text: str) -> tuple[bytes, list[Address]]:
    """The key and the addresses of an invite line; InvalidId names what is wrong."""
    line = text.strip() if isinstance(text, str) else ""
    if len(line) > MAX_INVITE_CHARS:
        raise InvalidId(f"not an invite: longer than {MAX_INVITE_CHARS} characters")
    if not line.startswith(PREFIX) or "/" not in line:
        raise InvalidId(f"not an invite: {line[:80]!r} (expected {PREFIX}@FEEDID/HOST:PORT,...)")
    key_text, _, hosts = line[len(PREFIX):].partition("/")
    key = parse_feed_id(key_text)
    parts = [part for part in hosts.split(",") if part]
    if not parts:
        raise InvalidId("not an invite: it names no address")
    if len(parts) > MAX_INVITE_ADDRESSES:
        raise InvalidId(f"not an invite: more than {MAX_INVITE_ADDRESSES} addresses")
    return key, [parse_address(f"{part}/{key_text}") for part in parts]
