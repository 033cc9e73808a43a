# What the CLI does to a home without the network: open the identity and the store, publish entries,
# and turn stored entries into plain views (dicts) that the CLI prints as text or JSON.
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.signing

from protocol.errors import InvalidEntry, InvalidId, ProtocolError
from protocol.ids import entry_ref, feed_id
from protocol.log import Header

from .diskspace import home_problem
from .home import RUNTIME_FILE, SECRET_FILE, STORE_FILE, HomeError, create_identity, load_identity, node_running
from .store import Store, StoredEntry, StoreError


class UserError(Exception):
    """A request that cannot be carried out as asked, worded for the user (one line)."""


@dataclass
class Local:
    home: Path
    key: nacl.signing.SigningKey
    store: Store

    @property
    def owner(self) -> bytes:
        return bytes(self.key.verify_key)

    @property
    def id(self) -> str:
        return feed_id(self.owner)

    def publish(self, payload: dict[str, Any]) -> StoredEntry:
        entry = self.store.publish(self.key, payload)
        stored = self.store.entry_by_hash(entry.hash)
        assert stored is not None
        return stored

    def set_contact(self, target: bytes, kind: str) -> StoredEntry | None:
        """follow/unfollow/block/unblock; None (and nothing written) when it is already so."""
        if target == self.owner:
            raise UserError(f"cannot {kind} your own feed")
        already = {
            "follow": target in self.store.follows(),
            "unfollow": target not in self.store.follows(),
            "block": target in self.store.blocked(),
            "unblock": target not in self.store.blocked(),
        }[kind]
        if already:
            return None
        return self.publish({"type": kind, "feed": target})

    def reply(self, parent: bytes, text: str) -> StoredEntry:
        if self.store.entry_by_hash(parent) is None:
            raise UserError(f"no entry {entry_ref(parent)} in this store")
        return self.publish({"type": "post", "text": text, "reply_to": parent})

    def set_profile(self, name: str, about: str | None = None) -> StoredEntry:
        payload = {"type": "profile", "name": name}
        if about is not None:
            payload["about"] = about
        return self.publish(payload)

    def retract(self, target: bytes) -> StoredEntry:
        stored = self.store.entry_by_hash(target)
        if stored is None:
            raise UserError(f"no entry {entry_ref(target)} in this store")
        if stored.entry.author != self.owner:
            raise UserError(f"entry {entry_ref(target)} is not yours: only its author can retract it")
        if stored.retracted:
            raise UserError(f"entry {entry_ref(target)} is already retracted")
        return self.publish({"type": "retract", "entry": target})


def init_home(home: Path) -> str:
    if (home / STORE_FILE).exists() and not (home / SECRET_FILE).exists():
        raise UserError(f"{home} holds a store but no identity: move {home / STORE_FILE} away first, "
                        "or restore its secret file")
    key = create_identity(home)
    Store(home / STORE_FILE, bytes(key.verify_key)).close()
    return feed_id(bytes(key.verify_key))


def identity_id(home: Path) -> str:
    """The feed id of a home's identity."""
    return feed_id(bytes(load_identity(home).verify_key))


@contextmanager
def open_home(home: Path, create_store: bool = False) -> Iterator[Local]:
    """The identity and store of a home. A missing store is created only when asked (`run`, which can
    fetch the owner's feed back from peers): a post into a new empty store would start the feed again at
    seq 1 and fork it for good."""
    key = load_identity(home)
    if not create_store and not (home / STORE_FILE).exists():
        raise UserError(f"{home} has an identity but no store ({STORE_FILE}): run 'p2pnode run' to fetch your "
                        "feed back from your peers before anything else")
    store = Store(home / STORE_FILE, bytes(key.verify_key))
    try:
        yield Local(home, key, store)
    finally:
        store.close()


def runtime_info(home: Path) -> dict[str, Any] | None:
    """What a running node wrote about itself (its address), or None when no node runs here."""
    if not node_running(home):  # a node.json left by a killed node says nothing
        return None
    try:
        info = json.loads((home / RUNTIME_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def damage_note(item: dict[str, Any]) -> str:
    """The line that reports an entry whose payload was found damaged on disk."""
    return (f"entry {item['hash']} is damaged on disk: its payload does not match its hash, so it is not shown; "
            "a running node fetches it again from peers ('p2pnode check --repair' checks every payload)")


def repair_payloads(node: Local, wait: float) -> tuple[list[Header], list[Header]]:
    """Drop every payload that does not match its header; when a node runs on this home, wait up to `wait`
    seconds for it to fetch them again from its peers. (repaired, still missing) headers."""
    dropped = node.store.drop_damaged_payloads()
    missing = list(dropped)
    if missing and runtime_info(node.home):
        deadline = time.monotonic() + wait
        while missing and time.monotonic() < deadline:
            time.sleep(0.2)
            missing = [h for h in missing if not node.store.payload_held(h.author, h.seq)]
    return [h for h in dropped if h not in missing], missing


def explain(exc: BaseException, home: Path | None = None, command: str | None = None) -> str | None:
    """The one line a user is shown for an error that is theirs or the input's (the CLI prints it, the web
    app shows it on the page); None for anything else, which is a bug. With the `home`, a failure to use it
    names its cause (a full disk, a read-only filesystem, missing permissions: p2pnode/diskspace.py)."""
    cause = home_problem(exc, home) if home is not None else None
    if cause is not None:
        return cause
    if isinstance(exc, HomeError | StoreError | UserError):
        return str(exc)
    if isinstance(exc, InvalidId):
        return exc.message
    if isinstance(exc, ProtocolError):
        return exc.reason
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
    if isinstance(exc, sqlite3.Error):
        if command == "check":  # telling the user to run check would send them round in a circle
            return (f"the store cannot be read ({exc}): it is damaged; restore it from a backup, or move it away "
                    "and run 'p2pnode run' to fetch your feed back from your peers")
        return f"the store could not be read or written ({exc}); if it is damaged, 'p2pnode check' tells more"
    return None


def check_text(text: str) -> str:
    if not text.strip():
        raise UserError("empty post: there is nothing to publish")
    return text


def view(stored: StoredEntry, store: Store | None = None) -> dict[str, Any]:
    """A stored entry as a flat dict: what `feed --json` and `timeline --json` print, one per line."""
    entry = stored.entry
    result: dict[str, Any] = {
        "author": feed_id(entry.author),
        "seq": entry.seq,
        "hash": entry_ref(entry.hash),
        "timestamp": entry.header.timestamp,
        "type": None,
    }
    if store is not None:
        name = store.profile_name(entry.author)
        if name is not None:
            result["author_name"] = name
    try:
        content = stored.content
    except InvalidEntry:  # cannot happen for a verified entry; shown rather than hidden
        content = None
    if content is None:
        result["retracted"] = stored.retracted
        result["payload_held"] = False
        if stored.damaged:
            result["damaged"] = True
        return result
    for key, value in content.items():
        if key == "feed":
            result[key] = feed_id(value)
        elif key in ("reply_to", "entry"):
            result[key] = entry_ref(value)
        elif isinstance(value, bytes):
            result[key] = value.hex()
        else:
            result[key] = value
    return result
