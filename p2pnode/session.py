# One authenticated connection to a peer: a reader, one writer, and the pipeline that verifies and stores
# what the peer sends (spec/replication.md, "A connection, step by step"). The reader never awaits a send:
# it hands what it received to the replication state (protocol/replication.py) or to the pipeline, and wakes
# the writer, which alone sends on the connection: control messages first, then entries, one batch at a time.
from __future__ import annotations

import ipaddress
import itertools
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from protocol import wire
from protocol.errors import ProtocolError, Reason
from protocol.ids import feed_id

from .admission import ESTABLISHED, Ticket
from .connection import Connection, IdleTimeout, TransportError
from .relaypolicy import heard_quota
from .render import log_text
from .store import Store
from .verifier import Pending

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("p2pnode.node")

MAX_BATCH_BYTES = 512 * 1024
_handles = itertools.count(1)


REQUEST_CHUNK = 1_000  # feeds of one want/have/stream/backfill handled between two checkpoints


class RequestBudget:
    """A token bucket of feed names: `rate` a second, up to `burst` at once. `take(n)` waits for them."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = trio.current_time()

    async def take(self, count: int) -> None:
        now = trio.current_time()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= count
        if self.tokens < 0:
            await trio.sleep(-self.tokens / self.rate)


class RequestBudgets:
    """The feed-name budgets, one per peer address: a peer that hangs up and reconnects (or is evicted and
    comes back) keeps what it spent instead of starting a fresh burst. IPv6 peers are counted per /64, which
    one host can fill with addresses. The least recently used of `size` addresses are forgotten."""

    def __init__(self, rate: float, burst: float, size: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self.size = size
        self.by_address: OrderedDict[str, RequestBudget] = OrderedDict()

    def for_ip(self, ip: str | None) -> RequestBudget:
        if ip is None:  # a memory stream or a proxied connection: no address to hold it to
            return RequestBudget(self.rate, self.burst)
        try:
            parsed = ipaddress.ip_address(ip)
            if parsed.version == 6 and parsed.ipv4_mapped is not None:  # an IPv4 peer on a dual-stack socket
                parsed = parsed.ipv4_mapped
            key = str(ipaddress.ip_network(f"{parsed}/64", strict=False)) if parsed.version == 6 else str(parsed)
        except ValueError:
            key = ip
        budget = self.by_address.get(key)
        if budget is None:
            budget = self.by_address[key] = RequestBudget(self.rate, self.burst)
            while len(self.by_address) > self.size:
                self.by_address.popitem(last=False)
        else:
            self.by_address.move_to_end(key)
        return budget


class PeerGone(Exception):
    """Ends a session. `kind` says why as a value; `reason` is the text sent in `close` and logged.
    `by_peer`: the peer closed (its own reason follows) or the transport ended."""

    def __init__(self, kind: Reason, message: str, *, by_peer: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.by_peer = by_peer

    @property
    def reason(self) -> str:
        if self.by_peer:
            return f"peer closed: {self.message}"
        return f"{self.kind.value}: {self.message}"

    @classmethod
    def from_error(cls, error: ProtocolError) -> PeerGone:
        return cls(error.kind, error.message)

    @classmethod
    def peer_closed(cls, their_reason: str) -> PeerGone:
        return cls(Reason.of(their_reason), their_reason, by_peer=True)


class Session:
    """One connection to a peer, from the handshake on. `handle` names it in the replication state."""

    def __init__(self, node: Node, conn: Connection, *, outbound: bool, address: str | None = None,
                 remote_ip: str | None = None) -> None:
        self.node = node
        self.remote_ip = remote_ip  # where a direct connection comes from: told to the peer in hello.observed
        self.checks_answered: list[float] = []  # when this peer asked us to dial it back (p2pnode/reach.py)
        self.outbox: deque[wire.Message] = deque()  # check/checked messages for the writer
        self.conn = conn
        self.outbound = outbound
        self.address = address
        self.handle = next(_handles)
        self.hello: wire.Hello | None = None
        self.closing: PeerGone | None = None
        self.cancel_scope: trio.CancelScope | None = None
        self.wake = trio.Event()
        self.pong_due: int | None = None
        self.ping_due: int | None = None
        self.ping_sent = trio.Event()  # set by the writer when the due ping has left
        self.receiving_since: float | None = None  # the reader waits on the network since then
        self.peers_due = True
        self.received_entries = 0
        self.request_budget = node.request_budgets.for_ip(remote_ip)
        self.ticket: Ticket | None = None  # an inbound connection's place (p2pnode/admission.py)
        self.rate_limited: str | None = None  # over a relay quota: closed with this once its batch is stored
        self.observed_progress = trio.current_time()
        # received batches flow: reader -> verifier -> ingester, two batches in flight at each step
        self.to_verify, self.from_reader = trio.open_memory_channel[wire.Entries](2)
        self.to_ingest, self.from_verifier = trio.open_memory_channel[Pending](2)

    @property
    def key(self) -> bytes:
        return self.conn.remote_key

    @property
    def dialer(self) -> bytes:
        return self.node.owner if self.outbound else self.key

    @property
    def sent_entries(self) -> int:
        state = self.node.replicator.peers.get(self.handle)
        return state.sent if state is not None else 0

    def poke(self) -> None:
        self.wake.set()

    def queue(self, message: wire.Message) -> None:
        """Have the writer send a reachability message (few per connection: p2pnode/reach.py bounds them)."""
        if len(self.outbox) < 16:
            self.outbox.append(message)
            self.poke()

    def close(self, gone: PeerGone) -> None:
        """End the session; the first reason given is the one sent to the peer."""
        if self.closing is None:
            self.closing = gone
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        node = self.node
        node.replicator.add_peer(self.handle, self.key)
        node.by_handle[self.handle] = self
        try:
            with trio.CancelScope() as scope:
                self.cancel_scope = scope
                if self.closing is not None:
                    scope.cancel()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guard, self._verifier)
                    nursery.start_soon(self._guard, self._ingester)
                    nursery.start_soon(self._guard, self._writer)
                    nursery.start_soon(self._guard, self._pinger)
                    nursery.start_soon(self._guard, self._reader)
        finally:
            del node.by_handle[self.handle]
            node.replicator.remove_peer(self.handle, trio.current_time())
            node.wake_touched()
            gone = self.closing or PeerGone(Reason.SHUTDOWN, "node stopping")
            if self.hello is not None:  # a probe (close before hello) was never a session
                log.info("peer %s disconnected: %s", feed_id(self.key)[:12], log_text(gone.reason))
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                if not gone.by_peer:
                    try:
                        await self.conn.send(wire.encode(wire.Close(gone.reason)))
                    except (TransportError, ProtocolError):
                        pass
                await self.conn.aclose()

    async def _guard(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run one of the session's tasks; a PeerGone from any of them ends the whole session."""
        try:
            await task()
        except PeerGone as exc:
            self.close(exc)
        except ProtocolError as exc:
            self.close(PeerGone.from_error(exc))
        except Exception:  # a bug must end this session, not the node and every other session with it
            log.exception("error in the session with %s", feed_id(self.key)[:12])
            self.close(PeerGone(Reason.INTERNAL, "error in this node; see its log"))

    # ------------------------------------------------------------ the one writer

    async def _send(self, message: wire.Message) -> None:
        timeout = self.node.config.send_timeout
        try:
            data = wire.encode(message)
            with trio.fail_after(timeout):
                await self.conn.send(data)
            self.node.stats.messages_out += 1
            self.node.stats.bytes_out += len(data)
        except TransportError as exc:
            raise PeerGone(Reason.CLOSED, f"send failed: {exc.reason}", by_peer=True) from None
        except trio.TooSlowError:
            raise PeerGone(Reason.TIMEOUT, f"the peer read nothing for {timeout:g} s") from None

    def _next_control(self) -> wire.Message | None:
        if self.pong_due is not None:
            nonce, self.pong_due = self.pong_due, None
            return wire.Pong(nonce)
        if self.ping_due is not None:
            nonce, self.ping_due = self.ping_due, None
            self.ping_sent.set()  # the writer sends it next: the pinger's deadline counts from about now
            return wire.Ping(nonce)
        if self.outbox:
            return self.outbox.popleft()
        return self.node.replicator.next_message(self.handle)

    async def _writer(self) -> None:
        node = self.node
        quota = node.relay_policy.quota_for(self.key, trio.current_time()) if node.config.relay else None
        await self._send(wire.Hello(wire.PROTOCOL_VERSION, (), str(node.address) if node.address else None,
                                    node.config.relay, self.remote_ip, quota))
        while True:
            message = self._next_control()
            if message is not None:
                await self._send(message)
                continue
            if self.peers_due:
                self.peers_due = False
                await self._send_peers()
                continue
            job = node.replicator.next_feed(self.handle)
            if job is not None:
                await self._send_entries(*job)
                continue
            past = node.replicator.next_backfill(self.handle)
            if past is not None:  # the new first, the past behind it
                await self._send_past(*past)
                continue
            repair = await node.repair.next_message(self)  # fetches, and answers to the peer's (repair.py)
            if repair is not None:
                await self._send(repair)
                continue
            await self.wake.wait()
            self.wake = trio.Event()

    async def _send_peers(self) -> None:
        limit = wire.MAX_ADDRESSES_PER_MESSAGE
        addresses = [a for a in await self.node.db.read(Store.working_peers, limit + 1) if a != self.address]
        if addresses:
            await self._send(wire.Peers(tuple(addresses[:limit])))

    async def _send_entries(self, author: bytes, since: int) -> None:
        node = self.node
        rows = await node.db.read(Store.raw_entries_after, author, since, node.config.batch_entries)
        if author in node.blocked:
            return  # blocked while we read
        if not rows:
            node.replicator.not_held(self.handle, author)
            return
        batch = _within_batch_size(rows)
        await self._send(wire.Entries(tuple(batch)))
        node.replicator.entries_sent(self.handle, author, rows[len(batch) - 1][0], len(batch))

    async def _send_past(self, author: bytes, before: int) -> None:
        node = self.node
        rows = await node.db.read(Store.raw_entries_before, author, before, node.config.batch_entries)
        if author in node.blocked or not rows:
            node.replicator.backfill_sent(self.handle, author, 1, 0)
            return
        batch = _within_batch_size(rows[::-1])[::-1]  # the entries nearest `before`, in increasing seq order
        await self._send(wire.Entries(tuple(batch)))
        node.replicator.backfill_sent(self.handle, author, rows[len(rows) - len(batch)][0], len(batch))

    async def _pinger(self) -> None:
        config = self.node.config
        for nonce in itertools.count(1):
            await trio.sleep(config.ping_interval)
            self.ping_sent = trio.Event()
            self.ping_due = nonce
            self.poke()
            await self.ping_sent.wait()
            await self._await_answer(trio.current_time(), config.pong_timeout)

    async def _await_answer(self, sent_at: float, timeout: float) -> None:
        """Return once any bytes arrive after the ping (a long message on a slow link counts as it comes);
        raise PeerGone when the reader has waited on the network for `timeout` since the ping left with
        nothing arriving. Time the reader spends held back by our own pipeline (backpressure) does not count
        against the peer."""
        while self.conn.last_received < sent_at:
            waiting = self.receiving_since
            if waiting is not None and trio.current_time() - max(waiting, sent_at) >= timeout:
                raise PeerGone(Reason.TIMEOUT, f"no answer to a ping for {timeout:g} s")
            start = max(waiting if waiting is not None else trio.current_time(), sent_at)
            await trio.sleep(max(start + timeout - trio.current_time(), timeout / 20))

    # ------------------------------------------------------------ the reader

    async def _reader(self) -> None:
        node = self.node
        first = True
        last_exchange = trio.current_time()
        while True:
            try:
                self.receiving_since = trio.current_time()
                data = await self.conn.receive()
                self.receiving_since = None
            except IdleTimeout:
                raise PeerGone(Reason.TIMEOUT, f"nothing received for {node.config.idle_timeout:g} s") from None
            except TransportError as exc:
                kind = Reason.of(exc.reason)
                if kind in (Reason.TOO_LARGE, Reason.INVALID, Reason.TIMEOUT):  # the peer broke the rules: say so
                    raise PeerGone(kind, exc.reason.split(":", 1)[-1].strip()) from None
                raise PeerGone(Reason.CLOSED, exc.reason, by_peer=True) from None
            node.stats.messages_in += 1
            node.stats.bytes_in += len(data)
            message = wire.decode(data)
            if first and not isinstance(message, (wire.Hello, wire.Close)):
                raise wire.WireError("the first message must be hello")
            first = False
            await self._handle(message)
            if trio.current_time() - last_exchange > node.config.peer_exchange_interval:
                last_exchange = trio.current_time()
                self.peers_due = True
                self.poke()

    async def _handle(self, message: wire.Message) -> None:
        node = self.node
        if isinstance(message, wire.Hello):
            if self.hello is not None:
                raise wire.WireError("a second hello")
            self.hello = message
            heard_quota(node.replicator, self.handle, message)  # what we may offer it (relaypolicy.py)
            if self.ticket is not None and (refusal := node.admission.advance(self.ticket, ESTABLISHED)):
                raise PeerGone(Reason.RATE_LIMITED, refusal.split(": ", 1)[-1])
            node.peers.register(self)
            if not self.outbound:
                await node.peers.learn_address(message.address, self.key)
            node.reach.hello_received(self, message)
        elif isinstance(message, wire.Want | wire.Have | wire.Stream | wire.Backfill):
            await self._feed_request(message)
        elif isinstance(message, wire.Entries):
            await self.to_verify.send(message)  # waits only for our own pipeline: backpressure on the peer
        elif isinstance(message, wire.Fetch):
            node.repair.on_fetch(self, message)
        elif isinstance(message, wire.Peers):
            await node.peer_book.learn(node.db, message.addresses, self.key)  # caps: p2pnode/peerbook.py
        elif isinstance(message, wire.Ping):
            self.pong_due = message.nonce
            self.poke()
        elif isinstance(message, wire.Close):
            raise PeerGone.peer_closed(message.reason)
        elif isinstance(message, wire.Check):
            node.reach.answer_check(self, message)
        elif isinstance(message, wire.Checked):
            node.reach.checked(self, message)
        # Pong and unknown message types need nothing
        node.wake_touched()

    async def _feed_request(self, message: wire.Want | wire.Have | wire.Stream | wire.Backfill) -> None:
        """Messages that name feeds cost the replicator a few microseconds per feed: a peer gets a budget of
        feed names per second (reading from it waits when it is spent: backpressure, not a disconnect), and a
        long message is handled in chunks with a checkpoint between, so no peer holds the loop for long."""
        node = self.node
        replicator = node.replicator
        feeds = list(message.feeds.items())
        keys = list(getattr(message, "drop", ()) or getattr(message, "stop", ()))
        await self.request_budget.take(len(feeds) + len(keys))
        step = REQUEST_CHUNK
        for start in range(0, max(len(feeds), len(keys), 1), step):
            part, gone = dict(feeds[start:start + step]), tuple(keys[start:start + step])
            now = trio.current_time()
            if isinstance(message, wire.Want):
                replicator.on_want(self.handle, wire.Want(part, gone, message.all), now)
            elif isinstance(message, wire.Have):
                replicator.on_have(self.handle, wire.Have(part), now)
            elif isinstance(message, wire.Stream):
                replicator.on_stream(self.handle, wire.Stream(part, gone))
            else:
                replicator.on_backfill(self.handle, wire.Backfill(part))
            node.wake_touched()
            await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------ the pipeline

    async def _verifier(self) -> None:
        """Stage 1: drop unwanted entries, start verifying the rest (in worker processes when configured)."""
        async for message in self.from_reader:
            keep = self.node.ingest.select_wanted(message)
            node = self.node
            if node.config.relay:  # new feeds within the relay's quotas (p2pnode/relaypolicy.py)
                keep, limited = await node.relay_policy.select(node.db, self.key, node.wanted, keep,
                                                               trio.current_time())
                self.rate_limited = self.rate_limited or limited
            await self.to_ingest.send(self.node.verifier.start(keep))

    async def _ingester(self) -> None:
        """Stage 2: store verified entries in order; the first invalid one ends the session."""
        async for pending in self.from_verifier:
            entries, error, unchecked = await pending.result()
            await self.node.ingest.store_from_peer(self, entries, error, unchecked)
            if self.rate_limited is not None:
                raise PeerGone(Reason.RATE_LIMITED, self.rate_limited.split(": ", 1)[-1])


def _within_batch_size(rows: list[tuple[int, bytes, bytes, bytes | None]]) -> list[tuple[bytes, bytes, bytes | None]]:
    """The leading rows that fit in one `entries` message of MAX_BATCH_BYTES (at least one)."""
    batch: list[tuple[bytes, bytes, bytes | None]] = []
    size = 0
    for _, header, signature, payload in rows:
        entry_size = len(header) + len(signature) + len(payload or b"") + 16
        if batch and size + entry_size > MAX_BATCH_BYTES:
            break
        batch.append((header, signature, payload))
        size += entry_size
    return batch
