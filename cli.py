# The command line: parse arguments, call p2pnode, print. No logic, no SQL, no crypto here.
# User errors become one line on stderr and a non-zero exit (click.ClickException), never a traceback.
from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time
import webbrowser
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from p2pnode import seeds as seedbook
from p2pnode.config import ConfigFileError, merge_config
from p2pnode.diskspace import DEFAULT_MIN_FREE, parse_size
from p2pnode.home import ONION_KEY_FILE, HomeError, default_home, load_identity
from p2pnode.local import (
    Local,
    UserError,
    check_text,
    damage_note,
    describe,
    explain,
    identity_id,
    init_home,
    open_home,
    repair_payloads,
    runtime_info,
    view,
)
from p2pnode.node import DEFAULT_PORT, NodeConfig
from p2pnode.proxy import ProxySettingError, make_network
from p2pnode.reach import describe_reachability
from p2pnode.runner import ConfigError, collect_seeds, parse_listen, run_node, setup_logging
from p2pnode.store import StoredEntry, StoreError
from p2pnode.web.access import DEFAULT_WEB, WebConfigError, open_url, parse_web_option, read_token
from protocol.errors import ProtocolError
from protocol.ids import entry_ref, feed_id, parse_entry_ref, parse_feed_id

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
LIMIT_OPTION = click.option("--limit", type=click.IntRange(1, 2**63 - 1), default=None,
                            help="Show at most N entries.")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn every error that is the user's or the input's into one clear line."""
    try:
        yield
    except (HomeError, StoreError, UserError, ConfigFileError, seedbook.SeedError, ProxySettingError) as exc:
        raise click.ClickException(str(exc)) from None
    except (ProtocolError, OSError, sqlite3.Error) as exc:
        ctx = click.get_current_context(silent=True)
        home = ctx.obj["home"] if ctx is not None and ctx.obj else None
        raise click.ClickException(explain(exc, home, ctx.info_name if ctx else None) or str(exc)) from None


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
    publish_and_print(ctx, as_json, lambda node: node.set_profile(name, about))


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
            data.update({k: running[k] for k in ("address", "web", "addresses", "reachability", "port_mapping",
                                                 "onion", "storing", "disk_full", "peers", "syncing",
                                                 "dial_problems") if k in running})
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
        elif key == "web":
            click.echo(f"web: {value} ('p2pnode web' prints the URL to open)")
        elif key == "reachability":
            click.echo(f"reachable: {describe_reachability(value, time.time())}")
        elif key == "onion":
            if value:
                click.echo(f"onion service (Tor): {value.get('state')}: {value.get('detail')}")
        elif key == "port_mapping":
            click.echo(f"router port mapping (UPnP): {value.get('state')}: {value.get('detail')}")
        elif key == "addresses":
            click.echo(f"addresses: {' '.join(value)}")
        elif key == "dial_problems":
            for problem in value:
                click.echo(f"cannot dial {problem.get('address')}: {problem.get('problem')}"
                           + (" (given up until the next run)" if problem.get("given_up") else ""))
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
              help="The host others dial (default: the listen host; on all interfaces, the router's UPnP "
                   "mapping, else the public IP two peers agree on, else this machine's address).")
@click.option("--seed", "seed_options", multiple=True, metavar="ADDRESS", help="A peer to start from (repeatable).")
@click.option("--seeds", "seeds_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A file of seed addresses, one per line (default: <home>/seeds).")
@click.option("--hops", type=click.IntRange(0, 6), default=2, show_default=True,
              help="Also replicate feeds followed by followed feeds, up to this many hops.")
@click.option("--relay", is_flag=True, help="Replicate every feed peers offer (for seed and relay nodes).")
@click.option("--keep-distant", type=click.IntRange(0, 10**9), default=0, metavar="N",
              help="Keep only the latest N entries of feeds at hop 2 and beyond, to save disk (0: whole feeds).")
@click.option("--proxy", default=None, metavar="socks5://HOST:PORT",
              help="Open every outbound connection through this SOCKS5 proxy (e.g. Tor's); needed for .onion.")
@click.option("--tor-control", type=click.IntRange(1, 65535), default=None, metavar="PORT",
              help="Publish this node as a Tor onion service through Tor's control port on 127.0.0.1.")
@click.option("--no-upnp", is_flag=True, help="Do not ask the home router to forward the port (UPnP).")
@click.option("--no-lan", is_flag=True, help="Do not publish or look for nodes on the local network (mDNS).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="How much the node logs on stderr.")
@click.option("--min-free", default=f"{DEFAULT_MIN_FREE >> 20}M", show_default=True, metavar="SIZE",
              help="Stop storing what peers send while the disk holding the home has less free (e.g. 300M, 1G, 0).")
@click.option("--web", "web_option", default=DEFAULT_WEB, show_default=True, envvar="P2PNODE_WEB",
              metavar="HOST:PORT|off", help="Where to serve your web app (env P2PNODE_WEB); 'off' serves none.")
@click.option("--web-public", is_flag=True, help="Allow --web on a non-loopback address (anyone with the token "
              "can act as you).")
@click.pass_context
def run(ctx: click.Context, **params: Any) -> None:
    """Run the node in the foreground until SIGINT or SIGTERM. First line on stdout: 'listening ADDRESS';
    then 'web URL' when it serves the web app. Settings not given as flags come from <home>/config.toml
    when it has them."""
    home = ctx.obj["home"]
    given = {name for name in params if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT}
    with user_errors():
        settings = merge_config(home, params, given)
    setup_logging(settings["log_level"])
    with user_errors():
        try:
            host, port = parse_listen(settings["listen"])
            web = parse_web_option(settings["web_option"], settings["web_public"])
            seeds = collect_seeds(home, list(settings["seed_options"]), settings["seeds_file"],
                                  lambda line: click.echo(line, err=True))
        except (ConfigError, WebConfigError) as exc:
            raise UserError(str(exc)) from None
        if runtime_info(home):
            raise UserError(f"a node is already running on {home}")
        try:
            floor = parse_size(settings["min_free"])
        except ValueError as exc:
            raise UserError(str(exc)) from None
        config = NodeConfig(listen_host=host, listen_port=port, advertise_host=settings["advertise"],
                            hops=settings["hops"], relay=settings["relay"], lan_discovery=not settings["no_lan"],
                            proxy=settings["proxy"], upnp=not settings["no_upnp"],
                            tor_control=settings["tor_control"], onion_key_file=str(home / ONION_KEY_FILE),
                            keep_distant=settings["keep_distant"], min_free=floor)
        make_network(config.proxy)  # a bad --proxy is a one-line error before anything starts
        try:
            run_node(home, config, seeds, web)
        except ConfigError as exc:
            raise UserError(str(exc)) from None


@main.command()
@click.option("--open", "open_browser", is_flag=True, help="Also open it in the default browser.")
@JSON_OPTION
@click.pass_context
def web(ctx: click.Context, open_browser: bool, as_json: bool) -> None:
    """Print the URL of your web app (with its access token): keep it to yourself."""
    home = ctx.obj["home"]
    running = runtime_info(home)
    if not running:
        raise click.ClickException(f"no node is running on {home}: the web app is served by 'p2pnode run'")
    if not running.get("web"):
        raise click.ClickException("the running node serves no web app (it was started with --web off)")
    with user_errors():
        try:
            url = open_url(running["web"], read_token(home))
        except WebConfigError as exc:
            raise UserError(str(exc)) from None
    if as_json:
        emit({"url": url})
    else:
        click.echo(url)
    if open_browser and not webbrowser.open(url):
        raise click.ClickException("no browser could be started here: open the URL above yourself")


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


@main.group(invoke_without_command=True)
@JSON_OPTION
@click.pass_context
def seeds(ctx: click.Context, as_json: bool) -> None:
    """List the seeds (the seeds file's and those given to run or join) and how dialling each went."""
    if ctx.invoked_subcommand is not None:
        return
    with local(ctx) as node:
        items = seedbook.seed_list(node.home, node.store.peer_book(), runtime_info(node.home))
    for item in items:
        if as_json:
            emit(item)
            continue
        state = "connected" if item["connected"] else "not connected"
        where = "" if item["in_seeds_file"] else "  (not in the seeds file)"
        problem = f"  {item['problem']}" if item.get("problem") else ""
        click.echo(f"{item['address']}  {state}{where}{problem}")


@seeds.command("add")
@click.argument("address")
@click.pass_context
def seeds_add(ctx: click.Context, address: str) -> None:
    """Add ADDRESS (HOST:PORT/@ID) to the seeds; a running node dials it at once."""
    with local(ctx) as node:
        added = seedbook.add(node.home, node.store, address)
    click.echo(f"added {address}" if added else f"{address} is already a seed")


@seeds.command("remove")
@click.argument("address")
@click.pass_context
def seeds_remove(ctx: click.Context, address: str) -> None:
    """Remove ADDRESS from the seeds file and the peer book."""
    with local(ctx) as node:
        seedbook.remove(node.home, node.store, address)
    click.echo(f"removed {address}")


@main.command()
@JSON_OPTION
@click.pass_context
def invite(ctx: click.Context, as_json: bool) -> None:
    """Print one line a friend pastes into 'p2pnode join': this node's key and the addresses that reach it."""
    home = ctx.obj["home"]
    with user_errors():
        line = seedbook.invite_line(load_identity(home).verify_key.encode(), runtime_info(home), home)
    if as_json:
        emit({"invite": line})
    else:
        click.echo(line)


@main.command()
@click.argument("line")
@JSON_OPTION
@click.pass_context
def join(ctx: click.Context, line: str, as_json: bool) -> None:
    """Use a friend's invite LINE: its addresses become seeds, and you follow the friend."""
    with local(ctx) as node:
        key, added = seedbook.join(node.home, node.store, line)
        followed = node.set_contact(key, "follow")
    if as_json:
        emit({"id": feed_id(key), "seeds_added": added, "followed": followed is not None})
    else:
        click.echo(f"added {added} seed{'s' if added != 1 else ''}; "
                   f"{'now following' if followed else 'already following'} {feed_id(key)}")


if __name__ == "__main__":
    main()
