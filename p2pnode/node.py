# The running node: listens and dials, keeps the peer set, and replicates feeds with each peer
# (spec/replication.md, spec/peers.md). Every I/O goes through a `Network` (real TCP, or memory streams
# for simulations) and the Store; the wire format lives in protocol/wire.py.
from __future__ import annotations

import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import nacl.signing
import trio

from protocol import wire
from protocol.errors import Blocked, ForkDetected, ProtocolError
from protocol.handshake import DEFAULT_NETWORK_KEY
from protocol.ids import Address, feed_id, parse_address
from protocol.log import CONTACT_TYPES, Entry, peek_author

from .connection import Connection, IdleTimeout, TransportError, client_handshake, server_handshake
from .diskspace import DEFAULT_MIN_FREE, DiskWatch
from .repair import Repairer
from .store import IngestResult, Store
from .verifier import Pending, Verifier

log = logging.getLogger("p2pnode.node")

DEFAULT_PORT = 8765
MAX_BATCH_BYTES = 512 * 1024


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
    network_key: bytes = DEFAULT_NETWORK_KEY
    handshake_timeout: float = 10.0
    idle_timeout: float = 120.0
    ping_interval: float = 30.0
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
    max_peer_wants: int = 100_000  # feeds one peer may ask for; beyond it the peer is dropped (rate-limited:)
    max_probes: int = 8  # announced addresses checked at once
    min_good_session: float = 30.0  # a session shorter than this counts as a failed dial for backoff
    min_free: int = DEFAULT_MIN_FREE  # below this much free disk space the node stores nothing peers send


class Network(Protocol):
    """How a node reaches others: real TCP (TcpNetwork) or in-process memory streams (tests, simulation)."""

    async def serve(self, host: str, port: int, handler: Callable[[trio.abc.Stream], Awaitable[None]],
                    *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None: ...

    async def dial(self, host: str, port: int) -> trio.abc.Stream: ...


class TcpNetwork:
    """Real TCP sockets."""

    async def serve(self, host: str, port: int, handler: Callable[[trio.abc.Stream], Awaitable[None]],
                    *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = listeners[0].socket.getsockname()
        task_status.started((sockname[0], sockname[1]))
        await trio.serve_listeners(handler, listeners)

    async def dial(self, host: str, port: int) -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)


class PeerGone(Exception):
    """Ends a session: the peer closed, broke the protocol, or we closed it. `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class Session:
    """One authenticated connection to a peer and what each side has told the other."""

    node: Node
    conn: Connection
    outbound: bool
    address: str | None = None
    hello: wire.Hello | None = None
    their_want: dict[bytes, int] = field(default_factory=dict)  # feed -> seq they hold (as far as we know)
    their_all: bool = False
    their_have: dict[bytes, int] = field(default_factory=dict)
    dirty: set[bytes] = field(default_factory=set)
    wake: trio.Event = field(default_factory=trio.Event)
    closing: str | None = None
    cancel_scope: trio.CancelScope | None = None
    received_entries: int = 0
    sent_entries: int = 0

    def __post_init__(self) -> None:
        # received batches flow: receive loop -> verifier -> ingester, two batches in flight at each step
        self.to_verify, self.from_receiver = trio.open_memory_channel[wire.Entries](2)
        self.to_ingest, self.from_verifier = trio.open_memory_channel[Pending](2)

    @property
    def key(self) -> bytes:
        return self.conn.remote_key

    @property
    def dialer(self) -> bytes:
        return bytes(self.node.key.verify_key) if self.outbound else self.key

    def mark(self, authors: set[bytes] | list[bytes]) -> None:
        if authors:
            self.dirty.update(authors)
            self.wake.set()

    async def send(self, message: wire.Message) -> None:
        try:
            with trio.fail_after(self.node.config.send_timeout):
                await self.conn.send(wire.encode(message))
        except TransportError as exc:
            raise PeerGone(f"send failed: {exc.reason}") from None
        except trio.TooSlowError:
            raise PeerGone(f"timeout: the peer read nothing for {self.node.config.send_timeout:g} s") from None
        except ProtocolError as exc:  # our own message over a limit: a bug, but only this session pays
            log.error("could not encode a %s message: %s", type(message).__name__, exc.reason)
            raise PeerGone(exc.reason) from None

    def close(self, reason: str) -> None:
        """Ask the session to end with `reason` (sent to the peer as a close message)."""
        if self.closing is None:
            self.closing = reason
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    def in_sync(self, clock: dict[bytes, int]) -> bool:
        wanted = self.node.wanted
        behind_them = any(self.their_have.get(f, 0) > clock.get(f, 0) for f in wanted)
        behind_us = any(clock.get(f, 0) > seq for f, seq in self.their_want.items())
        return not behind_them and not behind_us

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        try:
            with trio.CancelScope() as scope:
                self.cancel_scope = scope
                if self.closing is not None:
                    scope.cancel()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guard, self._verifier)
                    nursery.start_soon(self._guard, self._ingester)
                    nursery.start_soon(self._guard, self._sender)
                    nursery.start_soon(self._guard, self._pinger)
                    nursery.start_soon(self._guard, self._converse)
        finally:
            reason = self.closing or "shutdown: node stopping"
            if self.hello is not None:  # a probe (close before hello) was never a session
                log.info("peer %s disconnected: %s", feed_id(self.key)[:12], reason)
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                if not reason.startswith(("peer closed", "send failed")):
                    try:
                        await self.conn.send(wire.encode(wire.Close(reason)))
                    except (TransportError, ProtocolError):
                        pass
                await self.conn.aclose()

    async def _guard(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run one of the session's tasks; a PeerGone from any of them ends the whole session."""
        try:
            await task()
        except PeerGone as exc:
            self.close(exc.reason)
        except ProtocolError as exc:
            self.close(exc.reason)
        except Exception:  # a bug must end this session, not the node and every other session with it
            log.exception("error in the session with %s", feed_id(self.key)[:12])
            self.close("internal: error in this node; see its log")

    async def _converse(self) -> None:
        node = self.node
        await self.send(wire.Hello(wire.PROTOCOL_VERSION, (), str(node.address) if node.address else None,
                                   node.config.relay))
        for message in node.want_messages():
            await self.send(message)
        await self._send_peers()
        await self._receive_loop()

    async def _verifier(self) -> None:
        """Pipeline stage 1: drop unwanted entries, verify the rest (in a thread when so configured)."""
        async for message in self.from_receiver:
            keep = self.node.select_wanted(message)
            await self.to_ingest.send(self.node.verifier.start(keep))

    async def _ingester(self) -> None:
        """Pipeline stage 2: store verified entries in order; the first invalid one ends the session."""
        async for pending in self.from_verifier:
            entries, error = await pending.result()
            await self.node.store_entries(self, entries, error)

    async def _pinger(self) -> None:
        nonce = 0
        while True:
            await trio.sleep(self.node.config.ping_interval)
            nonce += 1
            await self.send(wire.Ping(nonce))

    async def _send_peers(self) -> None:
        addresses = [a for a in self.node.store.working_peers(wire.MAX_ADDRESSES_PER_MESSAGE + 1)
                     if a != self.address][: wire.MAX_ADDRESSES_PER_MESSAGE]
        if addresses:
            await self.send(wire.Peers(tuple(addresses)))

    async def _receive_loop(self) -> None:
        first = True
        last_exchange = trio.current_time()
        while True:
            try:
                data = await self.conn.receive()
            except IdleTimeout:
                raise PeerGone(f"timeout: nothing received for {self.node.config.idle_timeout:g} s") from None
            except TransportError as exc:
                if exc.reason.startswith(("too-large:", "invalid:")):  # the peer broke the rules: say so
                    raise PeerGone(exc.reason) from None
                raise PeerGone(f"peer closed: {exc.reason}") from None
            try:
                message = wire.decode(data)
                if first and not isinstance(message, (wire.Hello, wire.Close)):
                    raise wire.WireError("the first message must be hello")
                first = False
                await self._handle(message)
            except ProtocolError as exc:
                raise PeerGone(exc.reason) from None
            if trio.current_time() - last_exchange > self.node.config.peer_exchange_interval:
                last_exchange = trio.current_time()
                await self._send_peers()

    async def _handle(self, message: wire.Message) -> None:
        node = self.node
        if isinstance(message, wire.Hello):
            if self.hello is not None:
                raise wire.WireError("a second hello")
            self.hello = message
            if not node.register(self):
                raise PeerGone("duplicate: already connected to this peer")
            if not self.outbound:
                node.learn_address(message.address, self.key, "hello")
        elif isinstance(message, wire.Want):
            blocked = node.blocked
            held = node.store.clock(a for a in message.feeds if a not in blocked)
            for author in message.drop:
                self.their_want.pop(author, None)
            for author, seq in message.feeds.items():
                if author not in blocked:
                    self.their_want[author] = seq  # the peer knows best what it holds
            if len(self.their_want) > node.config.max_peer_wants:
                raise PeerGone(f"rate-limited: the peer wants more than {node.config.max_peer_wants} feeds")
            self.their_all = self.their_all or message.all
            have = {a: s for a, s in held.items() if s > 0}
            if have:
                await self.send(wire.Have(have))
            marked = set(message.feeds)
            if message.all:
                marked |= set(node.store.clock())
            self.mark(marked - blocked)
        elif isinstance(message, wire.Have):
            # only what we want matters (for "in sync"); the rest is not kept, so it cannot grow memory
            self.their_have.update((a, s) for a, s in message.feeds.items() if a in node.wanted)
        elif isinstance(message, wire.Entries):
            await self.to_verify.send(message)
        elif isinstance(message, wire.Fetch):
            node.repair.answer(self, message)
        elif isinstance(message, wire.Peers):
            for text in message.addresses:
                node.learn_address_text(text, "peer")
        elif isinstance(message, wire.Ping):
            await self.send(wire.Pong(message.nonce))
        elif isinstance(message, wire.Close):
            raise PeerGone(f"peer closed: {message.reason}")
        # Pong and unknown message types need nothing

    async def _sender(self) -> None:
        """Send every dirty feed's entries that the peer wants and lacks, in order and in batches."""
        node = self.node
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            while self.dirty:
                author = self.dirty.pop()
                if author in node.blocked or (author not in self.their_want and not self.their_all):
                    continue
                await self._send_feed(author)

    async def _send_feed(self, author: bytes) -> None:
        node = self.node
        since = self.their_want.get(author, 0)
        while True:
            if author in node.blocked or (author not in self.their_want and not self.their_all):
                return  # dropped or blocked while we were sending
            since = max(since, self.their_want.get(author, 0))
            rows = node.store.raw_entries_after(author, since, node.config.batch_entries)
            if not rows:
                return
            batch: list[tuple[bytes, bytes, bytes | None]] = []
            size = 0
            for _, header, signature, payload in rows:
                entry_size = len(header) + len(signature) + len(payload or b"") + 16
                if batch and size + entry_size > MAX_BATCH_BYTES:
                    break
                batch.append((header, signature, payload))
                size += entry_size
            await self.send(wire.Entries(tuple(batch)))
            self.sent_entries += len(batch)
            since = rows[len(batch) - 1][0]
            # the peer holds these now; a want/drop from it may have changed the map meanwhile
            if author in self.their_want or self.their_all:
                self.their_want[author] = max(self.their_want.get(author, 0), since)


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
        self.address: Address | None = None
        self.sessions: dict[bytes, Session] = {}
        self.inbound = 0
        self.dialing: set[str] = set()
        self.probing: set[str] = set()
        self.next_dial: dict[str, float] = {}
        self.wanted: set[bytes] = set()
        self.blocked: set[bytes] = set()
        self.forked: set[bytes] = set()  # feeds with two signed histories: no longer fetched (spec/log.md)
        self.changed = trio.Event()  # set whenever peers or sync state change: status writers wait on it
        self._nursery: trio.Nursery | None = None
        self.verifier = Verifier(0)
        self.repair = Repairer(self)
        self.disk = DiskWatch(store.path.parent, self.config.min_free, store)
        self.disk.on_resume = self._ask_again
        self._last_row_id = 0
        self._data_version = 0

    # ------------------------------------------------------------ lifecycle

    async def run(self, seeds: list[Address] | None = None, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._refresh_graph()
        self._last_row_id = self.store.last_row_id()
        self._data_version = self.store.data_version()
        for seed in seeds or []:
            if seed.key != self.owner and seed.key not in self.blocked:
                self.store.add_peer(str(seed), seed.key, "seed")
        self.verifier = Verifier(self.config.verify_workers)
        try:
            await self._serve(task_status)
        finally:
            self.verifier.close()

    async def _serve(self, task_status: Any) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            host, port = await nursery.start(self.network.serve, self.config.listen_host,
                                             self.config.listen_port, self._accept_contained)
            self.address = Address(self._advertised_host(host), port, self.owner)
            nursery.start_soon(self._survive, self._dial_loop)
            nursery.start_soon(self._survive, self._watch_store)
            nursery.start_soon(self._survive, self.repair.run)
            nursery.start_soon(self.disk.run)
            task_status.started(self.address)

    def _advertised_host(self, bound_host: str) -> str:
        if self.config.advertise_host:
            return self.config.advertise_host
        if bound_host in ("0.0.0.0", "::", ""):
            return "127.0.0.1"
        return bound_host

    async def stop(self) -> None:
        """Say goodbye to every peer (close message, box-stream goodbye), then stop serving."""
        for session in list(self.sessions.values()):
            session.close("shutdown: node stopping")
        with trio.move_on_after(2):
            while self.sessions:
                await self._wait_changed()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _wait_changed(self) -> None:
        await self.changed.wait()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # ------------------------------------------------------------ publishing and local changes

    def publish(self, payload: dict[str, Any]) -> Entry:
        """Sign and store a new entry of our own feed, and push it to the peers that want it."""
        entry = self.store.publish(self.key, payload)
        self._entries_stored([entry], None)
        if _is_contact(entry):
            self._graph_changed()
        return entry

    async def _watch_store(self) -> None:
        """Notice what other processes (the CLI) commit to the store, and act on it."""
        while True:
            await trio.sleep(self.config.poll_interval)
            version = self.store.data_version()
            if version == self._data_version:
                continue
            self._data_version = version
            authors, self._last_row_id = self.store.authors_since(self._last_row_id)
            self._graph_changed()
            for session in list(self.sessions.values()):
                session.mark(authors)

    def _refresh_graph(self) -> tuple[set[bytes], set[bytes]]:
        old_wanted, old_blocked = self.wanted, self.blocked
        self.blocked = self.store.blocked()
        self.forked = set(self.store.forked_feeds()) - {self.owner}
        self.wanted = self.store.wanted_feeds(self.config.hops)
        return old_wanted, old_blocked

    def _graph_changed(self) -> None:
        old_wanted, old_blocked = self._refresh_graph()
        added = self.wanted - old_wanted
        dropped = old_wanted - self.wanted
        newly_blocked = self.blocked - old_blocked
        for session in list(self.sessions.values()):
            if session.key in newly_blocked:
                session.close(f"blocked: {feed_id(session.key)} is blocked by this node")
                continue
            for author in newly_blocked:
                session.their_want.pop(author, None)
        if added or dropped:
            messages = _want_chunks(self.store.clock(added), sorted(dropped), self.config.relay)
            for session in list(self.sessions.values()):
                if session.closing is None:
                    self._nursery_send(session, messages)

    def _nursery_send(self, session: Session, messages: list[wire.Message]) -> None:
        async def send() -> None:
            try:
                for message in messages:
                    await session.send(message)
            except PeerGone as exc:
                session.close(exc.reason)
        assert self._nursery is not None
        self._nursery.start_soon(send)

    def want_messages(self) -> list[wire.Want]:
        """What a new connection is told this node wants, in messages within the wire limits."""
        feeds = self.store.clock(self.wanted)
        if self.config.relay:
            feeds.update(self.store.clock())
            feeds = {a: s for a, s in feeds.items() if a not in self.blocked and a not in self.forked}
        return _want_chunks(feeds, [], self.config.relay)

    # ------------------------------------------------------------ receiving

    def select_wanted(self, message: wire.Entries) -> list[tuple[bytes, bytes, bytes | None]]:
        """The entries of a batch whose feeds this node wants; the others are dropped unread."""
        keep = []
        for item in message.raw:
            author = peek_author(item[0])
            if author is None or author in self.wanted or (
                    self.config.relay and author not in self.blocked and author not in self.forked):
                keep.append(item)
        return keep

    async def store_entries(self, session: Session, entries: list[Entry], error: ProtocolError | None) -> None:
        """Store a verified batch from a peer and push it on. `error`: the batch's first invalid entry,
        which ends the session with its reason (the verified entries before it are kept)."""
        if not self.disk.may_store():  # a full disk: dropped, and asked for again when space returns
            self.disk.drop(len(entries))
            if error is not None:
                raise PeerGone(error.reason)
            return
        try:
            result: IngestResult = self.store.ingest_verified(entries)
        except sqlite3.OperationalError as exc:
            if not self.disk.failed(exc):
                raise
            self.disk.drop(len(entries))
            return
        session.received_entries += len(result.stored)
        for entry in result.stored:
            if entry.author in session.their_want or session.their_all:
                session.their_want[entry.author] = max(session.their_want.get(entry.author, 0), entry.seq)
            session.their_have[entry.author] = max(session.their_have.get(entry.author, 0), entry.seq)
        self._entries_stored(result.stored, session)
        if any(_is_contact(e) for e in result.stored) or result.purged_feeds:
            self._graph_changed()
        if isinstance(result.error, ForkDetected | Blocked):
            # not the peer's fault: it holds the other branch of a fork, or sent a feed our owner blocked
            # after the batch left it. Stop fetching that feed; ask again for the other feeds of the batch
            # that were discarded after it
            forked = set(self.store.forked_feeds())
            log.warning("%s (seen from peer %s); such feeds are no longer fetched", result.error.reason,
                        feed_id(session.key)[:12])
            if self.owner in forked:
                log.error("this node's own feed is forked: it signed two entries at the same seq (was the store "
                          "lost and posted to before the feed came back from peers?); it cannot post any more")
            self._graph_changed()
            stored = {e.hash for e in result.stored}
            rest = {e.author for e in entries if e.hash not in stored} - forked - self.blocked
            if rest:
                for message in _want_chunks(self.store.clock(rest), [], self.config.relay):
                    await session.send(message)
            result.error = None
        error = result.error or error
        if error is not None:
            log.warning("peer %s sent an invalid entry: %s", feed_id(session.key)[:12], error.reason)
            raise PeerGone(error.reason)

    def _entries_stored(self, entries: list[Entry], source: Session | None) -> None:
        if not entries:
            return
        authors = {e.author for e in entries}
        for session in list(self.sessions.values()):
            if session is not source:
                session.mark(authors)
        self._notify()

    # ------------------------------------------------------------ peers

    def learn_address(self, text: str | None, key: bytes, source: str) -> None:
        """Remember an address a peer announced for itself, if it names the key that peer proved."""
        if not text:
            return
        try:
            address = parse_address(text)
        except ProtocolError:
            return
        if address.key == key and key != self.owner and key not in self.blocked:
            self.store.add_peer(str(address), address.key, source)
            text = str(address)
            if (len(self.probing) < self.config.max_probes and text not in self.probing
                    and text not in self.store.working_peers(self.config.peer_book_size)):
                self.probing.add(text)
                assert self._nursery is not None
                self._nursery.start_soon(self._contained, self._probe, address)

    async def _probe(self, address: Address) -> None:
        """Check that a peer's announced address answers with its key, so that it may be shared: dial,
        handshake, say `close` before any hello (the other side never counts it as a session), hang up."""
        try:
            with trio.fail_after(self.config.handshake_timeout):
                stream = await self.network.dial(address.host, address.port)
                conn = await client_handshake(stream, self.key, address.key, network_key=self.config.network_key,
                                              handshake_timeout=self.config.handshake_timeout)
                await conn.send(wire.encode(wire.Close("probe: address verified")))
                await conn.aclose()
            self.store.peer_connected(str(address))
        except (OSError, ValueError, trio.TooSlowError, TransportError) as exc:
            log.info("address %s announced by its peer does not answer: %s", address,
                     getattr(exc, "reason", None) or exc)
        finally:
            self.probing.discard(str(address))

    def learn_address_text(self, text: str, source: str) -> None:
        try:
            address = parse_address(text)
        except ProtocolError:
            return
        if address.key != self.owner and address.key not in self.blocked:
            self.store.add_peer(str(address), address.key, source)

    async def _contained(self, task: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run a task about one peer or address; a bug in it is logged and ends that task only."""
        try:
            await task(*args)
        except Exception:
            log.exception("error in %s; the node goes on", task.__name__)

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

    async def _accept_contained(self, stream: trio.abc.Stream) -> None:
        await self._contained(self._accept, stream)

    async def _accept(self, stream: trio.abc.Stream) -> None:
        if self.inbound >= self.config.max_inbound:
            await stream.aclose()
            return
        self.inbound += 1
        try:
            try:
                conn = await server_handshake(stream, self.key, network_key=self.config.network_key,
                                              handshake_timeout=self.config.handshake_timeout,
                                              idle_timeout=self.config.idle_timeout)
            except TransportError as exc:
                log.info("inbound handshake failed: %s", exc.reason)
                return
            await self._run_session(Session(self, conn, outbound=False))
        finally:
            self.inbound -= 1

    async def _dial_loop(self) -> None:
        next_forget = trio.current_time()
        while True:
            if trio.current_time() >= next_forget:
                self.store.forget_peers(self.config.max_failures, self.config.peer_book_size)
                next_forget = trio.current_time() + self.config.forget_interval
            outbound = len(self.dialing)  # an address stays in `dialing` until its session ends
            if outbound < self.config.outbound_target:
                now = trio.current_time()
                connected = set(self.sessions)
                for address, key in self.store.dial_candidates(self.config.peer_book_size):
                    if outbound >= self.config.outbound_target:
                        break
                    if (key in connected or key == self.owner or key in self.blocked or address in self.dialing
                            or self.next_dial.get(address, 0) > now):
                        continue
                    outbound += 1
                    self.dialing.add(address)
                    assert self._nursery is not None
                    self._nursery.start_soon(self._contained, self._dial, address, key)
            await trio.sleep(self.config.dial_interval)

    def _backoff(self, address: str, failed: bool) -> None:
        failures = self.store.peer_failures(address) + 1 if failed else 0
        delay = min(self.config.backoff_base * 2 ** min(failures, 20), self.config.backoff_max)
        delay *= self.rng.uniform(0.5, 1.5)
        self.next_dial[address] = trio.current_time() + delay
        self.store.peer_attempted(address, int((trio.current_time() + delay) * 1000), failed)

    async def _dial(self, address: str, key: bytes) -> None:
        try:
            try:
                target = parse_address(address)
                with trio.fail_after(self.config.handshake_timeout):
                    stream = await self.network.dial(target.host, target.port)
                conn = await client_handshake(stream, self.key, key, network_key=self.config.network_key,
                                              handshake_timeout=self.config.handshake_timeout,
                                              idle_timeout=self.config.idle_timeout)
            except (OSError, ValueError, ProtocolError, trio.TooSlowError, TransportError) as exc:
                log.info("dial %s failed: %s", address, getattr(exc, "reason", None) or exc)
                self._backoff(address, failed=True)
                return
            self.store.peer_connected(address)
            session = Session(self, conn, outbound=True, address=address)
            started = trio.current_time()
            await self._run_session(session)
            # a session that was refused or broke off at once is a failure for the backoff, so that a peer
            # that blocks us, or one we keep disagreeing with, is not redialled every second
            lasted = trio.current_time() - started
            reason = (session.closing or "").removeprefix("peer closed: ")
            failed = lasted < self.config.min_good_session or reason.startswith(
                ("blocked:", "invalid:", "duplicate:", "unsupported:", "rate-limited:"))
            self._backoff(address, failed=failed)
        finally:
            self.dialing.discard(address)

    async def _run_session(self, session: Session) -> None:
        if session.key in self.blocked:
            session.close(f"blocked: {feed_id(session.key)} is blocked by this node")
        try:
            await session.run()
        finally:
            if self.sessions.get(session.key) is session:
                del self.sessions[session.key]
            self._notify()

    def register(self, session: Session) -> bool:
        """One connection per peer key, counted from its hello (a probe never sends one). When two meet,
        both ends keep the one dialled by the smaller key."""
        existing = self.sessions.get(session.key)
        if existing is not None and existing.closing is None:
            # the same dialler twice: the peer reconnected (the old connection may be dead without our
            # knowing, after a NAT rebinding or a laptop resume), so the new one wins
            if session.dialer > existing.dialer:
                return False
            existing.close("duplicate: replaced by a newer connection")
        self.sessions[session.key] = session
        log.info("peer %s connected (%s)", feed_id(session.key)[:12], "outbound" if session.outbound else "inbound")
        self._notify()
        return True

    def _ask_again(self) -> None:
        """Space is back: ask every peer again for what was dropped while the disk was full."""
        for session in list(self.sessions.values()):
            if session.closing is None and session.hello is not None:
                self._nursery_send(session, list(self.want_messages()))

    def status(self) -> dict[str, Any]:
        clock = self.store.clock()
        return {
            **self.disk.status(),
            "address": str(self.address) if self.address else None,
            "peers": [{
                "id": feed_id(s.key),
                "address": s.address or (s.hello.address if s.hello else None),
                "direction": "outbound" if s.outbound else "inbound",
                "in_sync": s.in_sync(clock),
                "received": s.received_entries,
                "sent": s.sent_entries,
            } for s in self.sessions.values() if s.closing is None],
        }


def _want_chunks(feeds: dict[bytes, int], drop: list[bytes], relay: bool) -> list[wire.Want]:
    """`want` messages of at most MAX_FEEDS_PER_WANT feeds and drops each (at least one message)."""
    limit = wire.MAX_FEEDS_PER_WANT
    items = list(feeds.items())
    count = max(1, -(-len(items) // limit), -(-len(drop) // limit))
    return [wire.Want(dict(items[i * limit:(i + 1) * limit]), tuple(drop[i * limit:(i + 1) * limit]), relay)
            for i in range(count)]


def _is_contact(entry: Entry) -> bool:
    content = entry.content()
    return content is not None and content.get("type") in CONTACT_TYPES
