# Mutes: a private, local-only hide. `<home>/muted` holds one feed id per line ('#' starts a comment);
# nothing is published and replication is unchanged: a muted feed is still fetched, stored and served
# (when followed), only left out of this node's timeline and threads. Written through a temporary file
# and a rename, so a reader never sees half a file (spec/decisions.md, "The home directory").
from __future__ import annotations

import os
from pathlib import Path

from protocol.errors import InvalidId
from protocol.ids import feed_id, parse_feed_id

MUTED_FILE = "muted"


def muted(home: Path) -> list[bytes]:
    """The muted feeds, in the file's order; lines that are not feed ids are skipped."""
    try:
        text = (home / MUTED_FILE).read_text(errors="replace")
    except FileNotFoundError:
        return []
    keys: list[bytes] = []
    for line in text.splitlines():
        word = line.split("#", 1)[0].strip()
        if not word:
            continue
        try:
            key = parse_feed_id(word)
        except InvalidId:
            continue
        if key not in keys:
            keys.append(key)
    return keys


def set_muted(home: Path, key: bytes, mute: bool) -> bool:
    """Mute or unmute a feed; False when it already was so (nothing written)."""
    keys = muted(home)
    if (key in keys) == mute:
        return False
    keys = [*keys, key] if mute else [k for k in keys if k != key]
    path = home / MUTED_FILE
    tmp = home / (MUTED_FILE + ".tmp")
    lines = ["# feeds muted on this node only (p2pnode mute); one id per line"] + [feed_id(k) for k in keys]
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return True
