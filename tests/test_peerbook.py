# The peer book under a flood of `peers` messages (spec/peers.md, "The peer book"): caps per announcing
# peer and in total as addresses arrive, one write transaction per message, and learned addresses dialled
# at a bounded rate; against the store directly and against a real `p2pnode run` process.
from __future__ import annotations

import os
import re
from pathlib import Path

import nacl.signing
import trio
from attackers import handshake, hello, honest_sync, open_tcp
from memnodes import chain
from nodeproc import NodeProcess, init_home

from p2pnode.home import STORE_FILE
from p2pnode.peerbook import PeerBook, PeerBookLimits
from p2pnode.store import Store
from p2pnode.storeio import StoreRunner
from protocol import wire
from protocol.ids import feed_id, parse_feed_id

WAIT_S = 60.0


def stranger_addresses(count: int, port_base: int = 1000) -> list[str]:
    return [f"127.{os.urandom(1)[0]}.{os.urandom(1)[0]}.9:{port_base + i}/"
            + feed_id(bytes(nacl.signing.SigningKey.generate().verify_key)) for i in range(count)]


def test_the_store_keeps_connected_addresses_and_displaces_untried_ones(tmp_path: Path) -> None:
    owner = bytes(nacl.signing.SigningKey.generate().verify_key)
    with Store(tmp_path / "s.sqlite3", owner) as store, Store(tmp_path / "s.sqlite3", owner) as watcher:
        first = stranger_addresses(10)
        keys = [parse_feed_id(a.split("/")[1]) for a in first]
        store.add_learned_peers(list(zip(first, keys, strict=True)), "peer", 10)
        store.peer_connected(first[0])
        version = watcher.data_version()
        more = stranger_addresses(32, 5000)
        added, displaced = store.add_learned_peers([(a, parse_feed_id(a.split("/")[1])) for a in more], "peer", 10)
        assert watcher.data_version() == version + 1, "one `peers` message must be one transaction"
        assert len(added) == 9 and len(displaced) == 9  # 10 in all; the connected one stays
        book = {row["address"] for row in store.peer_book()}
        assert len(book) == 10 and first[0] in book  # the connected address survived the flood
        assert set(added) <= book


async def test_one_announcer_gets_its_allowance_only(tmp_path: Path) -> None:
    owner = bytes(nacl.signing.SigningKey.generate().verify_key)
    with Store(tmp_path / "s.sqlite3", owner) as store:
        db = StoreRunner(store, threaded=False)
        book = PeerBook(owner, set, PeerBookLimits(max_learned=1000, per_peer_burst=64))
        flooder, other = os.urandom(32), os.urandom(32)
        for _ in range(10):
            await book.learn(db, stranger_addresses(32), flooder)
        assert len(store.peer_book()) == 64
        assert len(await book.learn(db, stranger_addresses(32), other)) == 32  # another peer is not held back
        assert book.dropped == 10 * 32 - 64


AUTHOR = nacl.signing.SigningKey(b"\x43" * 32)


async def test_a_peers_flood_neither_fills_the_book_nor_makes_the_node_dial_strangers(tmp_path: Path) -> None:
    home = tmp_path / "victim"
    owner = parse_feed_id(init_home(home))
    with Store(home / STORE_FILE, owner) as store:
        store.ingest_verified(chain(AUTHOR, [f"post {i}" for i in range(100)]))
    node = NodeProcess(home)
    try:
        sent = 0
        start = trio.current_time()
        opening = trio.CapacityLimiter(8)
        async with trio.open_nursery() as nursery:
            async def flood(ip: str) -> None:
                nonlocal sent
                async with opening:  # the node takes 16 handshakes at a time (admission)
                    stream = await open_tcp(node.address, ip)
                    peer = await handshake(stream, node.address)
                    await peer.send(hello())
                for _ in range(40):
                    await peer.send(wire.Peers(tuple(stranger_addresses(wire.MAX_ADDRESSES_PER_MESSAGE))))
                    sent += wire.MAX_ADDRESSES_PER_MESSAGE
                await peer.send(wire.Ping(1))
                while not isinstance(await peer.receive(), wire.Pong):  # all handled
                    pass
                await trio.aclose_forcefully(stream)
            for i in range(30):  # 30 peers x 40 messages x 32 addresses = 38,400 addresses
                nursery.start_soon(flood, f"127.0.{i + 1}.1")
            with trio.fail_after(WAIT_S):  # an honest peer syncs meanwhile
                assert await honest_sync(node.address, bytes(AUTHOR.verify_key), 100) == 100
        assert sent == 30 * 40 * 32
        with Store(home / STORE_FILE, owner) as store:
            learned = [r for r in store.peer_book() if r["source"] != "seed"]
        assert 64 < len(learned) <= 1000, len(learned)  # 30 x 64 offered beyond the cap
        node.log.flush()
        log = node.log_path.read_text()
        elapsed = trio.current_time() - start
        dials = len(set(re.findall(r"dial (\S+) failed", log)))  # first attempts (retries follow the backoff)
        assert dials <= 16 + 12 * elapsed / 60 + 1, (dials, elapsed)
        assert dials > 0, "the node dials learned addresses at its rate (the flood's are all refused)"
    finally:
        assert node.stop() == 0, node.log_text()
