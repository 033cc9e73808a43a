# The node's home directory: where it lives on disk, and the identity (secret key) file in it.
# Layout (spec/decisions.md): secret (mode 0600), store.sqlite3, seeds, node.json (while running).
from __future__ import annotations

import fcntl
import json
import os
import stat
import sys
from pathlib import Path

import nacl.signing

from protocol.ids import feed_id

SECRET_FILE = "secret"
STORE_FILE = "store.sqlite3"
SEEDS_FILE = "seeds"
RUNTIME_FILE = "node.json"
ONION_KEY_FILE = "onion_key"
LOCK_FILE = "run.lock"  # held (flock) by the one `run` of this home for as long as it lives


class HomeError(Exception):
    """A problem with the home directory or the key file, worded for the user."""


def default_home() -> Path:
    """The platform's user data directory for p2pnode."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "p2pnode"
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / "p2pnode"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "p2pnode"


def create_identity(home: Path, seed: bytes | None = None) -> nacl.signing.SigningKey:
    """Create the key pair and the secret file (mode 0600). Refuses to overwrite an existing identity."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / SECRET_FILE
    if path.exists():
        raise HomeError(f"{home} already has an identity ({feed_id_of_file(path)}); refusing to overwrite it")
    key = nacl.signing.SigningKey(seed) if seed is not None else nacl.signing.SigningKey.generate()
    document = {"type": "ed25519", "seed": bytes(key).hex(), "id": feed_id(bytes(key.verify_key))}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise HomeError(f"{home} already has an identity; refusing to overwrite it") from None
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        path.unlink(missing_ok=True)  # a half-written key (a full disk) must not pass for an identity
        raise
    return key


def feed_id_of_file(path: Path) -> str:
    try:
        return json.loads(path.read_text())["id"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable"


def load_identity(home: Path) -> nacl.signing.SigningKey:
    """Load the secret key; refuses a file that group or others can read, or one that does not parse."""
    path = home / SECRET_FILE
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise HomeError(f"no identity in {home}: run 'p2pnode init' first") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise HomeError(f"secret key file {path} is accessible by group or others "
                        f"(mode {stat.S_IMODE(mode):o}); run 'chmod 600 {path}'")
    try:
        document = json.loads(path.read_text())
        seed = bytes.fromhex(document["seed"])
        if document.get("type") != "ed25519" or len(seed) != 32:
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise HomeError(f"secret key file {path} is damaged or not a p2pnode key file") from None
    return nacl.signing.SigningKey(seed)


def node_running(home: Path) -> bool:
    """Whether a `run` holds this home's lock. The lock alone says so: the kernel drops it when the process
    dies, whereas a pid left in node.json may belong to another process by now (a container's new pid 1...)."""
    try:
        handle = open(home / LOCK_FILE, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False
