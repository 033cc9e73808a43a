# The command line: parse arguments, call p2pnode, print. No logic, no SQL, no crypto here.
# User errors become one line on stderr and a non-zero exit (click.ClickException), never a traceback.
from __future__ import annotations

import json
import logging
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from p2pnode.diskspace import DEFAULT_MIN_FREE, explain, parse_size
from p2pnode.home import HomeError, default_home
from p2pnode.local import (
    Local,
    UserError,
    check_text,
    damage_note,
    describe,
    identity_id,
    init_home,
    open_home,
    repair_payloads,
    runtime_info,
    view,
)
from p2pnode.node import DEFAULT_PORT, NodeConfig
from p2pnode.runner import ConfigError, collect_seeds, parse_listen, run_node, setup_logging
from p2pnode.store import StoredEntry, StoreError
from protocol.errors import InvalidId, ProtocolError
from protocol.ids import entry_ref, feed_id, parse_entry_ref, parse_feed_id

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
LIMIT_OPTION = click.option("--limit", type=click.IntRange(1, 2**63 - 1), default=None,
                            help="Show at most N entries.")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn every error that is the user's or the input's into one clear line."""
    try:
        yield
    except (HomeError, StoreError, UserError) as exc:
        raise click.ClickException(str(exc)) from None
    except InvalidId as exc:
        raise click.ClickException(exc.message) from None
    except ProtocolError as exc:
        raise click.ClickException(exc.reason) from None
    except (OSError, sqlite3.Error) as exc:
        raise click.ClickException(failure_line(exc)) from None


def failure_line(exc: OSError | sqlite3.Error) -> str:
    """One line for a failure to use the home: its cause when it is known (full disk, read-only, permissions)."""
    ctx = click.get_current_context(silent=True)
    home = ctx.obj["home"] if ctx is not None and ctx.obj else None
    cause = explain(exc, home) if home is not None else None
    if cause is not None:
        return cause
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
    if ctx is not None and ctx.info_name == "check":  # telling the user to run check would send them round
        return (f"the store cannot be read ({exc}): it is damaged; restore it from a backup, or move it away and "
                "run 'p2pnode run' to fetch your feed back from your peers")
    return f"the store could not be read or written ({exc}); if it is damaged, 'p2pnode check' tells more"


@contextmanager
def local(ctx: click.Context) -> Iterator[Local]:
    with user_errors(), open_home(ctx.obj["home"]) as node:
        yield node


def emit(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, ensure_ascii=False))


def print_entries(items: list[StoredEntry], node: Local, as_json: bool) -> None:
    damaged = []
    for stored in items:
        item = view(stored, node.store)
        click.echo(json.dumps(item, ensure_ascii=False) if as_json else describe(item))
        if item.get("damaged"):
            damaged.append(item)
    for item in damaged:
        click.echo(f"Warning: {damage_note(item)}", err=True)


def feed_arg(text: str) -> bytes:
    with user_errors():
        return parse_feed_id(text)


def hash_arg(text: str) -> bytes:
    with user_errors():
        return parse_entry_ref(text)


class OneLineErrors(click.Group):
    """A click group whose usage errors are one line on stderr (with the command's name), like every
    other error of this CLI, instead of click's usage block."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # plain `p2pnode`: show the help
            click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
            sys.exit(0)
        except click.ClickException as exc:
            where = f"{exc.ctx.command_path}: " if isinstance(exc, click.UsageError) and exc.ctx else ""
            click.echo(f"Error: {where}{exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="P2PNODE_HOME",
              default=None, help="The node's home directory (env P2PNODE_HOME; default: the user data dir).")
@click.pass_context
def main(ctx: click.Context, home: Path | None) -> None:
    """p2pnode: a peer-to-peer, censorship-resistant posting node."""
    ctx.obj = {"home": home if home is not None else default_home()}
    logging.getLogger("p2pnode").addHandler(logging.NullHandler())  # commands print their own lines


@main.command()
@JSON_OPTION
@click.pass_context
def init(ctx: click.Context, as_json: bool) -> None:
    """Create this node's identity (an Ed25519 key pair) and its store."""
    with user_errors():
        identity = init_home(ctx.obj["home"])
    if as_json:
        emit({"id": identity})
    else:
        click.echo(f"created identity {identity} in {ctx.obj['home']}")


@main.command()
@JSON_OPTION
@click.pass_context
def whoami(ctx: click.Context, as_json: bool) -> None:
    """Show this node's feed id (and with --json its address while it runs)."""
    home = ctx.obj["home"]
    with user_errors():
        data: dict[str, Any] = {"id": identity_id(home)}  # needs the key only, not the store
    running = runtime_info(home)
    if running and running.get("address"):
        data["address"] = running["address"]
    if as_json:
        emit(data)
    else:
        click.echo(data["id"])  # one line, so that $(p2pnode whoami) is the id; --json also has the address


def publish_and_print(ctx: click.Context, as_json: bool, action: Callable[[Local], StoredEntry | None],
                      unchanged: str = "") -> None:
    with local(ctx) as node:
        stored = action(node)
    if stored is None:
        if as_json:
            emit({"hash": None, "seq": None, "unchanged": True})
        click.echo(unchanged, err=True)
        return
    if as_json:
        emit({"hash": entry_ref(stored.entry.hash), "seq": stored.entry.seq})
    else:
        click.echo(entry_ref(stored.entry.hash))


def read_text(text: str) -> str:
    if text == "-":
        text = sys.stdin.read()
    with user_errors():
        return check_text(text)


@main.command()
@click.argument("text")
@JSON_OPTION
@click.pass_context
def post(ctx: click.Context, text: str, as_json: bool) -> None:
    """Publish a post. TEXT '-' reads the text from standard input."""
    body = read_text(text)
    publish_and_print(ctx, as_json, lambda node: node.publish({"type": "post", "text": body}))


@main.command()
@click.argument("parent", metavar="HASH")
@click.argument("text")
@JSON_OPTION
@click.pass_context
def reply(ctx: click.Context, parent: str, text: str, as_json: bool) -> None:
    """Publish a post that replies to the entry HASH. TEXT '-' reads standard input."""
    parent_hash = hash_arg(parent)
    body = read_text(text)
    publish_and_print(ctx, as_json, lambda node: node.reply(parent_hash, body))


def contact_command(kind: str, doc: str) -> None:
    @click.argument("feed", metavar="ID")
    @JSON_OPTION
    @click.pass_context
    def command(ctx: click.Context, feed: str, as_json: bool) -> None:
        target = feed_arg(feed)
        state = {"follow": "already following", "unfollow": "not following",
                 "block": "already blocking", "unblock": "not blocking"}[kind]
        publish_and_print(ctx, as_json, lambda node: node.set_contact(target, kind),
                          unchanged=f"{state} {feed}; nothing written")

    command.__doc__ = doc
    main.command(name=kind)(command)


contact_command("follow", "Follow the feed ID: replicate it and show it in the timeline.")
contact_command("unfollow", "Stop following the feed ID.")
contact_command("block", "Block the feed ID: never fetch, store, serve or show it; purge what is held.")
contact_command("unblock", "Unblock the feed ID.")


@main.command()
@click.option("--name", required=True, help="The name others see.")
@click.option("--about", default=None, help="A short description.")
@JSON_OPTION
@click.pass_context
def profile(ctx: click.Context, name: str, about: str | None, as_json: bool) -> None:
    """Publish this feed's profile."""
    payload = {"type": "profile", "name": name}
    if about is not None:
        payload["about"] = about
    publish_and_print(ctx, as_json, lambda node: node.publish(payload))


@main.command()
@click.argument("target", metavar="HASH")
@JSON_OPTION
@click.pass_context
def retract(ctx: click.Context, target: str, as_json: bool) -> None:
    """Retract one of your entries: its payload is deleted everywhere; its header stays in the log."""
    target_hash = hash_arg(target)
    publish_and_print(ctx, as_json, lambda node: node.retract(target_hash))


@main.command()
@click.argument("feed", metavar="[ID]", required=False)
@LIMIT_OPTION
@JSON_OPTION
@click.pass_context
def feed(ctx: click.Context, feed: str | None, limit: int | None, as_json: bool) -> None:
    """Show a feed's entries, newest first (default: your own feed)."""
    author = feed_arg(feed) if feed is not None else None
    with local(ctx) as node:
        print_entries(node.store.feed(author or node.owner, limit), node, as_json)


@main.command()
@LIMIT_OPTION
@JSON_OPTION
@click.pass_context
def timeline(ctx: click.Context, limit: int | None, as_json: bool) -> None:
    """Show your entries and those of the feeds you follow, newest first."""
    with local(ctx) as node:
        print_entries(node.store.timeline(limit), node, as_json)


@main.command()
@click.option("--repair", is_flag=True,
              help="Drop payloads damaged on disk, and wait for the running node to fetch them again from peers.")
@click.option("--wait", type=click.FloatRange(0, 3600), default=60.0, show_default=True, metavar="SECONDS",
              help="With --repair: how long to wait for the running node.")
@JSON_OPTION
@click.pass_context
def check(ctx: click.Context, repair: bool, wait: float, as_json: bool) -> None:
    """Re-verify every stored header, signature, chain link and payload hash. Exits 1 on any problem."""
    repaired: list[Any] = []
    missing: list[Any] = []
    with local(ctx) as node:
        if repair:
            repaired, missing = repair_payloads(node, wait)
        problems = [{"feed": feed_id(p.author), "seq": p.seq, "problem": p.what} for p in node.store.check()]
        running = bool(runtime_info(node.home))
    lost = (f"no peer sent it again within {wait:g} s" if running
            else "start 'p2pnode run' to fetch it again from peers")
    problems += [{"feed": feed_id(h.author), "seq": h.seq, "problem": f"payload damaged on disk and dropped; {lost}"}
                 for h in missing]
    for header in repaired:
        item = {"feed": feed_id(header.author), "seq": header.seq,
                "repaired": "payload damaged on disk, fetched again from a peer"}
        emit(item) if as_json else click.echo(f"{item['feed']} seq {item['seq']}: {item['repaired']}")
    for item in problems:
        emit(item) if as_json else click.echo(f"{item['feed']} seq {item['seq']}: {item['problem']}")
    if problems:
        raise SystemExit(1)
    if not as_json:
        click.echo("ok: every stored entry verifies" + (" (after the repairs above)" if repaired else ""))


@main.command()
@JSON_OPTION
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the node id, what the store holds, forked feeds, and the running node's peers."""
    with local(ctx) as node:
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
            data.update({k: running[k] for k in ("address", "storing", "disk_full", "peers", "syncing")
                         if k in running})
    if as_json:
        emit(data)
        return
    for key, value in data.items():
        if key == "peers":
            for peer in value:
                click.echo(f"peer {peer.get('id')} {peer.get('address') or ''} "
                           f"{'in sync' if peer.get('in_sync') else 'syncing'}")
        elif key == "disk_full":
            if value:
                click.echo(f"disk full: {value}; not storing what peers send until there is space again")
        elif key == "syncing":
            for feed in value:
                click.echo(f"syncing {feed.get('id')}: {feed.get('held', 0):,} of {feed.get('seen', 0):,}")
        elif key == "forked":
            click.echo(f"forked: {', '.join(value) if value else 'none'}")
        else:
            click.echo(f"{key}: {value}")


@main.command()
@click.option("--listen", default=f"0.0.0.0:{DEFAULT_PORT}", show_default=True, metavar="HOST:PORT",
              help="Where to accept peers; port 0 picks a free one.")
@click.option("--advertise", default=None, metavar="HOST",
              help="The host others dial (default: the listen host; 127.0.0.1 when listening on all interfaces).")
@click.option("--seed", "seed_options", multiple=True, metavar="ADDRESS", help="A peer to start from (repeatable).")
@click.option("--seeds", "seeds_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A file of seed addresses, one per line (default: <home>/seeds).")
@click.option("--hops", type=click.IntRange(0, 6), default=2, show_default=True,
              help="Also replicate feeds followed by followed feeds, up to this many hops.")
@click.option("--relay", is_flag=True, help="Replicate every feed peers offer (for seed and relay nodes).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="How much the node logs on stderr.")
@click.option("--min-free", default=f"{DEFAULT_MIN_FREE >> 20}M", show_default=True, metavar="SIZE",
              help="Stop storing what peers send while the disk holding the home has less free (e.g. 300M, 1G, 0).")
@click.pass_context
def run(ctx: click.Context, listen: str, advertise: str | None, seed_options: tuple[str, ...],
        seeds_file: Path | None, hops: int, relay: bool, log_level: str, min_free: str) -> None:
    """Run the node in the foreground until SIGINT or SIGTERM. First line on stdout: 'listening ADDRESS'."""
    home = ctx.obj["home"]
    setup_logging(log_level)
    with user_errors():
        try:
            host, port = parse_listen(listen)
            seeds = collect_seeds(home, list(seed_options), seeds_file, lambda line: click.echo(line, err=True))
        except ConfigError as exc:
            raise UserError(str(exc)) from None
        if runtime_info(home):
            raise UserError(f"a node is already running on {home}")
        try:
            floor = parse_size(min_free)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        config = NodeConfig(listen_host=host, listen_port=port, advertise_host=advertise, hops=hops, relay=relay,
                            min_free=floor)
        try:
            run_node(home, config, seeds)
        except ConfigError as exc:
            raise UserError(str(exc)) from None


@main.command()
@JSON_OPTION
@click.pass_context
def peers(ctx: click.Context, as_json: bool) -> None:
    """List known peers (the peer book) and, while the node runs, the connected ones."""
    with local(ctx) as node:
        book = node.store.peer_book()
        running = runtime_info(node.home) or {}
    connected = {p["id"]: p for p in running.get("peers", [])}
    known = set()
    for row in book:
        ident = feed_id(row["key"])
        known.add(ident)
        item = {"address": row["address"], "id": ident, "source": row["source"], "failures": row["failures"],
                "last_seen": row["last_seen"], "connected": ident in connected}
        if ident in connected:
            item["in_sync"] = connected[ident].get("in_sync")
        if as_json:
            emit(item)
        else:
            click.echo(f"{item['address']}  {'connected' if item['connected'] else 'known'}  source {item['source']}"
                       f"  failures {item['failures']}")
    for ident, peer in connected.items():
        if ident not in known:
            item = {"address": peer.get("address"), "id": ident, "source": "inbound", "connected": True,
                    "in_sync": peer.get("in_sync")}
            if as_json:
                emit(item)
            else:
                click.echo(f"{item['address'] or ident}  connected  inbound")


if __name__ == "__main__":
    main()
