# Admission of inbound connections (spec/peers.md, "Admission"): three stages (in the handshake, handshaken
# but no `hello` yet, established), each with its own budget in total, per IP and per /24 (IPv6: /48), a
# deadline for the first two stages, and eviction of the least useful connection when a stage is full, so
# that no crowd of connections can lock honest peers out. Outbound connections never pass through here.
from __future__ import annotations

import ipaddress
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

import trio

HANDSHAKE = "handshake"
AWAITING_HELLO = "awaiting-hello"
ESTABLISHED = "established"
STAGES = (HANDSHAKE, AWAITING_HELLO, ESTABLISHED)


@dataclass(frozen=True)
class Budget:
    """How many inbound connections one stage holds: in all, from one IP, from one /24 (IPv6 /48)."""

    total: int
    per_ip: int
    per_subnet: int


@dataclass(frozen=True)
class AdmissionLimits:
    """The defaults are the ones spec/peers.md names."""

    handshake: Budget = Budget(total=16, per_ip=4, per_subnet=8)
    awaiting_hello: Budget = Budget(total=16, per_ip=4, per_subnet=8)
    established: Budget = Budget(total=32, per_ip=8, per_subnet=16)
    handshake_timeout: float = 10.0
    hello_timeout: float = 10.0
    # an established peer that has exchanged entries is evicted for a newcomer only after this long idle
    protect_useful: float = 60.0
    # how fast an address's count of recent connections decays (its "churn"), and how many addresses
    # are remembered for it
    churn_decay: float = 10.0
    churn_addresses: int = 4096
    # an address whose churn exceeds this (about 6 new connections a second, sustained) is hung up on at
    # once, before any handshake work, until it calms down
    churn_limit: float = 64.0

    def budget(self, stage: str) -> Budget:
        return {HANDSHAKE: self.handshake, AWAITING_HELLO: self.awaiting_hello, ESTABLISHED: self.established}[stage]


def subnet_of(ip: str | None) -> str | None:
    """The /24 of an IPv4 address, the /48 of an IPv6 one (an IPv4-mapped IPv6 address counts as IPv4)."""
    if ip is None:
        return None
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def peer_ip(stream: trio.abc.Stream) -> str | None:
    """The remote IP of a TCP stream; None for other streams (memory streams in simulations)."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return None
    try:
        host = sock.getpeername()[0]
    except (OSError, IndexError, TypeError):
        return None
    if isinstance(host, str) and host.startswith("::ffff:"):
        host = host.removeprefix("::ffff:")
    return host if isinstance(host, str) else None


@dataclass(eq=False)
class Ticket:
    """One inbound connection's place. Use as a context manager around everything done with the
    connection: leaving it frees the place; eviction and deadlines end it (through `close`, once the
    node has a session for it, else by cancelling the block)."""

    admission: Admission
    ip: str | None
    subnet: str | None
    stage: str = HANDSHAKE
    opened: float = 0.0
    deadline: float = math.inf
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    close: Callable[[str], None] | None = None
    # (entries exchanged so far, when bytes last arrived): what makes an established peer worth keeping
    activity: Callable[[], tuple[int, float]] | None = None
    ended: str | None = None  # why admission ended the connection, if it did

    def __enter__(self) -> Ticket:
        self.scope.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        try:
            return bool(self.scope.__exit__(exc_type, exc, tb))
        finally:
            self.admission.release(self)

    def attach(self, close: Callable[[str], None], activity: Callable[[], tuple[int, float]]) -> None:
        """The node has a session for this connection: end it through `close` from now on."""
        self.close, self.activity = close, activity

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
        self.admission.release(self)
        if self.close is not None:
            self.close(reason)
        else:
            self.scope.cancel()


class Admission:
    """The inbound connections of one node, by stage."""

    def __init__(self, limits: AdmissionLimits | None = None) -> None:
        self.limits = limits or AdmissionLimits()
        self.tickets: dict[str, set[Ticket]] = {stage: set() for stage in STAGES}
        self.refused = 0
        self.evicted = 0
        self._churn: dict[str | None, tuple[float, float]] = {}  # ip -> (recent connections, as of when)
        self._changed = trio.Event()

    def count(self, stage: str) -> int:
        return len(self.tickets[stage])

    def admit(self, ip: str | None) -> Ticket | None:
        """A new inbound connection from `ip`: its ticket (in the handshake stage), or None when that IP or
        its subnet already holds its share of handshakes (refuse it: close at once)."""
        ticket = Ticket(self, ip, subnet_of(ip), opened=trio.current_time())
        self._count_churn(ip, ticket.opened)
        if ip is not None and self.churn(ip, ticket.opened) > self.limits.churn_limit:
            self.refused += 1
            return None
        if self._enter(ticket, HANDSHAKE) is not None:
            self.refused += 1
            return None
        ticket.deadline = ticket.opened + self.limits.handshake_timeout + 1.0  # connection.py's own is first
        self._wake()
        return ticket

    def advance(self, ticket: Ticket, stage: str) -> str | None:
        """Move a connection to `stage` (AWAITING_HELLO after the handshake, ESTABLISHED after `hello`).
        Returns None when admitted, else the reason to close it with."""
        if ticket.ended is not None:
            return ticket.ended
        self.tickets[ticket.stage].discard(ticket)
        refusal = self._enter(ticket, stage)
        if refusal is not None:
            ticket.ended = refusal
            self.refused += 1
            return refusal
        now = trio.current_time()
        ticket.deadline = now + self.limits.hello_timeout if stage == AWAITING_HELLO else math.inf
        self._wake()
        return None

    def release(self, ticket: Ticket) -> None:
        self.tickets[ticket.stage].discard(ticket)

    def _enter(self, ticket: Ticket, stage: str) -> str | None:
        """Place `ticket` in `stage`. Where its address, its network or the whole stage is at its budget, the
        least useful connection of that group makes room; None, or the reason there is no room."""
        budget = self.limits.budget(stage)
        holders = self.tickets[stage]
        groups: list[tuple[Callable[[Ticket], bool], int, str]] = []
        if ticket.ip is not None:
            groups.append((lambda t: t.ip == ticket.ip, budget.per_ip, "from one address"))
            groups.append((lambda t: t.subnet == ticket.subnet, budget.per_subnet, "from one network"))
        groups.append((lambda t: True, budget.total, "in all"))
        for member, limit, what in groups:
            while (group := [t for t in holders if member(t)]) and len(group) >= limit:
                victim = self._least_useful(stage, group)
                if victim is None:
                    return f"rate-limited: no room for another peer {what}; retry in a minute"
                self.evicted += 1
                victim.end(f"rate-limited: replaced by a newer connection ({limit} {what} at most)")
            if limit <= 0:
                return f"rate-limited: no room for another peer {what}"
        ticket.stage = stage
        holders.add(ticket)
        return None

    def churn(self, ip: str | None, now: float) -> float:
        """How many connections `ip` opened lately (each one counts 1, decaying by e every churn_decay s)."""
        count, when = self._churn.get(ip, (0.0, now))
        return count * math.exp(-(now - when) / self.limits.churn_decay)

    def _count_churn(self, ip: str | None, now: float) -> None:
        self._churn[ip] = (self.churn(ip, now) + 1.0, now)
        if len(self._churn) > self.limits.churn_addresses:  # forget the calmest half
            calm = sorted(self._churn, key=lambda a: self.churn(a, now))
            for address in calm[: len(calm) // 2]:
                del self._churn[address]

    def _least_useful(self, stage: str, group: list[Ticket]) -> Ticket | None:
        """The connection of `group` a newcomer replaces: one with nothing exchanged first; among those, the
        one from the address that opened the most connections lately (a crowd that reconnects as fast as
        it is closed replaces its own), then the most crowded network's, then the most crowded address's,
        then the oldest idle. An established peer that has exchanged entries and spoke recently is never
        replaced."""
        holders = self.tickets[stage]
        subnets = Counter(t.subnet for t in holders)
        ips = Counter(t.ip for t in holders)
        now = trio.current_time()
        candidates = []
        for t in group:
            exchanged, last = t.activity() if t.activity is not None else (0, t.opened)
            if stage == ESTABLISHED and exchanged and now - last < self.limits.protect_useful:
                continue
            rank = (exchanged > 0, -round(self.churn(t.ip, now)), -subnets[t.subnet], -ips[t.ip], last)
            candidates.append((rank, t))
        if not candidates:
            return None
        return min(candidates, key=lambda c: c[0])[1]

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def reap(self) -> None:
        """Ends connections whose stage deadline passed (no handshake, no `hello` in time). Runs forever."""
        while True:
            now = trio.current_time()
            soonest = math.inf
            for stage in (HANDSHAKE, AWAITING_HELLO):
                for ticket in list(self.tickets[stage]):
                    if ticket.deadline <= now:
                        what = "the handshake" if stage == HANDSHAKE else "`hello`"
                        limit = self.limits.handshake_timeout if stage == HANDSHAKE else self.limits.hello_timeout
                        ticket.end(f"timeout: no {what} within {limit:g} s")
                    else:
                        soonest = min(soonest, ticket.deadline)
            changed = self._changed
            with trio.move_on_at(soonest):
                await changed.wait()
