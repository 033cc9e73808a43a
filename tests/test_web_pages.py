# The web app's page data over a real SQLite store, without a server: keyset paging through timestamp ties,
# live updates after a row id, reply parents, retractions and names.
from __future__ import annotations

from pathlib import Path

import nacl.signing

from p2pnode.local import Local
from p2pnode.store import Store
from p2pnode.web import pages
from protocol.ids import entry_ref
from protocol.log import FeedHead, create_entry


def _local(tmp_path: Path) -> Local:
    key = nacl.signing.SigningKey(b"o" * 32)
    return Local(tmp_path, key, Store(tmp_path / "store.sqlite3", bytes(key.verify_key)))


def _feed(local: Local, seed: bytes, payloads: list[dict], timestamp: int) -> list[bytes]:
    key = nacl.signing.SigningKey(seed)
    head = None
    items = []
    for payload in payloads:
        entry = create_entry(key, head, payload, timestamp)  # every entry at the same millisecond
        head = FeedHead(entry.author, entry.seq, entry.hash)
        items.append((entry.header_bytes, entry.signature, entry.payload))
    result = local.store.ingest(items)
    assert result.error is None
    local.publish({"type": "follow", "feed": bytes(key.verify_key)})
    return [e.hash for e in result.stored]


def test_keyset_paging_through_equal_timestamps_sees_each_entry_once(tmp_path: Path, monkeypatch) -> None:
    local = _local(tmp_path)
    for n in range(3):
        _feed(local, bytes([n + 1]) * 32, [{"type": "post", "text": f"{n}-{i}"} for i in range(40)], 1_000_000)
    monkeypatch.setattr(pages, "PAGE_SIZE", 7)
    seen = []
    cursor = None
    while True:
        page = pages.timeline_page(local, cursor)
        seen += [item.text for item in page["items"] if item.text]
        cursor = page["older"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(f"{n}-{i}" for n in range(3) for i in range(40))
    assert len(seen) == len(set(seen)) == 120


def test_live_items_are_the_views_entries_after_a_row_id(tmp_path: Path) -> None:
    local = _local(tmp_path)
    start = local.store.last_row_id()
    _feed(local, b"a" * 32, [{"type": "post", "text": "followed"}], 5_000)
    stranger = nacl.signing.SigningKey(b"z" * 32)
    entry = create_entry(stranger, None, {"type": "post", "text": "not followed"}, 6_000)
    local.store.ingest([(entry.header_bytes, entry.signature, entry.payload)])
    items, last, more = pages.live_items(local, "timeline", start)
    assert [i.text for i in items if i.text] == ["followed"] and more == 0 and last == local.store.last_row_id()
    assert pages.live_items(local, "timeline", last)[0] == []
    feed_items, _, _ = pages.live_items(local, f"feed:{local.id}", start)
    assert {i.kind for i in feed_items} == {"follow"}


def test_replies_carry_their_parent_and_retracted_entries_say_so(tmp_path: Path) -> None:
    local = _local(tmp_path)
    local.set_profile("Olga")
    parent = local.publish({"type": "post", "text": "the parent"})
    local.reply(parent.entry.hash, "the child")
    page = pages.timeline_page(local, None)
    child = next(i for i in page["items"] if i.text == "the child")
    assert child.parent is not None and child.parent.text == "the parent" and child.author.label == "Olga"
    assert child.parent_ref == entry_ref(parent.entry.hash)
    local.retract(parent.entry.hash)
    page = pages.timeline_page(local, None)
    child = next(i for i in page["items"] if i.text == "the child")
    assert child.parent.retracted and child.parent.snippet == "(retracted)"
    retracted = next(i for i in page["items"] if i.ref == entry_ref(parent.entry.hash))
    assert retracted.retracted and retracted.text is None


async def test_status_counts_the_entries_still_to_receive_during_a_sync(tmp_path: Path, autojump_clock) -> None:
    """What the network page's progress bars and the status line show while a large feed comes in over a
    slow link (the node's own `syncing` status: feeds a peer holds more of than we do)."""
    import trio
    from memnodes import Net, chain, wait_until

    from p2pnode.memnet import MemoryNetwork

    def fill(key: nacl.signing.SigningKey, store: Store) -> None:
        store.ingest_verified(chain(key, [f"old {n}" for n in range(3000)]))

    seen: list[int] = []
    lines: list[str] = []
    network: list[dict] = []
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery, MemoryNetwork(bandwidth=20_000))  # bytes/s of virtual time
        a = await net.add(prepare=fill)
        b = await net.add(seeds=[a.address])
        b_local = Local(tmp_path, b.key, b.store)
        await b.publish({"type": "follow", "feed": a.owner})

        def sample() -> bool:  # what the web app's hub reads, polled on the virtual clock
            status = b.status()
            seen.extend(f["seen"] - f["held"] for f in status["syncing"])
            lines.append(pages.status_line(status))
            if status["syncing"] and not network:
                network.append(pages.network_page(b_local, status))
            return (b.store.clock([a.owner])[a.owner] == 3000 and bool(status["peers"])
                    and status["peers"][0]["in_sync"] and not status["syncing"])

        await wait_until(sample)
        assert max(seen) > 0, seen
        assert any("entries to receive" in line for line in lines), lines
        shown = network[0]["syncing"][0]
        assert shown["author"].key == a.owner
        assert 0 <= shown["held"] < shown["seen"] <= 3000
        assert pages.status_line(b.status()) == "1 peer · in sync"
        nursery.cancel_scope.cancel()
