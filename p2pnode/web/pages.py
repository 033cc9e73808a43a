# What each page of the web app shows, as plain data for the templates: entries with their authors' names,
# human times, reply parents and retractions, keyset paging cursors, feed and network state. Every function
# here takes the web app's own Local (its own SQLite connection) and runs in the app's store thread.
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from protocol.ids import entry_ref, feed_id, parse_entry_ref, parse_feed_id
from protocol.log import MAX_SEQ, MAX_TIMESTAMP

from ..local import Local, UserError
from ..store import StoredEntry

PAGE_SIZE = 50
LIVE_LIMIT = 50  # entries sent at once on the live stream; more is announced as a count
SNIPPET_CHARS = 140


@dataclass
class Author:
    key: bytes
    id: str
    name: str | None

    @property
    def short(self) -> str:
        return self.id[:9] + "…"

    @property
    def label(self) -> str:
        return self.name if self.name else self.short


@dataclass
class Item:
    """One entry as a page shows it."""

    row_id: int
    ts: int
    ref: str
    author: Author
    kind: str | None
    mine: bool
    retracted: bool
    text: str | None = None
    summary: str | None = None
    target: Author | None = None
    parent_ref: str | None = None
    parent: Item | None = None
    retracts: str | None = None  # a retract entry: the ref of the entry it retracts
    when: str = ""
    exact: str = ""
    iso: str = ""

    @property
    def key(self) -> str:
        """The timeline order (timestamp, row id), which the page's script uses to place live entries."""
        return f"{self.ts:016d}.{self.row_id:012d}"

    @property
    def path(self) -> str:
        return self.ref[1:]

    @property
    def snippet(self) -> str:
        if self.retracted:
            return "(retracted)"
        text = self.text if self.text is not None else (self.summary or "")
        return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "…"


def now_ms() -> int:
    return int(time.time() * 1000)


def human_time(ts: int, now: int) -> str:
    """'just now', '3 min ago', '5 h ago', '2 d ago', then a date. An author's clock is theirs: a time
    ahead of ours is said so rather than shown as negative."""
    delta = (now - ts) // 1000
    if delta < -120:
        return "in the future"
    if delta < 45:
        return "just now"
    if delta < 3600:
        return f"{max(1, round(delta / 60))} min ago"
    if delta < 86400:
        return f"{delta // 3600} h ago"
    if delta < 7 * 86400:
        return f"{delta // 86400} d ago"
    try:
        moment = datetime.fromtimestamp(ts / 1000, UTC)
    except (OverflowError, ValueError, OSError):
        return "long ago"
    return f"{moment.day} {moment.strftime('%b %Y')}"


def exact_time(ts: int) -> tuple[str, str]:
    """(what a person reads on hover, ISO 8601 for <time datetime>)."""
    try:
        moment = datetime.fromtimestamp(ts / 1000, UTC)
    except (OverflowError, ValueError, OSError):
        return f"timestamp {ts}", ""
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC"), moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _authors(local: Local, keys: set[bytes]) -> dict[bytes, Author]:
    names = local.store.profile_names(keys)
    return {key: Author(key, feed_id(key), names.get(key)) for key in keys}


def items_for(local: Local, rows: list[StoredEntry], with_parents: bool = True) -> list[Item]:
    """Entries as page items, with names looked up in one query and reply parents fetched by hash."""
    now = now_ms()
    contents = [row.content if not row.retracted else None for row in rows]
    keys = {row.entry.author for row in rows}
    for content in contents:
        if content and isinstance(content.get("feed"), bytes) and len(content["feed"]) == 32:
            keys.add(content["feed"])
    parents: dict[bytes, StoredEntry | None] = {}
    if with_parents:
        for content in contents:
            parent = content.get("reply_to") if content else None
            if isinstance(parent, bytes) and len(parent) == 32 and parent not in parents:
                parents[parent] = local.store.entry_by_hash(parent)
                if parents[parent] is not None:
                    keys.add(parents[parent].entry.author)
    authors = _authors(local, keys)
    items = []
    for row, content in zip(rows, contents, strict=True):
        item = _item(local, row, content, authors, now)
        parent_hash = content.get("reply_to") if content else None
        if isinstance(parent_hash, bytes) and len(parent_hash) == 32:
            item.parent_ref = entry_ref(parent_hash)
            stored = parents.get(parent_hash)
            if stored is not None:
                item.parent = _item(local, stored, stored.content if not stored.retracted else None, authors, now)
        items.append(item)
    return items


def _item(local: Local, row: StoredEntry, content: dict[str, Any] | None, authors: dict[bytes, Author],
          now: int) -> Item:
    entry = row.entry
    author = authors.get(entry.author) or Author(entry.author, feed_id(entry.author), None)
    kind = content.get("type") if content else None
    item = Item(row.id, entry.header.timestamp, entry_ref(entry.hash), author, kind, entry.author == local.owner,
                row.retracted)
    item.when = human_time(item.ts, now)
    item.exact, item.iso = exact_time(item.ts)
    if content is None:
        if not row.retracted:
            item.summary = "(the payload of this entry is not held here)"
        return item
    if kind == "post" and isinstance(content.get("text"), str):
        item.text = content["text"]
    elif kind in ("follow", "unfollow", "block", "unblock") and isinstance(content.get("feed"), bytes):
        item.target = authors.get(content["feed"]) or Author(content["feed"], feed_id(content["feed"]), None)
        item.summary = f"{kind}s"
    elif kind == "profile":
        item.summary = f"set their name to “{content.get('name', '')}”"
    elif kind == "retract":
        item.summary = "retracted one of their entries"
        if isinstance(content.get("entry"), bytes) and len(content["entry"]) == 32:
            item.retracts = entry_ref(content["entry"])
    else:
        item.summary = f"published an entry of type “{kind}”"
    return item


# ------------------------------------------------------------------ paging cursors

def parse_timeline_cursor(text: str | None) -> tuple[int, int] | None:
    """`before=TIMESTAMP.ROWID` from an 'older' link."""
    if not text:
        return None
    ts, _, row_id = text.partition(".")
    if not (ts.isdigit() and row_id.isdigit()) or int(ts) > MAX_TIMESTAMP + 1 or int(row_id) > 2**63 - 1:
        raise UserError(f"not a paging position: {text[:40]!r}")
    return int(ts), int(row_id)


def parse_seq_cursor(text: str | None) -> int | None:
    if not text:
        return None
    if not text.isdigit() or int(text) > MAX_SEQ + 1:
        raise UserError(f"not a paging position: {text[:40]!r}")
    return int(text)


# ------------------------------------------------------------------ pages

def timeline_page(local: Local, before: str | None) -> dict[str, Any]:
    cursor = parse_timeline_cursor(before)
    rows = local.store.timeline(PAGE_SIZE + 1, before=cursor)
    items = items_for(local, rows[:PAGE_SIZE])
    older = f"{items[-1].ts}.{items[-1].row_id}" if len(rows) > PAGE_SIZE else None
    return {"items": items, "older": older, "first_page": cursor is None, "after": local.store.last_row_id()}


def feed_page(local: Local, feed_text: str, before: str | None) -> dict[str, Any]:
    author = parse_feed_id(feed_text)
    cursor = parse_seq_cursor(before)
    rows = local.store.feed(author, PAGE_SIZE + 1, before_seq=cursor)
    items = items_for(local, rows[:PAGE_SIZE])
    older = str(rows[PAGE_SIZE - 1].entry.seq) if len(rows) > PAGE_SIZE else None
    profile = local.store.profile(author)
    head = local.store.head(author)
    return {
        "feed": Author(author, feed_id(author), profile[0] if profile else None),
        "about": profile[1] if profile else None,
        "is_me": author == local.owner,
        "following": author in local.store.follows(),
        "blocked": author in local.store.blocked(),
        "forked": author in local.store.forked_feeds(),
        "held": head.seq if head else 0,
        "items": items, "older": older, "first_page": cursor is None, "after": local.store.last_row_id(),
    }


def entry_page(local: Local, ref_text: str) -> dict[str, Any]:
    entry_hash = parse_entry_ref("%" + ref_text)
    stored = local.store.entry_by_hash(entry_hash)
    if stored is None:
        raise UserError(f"no entry {entry_ref(entry_hash)} in this store")
    item = items_for(local, [stored])[0]
    return {"item": item, "after": local.store.last_row_id()}


def profile_page(local: Local) -> dict[str, Any]:
    profile = local.store.profile(local.owner)
    return {"name": profile[0] if profile else "", "about": (profile[1] or "") if profile else ""}


def network_page(local: Local, status: dict[str, Any]) -> dict[str, Any]:
    now = now_ms()
    connected = {p["id"]: p for p in status.get("peers", [])}
    keys = set()
    for peer in connected.values():
        try:
            keys.add(parse_feed_id(peer["id"]))
        except Exception:  # noqa: BLE001 - the node wrote it; shown as is if it ever does not parse
            continue
    book = local.store.peer_book()
    keys |= {row["key"] for row in book}
    authors = _authors(local, keys)
    peers = []
    for peer in connected.values():
        author = next((a for a in authors.values() if a.id == peer["id"]), None)
        peers.append({**peer, "author": author})
    known = [{
        "address": row["address"], "source": row["source"], "failures": row["failures"],
        "author": authors.get(row["key"]), "connected": feed_id(row["key"]) in connected,
        "last_seen": human_time(row["last_seen"], now) if row["last_seen"] else "never",
    } for row in book]
    syncing = []
    for feed in status.get("syncing", []):
        try:
            key = parse_feed_id(feed["id"])
        except Exception:  # noqa: BLE001 - as above
            continue
        syncing.append({"author": Author(key, feed["id"], None), "held": feed["held"], "seen": feed["seen"]})
    names = local.store.profile_names(item["author"].key for item in syncing)
    for item in syncing:
        item["author"].name = names.get(item["author"].key)
    counts = local.store.counts()
    return {"peers": peers, "known": known, "counts": counts, "syncing": syncing,
            "following": len(local.store.follows() - local.store.blocked()),
            "blocking": len(local.store.blocked()), "address": status.get("address")}


def live_items(local: Local, view_name: str, after: int) -> tuple[list[Item], int, int]:
    """Entries of a page's view stored after row id `after`: (the newest LIVE_LIMIT as items, the row id to
    continue from, how many more arrived than are sent)."""
    last = local.store.last_row_id()
    if view_name == "timeline":
        rows = local.store.timeline_after(after, 10 * LIVE_LIMIT)
    elif view_name.startswith("feed:"):
        rows = local.store.feed_after(parse_feed_id(view_name[5:]), after, 10 * LIVE_LIMIT)
    else:
        return [], last, 0
    if len(rows) == 10 * LIVE_LIMIT:
        last = rows[-1].id  # more to come: continue from here next time
    rows.sort(key=lambda r: (r.entry.header.timestamp, r.id), reverse=True)
    return items_for(local, rows[:LIVE_LIMIT]), last, max(0, len(rows) - LIVE_LIMIT)


def status_line(status: dict[str, Any]) -> str:
    peers = status.get("peers", [])
    if not peers:
        return "no peers connected"
    text = f"{len(peers)} peer{'s' if len(peers) != 1 else ''}"
    # the node lists the (at most 20) wanted feeds a peer holds more of than we do
    behind = sum(max(0, int(f.get("seen", 0)) - int(f.get("held", 0))) for f in status.get("syncing", []))
    if behind:
        text += f" · syncing ({behind} entries to receive)"
    elif any(not p.get("in_sync") for p in peers):
        text += " · syncing"
    else:
        text += " · in sync"
    return text
