# What the CLI shows of the store, as safe text: short unambiguous ids (a name when known, else the shortest
# prefix of at least MIN_PREFIX characters that no other feed or entry of this store shares), relative and
# local times with the zone, entries as a header line and indented body lines, replies with their parent's
# author and text, threads. Also resolves what a user types (full ids, addresses, unique prefixes).
# Every string that came from the network goes through p2pnode.render before it is returned.
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from protocol.errors import InvalidEntry, ProtocolError
from protocol.ids import ENTRY_SIGIL, FEED_SIGIL, entry_ref, feed_id, parse_address, parse_entry_ref, parse_feed_id

from .local import UserError, view
from .render import display_name, one_line, terminal_lines, terminal_text
from .store import _ENTRY_COLUMNS, Store, StoredEntry, _stored

MIN_PREFIX = 8  # base32 characters after the sigil: 40 bits
MAX_TYPED_PREFIX = 20  # longer inputs are taken as whole ids (and get the checksum's error messages)
MIN_TYPED_PREFIX = 4
MAX_THREAD = 10_000
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_ID_LIKE = set("@%()")


def _bits_range(prefix: str) -> tuple[bytes, bytes]:
    """The smallest and largest 32-byte value whose base32 text starts with `prefix`."""
    value = 0
    for char in prefix:
        value = value * 32 + _ALPHABET.index(char)
    bits = 5 * len(prefix)
    low = value << (256 - bits)
    high = low | ((1 << (256 - bits)) - 1)
    return low.to_bytes(32, "big"), high.to_bytes(32, "big")


# ---------------------------------------------------------------- names and short ids


class Names:
    """How feeds and entries are named on screen for one store; `full` shows whole ids everywhere."""

    def __init__(self, store: Store, full: bool = False) -> None:
        self.store = store
        self.full = full
        self._feeds: dict[bytes, str] = {}
        self._entries: dict[bytes, str] = {}
        self._name_counts: dict[str, int] | None = None

    def _count_name(self, name: str) -> int:
        if self._name_counts is None:
            counts: dict[str, int] = {}
            for (other,) in self.store.db.execute("SELECT name FROM profiles"):
                key = " ".join(other.split()).casefold()
                counts[key] = counts.get(key, 0) + 1
            self._name_counts = counts
        return self._name_counts.get(" ".join(name.split()).casefold(), 0)

    def short_feed(self, key: bytes) -> str:
        text = feed_id(key)
        if self.full:
            return text
        for length in range(MIN_PREFIX, len(text)):
            low, high = _bits_range(text[1:length + 1])
            if self._feeds_between(low, high) <= 1:
                return text[:length + 1]
        return text

    def _feeds_between(self, low: bytes, high: bytes) -> int:
        return self.store.db.execute(
            "SELECT count(*) FROM (SELECT author AS k FROM feeds WHERE author BETWEEN ?1 AND ?2 "
            "UNION SELECT target FROM contacts WHERE target BETWEEN ?1 AND ?2 "
            "UNION SELECT author FROM contacts WHERE author BETWEEN ?1 AND ?2 "
            "UNION SELECT key FROM peers WHERE key BETWEEN ?1 AND ?2 "
            "UNION SELECT ?3 WHERE ?3 BETWEEN ?1 AND ?2)", (low, high, self.store.owner)).fetchone()[0]

    def feed(self, key: bytes) -> str:
        """A name when the feed has one that no other feed here shares, else the name and a short id."""
        if key in self._feeds:
            return self._feeds[key]
        name = self.store.profile_name(key)
        short = self.short_feed(key)
        if name is None:
            shown = short
        else:
            safe = display_name(name)
            alone = not self.full and self._count_name(name) <= 1 and not (_ID_LIKE & set(safe))
            shown = safe if alone else f"{safe} ({short})"
        self._feeds[key] = shown
        return shown

    def entry(self, entry_hash: bytes) -> str:
        if entry_hash in self._entries:
            return self._entries[entry_hash]
        text = entry_ref(entry_hash)
        shown = text
        if not self.full:
            for length in range(MIN_PREFIX, len(text)):
                low, high = _bits_range(text[1:length + 1])
                count = self.store.db.execute("SELECT count(*) FROM entries WHERE hash BETWEEN ? AND ?",
                                              (low, high)).fetchone()[0]
                if count <= 1:
                    shown = text[:length + 1]
                    break
        self._entries[entry_hash] = shown
        return shown


def _typed_prefix(text: str, sigil: str) -> str | None:
    body = text.strip()
    if not body.startswith(sigil):
        return None
    body = body[1:].lower()
    if MIN_TYPED_PREFIX <= len(body) <= MAX_TYPED_PREFIX and set(body) <= set(_ALPHABET):
        return body
    return None


def resolve_feed(store: Store, text: str) -> tuple[bytes, str | None]:
    """The key a user means by `text`: a whole feed id, an address HOST:PORT/@ID (returned as well), or a
    prefix of at least MIN_TYPED_PREFIX characters that exactly one feed known here starts with."""
    if "/" in text:
        try:
            address = parse_address(text)
        except ProtocolError as exc:
            raise UserError(exc.message) from None
        return address.key, str(address)
    prefix = _typed_prefix(text, FEED_SIGIL)
    if prefix is None:
        return parse_feed_id(text), None
    low, high = _bits_range(prefix)
    rows = store.db.execute(
        "SELECT author FROM feeds WHERE author BETWEEN ?1 AND ?2 UNION SELECT target FROM contacts "
        "WHERE target BETWEEN ?1 AND ?2 UNION SELECT key FROM peers WHERE key BETWEEN ?1 AND ?2 "
        "UNION SELECT ?3 WHERE ?3 BETWEEN ?1 AND ?2 LIMIT 3", (low, high, store.owner)).fetchall()
    matches = [row[0] for row in rows if feed_id(row[0])[1:].startswith(prefix)]
    if not matches:
        raise UserError(f"no feed known here starts with {FEED_SIGIL}{prefix}: give the whole id")
    if len(matches) > 1:
        raise UserError(f"{FEED_SIGIL}{prefix} is ambiguous here (several feeds start with it): give more characters")
    return matches[0], None


def resolve_entry(store: Store, text: str) -> bytes:
    """The hash a user means: a whole entry hash, or a prefix that exactly one entry here starts with."""
    prefix = _typed_prefix(text, ENTRY_SIGIL)
    if prefix is None:
        return parse_entry_ref(text)
    low, high = _bits_range(prefix)
    rows = store.db.execute("SELECT hash FROM entries WHERE hash BETWEEN ? AND ? LIMIT 2", (low, high)).fetchall()
    if not rows:
        raise UserError(f"no entry {ENTRY_SIGIL}{prefix}… in this store")
    if len(rows) > 1:
        raise UserError(f"{ENTRY_SIGIL}{prefix} is ambiguous here (several entries start with it): "
                        "give more characters")
    return rows[0][0]


# ---------------------------------------------------------------- times


_UNITS = (("min", 60, 60), ("h", 3600, 24), ("day", 86_400, 30), ("month", 30 * 86_400, 12),
          ("year", 365 * 86_400, 10**9))


def _ago(seconds: float) -> str:
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 45:
        return "in a few seconds" if future else "just now"
    unit, count = "year", 0
    for name, size, up_to in _UNITS:
        unit, count = name, max(1, round(seconds / size))
        if count < up_to:
            break
    label = unit if count == 1 or unit in ("min", "h") else unit + "s"
    return f"in {count} {label}" if future else f"{count} {label} ago"


def when(timestamp_ms: int, now: datetime | None = None, full: bool = False) -> str:
    """'5 min ago (14:20 CET)': relative, then the local time with its zone (the date when not today)."""
    now = now or datetime.now().astimezone()
    try:
        moment = datetime.fromtimestamp(timestamp_ms / 1000).astimezone()
    except (OverflowError, ValueError, OSError):  # an author's clock is theirs: any uint is valid
        return f"timestamp {timestamp_ms}"
    zone = moment.strftime("%Z") or moment.strftime("%z")
    if full:
        return moment.strftime("%Y-%m-%d %H:%M:%S ") + zone
    if moment.date() == now.date():
        local = moment.strftime("%H:%M ")
    elif moment.year == now.year:
        local = moment.strftime("%b %d %H:%M ")
    else:
        local = moment.strftime("%Y-%m-%d %H:%M ")
    return f"{_ago((now - moment).total_seconds())} ({local}{zone})"


# ---------------------------------------------------------------- entries


@dataclass
class Shown:
    """One entry on screen: a header line and body lines (already safe); `depth` for threads."""

    header: str
    body: list[str]
    depth: int = 0
    hash: bytes = b""


def _field_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def render_entry(stored: StoredEntry, names: Names, now: datetime | None = None, depth: int = 0) -> Shown:
    item = view(stored)
    store = names.store
    head = [names.entry(stored.entry.hash), names.feed(stored.entry.author),
            when(item["timestamp"], now, names.full)]
    if names.full:
        head.insert(2, f"seq {item['seq']}")
    kind = item["type"]
    body: list[str] = []
    if kind is None:
        body = ["[retracted]" if item.get("retracted") else
                "[payload damaged on disk: not shown; fetched again from peers]" if item.get("damaged") else
                "[payload not held]"]
    elif kind == "post":
        if "reply_to" in item:
            body.append(reply_line(store, names, parse_entry_ref(item["reply_to"])))
        body.extend(terminal_lines(_field_text(item.get("text", ""))))
    elif kind in ("follow", "unfollow", "block", "unblock") and isinstance(item.get("feed"), str):
        body = [f"[{kind}s {names.feed(parse_feed_id(item['feed']))}]"]
    elif kind == "profile":
        text = f"[profile: name \u201c{display_name(_field_text(item.get('name', '')))}\u201d"
        if "about" in item:
            text += f", about \u201c{terminal_text(_field_text(item['about']))}\u201d"
        body = [text + "]"]
    elif kind == "retract" and isinstance(item.get("entry"), str):
        body = [f"[retracts {names.entry(parse_entry_ref(item['entry']))}]"]
    else:
        body = [f"[{terminal_text(_field_text(kind))}]"]
    return Shown("  ".join(head), body, depth, stored.entry.hash)


def reply_line(store: Store, names: Names, parent_hash: bytes) -> str:
    parent = store.entry_by_hash(parent_hash)
    if parent is None:
        return f"in reply to {names.entry(parent_hash)} (not held here)"
    who = names.feed(parent.entry.author)
    try:
        content = parent.content
    except InvalidEntry:
        content = None
    if content is None:
        return f"in reply to {who}: [retracted]" if parent.retracted else f"in reply to {who}"
    text = content.get("text")
    preview = one_line(text, 60) if isinstance(text, str) else f"[{terminal_text(str(content.get('type')))}]"
    return f"in reply to {who}: \u201c{preview}\u201d"


def render_entries(items: Iterable[StoredEntry], names: Names) -> Iterator[Shown]:
    now = datetime.now().astimezone()
    for stored in items:
        yield render_entry(stored, names, now)


# ---------------------------------------------------------------- threads


def _reply_to(stored: StoredEntry) -> bytes | None:
    try:
        content = stored.content
    except InvalidEntry:
        return None
    if content is None or content.get("type") != "post":
        return None
    parent = content.get("reply_to")
    return parent if isinstance(parent, bytes) and len(parent) == 32 else None


def _children(store: Store, parents: list[bytes]) -> dict[bytes, list[StoredEntry]]:
    """Posts that reply to any of `parents`: a scan for the parent's 32 bytes inside payloads (no index is
    kept for replies), then each candidate's decoded reply_to decides."""
    found: dict[bytes, list[StoredEntry]] = {}
    wanted = set(parents)
    for start in range(0, len(parents), 50):
        chunk = parents[start:start + 50]
        condition = " OR ".join("instr(payload, ?) > 0" for _ in chunk)
        for row in store.db.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE type = 'post' AND payload IS NOT NULL "
                                    f"AND ({condition}) ORDER BY timestamp, id", chunk):
            stored = _stored(row)
            parent = _reply_to(stored)
            if parent in wanted:
                found.setdefault(parent, []).append(stored)
    return found


def thread(store: Store, names: Names, entry_hash: bytes, hidden: set[bytes]) -> tuple[list[Shown], int]:
    """The conversation an entry belongs to: from the oldest ancestor held here, every reply held here,
    depth first and oldest first. Returns the entries and how many replies from `hidden` feeds were left
    out (with everything below them)."""
    stored = store.entry_by_hash(entry_hash)
    if stored is None:
        raise UserError(f"no entry {entry_ref(entry_hash)} in this store")
    seen = {stored.entry.hash}
    root = stored
    while (parent_hash := _reply_to(root)) is not None and parent_hash not in seen:
        parent = store.entry_by_hash(parent_hash)
        if parent is None:
            break
        seen.add(parent_hash)
        root = parent
    now = datetime.now().astimezone()
    tree: dict[bytes, list[StoredEntry]] = {}
    frontier = [root.entry.hash]
    total = 1
    left_out = 0
    visited = {root.entry.hash}
    while frontier and total < MAX_THREAD:
        found = _children(store, frontier)
        frontier = []
        for parent, kids in found.items():
            keep = []
            for kid in kids:
                if kid.entry.hash in visited:
                    continue
                if kid.entry.author in hidden:
                    left_out += 1
                    continue
                visited.add(kid.entry.hash)
                keep.append(kid)
                frontier.append(kid.entry.hash)
            tree[parent] = keep
            total += len(keep)
    shown: list[Shown] = []

    def walk(node: StoredEntry, depth: int) -> None:
        stack = [(node, depth)]
        while stack:
            current, level = stack.pop()
            item = render_entry(current, names, now, level)
            if level > 0 and item.body and item.body[0].startswith("in reply to"):
                item.body = item.body[1:]  # the tree says whom it answers
            shown.append(item)
            for kid in reversed(tree.get(current.entry.hash, [])):
                stack.append((kid, level + 1))

    walk(root, 0)
    return shown, left_out
