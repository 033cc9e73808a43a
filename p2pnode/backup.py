# Backing up and restoring an identity: the 32-byte Ed25519 seed as 24 words (BIP-39 English word list,
# with its checksum: the seed is the entropy, no passphrase; spec/decisions.md, "Identity backup"), printed
# or written to a file of mode 0600, and read back by `p2pnode init --import`.
from __future__ import annotations

import os
from pathlib import Path

from mnemonic import Mnemonic

from protocol.ids import feed_id

from .home import SECRET_FILE, STORE_FILE, create_identity, load_identity
from .local import UserError

WORDS = 24
_CODEC = Mnemonic("english")
WARNING = ("These words are your identity: anyone who has them can post as you, for good, and a second "
           "device posting with them forks your feed. Keep them offline; never paste them into a website.")


def seed_words(home: Path) -> tuple[str, str]:
    """(feed id, the 24 words) of a home's identity."""
    key = load_identity(home)
    return feed_id(bytes(key.verify_key)), _CODEC.to_mnemonic(bytes(key))


def write_words(path: Path, words: str) -> None:
    """Write the words to a new file readable by its owner only; never overwrite a file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UserError(f"{path} already exists; choose a new file name") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(words + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def seed_from_words(text: str) -> bytes:
    """The seed of a line of backup words (case and extra white space do not matter; '#' starts a comment)."""
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    words = " ".join(" ".join(lines).lower().split()).split()
    if len(words) != WORDS:
        raise UserError(f"a backup is {WORDS} words; got {len(words)}")
    known = set(_CODEC.wordlist)
    for number, word in enumerate(words, start=1):
        if word not in known:
            raise UserError(f"word {number} ({word[:20]!r}) is not a backup word: check its spelling")
    phrase = " ".join(words)
    if not _CODEC.check(phrase):
        raise UserError("the words' checksum does not match: a word is wrong or two are swapped")
    return bytes(_CODEC.to_entropy(phrase))


def import_identity(home: Path, seed: bytes) -> tuple[str, bool]:
    """Create the home's identity from a restored seed; (feed id, whether the home already has a store).
    No store is created: `p2pnode run` must first fetch the feed back from peers, or the next post would
    start the feed again at seq 1 and fork it (spec/decisions.md)."""
    if (home / SECRET_FILE).exists():
        load_identity(home)  # a clear error if it is damaged or too open, else the refusal below
    key = create_identity(home, seed)
    return feed_id(bytes(key.verify_key)), (home / STORE_FILE).exists()
