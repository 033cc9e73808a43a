# Admission of inbound connections (spec/peers.md, "Admission") and the per-message deadline
# (spec/wire.md): the budgets and eviction rules on their own, the deadline on a real TCP connection, and
# crowds of hostile connections (tests/attackers.py) against a real `p2pnode run` process while an honest
# peer on 127.0.0.1 syncs a feed through them.
from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import nacl.signing
import pytest
import trio
import trio.testing
from attackers import AttackStats, attack, honest_sync
from memnodes import Net, chain
from nodeproc import NodeProcess, init_home
from test_node_defense import RawPeer, raw_key

from p2pnode.admission import (
    AWAITING_HELLO,
    ESTABLISHED,
    HANDSHAKE,
    Admission,
    AdmissionLimits,
    Budget,
    subnet_of,
)
from p2pnode.connection import MessageTimeout, client_handshake, server_handshake
from p2pnode.home import STORE_FILE
from p2pnode.store import Store
from protocol import msgframing, wire

WAIT_S = 60.0
ENTRIES = 300


def small_limits(**changes: object) -> AdmissionLimits:
    budget = Budget(total=4, per_ip=2, per_subnet=3)
    base = {"handshake": budget, "awaiting_hello": budget, "established": budget, "hello_timeout": 5.0}
    return AdmissionLimits(**{**base, **changes})  # type: ignore[arg-type]


def test_subnets() -> None:
    assert subnet_of("192.0.2.77") == "192.0.2.0/24"
    assert subnet_of("::ffff:192.0.2.77") == "192.0.2.0/24"
    assert subnet_of("2001:db8:1:2::5") == "2001:db8:1::/48"
    assert subnet_of(None) is None


async def test_an_address_over_its_share_replaces_its_own_oldest() -> None:
    admission = Admission(small_limits())
    first = admission.admit("10.0.0.1")
    second = admission.admit("10.0.0.1")
    other = admission.admit("10.0.9.1")
    assert first and second and other
    third = admission.admit("10.0.0.1")
    assert third is not None
    assert first.ended is not None and first.ended.startswith("rate-limited:")
    assert second.ended is None and other.ended is None
    assert admission.count(HANDSHAKE) == 3


async def test_an_address_that_reconnects_too_fast_is_hung_up_on_before_the_handshake() -> None:
    admission = Admission(small_limits(churn_limit=10.0))
    tickets = [admission.admit("10.5.0.1") for _ in range(10)]
    assert all(tickets)
    assert admission.admit("10.5.0.1") is None  # the 11th at once: refused, no handshake work
    assert admission.admit("10.5.0.2") is not None  # its neighbour is not
    assert admission.refused == 1


async def test_a_full_stage_replaces_the_most_crowded_network_first() -> None:
    admission = Admission(small_limits())
    honest = admission.admit("10.1.0.1")
    crowd = [admission.admit(ip) for ip in ("10.2.0.1", "10.2.0.2", "10.2.0.3")]
    assert honest and all(crowd)
    newcomer = admission.admit("10.3.0.1")  # the stage holds 4: one of the crowd makes room
    assert newcomer is not None and honest.ended is None
    assert sum(t.ended is not None for t in crowd if t) == 1
    assert admission.count(HANDSHAKE) == 4


async def test_established_useful_peers_are_kept_and_a_newcomer_is_refused() -> None:
    admission = Admission(small_limits())
    useful = []
    for i in range(4):
        ticket = admission.admit(f"10.{i}.0.1")
        assert ticket is not None
        assert admission.advance(ticket, AWAITING_HELLO) is None
        assert admission.advance(ticket, ESTABLISHED) is None
        ticket.attach(lambda reason: None, lambda: (5, trio.current_time()))  # exchanged entries just now
        useful.append(ticket)
    late = admission.admit("10.9.0.1")
    assert late is not None and admission.advance(late, AWAITING_HELLO) is None
    refusal = admission.advance(late, ESTABLISHED)
    assert refusal is not None and refusal.startswith("rate-limited:")
    assert all(t.ended is None for t in useful)
    # one of them exchanged nothing: that one is replaced
    useful[2].attach(lambda reason: None, lambda: (0, 0.0))
    again = admission.admit("10.9.0.2")
    assert again is not None and admission.advance(again, AWAITING_HELLO) is None
    assert admission.advance(again, ESTABLISHED) is None
    assert useful[2].ended is not None and [t.ended for t in (useful[0], useful[1], useful[3])] == [None] * 3


async def test_no_hello_in_time_ends_the_connection(autojump_clock: trio.testing.MockClock) -> None:
    admission = Admission(small_limits(hello_timeout=5.0))
    closed: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(admission.reap)
        ticket = admission.admit("10.0.0.1")
        assert ticket is not None and admission.advance(ticket, AWAITING_HELLO) is None
        ticket.attach(closed.append, lambda: (0, 0.0))
        started = trio.current_time()
        with trio.fail_after(60):
            while not closed:
                await trio.sleep(0.1)
        assert closed == ["timeout: no `hello` within 5 s"]
        assert 5.0 <= trio.current_time() - started < 5.2
        assert admission.count(AWAITING_HELLO) == 0
        nursery.cancel_scope.cancel()


async def test_a_dripped_message_hits_its_deadline_over_tcp() -> None:
    """A peer sends a message one byte at a time, each well within the idle timeout: the connection ends
    with `timeout:` once the message has taken longer than message_timeout."""
    server_key, client_key = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    outcome: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        async def handler(stream: trio.SocketStream) -> None:
            conn = await server_handshake(stream, server_key, idle_timeout=30.0, message_timeout=0.5)
            try:
                assert await conn.receive() == b"first, whole"
                await conn.receive()
            except MessageTimeout as exc:
                outcome.append(exc)
            await conn.aclose()
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = await client_handshake(stream, client_key, bytes(server_key.verify_key))
        await conn.send(b"first, whole")
        data = conn._encoder.encrypt(msgframing.encode_message(b"x" * 200))  # noqa: SLF001 - raw bytes to drip
        with trio.fail_after(WAIT_S):
            for i in range(len(data)):
                if outcome:
                    break
                try:
                    await stream.send_all(data[i:i + 1])
                except trio.BrokenResourceError:
                    break
                await trio.sleep(0.05)
            while not outcome:
                await trio.sleep(0.05)
        assert outcome[0].reason == "timeout: a message took more than 0.5 s to arrive"
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- against a real node

AUTHOR = nacl.signing.SigningKey(b"\x42" * 32)
# 64 attacking connections from 16 addresses: half share the honest peer's /24 (127.0.0.x), half come
# from as many other /24s
ATTACK_IPS = [f"127.0.0.{i}" for i in range(2, 10)] + [f"127.0.{i}.2" for i in range(10, 18)]


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node (not a relay) that holds ENTRIES entries of AUTHOR's feed, which it serves to anyone."""
    home = tmp_path_factory.mktemp("admission") / "victim"
    owner = init_home(home)
    from protocol.ids import parse_feed_id
    with Store(home / STORE_FILE, parse_feed_id(owner)) as store:
        result = store.ingest_verified(chain(AUTHOR, [f"post {i}" for i in range(ENTRIES)]))
        assert len(result.stored) == ENTRIES
    node = NodeProcess(home)
    yield node
    assert node.stop() == 0, node.log_text()


@pytest.mark.parametrize("kind", ["half-open", "no-hello", "drip"])
async def test_honest_peer_syncs_through_a_crowd(victim: NodeProcess, kind: str) -> None:
    stats = AttackStats()
    async with trio.open_nursery() as nursery:
        for ip in ATTACK_IPS:
            for _ in range(4):
                await nursery.start(attack, kind, victim.address, ip, stats)
        with trio.fail_after(WAIT_S):
            while stats.opened < 64 or (kind != "half-open" and stats.handshaken < 64):
                await trio.sleep(0.05)
        # the crowd is in; an honest peer from 127.0.0.1 (the /24 of half the crowd) comes and syncs
        with trio.fail_after(WAIT_S):
            received = await honest_sync(victim.address, bytes(AUTHOR.verify_key), ENTRIES)
        assert received == ENTRIES
        opened_during = stats.opened
        nursery.cancel_scope.cancel()
    assert victim.proc.poll() is None, victim.log_text()
    assert opened_during > 64, "the node never closed an attacking connection"
    if kind != "half-open":
        assert any(r.startswith("rate-limited: replaced") for r in stats.reasons), stats.reasons


# ---------------------------------------------------------------- deadlines in a node (virtual clock)


async def test_a_node_closes_a_peer_that_never_says_hello(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        node = await net.add(hello_timeout=5.0)
        peer = await RawPeer.connect(net, node, raw_key(1))
        started = trio.current_time()
        assert await peer.close_reason() == "timeout: no `hello` within 5 s"
        assert 5.0 <= trio.current_time() - started < 6.0
        assert node.admission.count(AWAITING_HELLO) == 0
        nursery.cancel_scope.cancel()


async def test_a_node_closes_a_peer_that_drips_a_message(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Hello, then a message sent a byte every 5 s (well within the 120 s idle timeout): closed with
    `timeout:` 30 s after its first byte."""
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        node = await net.add()
        peer = await RawPeer.connect(net, node, raw_key(2))
        await peer.hello()
        data = peer.conn._encoder.encrypt(  # noqa: SLF001 - the bytes of one message, to send one at a time
            msgframing.encode_message(wire.encode(wire.Ping(5))))

        async def drip() -> None:
            for i in range(len(data)):
                await peer.conn._stream.send_all(data[i:i + 1])  # noqa: SLF001
                await trio.sleep(5)
        nursery.start_soon(drip)
        started = trio.current_time()
        reason = await peer.close_reason(timeout=200)
        assert reason == "timeout: a message took more than 30 s to arrive", reason
        assert 30.0 <= trio.current_time() - started < 40.0
        nursery.cancel_scope.cancel()
