# The running node: composes the parts that each own one concern and runs their loops in one nursery.
#   peers.py    accepting, dialling, backoff, address checks, one session per key, the dial policy
#   session.py  one connection: reader, the one writer, the verify-and-store pipeline
#   ingest.py   which received entries are kept, storing them, forks and blocks, effects of new entries
#   storeio.py  every SQLite call off the event loop (writer thread, reader thread)
#   protocol/replication.py  the replication state (sans-I/O): wants, notes, who streams which feed
# This module keeps what they share: the configuration, the interest (wanted, blocked, forked feeds), the
# store watcher that notices other processes' writes, the replication timer, and the status.
from __future__ import annotations

import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nacl.signing
import trio

from protocol import wire
from protocol.errors import Reason
from protocol.handshake import DEFAULT_NETWORK_KEY
from protocol.ids import Address, feed_id
from protocol.log import Entry
from protocol.replication import NEWEST_FIRST, STALL_TIMEOUT, SWITCH_DELAY, Replicator

from .admission import Admission, AdmissionLimits, Budget
from .diskspace import DEFAULT_MIN_FREE, DiskWatch
from .ingest import Ingest
from .network import Network, TcpNetwork
from .peerbook import PeerBook, PeerBookLimits
from .peers import Peers
from .reach import Reach
from .relaypolicy import RelayLimits, RelayPolicy
from .repair import Repairer
from .session import PeerGone, RequestBudgets, Session
from .sigcheck import SignatureChecker
from .store import IngestResult, Store
from .storeio import StoreRunner
from .verifier import Verifier

__all__ = ["DEFAULT_PORT", "Network", "Node", "NodeConfig", "PeerGone", "Session", "TcpNetwork"]

log = logging.getLogger("p2pnode.node")

DEFAULT_PORT = 8765


@dataclass
class Stats:
    """Counters of what crossed this node's connections, for status and the simulator (bench/sim.py)."""

    messages_out: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    bytes_in: int = 0
    entries_in: int = 0  # entries received from peers that passed the want filter, duplicates included
    duplicates_in: int = 0


@dataclass
class NodeConfig:
    """Tunables; the defaults are the ones spec/peers.md and spec/replication.md name."""

    listen_host: str = "0.0.0.0"
    listen_port: int = DEFAULT_PORT
    advertise_host: str | None = None
    hops: int = 2
    relay: bool = False
    outbound_target: int = 4
    max_inbound: int = 32
    relay_outbound_target: int = 16  # a relay dials the other relays it knows, up to this many
    relay_max_inbound: int = 512  # relays are the network's deliberate capacity
    network_key: bytes = DEFAULT_NETWORK_KEY
    handshake_timeout: float = 10.0
    idle_timeout: float = 120.0
    ping_interval: float = 30.0
    # a peer silent this long after our ping, while we wait to read, is gone (a partition, a dead NAT mapping):
    # found within ping_interval + pong_timeout instead of idle_timeout
    pong_timeout: float = 20.0
    send_timeout: float = 60.0  # a peer that stops reading for this long is dropped
    forget_interval: float = 60.0
    poll_interval: float = 0.01
    dial_interval: float = 0.5
    peer_exchange_interval: float = 60.0
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    batch_entries: int = wire.MAX_ENTRIES_PER_MESSAGE
    max_failures: int = 10
    peer_book_size: int = 1_000
    # check signatures in this many worker processes (p2pnode/verifier.py); simulations under a virtual
    # clock use 0, verifying inline, because waiting on a worker looks idle to the autojump clock
    verify_workers: int = 2
    # SQLite in worker threads (p2pnode/storeio.py); simulations under a virtual clock call it inline
    store_thread: bool = True
    max_peer_wants: int = 100_000  # feeds one peer may ask for; beyond it the peer is dropped (rate-limited:)
    max_probes: int = 8  # announced addresses checked at once
    min_good_session: float = 30.0  # a session shorter than this counts as a failed dial for backoff
    replication_tick: float = 0.25  # how often lagging and stalled streams are looked at
    lan_discovery: bool = False  # publish and browse mDNS `_p2pnode._tcp` (p2pnode/lan.py); `run` turns it on
    proxy: str | None = None  # socks5://HOST:PORT for every outbound connection (p2pnode/proxy.py); off LAN
    upnp: bool = False  # ask the home router to forward our port (p2pnode/nat.py); `run` turns it on
    tor_control: int | None = None  # publish an onion service through Tor's control port (p2pnode/onion.py)
    onion_key_file: str | None = None  # where the onion service's key is kept (`run`: <home>/onion_key)
    switch_delay: float = SWITCH_DELAY
    stall_timeout: float = STALL_TIMEOUT
    message_timeout: float = 30.0  # a message that has started must finish within this (spec/wire.md)
    hello_timeout: float = 10.0  # an inbound connection must say hello within this after the handshake
    admission: AdmissionLimits | None = None  # inbound budgets (spec/peers.md); None: defaults, max_inbound
    relay_limits: RelayLimits = field(default_factory=RelayLimits)  # relay quotas (spec/replication.md)
    # feed names a peer may send in want/have/stream/backfill: per second, and at once (beyond: we read slower)
    request_rate: float = 10_000.0
    request_burst: float = 200_000.0
    min_free: int = DEFAULT_MIN_FREE  # below this much free disk space the node stores nothing peers send
    newest_first: int = NEWEST_FIRST  # a new feed longer than this starts with its newest entries (0: oldest first)
    keep_distant: int = 0  # > 0: keep feeds at hop 2 and beyond to their latest N entries

    def admission_limits(self) -> AdmissionLimits:
        if self.admission is not None:
            return self.admission
        base = AdmissionLimits()
        total = self.relay_max_inbound if self.relay else self.max_inbound
        return AdmissionLimits(established=Budget(total, base.established.per_ip, base.established.per_subnet),
                               handshake_timeout=self.handshake_timeout, hello_timeout=self.hello_timeout)


class Node:
    """A p2pnode peer. `run()` serves until cancelled; the CLI's `run` command wraps it (p2pnode/runner.py)."""

    def __init__(self, key: nacl.signing.SigningKey, store: Store, config: NodeConfig | None = None,
                 network: Network | None = None, rng: random.Random | None = None) -> None:
        self.key = key
        self.owner = bytes(key.verify_key)
        self.store = store
        self.config = config or NodeConfig()
        self.network = network or TcpNetwork()
        self.rng = rng or random.Random()
        self.request_budgets = RequestBudgets(self.config.request_rate, self.config.request_burst)
        self.address: Address | None = None
        self.replicator = Replicator(relay=self.config.relay, switch_delay=self.config.switch_delay,
                                     stall_timeout=self.config.stall_timeout,
                                     max_peer_wants=self.config.max_peer_wants,
                                     newest_first=self.config.newest_first, keep_distant=self.config.keep_distant)
        self.db = StoreRunner(store, threaded=False)
        self.peers = Peers(self)
        self.ingest = Ingest(self)
        self.admission = Admission(self.config.admission_limits())  # inbound budgets: p2pnode/admission.py
        self.peer_book = PeerBook(self.owner, lambda: self.blocked,
                                  PeerBookLimits(max_learned=self.config.peer_book_size))
        self.relay_policy = RelayPolicy(self.config.relay_limits)  # relay quotas: p2pnode/relaypolicy.py
        self.reach = Reach(self)  # own address, reachability, LAN discovery, UPnP, onion service
        self.verifier = Verifier(0)
        self.repair = Repairer(self)  # payloads damaged or missing: fetched again (p2pnode/repair.py)
        self.signatures = SignatureChecker(self)  # signatures stored unchecked, checked when quiet (sigcheck.py)
        self.disk = DiskWatch(store.path.parent, self.config.min_free, store)  # a full disk (p2pnode/diskspace.py)
        self.by_handle: dict[int, Session] = {}
        self.wanted: set[bytes] = set()
        self.blocked: set[bytes] = set()
        self.forked: set[bytes] = set()  # feeds with two signed histories: no longer fetched (spec/log.md)
        self.changed = trio.Event()  # set whenever peers or sync state change: status writers wait on it
        self.stats = Stats()
        # called with (entries, source key or None) after every store write that added entries: simulations
        # use it to trace how entries travel
        self.observer: Callable[[list[Entry], bytes | None], None] | None = None
        self.nursery: trio.Nursery | None = None
        self._interest_due = trio.Event()
        self._last_row_id = 0
        self._data_version = 0

    @property
    def sessions(self) -> dict[bytes, Session]:
        return self.peers.sessions

    @property
    def inbound(self) -> int:
        return self.peers.inbound

    # ------------------------------------------------------------ lifecycle

    async def run(self, seeds: list[Address] | None = None, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.db = StoreRunner(self.store, threaded=self.config.store_thread)
        try:
            self.replicator.on_stored(await self.db.read(Store.clock), None, trio.current_time())
            self.replicator.low = await self.db.read(Store.lows)
            await self._refresh_interest()
            self._last_row_id = await self.db.write(Store.last_row_id)
            self._data_version = await self.db.write(Store.data_version)
            known = [(str(s), s.key) for s in seeds or [] if s.key != self.owner and s.key not in self.blocked]
            for text, key in known:
                await self.db.write(Store.add_peer, text, key, "seed")
            await self.peer_book.load(self.db)
            if self.config.relay:
                await self.relay_policy.load(self.db, self.wanted)
            self.verifier = Verifier(self.config.verify_workers)
            await self._serve(task_status)
        finally:
            self.verifier.close()
            self.db.close()

    async def _serve(self, task_status: Any) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            host, port = await nursery.start(self.network.serve, self.config.listen_host,
                                             self.config.listen_port, self.peers.accept)
            self.address = self.reach.start(nursery, host, port)
            nursery.start_soon(self._survive, self.peers.dial_loop)
            nursery.start_soon(self._survive, self._watch_store)
            nursery.start_soon(self._survive, self._interest_loop)
            nursery.start_soon(self._survive, self._tick_loop)
            nursery.start_soon(self.admission.reap)
            nursery.start_soon(self._survive, self.repair.run)
            nursery.start_soon(self._survive, self.signatures.run)
            nursery.start_soon(self.disk.run)
            task_status.started(self.address)

    async def stop(self) -> None:
        """Say goodbye to every peer (close message, box-stream goodbye), then stop serving."""
        for session in list(self.sessions.values()):
            session.close(PeerGone(Reason.SHUTDOWN, "node stopping"))
        with trio.move_on_after(2):
            while self.sessions:
                await self.changed.wait()
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def wake_touched(self) -> None:
        """Wake the writers of the sessions that the replication state gave something to send."""
        for handle in self.replicator.touched:
            session = self.by_handle.get(handle)
            if session is not None:
                session.poke()
        self.replicator.touched.clear()

    async def _survive(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run one of the node's own loops; a store that stays locked or busy past the busy timeout is
        logged and the loop starts again a little later, instead of stopping the node."""
        while True:
            try:
                await loop()
            except sqlite3.OperationalError as exc:
                if not self.disk.failed(exc):
                    log.warning("store busy in %s (%s); trying again", loop.__name__, exc)
                await trio.sleep(1.0)

    # ------------------------------------------------------------ publishing and local changes

    async def publish(self, payload: dict[str, Any]) -> Entry:
        """Sign and store a new entry of our own feed, and push it to the peers that want it."""
        entry = await self.db.write(Store.publish, self.key, payload)
        await self.ingest.stored(IngestResult(stored=[entry]))
        return entry

    async def _watch_store(self) -> None:
        """Notice what other processes (the CLI) commit to the store, and act on it. The version seen is
        recorded only once the change has been acted on, so a failure here loses nothing."""
        while True:
            await trio.sleep(self.config.poll_interval)
            version = await self.db.write(Store.data_version)
            if version == self._data_version:
                continue
            authors, last_row_id = await self.db.write(Store.authors_since, self._last_row_id)
            seqs = await self.db.write(Store.clock, authors)
            self.replicator.on_stored({a: s for a, s in seqs.items() if s > 0}, None, trio.current_time())
            self.wake_touched()
            self.notify()
            await self._refresh_interest()  # follows, blocks and profiles written by the CLI
            self._last_row_id, self._data_version = last_row_id, version

    # ------------------------------------------------------------ interest

    def interest_changed(self) -> None:
        """Follows, blocks or forks changed: recompute what the node wants, soon, in the interest loop."""
        self._interest_due.set()

    async def _interest_loop(self) -> None:
        while True:
            await self._interest_due.wait()
            self._interest_due = trio.Event()
            await self._refresh_interest()

    async def _refresh_interest(self) -> None:
        depth, blocked, forked = await self.db.read(Store.interest, self.config.hops)
        wanted = set(depth)
        newly_blocked = blocked - self.blocked
        self.wanted, self.blocked, self.forked = wanted, blocked, forked
        if newly_blocked:
            self.replicator.on_purged(newly_blocked)  # the store purged them with the block
            self.peers.close_blocked(newly_blocked)
        self.replicator.set_interest(wanted, blocked, forked, trio.current_time(), depth)
        await self._keep_distant_short()
        self.wake_touched()
        self.notify()

    async def _keep_distant_short(self) -> None:
        """With --keep-distant N, cut feeds at hop 2 and beyond (and a relay's feeds nobody here follows) to
        their latest N entries."""
        keep = self.config.keep_distant
        if not keep:
            return
        depth = self.replicator.depth
        distant = [f for f, seq in self.replicator.clock.items()
                   if depth.get(f, 2) >= 2 and seq - self.replicator.low.get(f, 1) + 1 > keep]
        if distant:
            self.replicator.set_lows(await self.db.write(Store.keep_latest, distant, keep))

    async def _tick_loop(self) -> None:
        next_trim = trio.current_time() + 60.0
        while True:
            await trio.sleep(self.config.replication_tick)
            self.replicator.tick(trio.current_time())
            self.wake_touched()
            if trio.current_time() >= next_trim:
                next_trim = trio.current_time() + 60.0
                await self._keep_distant_short()

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        progress = self.replicator.progress()
        return {
            **self.disk.status(),
            "address": str(self.address) if self.address else None,
            "peers": [{
                "id": feed_id(s.key),
                "address": s.address or (s.hello.address if s.hello else None),
                "direction": "outbound" if s.outbound else "inbound",
                "remote_ip": s.remote_ip,
                "in_sync": self.replicator.in_sync(s.handle),
                "received": s.received_entries,
                "sent": s.sent_entries,
            } for s in self.sessions.values() if s.closing is None],
            "syncing": [{"id": feed_id(feed), "held": held, "seen": seen}
                        for feed, (held, seen) in sorted(progress.items(), key=lambda i: i[1][0] - i[1][1])[:20]],
            **self.reach.status(),
        }
