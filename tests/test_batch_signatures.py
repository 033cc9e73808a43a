# Batches proven by their last signature (spec/log.md, "Checking a batch"), end to end on the in-process
# network: a peer that alters the signature of an entry inside a run cannot get that signature past the node.
# The node keeps the entry (its author's later signature proves it), finds the bad signature when it is quiet,
# and never sends it on: a third node syncing from it gets the feed up to the entry before, until a peer that
# holds the entry as its author signed it comes by and the node fetches it again.
from __future__ import annotations

from pathlib import Path

import trio
import trio.testing
from memnodes import Net, RawPeer, chain, own_feed_then_follow, raw_key, wait_until

from p2pnode.store import SIGNATURE_BAD, SIGNATURE_CHECKED, SIGNATURE_UNCHECKED, Store
from protocol import wire
from protocol.log import signature_ok

AUTHOR = raw_key(1)
AUTHOR_ID = bytes(AUTHOR.verify_key)
ALTERED = 10  # the seq whose signature the hostile peer alters


def states(store: Store) -> dict[int, int]:
    return dict(store.db.execute("SELECT seq, signature_state FROM entries WHERE author = ?", (AUTHOR_ID,)))


def head(store: Store) -> int:
    found = store.head(AUTHOR_ID)
    return found.seq if found is not None else 0


async def test_an_altered_signature_inside_a_run_is_never_sent_on_and_fetched_again(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    entries = chain(AUTHOR, [f"post {n}" for n in range(30)])
    items = [list(e.to_wire()) for e in entries]
    signature = items[ALTERED - 1][1]
    items[ALTERED - 1][1] = signature[:5] + bytes([signature[5] ^ 1]) + signature[6:]
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        relay = await net.add(prepare=own_feed_then_follow(0, AUTHOR_ID))
        hostile = await RawPeer.connect(net, relay, raw_key(2))
        await hostile.hello()
        checks_at_start = relay.signatures.checked
        await hostile.send(wire.Entries(tuple(tuple(item) for item in items)))
        await wait_until(lambda: head(relay.store) == 30)
        # the whole run is the author's: stored, its inner signatures unchecked, the last one checked
        stored = states(relay.store)
        assert stored[30] == SIGNATURE_CHECKED and stored[ALTERED] == SIGNATURE_UNCHECKED
        # once the node is quiet it checks them and marks the altered one
        await wait_until(lambda: relay.signatures.checked >= checks_at_start + 29, timeout=30)
        stored = states(relay.store)
        assert stored[ALTERED] == SIGNATURE_BAD and relay.signatures.bad == 1
        assert all(state == SIGNATURE_CHECKED for seq, state in stored.items() if seq != ALTERED)

        # a node that follows the author syncs from this one: it gets the feed up to the altered entry
        follower = await net.add([relay.address], prepare=own_feed_then_follow(0, AUTHOR_ID))
        await wait_until(lambda: head(follower.store) == ALTERED - 1)
        await trio.sleep(60)  # a minute more (virtual): the rest never comes, nor does the altered signature
        assert head(follower.store) == ALTERED - 1
        rows = follower.store.db.execute("SELECT header, signature FROM entries WHERE author = ?",
                                         (AUTHOR_ID,)).fetchall()
        assert len(rows) == ALTERED - 1 and all(signature_ok(h, s) for h, s in rows)

        # a peer that holds the feed as its author signed it comes: the node fetches the entry again (as it
        # fetches a payload damaged on disk), keeps the good signature, and the follower gets the rest
        def holds_feed(key: object, store: Store) -> None:
            assert store.ingest_verified(entries).error is None

        await net.add([relay.address], prepare=holds_feed)
        await wait_until(lambda: states(relay.store)[ALTERED] == SIGNATURE_CHECKED)
        header, signature = relay.store.db.execute("SELECT header, signature FROM entries WHERE author = ? AND "
                                                   "seq = ?", (AUTHOR_ID, ALTERED)).fetchone()
        assert signature_ok(header, signature)
        await wait_until(lambda: head(follower.store) == 30)
        rows = follower.store.db.execute("SELECT header, signature FROM entries WHERE author = ?",
                                         (AUTHOR_ID,)).fetchall()
        assert len(rows) == 30 and all(signature_ok(h, s) for h, s in rows)
        nursery.cancel_scope.cancel()


async def test_a_run_is_sent_on_with_its_signatures_checked_before_the_quiet_check(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Sending comes first: entries stored unchecked are checked when they are read to be sent, so a
    follower connected all along gets them at once, each with a good signature."""
    entries = chain(AUTHOR, [f"post {n}" for n in range(30)])
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        relay = await net.add(prepare=own_feed_then_follow(0, AUTHOR_ID))
        follower = await net.add([relay.address], prepare=own_feed_then_follow(0, AUTHOR_ID))
        await wait_until(lambda: relay.owner in follower.peers.sessions)
        hostile = await RawPeer.connect(net, relay, raw_key(2))
        await hostile.hello()
        await hostile.send(wire.Entries(tuple(tuple(e.to_wire()) for e in entries)))
        await wait_until(lambda: head(follower.store) == 30)
        assert relay.signatures.checked == 0  # it came before the quiet check
        rows = follower.store.db.execute("SELECT header, signature FROM entries WHERE author = ?",
                                         (AUTHOR_ID,)).fetchall()
        assert len(rows) == 30 and all(signature_ok(h, s) for h, s in rows)
        nursery.cancel_scope.cancel()
