# Helpers for the web app's tests: a real `p2pnode run` serving the app on a free loopback port, an HTTP
# client that holds the owner's cookie, and foreign feeds written straight into the node's store (the way
# a peer's entries land there), with whatever hostile text a test wants.
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import nacl.signing
from conftest import run_cli
from nodeproc import NodeProcess, init_home, wait_for

from p2pnode.home import RUNTIME_FILE, STORE_FILE
from p2pnode.store import Store
from protocol.ids import feed_id, parse_feed_id
from protocol.log import FeedHead, create_entry

WAIT_S = 20.0
CSRF_RE = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


class WebNode:
    """A node process with its web app; `.client` is an httpx client already holding the cookie."""

    def __init__(self, home: Path, *args: str) -> None:
        if not home.exists():
            self.id = init_home(home)
        else:
            self.id = json.loads(run_cli(home, "whoami", "--json").stdout)["id"]
        self.home = home
        self.node = NodeProcess(home, "--web", "127.0.0.1:0", *args)
        wait_for(lambda: "web" in self.runtime(), WAIT_S, "node.json to name the web app")
        self.base = self.runtime()["web"].rstrip("/")
        self.port = int(self.base.rsplit(":", 1)[1])
        result = run_cli(home, "web")
        assert result.returncode == 0, result.stderr
        self.url = result.stdout.strip()
        self.token = self.url.split("token=", 1)[1]
        self.client = httpx.Client(base_url=self.base, timeout=WAIT_S)
        response = self.client.get(self.url, follow_redirects=True)
        assert response.status_code == 200, response.text
        self.csrf = CSRF_RE.search(response.text).group(1)

    def runtime(self) -> dict[str, Any]:
        try:
            return json.loads((self.home / RUNTIME_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def form(self, path: str, **fields: str) -> httpx.Response:
        """A same-origin form POST, as the app's own pages send it."""
        data = {"csrf": self.csrf, **fields}
        return self.client.post(path, data=data, headers={"origin": self.base})

    def stop(self) -> int:
        self.client.close()
        return self.node.stop()


class ForeignFeed:
    """Another author's feed, signed here and ingested into a home's store."""

    def __init__(self, seed: bytes) -> None:
        self.key = nacl.signing.SigningKey(seed)
        self.author = bytes(self.key.verify_key)
        self.id = feed_id(self.author)
        self.head: FeedHead | None = None
        self.timestamp = 1_700_000_000_000

    def entries(self, payloads: list[dict[str, Any]]) -> list[tuple[bytes, bytes, bytes | None]]:
        items = []
        for payload in payloads:
            self.timestamp += 1000
            entry = create_entry(self.key, self.head, payload, self.timestamp)
            self.head = FeedHead(self.author, entry.seq, entry.hash)
            items.append((entry.header_bytes, entry.signature, entry.payload))
        return items

    def write(self, home: Path, owner_id: str, payloads: list[dict[str, Any]]) -> list[bytes]:
        """Store entries of this feed in `home` (another connection, as a peer's batch would arrive)."""
        items = self.entries(payloads)
        with Store(home / STORE_FILE, parse_feed_id(owner_id)) as store:
            result = store.ingest(items)
        assert result.error is None, result.error
        return [e.hash for e in result.stored]
