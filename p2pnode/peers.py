# The peer set (spec/peers.md): accepting and dialling connections, one session per peer key, backoff,
# checking announced addresses before they are shared, the peer book, and the dial policy: every ordinary
# node keeps a connection to a relay (the relays want every feed, so through them every feed reaches every
# node that wants it) and fills its other outbound slots with random peers; relays dial each other.
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from protocol.errors import ProtocolError, Reason
from protocol.ids import Address, feed_id, parse_address

from .admission import AWAITING_HELLO, peer_ip
from .connection import TransportError, client_handshake, server_handshake
from .reach import probe_address, remote_ip
from .render import log_text
from .seeds import GIVE_UP_S, classify
from .session import PeerGone, Session
from .store import Store

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("p2pnode.node")

# reasons after which a dial counts as failed whatever the session lasted
PROBLEMS_RELOAD_S = 5.0  # how soon a running node sees a dial problem cleared by `seeds add`
_REFUSALS = {Reason.BLOCKED, Reason.INVALID, Reason.DUPLICATE, Reason.UNSUPPORTED, Reason.RATE_LIMITED}


class Peers:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.sessions: dict[bytes, Session] = {}  # registered (hello received), by peer key
        self.inbound = 0
        self.dialing: dict[str, bytes] = {}  # address -> key, until its session ends
        self.probing: set[str] = set()
        self.next_dial: dict[str, float] = {}
        self.failing: dict[str, bytes] = {}  # addresses whose last dial failed -> the key they should prove
        self.relays: set[bytes] = set()  # keys whose hello said relay
        self.network_back = trio.Event()  # set when a dial succeeds after failures: redial the rest at once

    @property
    def config(self) -> Any:
        return self.node.config

    # ------------------------------------------------------------ sessions

    async def run_session(self, session: Session) -> None:
        node = self.node
        if session.key in node.blocked:
            session.close(PeerGone(Reason.BLOCKED, f"{feed_id(session.key)} is blocked by this node"))
        try:
            await session.run()
        finally:
            if self.sessions.get(session.key) is session:
                del self.sessions[session.key]
            node.notify()

    def register(self, session: Session) -> None:
        """One connection per peer key, counted from its hello (a probe never sends one). When two meet,
        both ends keep the one dialled by the smaller key. Raises PeerGone for the one that loses."""
        if session.key in self.node.blocked:
            raise PeerGone(Reason.BLOCKED, f"{feed_id(session.key)} is blocked by this node")
        existing = self.sessions.get(session.key)
        if existing is not None and existing.closing is None:
            # the same dialler twice: the peer reconnected (the old connection may be dead without our
            # knowing, after a NAT rebinding or a laptop resume), so the new one wins
            if session.dialer > existing.dialer:
                raise PeerGone(Reason.DUPLICATE, "already connected to this peer")
            existing.close(PeerGone(Reason.DUPLICATE, "replaced by a newer connection"))
        self.sessions[session.key] = session
        assert session.hello is not None
        if session.hello.relay:
            self.relays.add(session.key)
        log.info("peer %s connected (%s)", feed_id(session.key)[:12], "outbound" if session.outbound else "inbound")
        if not session.outbound and session.key in self.failing.values():
            self._network_is_back()  # a peer we could not reach reached us: the way between us is open again
        self.node.notify()

    def close_blocked(self, blocked: set[bytes]) -> None:
        for session in list(self.sessions.values()):
            if session.key in blocked:
                session.close(PeerGone(Reason.BLOCKED, f"{feed_id(session.key)} is blocked by this node"))

    # ------------------------------------------------------------ inbound

    async def accept(self, stream: trio.abc.Stream) -> None:
        await self._contained(self._accept, stream)

    async def _accept(self, stream: trio.abc.Stream) -> None:
        config = self.config
        admission = self.node.admission  # budgets, deadlines, eviction: p2pnode/admission.py
        ticket = admission.admit(peer_ip(stream))
        if ticket is None:
            await trio.aclose_forcefully(stream)
            return
        self.inbound += 1
        try:
            with ticket:
                try:
                    conn = await server_handshake(stream, self.node.key, network_key=config.network_key,
                                                  handshake_timeout=config.handshake_timeout,
                                                  idle_timeout=config.idle_timeout,
                                                  message_timeout=config.message_timeout)
                except TransportError as exc:
                    log.info("inbound handshake failed: %s", log_text(exc.reason))
                    return
                session = Session(self.node, conn, outbound=False, remote_ip=remote_ip(stream))
                session.ticket = ticket
                ticket.attach(lambda reason: session.close(PeerGone(Reason.of(reason), reason.split(": ", 1)[-1])),
                              lambda: (session.received_entries + session.sent_entries, conn.last_received))
                if refusal := admission.advance(ticket, AWAITING_HELLO):
                    session.close(PeerGone(Reason.RATE_LIMITED, refusal.split(": ", 1)[-1]))
                await self.run_session(session)
        finally:
            self.inbound -= 1

    # ------------------------------------------------------------ outbound

    async def dial_loop(self) -> None:
        node = self.node
        next_forget = next_problems = trio.current_time()
        node.reach.dial_problems.load(await node.db.read(Store.peer_problems))  # kept from earlier runs
        while True:
            if trio.current_time() >= next_forget:
                await node.db.write(Store.forget_peers, self.config.max_failures, self.config.peer_book_size)
                next_forget = trio.current_time() + self.config.forget_interval
            if trio.current_time() >= next_problems:  # problems cleared by `seeds add` in another process
                read_at = time.time()
                node.reach.dial_problems.keep_stored(await node.db.read(Store.peer_problems), read_at)
                next_problems = trio.current_time() + PROBLEMS_RELOAD_S
            target = self.config.relay_outbound_target if self.config.relay else self.config.outbound_target
            if len(self.dialing) < target:
                candidates = await node.db.read(Store.dial_candidates, self.config.peer_book_size)
                for address, key in self._choose(candidates, target - len(self.dialing)):
                    self.dialing[address] = key
                    assert node.nursery is not None
                    node.nursery.start_soon(self._contained, self._dial, address, key)
            with trio.move_on_after(self.config.dial_interval):
                await self.network_back.wait()
                self.network_back = trio.Event()

    def _choose(self, candidates: Sequence[tuple[str, bytes, str]], slots: int) -> list[tuple[str, bytes]]:
        """Which addresses to dial now: a relay (or a seed) first when no relay is connected or being
        dialled; then peers in random order, relays last (their capacity is shared by everyone)."""
        node = self.node
        now = trio.current_time()
        dialing_keys = set(self.dialing.values())
        busy = set(self.sessions) | dialing_keys
        usable = [(address, key, source) for address, key, source in candidates
                  if key not in busy and key != node.owner and key not in node.blocked
                  and address not in self.dialing and self.next_dial.get(address, 0) <= now
                  and not node.reach.dial_problems.given_up(address)]
        node.rng.shuffle(usable)
        # fewest failures first keeps working addresses ahead of dead ones (the store ordered by that)
        order = {address: index for index, (address, _, _) in enumerate(candidates)}
        usable.sort(key=lambda c: order[c[0]] // 8)
        relay_like = [c for c in usable if c[1] in self.relays or c[2] == "seed"]
        others = [c for c in usable if not (c[1] in self.relays or c[2] == "seed")]
        have_relay = any(k in self.relays for k in busy) or any(
            s.hello is not None and s.hello.relay for s in self.sessions.values())
        chosen: list[tuple[str, bytes, str]] = []
        if self.config.relay:
            chosen = (relay_like + others)[:slots]
        else:
            if not have_relay and relay_like and not (dialing_keys & self.relays):
                chosen.append(relay_like.pop(0))
            chosen += (others + relay_like)[: slots - len(chosen)]
        picked: list[tuple[str, bytes]] = []
        keys: set[bytes] = set()
        for address, key, _ in chosen:
            if key not in keys and node.peer_book.may_dial(address):  # untried addresses: at a bounded rate
                keys.add(key)
                picked.append((address, key))
        return picked

    def _backoff_delay(self, failures: int) -> float:
        delay = min(self.config.backoff_base * 2 ** min(failures, 20), self.config.backoff_max)
        return delay * self.node.rng.uniform(0.5, 1.5)

    async def _backoff(self, address: str, failed: bool) -> None:
        node = self.node
        failures = await node.db.read(Store.peer_failures, address) + 1 if failed else 0
        delay = self._backoff_delay(failures)
        self.next_dial[address] = trio.current_time() + delay
        await node.db.write(Store.peer_attempted, address, int((trio.current_time() + delay) * 1000), failed)

    async def _dial(self, address: str, key: bytes) -> None:
        node = self.node
        config = self.config
        try:
            try:
                target = parse_address(address)
                with trio.fail_after(config.handshake_timeout):
                    stream = await node.network.dial(target.host, target.port)
                conn = await client_handshake(stream, node.key, key, network_key=config.network_key,
                                              handshake_timeout=config.handshake_timeout,
                                              idle_timeout=config.idle_timeout,
                                              message_timeout=config.message_timeout)
            except (OSError, ValueError, ProtocolError, trio.TooSlowError, TransportError) as exc:
                record = node.reach.dial_problems.failed(address, classify(address, key, exc,
                                                                           config.handshake_timeout))
                log.log(logging.WARNING if record.given_up else logging.INFO, "dial %s failed: %s%s",
                        log_text(address), log_text(record.failure.text),
                        f"; not dialled again for {GIVE_UP_S:g} s" if record.given_up else "")
                await node.db.write(Store.peer_problem, address, record.failure.kind, record.failure.text,
                                    record.count, int(record.at * 1000), int(record.retry_at * 1000))
                self.failing[address] = key
                await self._backoff(address, failed=True)
                return
            self.failing.pop(address, None)
            node.reach.dial_problems.connected(address)
            if await node.db.read(Store.peer_failures, address) > 0:
                self._network_is_back()
            await node.db.write(Store.peer_connected, address)
            session = Session(node, conn, outbound=True, address=address, remote_ip=remote_ip(stream))
            started = trio.current_time()
            await self.run_session(session)
            # a session that was refused or broke off at once is a failure for the backoff, so that a peer
            # that blocks us, or one we keep disagreeing with, is not redialled every second
            lasted = trio.current_time() - started
            kind = session.closing.kind if session.closing else Reason.SHUTDOWN
            failed = lasted < config.min_good_session or kind in _REFUSALS
            await self._backoff(address, failed=failed)
        finally:
            self.dialing.pop(address, None)

    def _network_is_back(self) -> None:
        """A peer that failed before answers again, or connects to us (a partition healed, the laptop woke):
        the addresses waiting on their backoff are tried at once instead of at their timers."""
        self.next_dial.clear()
        self.network_back.set()

    # ------------------------------------------------------------ addresses

    async def learn_address(self, text: str | None, key: bytes) -> None:
        """Remember an address a peer announced for itself, if it names the key that peer proved, and check
        that it answers before sharing it (a probe)."""
        node = self.node
        if not text:
            return
        try:
            address = parse_address(text)
        except ProtocolError:
            return
        if address.key != key or key == node.owner or key in node.blocked:
            return
        text = str(address)
        await node.db.write(Store.add_peer, text, address.key, "hello")
        if len(self.probing) < self.config.max_probes and text not in self.probing and text not in await \
                node.db.read(Store.working_peers, self.config.peer_book_size):
            self.probing.add(text)
            assert node.nursery is not None
            node.nursery.start_soon(self._contained, self._probe, address)

    async def _probe(self, address: Address) -> None:
        """Check that a peer's announced address answers with its key, so that it may be shared: dial,
        handshake, say `close` before any hello (the other side never counts it as a session), hang up."""
        node = self.node
        config = self.config
        try:
            problem = await probe_address(node.network, node.key, address, config.network_key,
                                          config.handshake_timeout, "probe: address verified")
            if problem is None:
                await node.db.write(Store.peer_connected, str(address))
            else:
                log.info("address %s announced by its peer does not answer: %s", log_text(str(address)),
                         log_text(problem))
        finally:
            self.probing.discard(str(address))

    async def _contained(self, task: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run a task about one peer or address; a bug in it is logged and ends that task only."""
        try:
            await task(*args)
        except Exception:
            log.exception("error in %s; the node goes on", task.__name__)
