# A network partition on the in-process network under a virtual clock: links to a cut-off host go silent (what
# is sent waits, as TCP holds data while packets are dropped). A silent link is found dead by the ping
# deadline, not the idle timeout; once the partition heals, the first connection across it makes the nodes
# on either side redial at once instead of waiting on their backoff timers.
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing
from memnodes import Net, wait_until

from p2pnode.node import Node
from p2pnode.session import PeerGone, Session
from protocol.errors import Reason


def host(node: Node) -> str:
    return node.config.listen_host


def connected(one: Node, other: Node) -> bool:
    return other.owner in one.peers.sessions and one.owner in other.peers.sessions


async def test_a_silent_link_is_found_dead_by_the_ping_deadline(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        a = await net.add()
        b = await net.add([a.address])
        await wait_until(lambda: connected(a, b))
        session = b.peers.sessions[a.owner]
        cut_at = trio.current_time()
        net.network.cut(host(a))
        await wait_until(lambda: session.closing is not None, timeout=300)
        found_after = trio.current_time() - cut_at
        assert session.closing is not None and session.closing.kind is Reason.TIMEOUT
        assert "no answer to a ping" in session.closing.reason
        # within a ping interval and the deadline (50 s), where the idle timeout alone took 120 s
        assert found_after <= b.config.ping_interval + b.config.pong_timeout + 1 < b.config.idle_timeout
        nursery.cancel_scope.cancel()


class ReaderState:
    """What Session._await_answer reads of a session: when bytes last arrived on its connection, and since
    when the reader waits on the network (None while our own pipeline holds it back)."""

    def __init__(self) -> None:
        self.conn = SimpleNamespace(last_received=-1.0)
        self.receiving_since: float | None = None


async def test_the_ping_deadline_counts_only_time_spent_waiting_on_the_network(
        autojump_clock: trio.testing.MockClock) -> None:
    reader = ReaderState()
    sent_at = trio.current_time()
    with trio.move_on_after(100):  # held back by our pipeline for 100 s: the peer is not to blame
        await Session._await_answer(reader, sent_at, 20.0)  # type: ignore[arg-type]
    assert trio.current_time() - sent_at >= 100
    reader.receiving_since = waiting_from = trio.current_time()
    with pytest.raises(PeerGone, match="no answer to a ping for 20 s"):
        await Session._await_answer(reader, sent_at, 20.0)  # type: ignore[arg-type]
    assert 20 <= trio.current_time() - waiting_from <= 21

    async def answer_after(delay: float) -> None:
        await trio.sleep(delay)
        reader.conn.last_received = trio.current_time()  # some bytes of a long message, say

    reader.receiving_since = sent_at = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer_after, 19.0)
        await Session._await_answer(reader, sent_at, 20.0)  # type: ignore[arg-type]
    assert trio.current_time() - sent_at <= 20  # checked at the deadline: something came, so no close


async def test_when_a_partition_heals_the_first_connection_across_it_brings_the_others_back_at_once(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(tmp_path, nursery)
        a = await net.add()
        b = await net.add([a.address])
        c = await net.add([a.address, b.address])
        await wait_until(lambda: connected(a, b) and connected(a, c) and connected(b, c))
        net.network.cut(host(a))
        await wait_until(lambda: not connected(a, b) and not connected(a, c), timeout=300)
        crossing = [(a, b), (b, a), (a, c), (c, a)]

        def timers(one: Node, other: Node) -> float:
            address = str(other.address)
            return one.peers.next_dial.get(address, 0.0)

        # let the backoff grow: every dial across the partition waits on a timer well ahead
        await wait_until(lambda: all(timers(x, y) - trio.current_time() > 100 for x, y in crossing), timeout=3000)
        scheduled = {(x, y): timers(x, y) for x, y in crossing}  # a redial clears them: keep them first
        net.network.restore(host(a))
        healed_at = trio.current_time()
        await wait_until(lambda: connected(a, b) or connected(a, c), timeout=600)
        first_at = trio.current_time()
        late_pair = (a, c) if connected(a, b) else (a, b)
        # without the redial the other pair would wait on its own timers, later than this
        own_timer = min(scheduled[late_pair], scheduled[late_pair[::-1]])
        assert own_timer > first_at + 5, "the scenario needs the other pair's timers to be later"
        await wait_until(lambda: connected(*late_pair), timeout=600)
        assert trio.current_time() <= first_at + 5
        assert first_at - healed_at <= 310  # the first connection across waits on a timer (backoff_max 300 s)
        nursery.cancel_scope.cancel()
