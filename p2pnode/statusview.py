# `status`, `peers` and `check` for people: what the store holds and how far each peer's sync is, as lines
# and tables that fit the terminal (rich), refreshed by `status --watch`; the progress bar of `check`.
# The data itself comes from the store and from node.json (written by the running node, p2pnode/progress.py).
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from protocol.errors import ProtocolError
from protocol.ids import feed_id, parse_address, parse_feed_id

from .local import Local, runtime_info
from .mutes import muted
from .present import Names, when
from .reach import describe_reachability
from .render import terminal_text
from .terminal import console, is_terminal


def status_data(node: Local) -> dict[str, Any]:
    """What `status --json` prints: the store's figures and, while the node runs, its address and peers
    (each with its sync progress: entries left, rate, and the feeds furthest behind)."""
    counts = node.store.counts()
    data: dict[str, Any] = {
        "id": node.id,
        "feeds": counts["feeds"],
        "entries": counts["entries"],
        "forked": [feed_id(a) for a in node.store.forked_feeds()],
        "following": len(node.store.follows() - node.store.blocked()),
        "blocking": len(node.store.blocked()),
    }
    running = runtime_info(node.home)
    data["running"] = bool(running)
    if running:
        data.update({k: running[k] for k in ("address", "web", "addresses", "reachability", "port_mapping",
                                             "onion", "storing", "disk_full", "peers", "syncing",
                                             "dial_problems") if k in running})
    data["muting"] = len(muted(node.home))
    return data


def _key(text: Any) -> bytes | None:
    try:
        return parse_feed_id(text)
    except (ProtocolError, TypeError):
        return None


def _peer_name(names: Names, text: Any) -> str:
    key = _key(text)
    return names.feed(key) if key is not None else terminal_text(str(text))


def _host_port(address: Any, full: bool) -> str:
    if not isinstance(address, str):
        return ""
    if full:
        return terminal_text(address)
    try:
        parsed = parse_address(address)
    except ProtocolError:
        return terminal_text(address)
    return f"{parsed.host}:{parsed.port}"


def peer_state(peer: dict[str, Any]) -> str:
    if peer.get("left"):
        return f"syncing: {peer['left']:,} entries left, {peer.get('rate', 0):,.0f}/s"
    return "in sync" if peer.get("in_sync") else "syncing"


def status_lines(data: dict[str, Any], names: Names) -> list[str]:
    full = names.full
    own = _key(data["id"])
    lines = [f"id: {data['id']}"]
    if own is not None and names.store.profile_name(own) is not None:
        lines.append(f"name: {names.feed(own)}")
    lines.append(f"running: {'yes, at ' + str(data.get('address')) if data['running'] else 'no'}")
    lines.extend(terminal_text(line) for line in _reach_lines(data))
    if data.get("disk_full"):
        lines.append(f"disk full: {data['disk_full']}; not storing what peers send until there is space again")
    lines.append(f"feeds: {data['feeds']:,}")
    lines.append(f"entries: {data['entries']:,}")
    lines.append(f"following: {data['following']:,}  blocking: {data['blocking']:,}  muting: {data['muting']:,}")
    forked = [_peer_name(names, f) for f in data["forked"]]
    lines.append(f"forked: {', '.join(forked) if forked else 'none'}")
    for feed in data.get("syncing", []):  # every feed some peer holds more of, whoever sends it
        lines.append(f"syncing {_peer_name(names, feed.get('id'))}: {feed.get('held', 0):,} of {feed.get('seen', 0):,}")
    peers = data.get("peers")
    if data["running"] and not peers:
        lines.append("peers: none connected")
    for peer in peers or []:
        lines.append(f"peer {_peer_name(names, peer.get('id'))} {_host_port(peer.get('address'), full)} "
                     f"{peer_state(peer)}".replace("  ", " "))
        for item in peer.get("feeds", []):
            lines.append(f"    {_peer_name(names, item.get('feed'))}: {item.get('held', 0):,} of {item.get('of', 0):,}"
                         f", {item.get('rate', 0):,.0f}/s")
        more = peer.get("feeds_behind", 0) - len(peer.get("feeds", []))
        if more > 0:
            lines.append(f"    and {more:,} more feeds")
    return lines


def _reach_lines(data: dict[str, Any]) -> list[str]:
    """How this node is reached (p2pnode/reach.py, proxy, UPnP, Tor) and the seeds it cannot dial."""
    lines = []
    if data.get("web"):
        lines.append(f"web: {data['web']} ('p2pnode web' prints the URL to open)")
    if data.get("addresses"):
        lines.append(f"addresses: {' '.join(str(a) for a in data['addresses'])}")
    if "reachability" in data:
        lines.append(f"reachable: {describe_reachability(data['reachability'], time.time())}")
    mapping = data.get("port_mapping")
    if mapping:
        method = mapping.get("method") or ("UPnP, NAT-PMP, PCP" if mapping.get("state") != "off" else "UPnP")
        at = mapping.get("at")
        mapped = mapping.get("state") == "mapped" and isinstance(at, int)
        renewed = f"; last renewed {when(at * 1000)}" if mapped else ""
        lines.append(f"router port mapping ({method}): {mapping.get('state')}: {mapping.get('detail')}{renewed}")
    onion = data.get("onion")
    if onion:
        lines.append(f"onion service (Tor): {onion.get('state')}: {onion.get('detail')}")
    for problem in data.get("dial_problems", []):
        lines.append(f"cannot dial {problem.get('address')}: {problem.get('problem')}"
                     + (f" (not dialled again before {when(problem['retry_at'] * 1000)})"
                        if problem.get("given_up") and isinstance(problem.get("retry_at"), int) else ""))
    return lines


def peers_table(rows: list[dict[str, Any]], names: Names, now_ms: int | None = None) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("peer", "address", "state", "source", "failures", "last seen"):
        table.add_column(column, overflow="fold")
    for row in rows:
        seen = row.get("last_seen")
        table.add_row(_peer_name(names, row.get("id")), _host_port(row.get("address"), names.full),
                      peer_state(row) if row.get("connected") else "known", terminal_text(str(row.get("source", ""))),
                      str(row.get("failures", "")), when(seen) if isinstance(seen, int) else "never")
    return table


def print_table(table: Table) -> None:
    console().print(table)


@contextmanager
def check_progress(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr while `check` runs, when stderr is a terminal; else no callback."""
    if not enabled or not is_terminal(sys.stderr):
        yield None
        return
    bar = Progress(TextColumn("checking"), BarColumn(), MofNCompleteColumn(), TextColumn("entries"),
                   TaskProgressColumn(), TimeRemainingColumn(),
                   console=Console(file=sys.stderr, markup=False, emoji=False, highlight=False))
    task = bar.add_task("check", total=None)
    with bar:
        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
        yield update


def watch_stamp() -> str:
    return datetime.now().astimezone().strftime("%H:%M:%S %Z")
