# Web app benchmark (issue 12): a store with 100,000 entries of 200 followed feeds, a real `p2pnode run`
# serving the web app, and timed GETs of the timeline: its first page, a deep page (keyset cursor near the
# oldest entries), a feed page and the network page. Prints p50/p95 of the server's own time (the
# Server-Timing header: request in to first byte out), time to first byte and full read at the client,
# and the ratio of the timeline's p50 server time to the 50 ms target.
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import nacl.signing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pnode.home import RUNTIME_FILE, STORE_FILE, create_identity  # noqa: E402
from p2pnode.store import Store  # noqa: E402
from protocol.ids import feed_id  # noqa: E402
from protocol.log import FeedHead, create_entry  # noqa: E402

TARGET_MS = 50.0


def build(home: Path, feeds: int, per_feed: int) -> str:
    key = create_identity(home, seed=b"w" * 32)
    owner = bytes(key.verify_key)
    start = time.perf_counter()
    with Store(home / STORE_FILE, owner) as store:
        store.publish(key, {"type": "profile", "name": "bench owner"})
        base = 1_700_000_000_000
        for n in range(feeds):
            author_key = nacl.signing.SigningKey(n.to_bytes(4, "big") * 8)
            head = None
            batch = []
            for seq in range(1, per_feed + 1):
                payload = ({"type": "profile", "name": f"feed {n}"} if seq == 1 else
                           {"type": "post", "text": f"post {seq} of feed {n}: " + "lorem ipsum " * 8})
                # interleave the feeds' clocks, as a real timeline would
                entry = create_entry(author_key, head, payload, base + seq * 60_000 + n * 137)
                head = FeedHead(entry.author, entry.seq, entry.hash)
                batch.append(entry)
                if len(batch) == 500:
                    store.ingest_verified(batch)
                    batch = []
            if batch:
                store.ingest_verified(batch)
            store.publish(key, {"type": "follow", "feed": bytes(author_key.verify_key)})
        counts = store.counts()
    print(f"built store: {counts['entries']} entries of {counts['feeds']} feeds, {feeds} followed, "
          f"in {time.perf_counter() - start:.1f} s")
    return feed_id(owner)


def measure(client: httpx.Client, path: str, rounds: int) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"server": [], "ttfb": [], "full": []}
    for _ in range(rounds):
        begin = time.perf_counter()
        with client.stream("GET", path) as response:
            chunks = response.iter_bytes()
            next(chunks, b"")
            figures["ttfb"].append((time.perf_counter() - begin) * 1000)
            for _chunk in chunks:
                pass
            figures["full"].append((time.perf_counter() - begin) * 1000)
            assert response.status_code == 200, response.status_code
            timing = response.headers["server-timing"]
            figures["server"].append(float(timing.split("dur=")[1]))
    return figures


def browser_render(base: str, token: str, rounds: int) -> None:
    """Full render in headless Chromium (tests/browser.py): Navigation Timing of the timeline page."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from browser import start_chromium

    driver = start_chromium()
    try:
        driver.get(f"{base}/?token={token}")
        marks: dict[str, list[float]] = {"responseStart": [], "domContentLoadedEventEnd": [], "loadEventEnd": []}
        for _ in range(rounds):
            driver.get(f"{base}/")
            timing = driver.execute_script(
                "const t = performance.getEntriesByType('navigation')[0];"
                "return {responseStart: t.responseStart - t.requestStart, "
                "domContentLoadedEventEnd: t.domContentLoadedEventEnd - t.requestStart, "
                "loadEventEnd: t.loadEventEnd - t.requestStart};")
            for key in marks:
                marks[key].append(timing[key])
        label = f"timeline in headless Chromium ({rounds} loads)"
        ready = pct(marks["domContentLoadedEventEnd"], 0.5)
        print(f"{label:48s} first byte p50 {pct(marks['responseStart'], 0.5):6.2f} ms | DOM ready p50 "
              f"{ready:6.2f} ms | load (CSS, script) p50 {pct(marks['loadEventEnd'], 0.5):6.2f} ms")
    finally:
        driver.quit()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--feeds", type=int, default=200)
    parser.add_argument("--per-feed", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--browser", action="store_true", help="also time the full render in headless Chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        owner = build(home, args.feeds, args.per_feed)
        env = {**os.environ, "P2PNODE_HOME": str(home)}
        node = subprocess.Popen([sys.executable, "-c", "import cli; cli.main(prog_name='p2pnode')", "run",
                                 "--listen", "127.0.0.1:0", "--web", "127.0.0.1:0", "--log-level", "warning"],
                                env=env, stdout=subprocess.PIPE, text=True,
                                cwd=str(Path(__file__).resolve().parent.parent))
        try:
            assert node.stdout is not None
            node.stdout.readline()
            base = node.stdout.readline().split(" ", 1)[1].strip().rstrip("/")
            token = (home / "web-token").read_text().strip()
            with httpx.Client(base_url=base, timeout=30) as client:
                assert client.get(f"/?token={token}", follow_redirects=True).status_code == 200
                page = client.get("/").text
                assert page.count('class="entry') == 50, "the first page should hold 50 entries"
                # a deep page: walk 1,500 pages down with the keyset cursor the 'older' link carries
                with Store(home / STORE_FILE, b"") as reader:
                    ts, row_id = reader.db.execute(
                        "SELECT timestamp, id FROM entries ORDER BY timestamp, id LIMIT 1 OFFSET 1000").fetchone()
                deep = f"/?before={ts}.{row_id}"
                assert client.get(deep).text.count('class="entry') == 50
                some_feed = feed_id(nacl.signing.SigningKey((7).to_bytes(4, "big") * 8).verify_key.encode())
                paths = [("timeline, first page", "/"), ("timeline, a page 1,000 entries from the oldest", deep),
                         ("a feed's page", f"/feed/{some_feed}"), ("network page", "/network")]
                for _ in range(10):  # warm up
                    client.get("/")
                results = {}
                for label, path in paths:
                    figures = measure(client, path, args.rounds)
                    results[label] = figures
                    print(f"{label:48s} server p50 {pct(figures['server'], 0.5):6.2f} ms  p95 "
                          f"{pct(figures['server'], 0.95):6.2f} ms | client TTFB p50 "
                          f"{pct(figures['ttfb'], 0.5):6.2f} ms  full p50 {pct(figures['full'], 0.5):6.2f} ms")
                if args.browser:
                    browser_render(base, token, args.rounds // 4 or 1)
            server_p50 = statistics.median(results["timeline, first page"]["server"])
            print(f"timeline p50 server time {server_p50:.2f} ms; target {TARGET_MS:.0f} ms; "
                  f"ratio {server_p50 / TARGET_MS:.2f} of the target ({TARGET_MS / server_p50:.1f}x under it)")
            print(json.dumps({"owner": owner, "rounds": args.rounds}))
        finally:
            node.send_signal(signal.SIGTERM)
            node.wait(timeout=20)
            if (home / RUNTIME_FILE).exists():
                print("warning: node.json left behind", file=sys.stderr)


if __name__ == "__main__":
    main()
