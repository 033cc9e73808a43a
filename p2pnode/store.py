# The SQLite store: every verified entry this node holds, the feed heads, fork proofs, the contact graph
# and profiles derived from the logs, and the peer book. Uses the standard sqlite3 module in WAL mode with
# short transactions called inline (spec/decisions.md says why not aiosqlite, and why not a thread).
from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing

from protocol.errors import Blocked, ForkDetected, InvalidEntry, ProtocolError
from protocol.ids import entry_ref, feed_id
from protocol.log import (
    CONTACT_TYPES,
    MAX_SEQ,
    MAX_TIMESTAMP,
    Entry,
    FeedHead,
    Header,
    check_link,
    create_entry,
    decode_header,
    decode_payload,
    entry_hash,
    payload_matches,
    sha256,
    signature_ok,
    verify_entry,
)

from .diskspace import home_problem, is_disk_full

log = logging.getLogger("p2pnode.store")

# Each migration is applied once, in its own transaction, and recorded in schema_migrations.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
        CREATE TABLE feeds (
            author    BLOB PRIMARY KEY,
            head_seq  INTEGER NOT NULL,
            head_hash BLOB NOT NULL,
            forked    INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
        CREATE TABLE entries (
            id        INTEGER PRIMARY KEY,
            author    BLOB NOT NULL,
            seq       INTEGER NOT NULL,
            hash      BLOB NOT NULL,
            header    BLOB NOT NULL,
            signature BLOB NOT NULL,
            payload   BLOB,
            type      TEXT,
            timestamp INTEGER NOT NULL,
            retracted INTEGER NOT NULL DEFAULT 0
        );
        CREATE UNIQUE INDEX entries_author_seq ON entries(author, seq);
        CREATE UNIQUE INDEX entries_hash ON entries(hash);
        CREATE INDEX entries_timestamp ON entries(timestamp);
        CREATE TABLE forks (
            author      BLOB NOT NULL,
            seq         INTEGER NOT NULL,
            header_a    BLOB NOT NULL,
            signature_a BLOB NOT NULL,
            header_b    BLOB NOT NULL,
            signature_b BLOB NOT NULL,
            detected_at INTEGER NOT NULL,
            PRIMARY KEY (author, seq, header_b)
        );
        CREATE TABLE contacts (
            author    BLOB NOT NULL,
            target    BLOB NOT NULL,
            following INTEGER NOT NULL DEFAULT 0,
            blocking  INTEGER NOT NULL DEFAULT 0,
            seq       INTEGER NOT NULL,
            PRIMARY KEY (author, target)
        ) WITHOUT ROWID;
        CREATE TABLE profiles (
            author BLOB PRIMARY KEY,
            name   TEXT NOT NULL,
            about  TEXT,
            seq    INTEGER NOT NULL
        ) WITHOUT ROWID;
    """),
    (2, """
        CREATE TABLE peers (
            address      TEXT PRIMARY KEY,
            key          BLOB NOT NULL,
            source       TEXT NOT NULL,
            added_at     INTEGER NOT NULL,
            last_seen    INTEGER,
            last_attempt INTEGER,
            next_attempt INTEGER NOT NULL DEFAULT 0,
            failures     INTEGER NOT NULL DEFAULT 0
        );
    """),
    # following and blocking each follow their own latest entry: a late payload of an old follow must not
    # be overruled by a newer block's seq (and the other way round)
    (3, """
        ALTER TABLE contacts RENAME COLUMN seq TO follow_seq;
        ALTER TABLE contacts ADD COLUMN block_seq INTEGER NOT NULL DEFAULT 0;
        UPDATE contacts SET block_seq = follow_seq;
    """),
    # partial feeds (spec/replication.md, "Newest first, and partial feeds"): the entries held run from
    # low_seq to head_seq without a gap; low_seq 1 is a whole feed
    (4, """
        ALTER TABLE feeds ADD COLUMN low_seq INTEGER NOT NULL DEFAULT 1;
    """),
    # what the last failed dial of an address found, kept across runs (spec/peers.md, "Dial failures"): an
    # address proven wrong is not dialled before retry_at (ms), even by a restarted node
    (5, """
        ALTER TABLE peers ADD COLUMN problem_kind TEXT;
        ALTER TABLE peers ADD COLUMN problem TEXT;
        ALTER TABLE peers ADD COLUMN problem_count INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE peers ADD COLUMN problem_at INTEGER;
        ALTER TABLE peers ADD COLUMN retry_at INTEGER NOT NULL DEFAULT 0;
    """),
    # signatures proven by a later one (spec/log.md, "Checking a batch"): an entry's own signature is checked
    # (1), not checked yet (0: the entry is the author's, a later entry's signature covers its hash), or found
    # bad (2: never sent). feeds.unchecked: the feed may hold entries in state 0
    (6, """
        ALTER TABLE entries ADD COLUMN signature_state INTEGER NOT NULL DEFAULT 1;
        ALTER TABLE feeds ADD COLUMN unchecked INTEGER NOT NULL DEFAULT 0;
    """),
]

SIGNATURE_UNCHECKED, SIGNATURE_CHECKED, SIGNATURE_BAD = 0, 1, 2

BUSY_TIMEOUT_S = 30.0
CHECK_PROGRESS_EVERY = 500


class StoreError(Exception):
    """A problem opening or migrating the store, worded for the user."""


@dataclass
class IngestResult:
    """What one batch did: entries newly stored, duplicates seen, and the error that stopped it, if any."""

    stored: list[Entry] = field(default_factory=list)
    duplicates: int = 0
    error: ProtocolError | None = None
    purged_feeds: list[bytes] = field(default_factory=list)
    retracted: list[bytes] = field(default_factory=list)
    forked: list[bytes] = field(default_factory=list)
    lows: dict[bytes, int] = field(default_factory=dict)  # partial feeds started or filled: their new low_seq
    unchecked: int = 0  # entries stored whose own signatures are not checked yet (spec/log.md)


@dataclass(frozen=True)
class StoredEntry:
    """An entry as the store holds it, for reading commands."""

    id: int
    entry: Entry
    retracted: bool
    damaged: bool = False  # the payload on disk did not match its header: it is treated as not held

    @property
    def content(self) -> dict[str, Any] | None:
        return self.entry.content()


@dataclass(frozen=True)
class Problem:
    author: bytes
    seq: int | None
    what: str
    # "corrupt": this store is damaged (or its own feed is forked); "evidence": a proof this store holds
    # about another author (a stranger's fork, both signed headers verified), which is not damage
    kind: str = "corrupt"


def _now_ms() -> int:
    return int(time.time() * 1000)


class Store:
    """One SQLite file. `owner` is the node's own feed: its contact entries decide follows and blocks."""

    def __init__(self, path: Path | str, owner: bytes) -> None:
        self.path = Path(path)
        self.owner = owner
        # set when an entry is stored without its payload or a payload is found damaged: the node's repair
        # loop (p2pnode/repair.py) then looks for missing payloads again
        self.missing_changed = False
        self.full_error: sqlite3.Error | None = None  # the last write skipped for lack of space (see _peer_write)
        try:
            self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=BUSY_TIMEOUT_S,
                                      check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if hasattr(self, "db"):
                self.db.close()
            raise StoreError(home_problem(exc, self.path.parent) or f"cannot open store {self.path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ schema

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                        "(version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
        for version, sql in MIGRATIONS:
            with self._write():
                done = self.db.execute("SELECT 1 FROM schema_migrations WHERE version = ?",
                                       (version,)).fetchone()
                if done:
                    continue
                for statement in sql.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, _now_ms()))
        newest = self.db.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        if newest > MIGRATIONS[-1][0]:
            raise StoreError(f"store {self.path} was written by a newer version of p2pnode (schema version {newest}; "
                             f"this one knows up to {MIGRATIONS[-1][0]}): run that version or a newer one; this one "
                             "leaves the store untouched")

    def schema_versions(self) -> list[int]:
        return [row[0] for row in self.db.execute("SELECT version FROM schema_migrations ORDER BY version")]

    def _write(self) -> _Transaction:
        return _Transaction(self.db)

    def data_version(self) -> int:
        """Changes whenever another connection commits: how a running node notices the CLI's writes."""
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    # ------------------------------------------------------------ writing

    def ingest(self, items: Iterable[tuple[bytes, bytes, bytes | None]]) -> IngestResult:
        """Verify and store a batch of entries (any feeds, each feed in order) in one transaction.

        The entries before the first invalid one are stored; the invalid one and the rest of the batch
        are not, and the error is returned (spec/log.md, "Ingesting a batch")."""
        result = IngestResult()
        with self._write():
            self._ingest_locked(items, result)
        return result

    def ingest_verified(self, entries: Iterable[Entry], starts: dict[bytes, set[int]] | None = None,
                        unchecked: set[bytes] | None = None) -> IngestResult:
        """ingest() for entries already checked by verify_entry (steps 1-4 of spec/log.md, e.g. in a worker
        thread); the store still checks each one's link to the feed head, forks and blocks.

        `starts`: feeds this node asked for newest first, and after which seqs; an empty feed may then begin
        at one of those seqs + 1 (a partial feed). Entries below a partial feed's first held entry are stored
        when they link backwards to it (spec/replication.md, "Newest first, and partial feeds").

        `unchecked`: hashes of entries whose own signatures were not checked (a later entry's signature
        proves them, spec/log.md "Checking a batch"): stored as such, and checked before they are sent."""
        result = IngestResult()
        with self._write():
            self._ingest_locked(entries, result, starts or {}, unchecked or set())
        return result

    def _ingest_locked(self, items: Iterable[tuple[bytes, bytes, bytes | None] | Entry],
                       result: IngestResult, starts: dict[bytes, set[int]] | None = None,
                       unchecked: set[bytes] | frozenset[bytes] = frozenset()) -> None:
        heads: dict[bytes, FeedHead | None] = {}
        forked: dict[bytes, bool] = {}
        lows: dict[bytes, int] = {}
        older: dict[bytes, list[Entry]] = {}
        blocked = self.blocked()
        for item in items:
            try:
                entry = item if isinstance(item, Entry) else verify_entry(*item)
                author = entry.author
                if author in blocked:
                    raise Blocked(f"feed {_short(author)} is blocked")
                if author not in heads:
                    row = self.db.execute("SELECT head_seq, head_hash, forked, low_seq FROM feeds WHERE author = ?",
                                          (author,)).fetchone()
                    heads[author] = FeedHead(author, row[0], row[1]) if row else None
                    forked[author] = bool(row[2]) if row else False
                    lows[author] = row[3] if row else 1
                head = heads[author]
                if head is not None and entry.seq < lows[author]:
                    older.setdefault(author, []).append(entry)  # fills the past of a partial feed, below
                    continue
                if head is not None and entry.seq <= head.seq:
                    self._known_seq(entry, result, unchecked)
                    continue
                if forked[author]:
                    raise ForkDetected(f"feed {_short(author)} is forked and accepts no more entries")
                if head is not None and entry.seq == head.seq + 1 and entry.header.prev != head.hash:
                    self._fork_by_link(entry, head, result, unchecked)
                if head is None and entry.seq - 1 in (starts or {}).get(author, ()):
                    lows[author] = result.lows[author] = entry.seq  # newest first: a partial feed begins
                else:
                    check_link(entry, head)
            except ProtocolError as exc:
                result.error = exc
                break
            self._insert(entry, result, entry.hash in unchecked)
            heads[author] = FeedHead(author, entry.seq, entry.hash)
            if self.owner == author and (entry.content() or {}).get("type") == "block":
                blocked = self.blocked()
        for author, head in heads.items():
            if head is not None and author not in result.purged_feeds:
                self.db.execute("INSERT INTO feeds(author, head_seq, head_hash, low_seq) VALUES (?, ?, ?, ?) "
                                "ON CONFLICT(author) DO UPDATE SET head_seq = excluded.head_seq, "
                                "head_hash = excluded.head_hash", (author, head.seq, head.hash, lows[author]))
        for author, entries in older.items():
            if author not in result.purged_feeds and not forked[author]:
                self._fill_past(author, entries, lows[author], result, unchecked)
        for author in result.forked:
            self.db.execute("UPDATE feeds SET forked = 1 WHERE author = ?", (author,))
        if result.unchecked:
            self.db.executemany("UPDATE feeds SET unchecked = 1 WHERE author = ?",
                                [(a,) for a in {e.author for e in result.stored if e.hash in unchecked}])

    def _fill_past(self, author: bytes, entries: list[Entry], low: int, result: IngestResult,
                   unchecked: set[bytes] | frozenset[bytes] = frozenset()) -> None:
        """Store the entries just below a partial feed's first held entry, each linking to the one above it.
        One that does not link, validly signed, is the author's fork; an entry further down waits its turn."""
        header_above, signature_above = self.db.execute(
            "SELECT header, signature FROM entries WHERE author = ? AND seq = ?", (author, low)).fetchone()
        expected = decode_header(header_above).prev
        for entry in sorted(entries, key=lambda e: e.seq, reverse=True):
            if entry.seq >= low:
                continue
            if entry.seq != low - 1:
                break
            if entry.hash != expected:
                if not _signed(entry, unchecked):
                    result.error = result.error or InvalidEntry("bad signature")
                    break
                self.db.execute("INSERT OR IGNORE INTO forks VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (author, low, header_above, signature_above, entry.header_bytes, entry.signature,
                                 _now_ms()))
                result.forked.append(author)
                result.error = result.error or ForkDetected(
                    f"feed {_short(author)} signed seq {low} after another entry {entry.seq}")
                break
            self._insert(entry, result, entry.hash in unchecked)
            low = entry.seq
            expected = entry.header.prev
            header_above, signature_above = entry.header_bytes, entry.signature
        self.db.execute("UPDATE feeds SET low_seq = ? WHERE author = ?", (low, author))
        result.lows[author] = low

    def _known_seq(self, entry: Entry, result: IngestResult,
                   unchecked: set[bytes] | frozenset[bytes] = frozenset()) -> None:
        row = self.db.execute("SELECT id, hash, payload, retracted, header, signature, signature_state FROM entries "
                              "WHERE author = ? AND seq = ?", (entry.author, entry.seq)).fetchone()
        if row is None:
            raise InvalidEntry(f"store has no entry at seq {entry.seq} below the head")  # cannot happen
        row_id, stored_hash, stored_payload, retracted, header_a, signature_a, signature_state = row
        if stored_hash == entry.hash:
            result.duplicates += 1
            checked = entry.hash not in unchecked
            if (signature_state == SIGNATURE_UNCHECKED and checked) or (
                    signature_state == SIGNATURE_BAD and entry.signature != signature_a):
                self._set_signature(row_id, entry, checked, result)
            if (entry.payload is not None and not retracted
                    and (stored_payload is None or not payload_matches(entry.header_bytes, stored_payload))):
                self._set_payload(row_id, entry)  # a missing payload, or one damaged on disk, comes back
            return
        if not _signed(entry, unchecked):
            raise InvalidEntry("bad signature")
        self.db.execute("INSERT OR IGNORE INTO forks VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (entry.author, entry.seq, header_a, signature_a, entry.header_bytes,
                         entry.signature, _now_ms()))
        result.forked.append(entry.author)
        raise ForkDetected(f"feed {_short(entry.author)} signed two different entries at seq {entry.seq}")

    def _fork_by_link(self, entry: Entry, head: FeedHead, result: IngestResult,
                      unchecked: set[bytes] | frozenset[bytes] = frozenset()) -> None:
        """A validly signed entry n+1 whose prev is not our entry n: the author signed another entry n.
        Keep our entry n and this header as the proof (spec/log.md, "Forks")."""
        if not _signed(entry, unchecked):
            raise InvalidEntry("bad signature")
        header_a, signature_a = self.db.execute("SELECT header, signature FROM entries WHERE author = ? AND seq = ?",
                                                (head.author, head.seq)).fetchone()
        self.db.execute("INSERT OR IGNORE INTO forks VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (entry.author, head.seq, header_a, signature_a, entry.header_bytes, entry.signature,
                         _now_ms()))
        result.forked.append(entry.author)
        raise ForkDetected(f"feed {_short(entry.author)} signed seq {entry.seq} after another entry {head.seq}")

    def _insert(self, entry: Entry, result: IngestResult, unchecked: bool = False) -> None:
        content = entry.content()
        kind = content.get("type") if content else None
        cursor = self.db.execute(
            "INSERT INTO entries(author, seq, hash, header, signature, payload, type, timestamp, signature_state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (entry.author, entry.seq, entry.hash, entry.header_bytes, entry.signature, entry.payload, kind,
             entry.header.timestamp, SIGNATURE_UNCHECKED if unchecked else SIGNATURE_CHECKED))
        result.stored.append(entry)
        result.unchecked += unchecked
        if entry.payload is None:
            self.missing_changed = True
        if content is not None:
            self._apply(cursor.lastrowid, entry, content, result)

    def _set_signature(self, row_id: int, entry: Entry, checked: bool, result: IngestResult) -> None:
        """Another copy of an entry held with a signature that is bad or not checked yet: keep the copy's
        signature, checked (it was checked as it came in) or to be checked (spec/log.md, "Checking a batch")."""
        self.db.execute("UPDATE entries SET signature = ?, signature_state = ? WHERE id = ?",
                        (entry.signature, SIGNATURE_CHECKED if checked else SIGNATURE_UNCHECKED, row_id))
        if not checked:
            self.db.execute("UPDATE feeds SET unchecked = 1 WHERE author = ?", (entry.author,))
            result.unchecked += 1

    def _set_payload(self, row_id: int, entry: Entry) -> None:
        content = entry.content() or {}
        self.db.execute("UPDATE entries SET payload = ?, type = ? WHERE id = ?",
                        (entry.payload, content.get("type"), row_id))
        self.missing_changed = True
        self._apply(row_id, entry, content, IngestResult())

    def _apply(self, row_id: int | None, entry: Entry, content: dict[str, Any], result: IngestResult) -> None:
        """Derive state from a payload: contacts, profiles, retractions, and the owner's blocks."""
        kind = content["type"]
        author = entry.author
        if kind in CONTACT_TYPES:
            column, seq_column, other_seq = (("following", "follow_seq", "block_seq")
                                             if kind in ("follow", "unfollow")
                                             else ("blocking", "block_seq", "follow_seq"))
            value = 1 if kind in ("follow", "block") else 0
            self.db.execute(
                f"INSERT INTO contacts(author, target, {column}, {seq_column}, {other_seq}) VALUES (?, ?, ?, ?, 0) "
                f"ON CONFLICT(author, target) DO UPDATE SET {column} = excluded.{column}, "
                f"{seq_column} = excluded.{seq_column} WHERE excluded.{seq_column} >= contacts.{seq_column}",
                (author, content["feed"], value, entry.seq))
            if kind == "block" and author == self.owner and content["feed"] != self.owner:
                self._purge_feed(content["feed"])
                result.purged_feeds.append(content["feed"])
        elif kind == "profile":
            self.db.execute(
                "INSERT INTO profiles VALUES (?, ?, ?, ?) ON CONFLICT(author) DO UPDATE SET "
                "name = excluded.name, about = excluded.about, seq = excluded.seq WHERE excluded.seq >= profiles.seq",
                (author, content["name"], content.get("about"), entry.seq))
        elif kind == "retract":
            target = content["entry"]
            changed = self.db.execute(
                "UPDATE entries SET payload = NULL, retracted = 1 WHERE hash = ? AND author = ? AND seq < ?",
                (target, author, entry.seq)).rowcount
            if changed:
                result.retracted.append(target)
                self._refresh_profile(author)

    def _refresh_profile(self, author: bytes) -> None:
        """The latest profile entry that is held and not retracted decides the profile (none: no profile)."""
        row = self.db.execute("SELECT seq, payload FROM entries WHERE author = ? AND type = 'profile' "
                              "AND payload IS NOT NULL AND retracted = 0 ORDER BY seq DESC LIMIT 1",
                              (author,)).fetchone()
        self.db.execute("DELETE FROM profiles WHERE author = ?", (author,))
        if row is not None:
            content = decode_payload(row[1])
            self.db.execute("INSERT INTO profiles VALUES (?, ?, ?, ?)",
                            (author, content["name"], content.get("about"), row[0]))

    def _purge_feed(self, author: bytes) -> None:
        for table in ("entries", "feeds", "forks", "profiles"):
            self.db.execute(f"DELETE FROM {table} WHERE author = ?", (author,))
        self.db.execute("DELETE FROM contacts WHERE author = ?", (author,))
        self.db.execute("DELETE FROM peers WHERE key = ?", (author,))

    def publish(self, signing_key: nacl.signing.SigningKey, payload: dict[str, Any],
                timestamp: int | None = None) -> Entry:
        """Sign and store the next entry of the owner's feed. Raises InvalidEntry for a bad payload."""
        author = bytes(signing_key.verify_key)
        with self._write():
            row = self.db.execute("SELECT head_seq, head_hash, forked FROM feeds WHERE author = ?",
                                  (author,)).fetchone()
            previous = FeedHead(author, row[0], row[1]) if row else None
            ts = _now_ms() if timestamp is None else timestamp
            if previous is not None:
                prev_ts = self.db.execute("SELECT timestamp FROM entries WHERE author = ? AND seq = ?",
                                          (author, previous.seq)).fetchone()
                ts = max(ts, prev_ts[0]) if prev_ts else ts  # keep the author's own clock monotonic
            entry = create_entry(signing_key, previous, payload, ts)
            result = IngestResult()
            self._ingest_locked([(entry.header_bytes, entry.signature, entry.payload)], result)
            if result.error is not None:
                raise result.error
        return entry

    # ------------------------------------------------------------ reading

    def head(self, author: bytes) -> FeedHead | None:
        row = self.db.execute("SELECT head_seq, head_hash FROM feeds WHERE author = ?", (author,)).fetchone()
        return FeedHead(author, row[0], row[1]) if row else None

    def clock(self, authors: Iterable[bytes] | None = None) -> dict[bytes, int]:
        """feed -> latest seq held; for the given feeds only (0 for a feed not held) when they are named."""
        if authors is None:
            return dict(self.db.execute("SELECT author, head_seq FROM feeds"))
        wanted = list(authors)
        result = dict.fromkeys(wanted, 0)
        for author in wanted:
            row = self.db.execute("SELECT head_seq FROM feeds WHERE author = ?", (author,)).fetchone()
            if row:
                result[author] = row[0]
        return result

    def _rows(self, sql: str, params: Sequence[Any]) -> list[StoredEntry]:
        rows = [_stored(row) for row in self.db.execute(sql, params)]
        if any(r.damaged for r in rows):
            self.payloads_damaged([(r.id, r.entry.header) for r in rows if r.damaged])
        return rows

    def lows(self) -> dict[bytes, int]:
        """Partial feeds -> the lowest seq held (the entries from it to the head have no gap)."""
        return dict(self.db.execute("SELECT author, low_seq FROM feeds WHERE low_seq > 1"))

    def raw_entries_before(self, author: bytes, seq: int, limit: int) -> list[tuple[int, bytes, bytes, bytes | None]]:
        """Like raw_entries_after, for the `limit` entries just below `seq`, in increasing seq order. An entry
        that cannot be sent (a bad signature) ends the run from below: what is sent links down from `seq`."""
        rows = self.db.execute("SELECT seq, header, signature, payload, id, signature_state FROM entries "
                               "WHERE author = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                               (author, seq, limit)).fetchall()
        return self._checked_rows(rows)[::-1]

    def keep_latest(self, feeds: Iterable[bytes], keep: int) -> dict[bytes, int]:
        """Drop all but the latest `keep` entries of these feeds (partial feeds at hop 2 and beyond); their
        new low seqs. Chunked per feed: each call is one short transaction per feed that has more."""
        lows: dict[bytes, int] = {}
        for author in feeds:
            row = self.db.execute("SELECT head_seq, low_seq FROM feeds WHERE author = ?", (author,)).fetchone()
            if row is None or row[0] - row[1] + 1 <= keep:
                continue
            low = row[0] - keep + 1
            with self._write():
                self.db.execute("DELETE FROM entries WHERE author = ? AND seq < ?", (author, low))
                self.db.execute("UPDATE feeds SET low_seq = ? WHERE author = ?", (low, author))
            lows[author] = low
        return lows

    def raw_entries_after(self, author: bytes, seq: int, limit: int) -> list[tuple[int, bytes, bytes, bytes | None]]:
        """(seq, header, signature, payload) of one feed's entries with seq > `seq`, in order: what a node
        sends. A payload that does not match its header (damaged on disk) is sent as nil, never as it is. A
        signature not checked yet is checked now; the entries from the first one that is bad on are not sent
        (spec/log.md, "Checking a batch")."""
        rows = self.db.execute("SELECT seq, header, signature, payload, id, signature_state FROM entries "
                               "WHERE author = ? AND seq > ? ORDER BY seq LIMIT ?", (author, seq, limit)).fetchall()
        return self._checked_rows(rows)

    def _checked_rows(self, rows: list[tuple[Any, ...]]) -> list[tuple[int, bytes, bytes, bytes | None]]:
        """(seq, header, signature, payload) of rows read with their ids and signature states, up to the first
        whose signature is bad, a damaged payload replaced by nil."""
        result = []
        damaged = []
        for seq_, header, signature, payload, row_id, signature_state in rows:
            if signature_state == SIGNATURE_BAD:
                break  # logged once, when it was found (p2pnode/sigcheck.py); fetched again meanwhile
            if signature_state == SIGNATURE_UNCHECKED and not signature_ok(header, signature):
                log.warning("entry %s is not sent on: its signature is bad (the entry is the author's, proven by "
                            "a later signature; the peer that sent it altered the signature)",
                            entry_ref(entry_hash(header)))
                break
            if payload is not None and not payload_matches(header, payload):
                damaged.append((row_id, decode_header(header)))
                payload = None
            result.append((seq_, header, signature, payload))
        if damaged:
            self.payloads_damaged(damaged)
        return result

    def entries_at(self, refs: Iterable[tuple[bytes, int]]) -> list[tuple[bytes, bytes, bytes | None]]:
        """(header, signature, payload or nil) of the entries named by (feed, seq), those held, in the order
        given; a damaged payload is nil, as in raw_entries_after."""
        result = []
        for author, seq in refs:
            rows = self.raw_entries_after(author, seq - 1, 1)
            if rows and rows[0][0] == seq:
                result.append(rows[0][1:])
        return result

    def payloads_damaged(self, damaged: list[tuple[int, Header]]) -> None:
        """Payloads (row id, header) found not to match their headers: report each (log and `on_damage`) and
        drop them, so that they count as missing and come back from peers (spec/replication.md, "Repair").
        Dropping is best effort: a store that cannot be written (read-only, full) keeps the bad bytes, which
        are checked again on every read and never shown or sent."""
        for _, header in damaged:
            log.warning("entry %s is damaged on disk: its payload does not match its hash; it is fetched again "
                        "from peers", entry_ref(entry_hash(header.encode())))
        try:
            with self._write():
                for row_id, header in damaged:
                    self.db.execute("UPDATE entries SET payload = NULL WHERE id = ? AND author = ? AND seq = ?",
                                    (row_id, header.author, header.seq))
        except sqlite3.OperationalError as exc:
            log.warning("could not drop the damaged payloads: %s", exc)
        self.missing_changed = True

    # ------------------------------------------------------------ signatures proven by a later one

    def feeds_unchecked(self, limit: int) -> list[bytes]:
        """Feeds that may hold entries whose own signatures are not checked yet."""
        return [row[0] for row in self.db.execute("SELECT author FROM feeds WHERE unchecked = 1 LIMIT ?", (limit,))]

    def unchecked_after(self, author: bytes, seq: int, limit: int) -> list[tuple[int, bytes, bytes, bytes]]:
        """(seq, hash, header, signature) of up to `limit` entries of a feed above `seq` whose own signatures
        are not checked yet, in seq order."""
        return self.db.execute("SELECT seq, hash, header, signature FROM entries WHERE author = ? AND seq > ? "
                               "AND signature_state = 0 ORDER BY seq LIMIT ?", (author, seq, limit)).fetchall()

    def signatures_checked(self, author: bytes, good: list[tuple[bytes, bytes]], bad: list[tuple[bytes, bytes]],
                           done: bool) -> None:
        """Record checked signatures, each named by (entry hash, signature) so that a row deleted and stored
        again meanwhile keeps its own state; `done`: the feed was looked through, so unless an entry came in
        unchecked meanwhile it holds none any more."""
        with self._write():
            self.db.executemany("UPDATE entries SET signature_state = 1 WHERE hash = ? AND signature = ? "
                                "AND signature_state = 0", good)
            self.db.executemany("UPDATE entries SET signature_state = 2 WHERE hash = ? AND signature = ?", bad)
            if done:
                self.db.execute("UPDATE feeds SET unchecked = 0 WHERE author = ? AND NOT EXISTS "
                                "(SELECT 1 FROM entries WHERE author = ? AND signature_state = 0)", (author, author))
        if bad:
            self.missing_changed = True  # fetched again from peers (p2pnode/repair.py)

    def missing_payloads(self, limit: int) -> list[tuple[bytes, int]]:
        """(feed, seq) of entries held without their payload that were not retracted (received without it,
        or dropped as damaged), or with a bad signature: what the node asks peers for. Oldest first."""
        return self.db.execute("SELECT author, seq FROM entries WHERE payload IS NULL AND retracted = 0 "
                               "OR signature_state = 2 ORDER BY id LIMIT ?", (limit,)).fetchall()

    def feed(self, author: bytes, limit: int | None = None, before_seq: int | None = None) -> list[StoredEntry]:
        """A feed's entries, newest first; with `before_seq`, only those below that seq (keyset paging)."""
        return self._rows(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE author = ? AND seq < ? "
                          "ORDER BY seq DESC LIMIT ?",
                          (author, MAX_SEQ + 1 if before_seq is None else before_seq, -1 if limit is None else limit))

    def timeline(self, limit: int | None = None, before: tuple[int, int] | None = None,
                 hidden: Collection[bytes] = ()) -> list[StoredEntry]:
        """The owner's entries and those of the feeds the owner follows, newest first, blocked feeds and
        `hidden` ones (muted) left out.
        `before` (timestamp, row id) pages by keyset on the timestamp index: only entries older than it.
        `+author` keeps SQLite on the timestamp index (newest first, stop at the limit) instead of fetching
        every entry of every followed feed and sorting them (100,000 entries: a web page in 4-10 ms, not 89 ms)."""
        ts, row_id = before if before is not None else (MAX_TIMESTAMP + 1, 0)
        hide = list(hidden)
        return self._rows(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE +author IN ({_TIMELINE_AUTHORS}) "
            f"AND +author NOT IN ({', '.join('?' * len(hide))}) "
            "AND timestamp <= ? AND (timestamp < ? OR id < ?) "
            "ORDER BY timestamp DESC, id DESC LIMIT ?",
            (self.owner, self.owner, self.owner, *hide, ts, ts, row_id, -1 if limit is None else limit))

    def timeline_size(self, hidden: Collection[bytes] = ()) -> int:
        hide = list(hidden)
        return self.db.execute(
            f"SELECT count(*) FROM entries WHERE author IN ({_TIMELINE_AUTHORS}) "
            f"AND author NOT IN ({', '.join('?' * len(hide))})",
            (self.owner, self.owner, self.owner, *hide)).fetchone()[0]

    def feed_size(self, author: bytes) -> int:
        """How many entries of a feed this store holds (a partial feed holds fewer than its head seq)."""
        return self.db.execute("SELECT count(*) FROM entries WHERE author = ?", (author,)).fetchone()[0]

    def timeline_after(self, row_id: int, limit: int) -> list[StoredEntry]:
        """Timeline entries stored after row id `row_id`, in the order they were stored (live updates)."""
        return self._rows(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE id > ? AND +author IN ({_TIMELINE_AUTHORS}) "
            "ORDER BY id LIMIT ?", (row_id, self.owner, self.owner, self.owner, limit))

    def feed_after(self, author: bytes, row_id: int, limit: int) -> list[StoredEntry]:
        """One feed's entries stored after row id `row_id`, in the order they were stored."""
        return self._rows(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE id > ? AND author = ? ORDER BY id LIMIT ?",
                          (row_id, author, limit))

    def entry_by_hash(self, entry_hash_: bytes) -> StoredEntry | None:
        rows = self._rows(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE hash = ?", (entry_hash_,))
        return rows[0] if rows else None

    def last_row_id(self) -> int:
        return self.db.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0]

    def follows(self, author: bytes | None = None) -> set[bytes]:
        who = self.owner if author is None else author
        return {r[0] for r in self.db.execute(
            "SELECT target FROM contacts WHERE author = ? AND following = 1", (who,))}

    def blocked(self) -> set[bytes]:
        return {r[0] for r in self.db.execute(
            "SELECT target FROM contacts WHERE author = ? AND blocking = 1", (self.owner,))}

    def wanted_feeds(self, hops: int) -> set[bytes]:
        """The owner's feed, the feeds it follows and, up to `hops`, the feeds those follow; minus blocks."""
        blocked = self.blocked()
        wanted = {self.owner}
        frontier = {self.owner}
        for _ in range(hops):
            next_frontier: set[bytes] = set()
            for author in frontier:
                next_frontier |= self.follows(author) - wanted - blocked
            wanted |= next_frontier
            frontier = next_frontier
        return wanted - blocked - (set(self.forked_feeds()) - {self.owner})

    def interest(self, hops: int) -> tuple[dict[bytes, int], set[bytes], set[bytes]]:
        """(wanted feeds -> their hops from the owner, blocked feeds, forked feeds other than the owner's):
        what a node replicates."""
        blocked = self.blocked()
        forked = set(self.forked_feeds()) - {self.owner}
        depth = {self.owner: 0}
        frontier = {self.owner}
        for hop in range(1, hops + 1):
            next_frontier: set[bytes] = set()
            for author in frontier:
                next_frontier |= self.follows(author) - depth.keys() - blocked
            depth.update(dict.fromkeys(next_frontier, hop))
            frontier = next_frontier
        return {f: d for f, d in depth.items() if f not in blocked and f not in forked}, blocked, forked

    def profile_name(self, author: bytes) -> str | None:
        # a store written before retractions cleared profiles may still hold a retracted one: not shown
        row = self.db.execute("SELECT name FROM profiles p WHERE author = ? AND NOT EXISTS (SELECT 1 FROM entries e "
                              "WHERE e.author = p.author AND e.seq = p.seq AND e.retracted = 1)", (author,)).fetchone()
        return row[0] if row else None

    def profile(self, author: bytes) -> tuple[str, str | None] | None:
        """(name, about) from a feed's latest profile entry, or None."""
        row = self.db.execute("SELECT name, about FROM profiles WHERE author = ?", (author,)).fetchone()
        return (row[0], row[1]) if row else None

    def profile_names(self, authors: Iterable[bytes]) -> dict[bytes, str]:
        """Display names of many feeds in one query (those without a profile are left out)."""
        wanted = list(set(authors))
        names: dict[bytes, str] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            names.update(self.db.execute(f"SELECT author, name FROM profiles WHERE author IN "
                                         f"({', '.join('?' * len(chunk))})", chunk))
        return names

    def forked_feeds(self) -> list[bytes]:
        return [r[0] for r in self.db.execute("SELECT author FROM feeds WHERE forked = 1 ORDER BY author")]

    def fork_proofs(self, author: bytes) -> list[tuple[int, bytes, bytes]]:
        return list(self.db.execute("SELECT seq, header_a, header_b FROM forks WHERE author = ?", (author,)))

    def counts(self) -> dict[str, int]:
        feeds, entries = self.db.execute("SELECT (SELECT count(*) FROM feeds), "
                                         "(SELECT count(*) FROM entries)").fetchone()
        return {"feeds": feeds, "entries": entries}

    # ------------------------------------------------------------ peer book
    # Bookkeeping of addresses is best effort: on a full disk it is skipped (and `full_error` says why),
    # so that the node keeps its connections and keeps dialling.

    def _peer_write(self, sql: str, params: Sequence[Any]) -> int:
        try:
            with self._write():
                return self.db.execute(sql, params).rowcount
        except sqlite3.OperationalError as exc:
            if not is_disk_full(exc):
                raise
            self.full_error = exc
            return 0

    def add_peer(self, address: str, key: bytes, source: str) -> bool:
        """Remember an address (seed, peer exchange, hello); True when it was new. Seeds stay seeds."""
        return self._peer_write(
            "INSERT INTO peers(address, key, source, added_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(address) DO UPDATE SET source = 'seed' WHERE excluded.source = 'seed'",
            (address, key, source, _now_ms())) > 0

    def add_learned_peers(self, peers: list[tuple[str, bytes]], source: str,
                          max_learned: int) -> tuple[list[str], list[str]]:
        """Remember addresses learned from a peer in one transaction, keeping at most `max_learned` learned
        (non-seed) addresses: when full, never-connected learned addresses (most failed, then oldest) make
        room; addresses this node has connected to are never displaced. Returns (added, displaced)."""
        if not peers:
            return [], []
        with self._write():
            marks = ",".join("?" * len(peers))
            known = {r[0] for r in self.db.execute(f"SELECT address FROM peers WHERE address IN ({marks})",
                                                   [address for address, _ in peers])}
            new = [(address, key) for address, key in dict(peers).items() if address not in known]
            count = self.db.execute("SELECT count(*) FROM peers WHERE source != 'seed'").fetchone()[0]
            excess = count + len(new) - max_learned
            displaced: list[str] = []
            if excess > 0:
                displaced = [r[0] for r in self.db.execute(
                    "SELECT address FROM peers WHERE source != 'seed' AND last_seen IS NULL "
                    "ORDER BY failures DESC, added_at LIMIT ?", (excess,))]
                self.db.executemany("DELETE FROM peers WHERE address = ?", [(a,) for a in displaced])
                new = new[: max(0, max_learned - (count - len(displaced)))]
            now = _now_ms()
            self.db.executemany("INSERT INTO peers(address, key, source, added_at) VALUES (?, ?, ?, ?)",
                                [(address, key, source, now) for address, key in new])
        return [address for address, _ in new], displaced

    def followed_among(self, authors: list[bytes]) -> set[bytes]:
        """Those of `authors` that a feed this store holds follows."""
        found: set[bytes] = set()
        for start in range(0, len(authors), 500):
            chunk = authors[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self.db.execute(
                f"SELECT DISTINCT target FROM contacts WHERE following AND target IN ({marks})", chunk))
        return found

    def untried_peers(self) -> list[str]:
        """Learned addresses this node has never connected to."""
        return [r[0] for r in self.db.execute(
            "SELECT address FROM peers WHERE source != 'seed' AND last_seen IS NULL")]

    def remove_peer(self, address: str) -> bool:
        """Forget an address (a seed included); True when it was known."""
        with self._write():
            return self.db.execute("DELETE FROM peers WHERE address = ?", (address,)).rowcount > 0

    def peer_connected(self, address: str) -> None:
        now = _now_ms()
        self._peer_write("UPDATE peers SET last_seen = ?, last_attempt = ?, problem_kind = NULL, problem = NULL, "
                         "problem_count = 0, problem_at = NULL, retry_at = 0 WHERE address = ?", (now, now, address))

    def clear_peer_problem(self, address: str) -> None:
        """Forget an address's last dial problem (`seeds add` of it again: the user says try it now)."""
        self._peer_write("UPDATE peers SET problem_kind = NULL, problem = NULL, problem_count = 0, problem_at = NULL, "
                         "retry_at = 0 WHERE address = ?", (address,))

    def peer_problem(self, address: str, kind: str, text: str, count: int, at_ms: int, retry_at_ms: int) -> None:
        """Remember what the last failed dial of `address` found, and when it may be dialled again."""
        self._peer_write("UPDATE peers SET problem_kind = ?, problem = ?, problem_count = ?, problem_at = ?, "
                         "retry_at = ? WHERE address = ?", (kind, text, count, at_ms, retry_at_ms, address))

    def peer_problems(self) -> list[tuple[str, str, str, int, int, int]]:
        """(address, kind, problem, count, at ms, retry_at ms) of every address whose last dial failed."""
        return list(self.db.execute("SELECT address, problem_kind, problem, problem_count, problem_at, retry_at "
                                    "FROM peers WHERE problem_kind IS NOT NULL ORDER BY problem_at"))

    def peer_attempted(self, address: str, next_attempt_ms: int, failed: bool) -> None:
        self._peer_write("UPDATE peers SET last_attempt = ?, next_attempt = ?, "
                         "failures = CASE WHEN ? THEN failures + 1 ELSE 0 END WHERE address = ?",
                         (_now_ms(), next_attempt_ms, failed, address))

    def peer_failures(self, address: str) -> int:
        row = self.db.execute("SELECT failures FROM peers WHERE address = ?", (address,)).fetchone()
        return row[0] if row else 0

    def dial_candidates(self, limit: int) -> list[tuple[str, bytes, str]]:
        """Known addresses (address, key, source) in the order to try them: least-failed first, then seeds,
        then recently seen."""
        return list(self.db.execute(
            "SELECT address, key, source FROM peers "
            "ORDER BY failures, (source = 'seed') DESC, coalesce(last_seen, 0) DESC LIMIT ?", (limit,)))

    def working_peers(self, limit: int) -> list[str]:
        """Addresses this node has connected to itself, most recent first: the only ones it shares."""
        return [r[0] for r in self.db.execute(
            "SELECT address FROM peers WHERE last_seen IS NOT NULL ORDER BY last_seen DESC LIMIT ?", (limit,))]

    def peer_book(self) -> list[dict[str, Any]]:
        columns = ("address", "key", "source", "added_at", "last_seen", "last_attempt", "next_attempt", "failures",
                   "problem_kind", "problem", "retry_at")
        return [dict(zip(columns, row, strict=True)) for row in self.db.execute(
            f"SELECT {', '.join(columns)} FROM peers ORDER BY coalesce(last_seen, 0) DESC, address")]

    def forget_peers(self, max_failures: int, keep: int) -> int:
        """Forget learned addresses that failed too often, and the oldest beyond `keep`; seeds stay."""
        gone = self._peer_write("DELETE FROM peers WHERE source != 'seed' AND failures >= ?", (max_failures,))
        gone += self._peer_write(
            "DELETE FROM peers WHERE source != 'seed' AND address NOT IN (SELECT address FROM peers "
            "ORDER BY (source = 'seed') DESC, coalesce(last_seen, 0) DESC, added_at DESC LIMIT ?)", (keep,))
        return gone

    def authors_since(self, row_id: int) -> tuple[set[bytes], int]:
        """Feeds that gained entries after row id `row_id`, and the last row id seen (one query, so a commit
        by another process can never fall between the two)."""
        rows = self.db.execute("SELECT author, max(id) FROM entries WHERE id > ? GROUP BY author", (row_id,)).fetchall()
        return {author for author, _ in rows}, max((last for _, last in rows), default=row_id)

    # ------------------------------------------------------------ check

    def drop_damaged_payloads(self) -> list[Header]:
        """Check every stored payload against its header; drop those that do not match (they then count as
        missing, and a running node fetches them again from its peers). The headers of the dropped ones."""
        damaged: list[tuple[int, Header]] = []
        last = 0
        while True:
            rows = self.db.execute("SELECT id, header, payload FROM entries WHERE id > ? AND payload IS NOT NULL "
                                   "ORDER BY id LIMIT 1000", (last,)).fetchall()
            if not rows:
                break
            last = rows[-1][0]
            for row_id, header, payload in rows:
                if not payload_matches(header, payload):
                    try:
                        damaged.append((row_id, decode_header(header)))
                    except ProtocolError:
                        pass  # a damaged header: check() reports it; its payload cannot be judged
        if damaged:
            self.payloads_damaged(damaged)
        return [header for _, header in damaged]

    def payload_held(self, author: bytes, seq: int) -> bool:
        row = self.db.execute("SELECT payload IS NOT NULL OR retracted FROM entries WHERE author = ? AND seq = ?",
                              (author, seq)).fetchone()
        return bool(row and row[0])

    def check(self, progress: Callable[[int, int], None] | None = None) -> list[Problem]:
        """Re-verify every stored header, signature, chain link and payload hash, and list forked feeds.
        `progress(done, total)` is called every CHECK_PROGRESS_EVERY entries and at the end."""
        problems: list[Problem] = []
        total = self.db.execute("SELECT count(*) FROM entries").fetchone()[0]
        done = [0]

        def step() -> None:
            done[0] += 1
            if progress is not None and done[0] % CHECK_PROGRESS_EVERY == 0:
                progress(done[0], total)

        for (author,) in self.db.execute("SELECT DISTINCT author FROM entries ORDER BY author").fetchall():
            problems.extend(self._check_feed(author, step))
        if progress is not None:
            progress(done[0], total)
        for row in self.db.execute("SELECT author, seq, header_a, signature_a, header_b, signature_b "
                                   "FROM forks").fetchall():
            problems.append(_check_fork(self.owner, *row))
        for (author, head_seq) in self.db.execute("SELECT author, head_seq FROM feeds").fetchall():
            actual = self.db.execute("SELECT max(seq) FROM entries WHERE author = ?", (author,)).fetchone()[0]
            if actual != head_seq:
                problems.append(Problem(author, head_seq, f"feed head says seq {head_seq}, entries end at {actual}"))
        return problems

    def _check_feed(self, author: bytes, step: Callable[[], None]) -> Iterator[Problem]:
        previous: FeedHead | None = None
        low_row = self.db.execute("SELECT low_seq FROM feeds WHERE author = ?", (author,)).fetchone()
        low = low_row[0] if low_row else 1
        for seq, stored_hash, header, signature, payload in self.db.execute(
                "SELECT seq, hash, header, signature, payload FROM entries WHERE author = ? ORDER BY seq",
                (author,)).fetchall():
            step()
            try:
                entry = verify_entry(header, signature, None)
                if entry.author != author or entry.seq != seq:
                    raise InvalidEntry("header does not match the row it is stored in")
                if entry.hash != stored_hash:
                    raise InvalidEntry("stored hash does not match the header")
                if not (previous is None and seq == low):  # a partial feed's first held entry links to nothing
                    check_link(entry, previous)
                if payload is not None:
                    if len(payload) != entry.header.payload_size or sha256(payload) != entry.header.payload_hash:
                        raise InvalidEntry("payload does not match the header's payload hash and size: entry "
                                           f"{entry_ref(entry.hash)} is damaged on disk")
                    decode_payload(payload)
            except ProtocolError as exc:
                yield Problem(author, seq, exc.message)
                try:
                    header_fields = decode_header(header)
                    previous = FeedHead(author, header_fields.seq, entry_hash(header))
                except ProtocolError:
                    previous = FeedHead(author, seq, stored_hash)
                continue
            previous = FeedHead(author, entry.seq, entry.hash)


def _check_fork(owner: bytes, author: bytes, seq: int, header_a: bytes, signature_a: bytes, header_b: bytes,
                signature_b: bytes) -> Problem:
    """A stored fork proof: evidence about another author if both headers verify and contradict each other
    (same seq, different entries; or entry seq+1 whose prev is not entry seq), else damage to this store.
    A fork of the owner's own feed is reported as damage too: this node can no longer post."""
    text = f"forked: the author also signed {entry_ref(entry_hash(header_b))}, which contradicts this entry"
    try:
        a = verify_entry(header_a, signature_a, None)
        b = verify_entry(header_b, signature_b, None)
    except ProtocolError as exc:
        return Problem(author, seq, f"fork proof does not verify: {exc.message}")
    same_seq = b.seq == seq and b.hash != a.hash
    by_link = b.seq == seq + 1 and b.header.prev != a.hash
    if a.author != author or b.author != author or a.seq != seq or not (same_seq or by_link):
        return Problem(author, seq, "fork proof does not show two contradicting entries of this feed")
    return Problem(author, seq, text, "corrupt" if author == owner else "evidence")


_ENTRY_COLUMNS = "id, header, signature, payload, hash, retracted"
# the owner, and the feeds the owner follows, less those it blocks (three parameters: the owner each time)
_TIMELINE_AUTHORS = ("SELECT ? UNION SELECT target FROM contacts WHERE author = ? AND following = 1 "
                     "EXCEPT SELECT target FROM contacts WHERE author = ? AND blocking = 1")


def _stored(row: tuple[Any, ...]) -> StoredEntry:
    row_id, header, signature, payload, hash_, retracted = row
    # already verified on the way in; decode the header again only to carry its fields, and check the payload
    # against it: what the disk returns is not trusted to be what was stored
    damaged = payload is not None and not payload_matches(header, payload)
    entry = Entry(header, signature, None if damaged else payload, decode_header(header), hash_)
    return StoredEntry(row_id, entry, bool(retracted), damaged)


def _signed(entry: Entry, unchecked: set[bytes] | frozenset[bytes]) -> bool:
    """Whether an entry's own signature is good (checked now if it was not when the entry came in): a fork
    proof keeps two signed headers, each of which `check` verifies again."""
    return entry.hash not in unchecked or signature_ok(entry.header_bytes, entry.signature)


def _short(author: bytes) -> str:
    return feed_id(author)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception: every write takes the lock up front."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self._rollback()
            return
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error:
            # a commit that failed (a full disk) may leave the transaction open: end it, or every later
            # write of this connection would fail with "cannot start a transaction within a transaction"
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite rolled it back itself
