# Seeds a user manages (the <home>/seeds file: add, remove, list) and what the node learned about each address
# it dialled: a failed dial is classified by what was found there (nothing listening, no such host, a server
# that does not speak the handshake, a p2pnode node that does not hold the key we dialled), so the user reads
# the cause, and an address proven wrong is not dialled again for GIVE_UP_S, kept in the peer book so that a
# restarted node remembers it (spec/peers.md, "Dial failures").
from __future__ import annotations

import errno
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from protocol.errors import ProtocolError
from protocol.ids import Address, feed_id, parse_address
from protocol.invite import make_invite, parse_invite

from .connection import HandshakeFailed, TransportError
from .home import SEEDS_FILE
from .store import Store

# kinds of failure that prove the address wrong: dialling it again cannot help until the user fixes it
WRONG_KINDS = ("key-mismatch", "not-p2pnode")
# kinds that are probably wrong (a typo in a name, another network key), given up after this many in a row
DOUBTFUL_KINDS = ("no-such-host", "other-network")
DOUBTFUL_LIMIT = 3
GIVE_UP_S = 3600.0  # an address given up on is dialled again this long after its last failure
MAX_RECORDS = 2_000


class SeedError(Exception):
    """A seed the user gave that cannot be added or removed, worded for the user."""


@dataclass(frozen=True)
class DialFailure:
    kind: str  # refused | unreachable | no-such-host | timeout | not-p2pnode | other-network | key-mismatch | network
    text: str  # one line for the user, naming what was found


def classify(address: str, key: bytes, exc: BaseException, timeout: float) -> DialFailure:
    """Name what a failed dial of `address` (HOST:PORT/@ID, expecting `key`) found there."""
    where = address.rsplit("/", 1)[0]
    if isinstance(exc, socket.gaierror):
        return DialFailure("no-such-host", f"{where}: no such host ({exc.strerror or exc})")
    if isinstance(exc, HandshakeFailed):
        reason = exc.reason
        if exc.answered:
            return DialFailure("key-mismatch", f"key mismatch: {where} answers the handshake but does not hold the "
                                               f"key {feed_id(key)}; check the address")
        if reason.startswith("invalid:"):
            return DialFailure("not-p2pnode", f"{where} did not answer the handshake: not a p2pnode node?")
        if reason.startswith("timeout:"):
            return DialFailure("timeout", f"{where} accepted the connection but did not answer the handshake within "
                                          f"{timeout:g} s: not a p2pnode node, or overloaded?")
        if reason.startswith("closed:"):
            return DialFailure("other-network", f"{where} hung up at our first handshake message: a p2pnode node "
                                                "on another network key, or not a p2pnode node")
        return DialFailure("network", f"{where}: {reason}")
    if isinstance(exc, TransportError):
        return DialFailure("network", f"{where}: {exc.reason}")
    if isinstance(exc, trio.TooSlowError):
        return DialFailure("timeout", f"{where} did not accept a connection within {timeout:g} s")
    if isinstance(exc, ConnectionRefusedError):
        return DialFailure("refused", f"{where}: connection refused (no node listening there, or a firewall)")
    if isinstance(exc, OSError):
        # trio.open_tcp_stream raises a plain OSError caused by a group of the per-address errors
        cause = exc.__cause__
        if isinstance(cause, BaseExceptionGroup) and isinstance(cause.exceptions[0], OSError):
            exc = cause.exceptions[0]
        if isinstance(exc, ConnectionRefusedError):
            return DialFailure("refused", f"{where}: connection refused (no node listening there, or a firewall)")
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return DialFailure("unreachable", f"{where}: {exc.strerror}")
        return DialFailure("network", f"{where}: {exc.strerror or exc}")
    if isinstance(exc, ProtocolError):
        return DialFailure("network", f"{where}: {exc.reason}")
    return DialFailure("network", f"{where}: {exc}")


@dataclass
class _Record:
    failure: DialFailure
    count: int  # failures of this kind in a row
    at: float  # wall-clock time of the last one
    retry_at: float  # given up on until then (wall clock); 0 when it is dialled with the usual backoff

    @property
    def given_up(self) -> bool:
        return self.retry_at > 0


class DialProblems:
    """The last failure of each address dialled (this run's, and those loaded from the peer book), until it
    next connects; which ones are given up on, and until when."""

    def __init__(self) -> None:
        self._records: dict[str, _Record] = {}

    def load(self, rows: list[tuple[str, str, str, int, int, int]]) -> None:
        """The peer book's problems (Store.peer_problems: address, kind, text, count, at ms, retry_at ms)."""
        for address, kind, text, count, at_ms, retry_ms in rows:
            self._records[address] = _Record(DialFailure(kind, text), count, at_ms / 1000, retry_ms / 1000)

    def failed(self, address: str, failure: DialFailure, now: float | None = None) -> _Record:
        now = time.time() if now is None else now
        old = self._records.get(address)
        count = old.count + 1 if old is not None and old.failure.kind == failure.kind else 1
        given_up = failure.kind in WRONG_KINDS or (failure.kind in DOUBTFUL_KINDS and count >= DOUBTFUL_LIMIT)
        record = _Record(failure, count, now, now + GIVE_UP_S if given_up else 0.0)
        self._records.pop(address, None)
        self._records[address] = record
        while len(self._records) > MAX_RECORDS:  # the oldest first (dicts keep insertion order)
            del self._records[next(iter(self._records))]
        return record

    def connected(self, address: str) -> None:
        self._records.pop(address, None)

    def keep_stored(self, rows: list[tuple[str, str, str, int, int, int]], read_at: float) -> None:
        """Drop the records of addresses whose problem the peer book no longer holds (`seeds add` cleared it
        from another process), unless the record is newer than that read."""
        stored = {row[0] for row in rows}
        for address in [a for a, r in self._records.items() if a not in stored and r.at < read_at]:
            del self._records[address]

    def given_up(self, address: str, now: float | None = None) -> bool:
        """Whether `address` must not be dialled now (given up on, and its retry time not come)."""
        record = self._records.get(address)
        return record is not None and record.retry_at > (time.time() if now is None else now)

    def report(self) -> list[dict[str, Any]]:
        now = time.time()
        return [{"address": address, "kind": r.failure.kind, "problem": r.failure.text, "failures": r.count,
                 "at": int(r.at), "given_up": r.retry_at > now, "retry_at": int(r.retry_at) if r.retry_at else None}
                for address, r in self._records.items()]


# ------------------------------------------------------------ the seeds file


def seeds_path(home: Path) -> Path:
    return home / SEEDS_FILE


def parse_seed(text: str) -> Address:
    try:
        return parse_address(text.strip())
    except ProtocolError as exc:
        raise SeedError(f"{text!r} is not an address: {exc.message}") from None


def file_seeds(home: Path) -> list[str]:
    """The well-formed addresses in <home>/seeds, in file order (malformed lines are left to `run` to report)."""
    path = seeds_path(home)
    if not path.is_file():
        return []
    found = []
    for line in path.read_text(errors="replace").splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            found.append(str(parse_address(text)))
        except ProtocolError:
            continue
    return found


def add_seed(home: Path, text: str) -> bool:
    """Append an address to <home>/seeds; False when it is already there."""
    address = str(parse_seed(text))
    if address in file_seeds(home):
        return False
    path = seeds_path(home)
    existing = path.read_text(errors="replace") if path.is_file() else ""
    with open(path, "a") as handle:
        if existing and not existing.endswith("\n"):
            handle.write("\n")
        handle.write(address + "\n")
    return True


def remove_seed(home: Path, text: str) -> bool:
    """Remove every line of <home>/seeds that holds this address (comments on other lines stay)."""
    address = str(parse_seed(text))
    path = seeds_path(home)
    if not path.is_file():
        return False
    kept, removed = [], False
    for line in path.read_text(errors="replace").splitlines():
        body = line.split("#", 1)[0].strip()
        try:
            same = bool(body) and str(parse_address(body)) == address
        except ProtocolError:
            same = False
        if same:
            removed = True
        else:
            kept.append(line)
    if removed:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
    return removed


def seed_list(home: Path, book: list[dict[str, Any]], running: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every seed: the seeds file's and those in the peer book as `seed` (from --seed, the config file,
    `join`), with what the running node knows of each (connected, its last dial problem)."""
    in_file = file_seeds(home)
    rows = {row["address"]: row for row in book if row["source"] == "seed"}
    connected = {p.get("id") for p in (running or {}).get("peers", [])}
    problems = {p["address"]: p for p in (running or {}).get("dial_problems", []) if isinstance(p, dict)}
    if running is None:  # no node running: what the peer book kept of the last run's failed dials
        now_ms = time.time() * 1000
        problems = {row["address"]: {"problem": row["problem"], "given_up": (row.get("retry_at") or 0) > now_ms,
                                     "retry_at": (row.get("retry_at") or 0) // 1000 or None}
                    for row in rows.values() if row.get("problem")}
    result = []
    for address in dict.fromkeys([*in_file, *rows]):
        row = rows.get(address, {})
        ident = address.rsplit("/", 1)[1]
        item: dict[str, Any] = {"address": address, "in_seeds_file": address in in_file,
                                "connected": ident in connected, "last_seen": row.get("last_seen"),
                                "failures": row.get("failures", 0)}
        problem = problems.get(address)
        if problem is not None:
            item["problem"] = problem.get("problem")
            item["given_up"] = bool(problem.get("given_up"))
            item["retry_at"] = problem.get("retry_at")
        result.append(item)
    return result


def add(home: Path, store: Store, text: str) -> bool:
    """`seeds add`: into the seeds file and the peer book (a running node dials it within a second)."""
    address = parse_seed(text)
    if address.key == store.owner:
        raise SeedError(f"{address} is this node's own address")
    was_seed = any(row["address"] == str(address) and row["source"] == "seed" for row in store.peer_book())
    added = add_seed(home, str(address))
    store.add_peer(str(address), address.key, "seed")
    store.clear_peer_problem(str(address))  # added again: dialled again, even if it was given up on
    return added or not was_seed


def remove(home: Path, store: Store, text: str) -> None:
    """`seeds remove`: out of the seeds file and the peer book."""
    address = str(parse_seed(text))
    in_file = remove_seed(home, address)
    in_book = store.remove_peer(address)
    if not in_file and not in_book:
        raise SeedError(f"{address} is not a seed of this node")


def invite_line(key: bytes, running: dict[str, Any] | None, home: Path) -> str:
    """`invite`: the running node's addresses (public, LAN, onion: what it shows in status) as one line."""
    if not running:
        raise SeedError(f"no node is running on {home}: start 'p2pnode run' first; an invite names the addresses "
                        "where it can be reached")
    texts = running.get("addresses") or [running.get("address")]
    addresses = []
    for text in texts:
        try:
            addresses.append(parse_address(text))
        except (ProtocolError, TypeError):
            continue
    if not addresses:
        raise SeedError("the running node has no address to put in an invite")
    return make_invite(key, addresses)


def join(home: Path, store: Store, line: str) -> tuple[bytes, int]:
    """`join LINE`: every address of the invite becomes a seed; returns the inviter's key and how many were new."""
    try:
        key, addresses = parse_invite(line)
    except ProtocolError as exc:
        raise SeedError(exc.message) from None
    if key == store.owner:
        raise SeedError("this is your own invite: give it to a friend")
    return key, sum(add(home, store, str(address)) for address in addresses)
