# The command line: parse arguments, call p2pnode, print. No logic, no SQL, no crypto here.
# User errors become one line on stderr and a non-zero exit (click.ClickException), never a traceback.
from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sqlite3
import sys
import threading
import webbrowser
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from p2pnode import backup, mutes, present, statusview
from p2pnode import seeds as seedbook
from p2pnode.config import ConfigFileError, merge_config
from p2pnode.diskspace import DEFAULT_MIN_FREE, parse_size
from p2pnode.home import ONION_KEY_FILE, HomeError, default_home, load_identity
from p2pnode.local import (
    Local,
    UserError,
    check_text,
    damage_note,
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
from p2pnode.render import terminal_text
from p2pnode.runner import ConfigError, collect_seeds, parse_listen, run_node, setup_logging
from p2pnode.store import StoredEntry, StoreError
from p2pnode.terminal import entry_lines, is_terminal, output, terminal_width
from p2pnode.web.access import DEFAULT_WEB, WebConfigError, open_url, parse_web_option, read_token
from protocol.errors import ProtocolError
from protocol.ids import entry_ref, feed_id

DEFAULT_LIMIT = 20


def _global_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """--json may come before the subcommand (p2pnode --json status) or after it."""
    return bool(value or (ctx.obj or {}).get("json"))


def _home_after(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.obj["home"] = value


HOME_AFTER = click.Option(["--home"], type=click.Path(file_okay=False, path_type=Path), default=None,
                          expose_value=False, callback=_home_after, is_eager=True,
                          help="The node's home directory (as p2pnode --home).")


class Count(click.ParamType):
    """A whole number from `low` to `high`, shown in help as N (click's IntRange would print its bounds,
    `1<=x<=9223372036854775807`, into the help text)."""

    name = "N"

    def __init__(self, low: int = 1, high: int = 2**63 - 1) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a whole number", param, ctx)
        if not self.low <= number <= self.high:
            top = "up" if self.high == 2**63 - 1 else f"to {self.high:,}"
            self.fail(f"{value} is out of range: give a number from {self.low} {top}", param, ctx)
        return number


class Seconds(click.ParamType):
    """A time from 0.1 s to an hour, shown in help as SECONDS."""

    name = "SECONDS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not 0.1 <= number <= 3600:
            self.fail(f"{value} is out of range: give 0.1 to 3600 seconds", param, ctx)
        return number


JSON_OPTION = click.option("--json", "as_json", is_flag=True, callback=_global_json,
                           help="Print JSON instead of text.")
LIMIT_OPTION = click.option("--limit", type=Count(), default=None,
                            help=f"Show at most N entries (text: {DEFAULT_LIMIT} unless --all; JSON: all).")
ALL_OPTION = click.option("--all", "show_all", is_flag=True, help="Show every entry.")
FULL_OPTION = click.option("--full", is_flag=True, help="Show whole ids and hashes, seqs and exact times.")
PAGER_OPTION = click.option("--no-pager", is_flag=True, help="Never page the output (default: page on a terminal).")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn every error that is the user's or the input's into one clear line."""
    try:
        yield
    except BrokenPipeError:
        raise
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


def say(message: str) -> None:
    """A note for the person (stderr), e.g. that a result is empty: stdout stays clean for scripts."""
    click.echo(message, err=True)


def print_entries(items: Iterable[StoredEntry], node: Local, as_json: bool, full: bool = False,
                  page: bool = True, thread: bool = False) -> int:
    """Entries as JSON lines, or as safe text through the pager on a terminal; how many were printed."""
    count = 0
    damaged: list[StoredEntry] = []

    def noting_damage(entries: Iterable[StoredEntry]) -> Iterator[StoredEntry]:
        for stored in entries:
            if getattr(stored, "damaged", False):
                damaged.append(stored)
            yield stored

    if as_json:
        for stored in noting_damage(items):
            emit(view(stored, node.store))
            count += 1
    else:
        names = present.Names(node.store, full)
        width = terminal_width()
        with output(page) as write:
            for shown in present.render_entries(noting_damage(items), names):
                for line in entry_lines(shown, width):
                    write(line)
                count += 1
    for stored in damaged:
        click.echo(f"Warning: {damage_note(view(stored, node.store))}", err=True)
    return count


def limit_of(limit: int | None, show_all: bool, as_json: bool) -> int | None:
    if show_all:
        return None
    return limit if limit is not None or as_json else DEFAULT_LIMIT


def feed_of(node: Local, text: str) -> bytes:
    with user_errors():
        return present.resolve_feed(node.store, text)[0]


def hash_of(node: Local, text: str) -> bytes:
    with user_errors():
        return present.resolve_entry(node.store, text)


class OneLineErrors(click.Group):
    """A click group whose usage errors are one line on stderr (with the command's name), like every
    other error of this CLI, instead of click's usage block. Every subcommand also takes --home after its
    name; a closed pipe (`p2pnode feed | head`) ends quietly with exit 0."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None and not any(p.name == "home" for p in command.params):
            command.params.append(HOME_AFTER)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return result
        except BrokenPipeError:
            _quiet_exit()

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


def _quiet_exit() -> None:
    """The reader went away: say nothing more (not even at interpreter exit) and exit 0."""
    import os
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    sys.exit(0)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="P2PNODE_HOME",
              default=None, help="The node's home directory (env P2PNODE_HOME; default: the user data dir). "
                                 "May also come after the command.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text (also after the command).")
@click.version_option(package_name="p2pnode", prog_name="p2pnode", message="%(prog)s %(version)s")
@click.pass_context
def main(ctx: click.Context, home: Path | None, as_json: bool) -> None:
    """p2pnode: a peer-to-peer, censorship-resistant posting node.

    Start with 'p2pnode init', then back up your identity with 'p2pnode export-key'."""
    ctx.obj = {"home": home if home is not None else default_home(), "json": as_json}
    logging.getLogger("p2pnode").addHandler(logging.NullHandler())  # commands print their own lines


@main.command()
@click.option("--import", "restore", is_flag=True,
              help="Restore an identity from its backup words (read from standard input; see export-key).")
@JSON_OPTION
@click.pass_context
def init(ctx: click.Context, restore: bool, as_json: bool) -> None:
    """Create this node's identity and store. With --import: restore a backed-up identity."""
    home = ctx.obj["home"]
    if restore:
        text = (click.prompt("Your backup words", hide_input=True, err=True) if is_terminal(sys.stdin)
                else sys.stdin.read())
        with user_errors():
            identity, has_store = backup.import_identity(home, backup.seed_from_words(text))
        if as_json:
            emit({"id": identity, "restored": True})
        else:
            click.echo(f"restored identity {identity} in {home}")
        if not has_store:
            say("next: 'p2pnode run --seed ADDRESS' (or with your seeds file) fetches your feed back from your "
                "peers; post only after that, or your feed forks")
        return
    with user_errors():
        identity = init_home(home)
    if as_json:
        emit({"id": identity})
    else:
        click.echo(f"created identity {identity} in {home}")
        say("back it up now: 'p2pnode export-key' (losing the secret file loses your feed for good)")


@main.command(name="export-key")
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the words to this new file (mode 0600) instead of printing them.")
@JSON_OPTION
@click.pass_context
def export_key(ctx: click.Context, path: Path | None, as_json: bool) -> None:
    """Back up your identity as 24 words. The secret key as words with a checksum; 'p2pnode init
    --import' restores it on any machine. Anyone with the words can post as you."""
    with user_errors():
        identity, words = backup.seed_words(ctx.obj["home"])
        if path is not None and (path.exists() or path.is_symlink()):
            raise UserError(f"{path} already exists; choose a new file name")
        say(f"warning: {backup.WARNING}")
        if path is not None:
            backup.write_words(path, words)
    if path is not None:
        say(f"wrote the backup words of {identity} to {path} (mode 0600)")
    elif as_json:
        emit({"id": identity, "words": words})
    else:
        click.echo(words)


@main.command()
@JSON_OPTION
@click.pass_context
def whoami(ctx: click.Context, as_json: bool) -> None:
    """Show this node's feed id. With --json also its address while it runs."""
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
        text = sys.stdin.read().rstrip("\r\n")  # `echo hi | p2pnode post -` posts "hi", not "hi\n"
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
    """Publish a reply to the entry HASH. A unique prefix of HASH will do; TEXT '-' reads standard input."""
    body = read_text(text)
    publish_and_print(ctx, as_json, lambda node: node.reply(hash_of(node, parent), body))


PUBLIC_NOTE = ("This publishes a public entry in your feed: everyone who gets your feed sees it. "
               "'p2pnode mute ID' hides a feed privately instead.")


def contact_command(kind: str, doc: str) -> None:
    @click.argument("feed", metavar="ID")
    @JSON_OPTION
    @click.pass_context
    def command(ctx: click.Context, feed: str, as_json: bool) -> None:
        state = {"follow": "already following", "unfollow": "not following",
                 "block": "already blocking", "unblock": "not blocking"}[kind]

        def act(node: Local) -> StoredEntry | None:
            with user_errors():
                target, address = present.resolve_feed(node.store, feed)
            if address is not None and kind == "follow" and target != node.owner:
                node.store.add_peer(address, target, "seed")  # the node dials it to fetch the feed
            return node.set_contact(target, kind)

        publish_and_print(ctx, as_json, act, unchanged=f"{state} {terminal_text(feed)}; nothing written")

    command.__doc__ = doc
    main.command(name=kind)(command)


contact_command("follow", "Follow a feed (a public entry). Replicate the feed ID and show it in the timeline; "
                          "given an address HOST:PORT/@ID, the node also dials it.\n\n" + PUBLIC_NOTE)
contact_command("unfollow", "Stop following the feed ID.\n\n" + PUBLIC_NOTE)
PRIVATE_MUTE = PUBLIC_NOTE.replace("instead", "without telling anyone")
contact_command("block", "Block a feed (a public entry). Never fetch, store, serve or show the feed ID (or an "
                         "address's); purge what is held.\n\n" + PRIVATE_MUTE)
contact_command("unblock", "Unblock the feed ID.\n\n" + PRIVATE_MUTE)


@main.command()
@click.argument("feed", metavar="[ID]", required=False)
@JSON_OPTION
@click.pass_context
def mute(ctx: click.Context, feed: str | None, as_json: bool) -> None:
    """Hide a feed from your timeline, privately. The feed ID is left out of your timeline and threads;
    nothing is published and replication does not change (kept in <home>/muted). Without ID: list them."""
    set_mute(ctx, feed, as_json, True)


@main.command()
@click.argument("feed", metavar="ID")
@JSON_OPTION
@click.pass_context
def unmute(ctx: click.Context, feed: str, as_json: bool) -> None:
    """Show the feed ID again (undo 'p2pnode mute')."""
    set_mute(ctx, feed, as_json, False)


def set_mute(ctx: click.Context, feed: str | None, as_json: bool, on: bool) -> None:
    with local(ctx) as node:
        if feed is None:
            keys = mutes.muted(node.home)
            names = present.Names(node.store)
            for key in keys:
                if as_json:
                    emit({"id": feed_id(key)})
                else:
                    click.echo(f"{feed_id(key)}  {names.feed(key)}")
            if not keys:
                say("no muted feeds")
            return
        target = feed_of(node, feed)
        if target == node.owner:
            raise click.ClickException(f"cannot {'mute' if on else 'unmute'} your own feed")
        changed = mutes.set_muted(node.home, target, on)
    if as_json:
        emit({"id": feed_id(target), "muted": on, "unchanged": not changed})
    elif changed:
        say(f"{'muted' if on else 'unmuted'} {feed_id(target)} (on this node only; nothing published)")
    else:
        say(f"{'already' if on else 'not'} muted: {feed_id(target)}; nothing written")


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
    """Retract one of your entries. Its payload is deleted everywhere; its header stays in the log."""
    publish_and_print(ctx, as_json, lambda node: node.retract(hash_of(node, target)))


def say_shown(shown: int, total: int, empty: str) -> None:
    if shown == 0:
        say(empty)
    elif total > shown:
        say(f"showing the newest {shown:,} of {total:,}; --all or --limit N shows more")


@main.command()
@click.argument("feed", metavar="[ID]", required=False)
@LIMIT_OPTION
@ALL_OPTION
@FULL_OPTION
@PAGER_OPTION
@JSON_OPTION
@click.pass_context
def feed(ctx: click.Context, feed: str | None, limit: int | None, show_all: bool, full: bool, no_pager: bool,
         as_json: bool) -> None:
    """Show a feed's entries, newest first (default: your own feed)."""
    with local(ctx) as node:
        author = feed_of(node, feed) if feed is not None else node.owner
        shown = print_entries(node.store.feed(author, limit_of(limit, show_all, as_json)), node, as_json, full,
                              not no_pager)
        say_shown(shown, node.store.feed_size(author), "no entries of this feed are held here")


@main.command()
@LIMIT_OPTION
@ALL_OPTION
@FULL_OPTION
@PAGER_OPTION
@JSON_OPTION
@click.pass_context
def timeline(ctx: click.Context, limit: int | None, show_all: bool, full: bool, no_pager: bool,
             as_json: bool) -> None:
    """Show your timeline, newest first. Your entries and those of the feeds you follow (except muted ones)."""
    with local(ctx) as node:
        hidden = mutes.muted(node.home)
        items = node.store.timeline(limit_of(limit, show_all, as_json), hidden=hidden)
        shown = print_entries(items, node, as_json, full, not no_pager)
        say_shown(shown, node.store.timeline_size(hidden),
                  "your timeline is empty: post something, or follow a feed (p2pnode follow ID)")


@main.command()
@click.argument("target", metavar="HASH")
@FULL_OPTION
@PAGER_OPTION
@JSON_OPTION
@click.pass_context
def thread(ctx: click.Context, target: str, full: bool, no_pager: bool, as_json: bool) -> None:
    """Show the conversation around an entry. From the first post held here that HASH answers, every
    reply, oldest first, indented under what it answers (replies from muted feeds left out)."""
    with local(ctx) as node:
        names = present.Names(node.store, full)
        with user_errors():
            shown, left_out = present.thread(node.store, names, hash_of(node, target), set(mutes.muted(node.home)))
        if as_json:
            for item in shown:
                stored = node.store.entry_by_hash(item.hash)
                assert stored is not None
                emit({**view(stored, node.store), "depth": item.depth})
        else:
            width = terminal_width()
            with output(not no_pager) as write:
                for item in shown:
                    for line in entry_lines(item, width, thread=True):
                        write(line)
    if left_out:
        say(f"{left_out} replies from muted feeds are not shown")


@main.command()
@click.option("--repair", is_flag=True,
              help="Drop payloads damaged on disk, and wait for the running node to fetch them again from peers.")
@click.option("--wait", type=Seconds(), default=60.0, show_default=True, metavar="SECONDS",
              help="With --repair: how long to wait for the running node.")
@JSON_OPTION
@click.pass_context
def check(ctx: click.Context, repair: bool, wait: float, as_json: bool) -> None:
    """Re-verify every stored entry: headers, signatures, chain links and payload hashes. Exits 1 when this
    store is damaged; forks of other authors held with their proof are reported and exit 0. On a terminal, a
    progress bar shows how far it is. --repair drops payloads damaged on disk and waits for the running node
    to fetch them again."""
    repaired: list[Any] = []
    missing: list[Any] = []
    with local(ctx) as node:
        if repair:
            repaired, missing = repair_payloads(node, wait)
        with statusview.check_progress(not as_json) as progress:
            problems = [{"feed": feed_id(p.author), "seq": p.seq, "problem": p.what, "kind": p.kind}
                        for p in node.store.check(progress)]
        running = bool(runtime_info(node.home))
    lost = (f"no peer sent it again within {wait:g} s" if running
            else "start 'p2pnode run' to fetch it again from peers")
    problems += [{"feed": feed_id(h.author), "seq": h.seq, "problem": f"payload damaged on disk and dropped; {lost}",
                  "kind": "corrupt"} for h in missing]
    for header in repaired:
        item = {"feed": feed_id(header.author), "seq": header.seq,
                "repaired": "payload damaged on disk, fetched again from a peer"}
        emit(item) if as_json else click.echo(f"{item['feed']} seq {item['seq']}: {item['repaired']}")
    for item in problems:
        if as_json:
            emit(item)
        else:
            note = " (evidence about another author, not damage)" if item["kind"] == "evidence" else ""
            click.echo(f"{item['feed']} seq {item['seq']}: {terminal_text(item['problem'])}{note}")
    if any(item["kind"] == "corrupt" for item in problems):  # a stranger's fork with its proof is not damage
        raise SystemExit(1)
    done = "ok: every stored entry verifies" + (" (after the repairs above)" if repaired else "")
    if as_json:
        say(done)
    else:
        click.echo(done)


@main.command()
@FULL_OPTION
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C (JSON: one line per refresh).")
@click.option("--interval", type=Seconds(), default=1.0,
              help="Seconds between refreshes with --watch (default 1).")
@JSON_OPTION
@click.pass_context
def status(ctx: click.Context, full: bool, watch: bool, interval: float, as_json: bool) -> None:
    """Show the node, its store and its sync progress. The id, what the store holds, forked feeds, and the
    running node's peers with how much each still has to send ("alice: 12,000 of 100,000, 4,300/s")."""

    def snapshot() -> tuple[dict[str, Any], list[str]]:
        with local(ctx) as node:
            data = statusview.status_data(node)
            return data, ([] if as_json else statusview.status_lines(data, present.Names(node.store, full)))

    if not watch:
        data, lines = snapshot()
        if as_json:
            emit(data)
        for line in lines:
            click.echo(line)
        return
    watch_status(snapshot, interval, as_json)


def watch_status(snapshot: Callable[[], tuple[dict[str, Any], list[str]]], interval: float, as_json: bool) -> None:
    """Print a status snapshot every `interval` seconds until Ctrl-C (exit 0); redrawn in place on a terminal."""
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    live = None
    if not as_json and is_terminal(sys.stdout):
        from rich.live import Live
        from rich.text import Text
        live = Live(console=statusview.console(), auto_refresh=False)
        live.start()
    try:
        while not stop.is_set():
            data, lines = snapshot()
            if as_json:
                emit(data)
            elif live is not None:
                live.update(Text("\n".join([*lines, f"(every {interval:g} s, {statusview.watch_stamp()}; "
                                                      "Ctrl-C stops)"])), refresh=True)
            else:
                click.echo("\n".join([f"-- {statusview.watch_stamp()}", *lines]))
            sys.stdout.flush()
            stop.wait(interval)
    finally:
        if live is not None:
            live.stop()


@main.command()
@click.option("--listen", default=f"0.0.0.0:{DEFAULT_PORT}", show_default=True, metavar="HOST:PORT",
              help="Where to accept peers; port 0 picks a free one.")
@click.option("--advertise", default=None, metavar="HOST",
              help="The host others dial (default: the listen host; on all interfaces, the router's port "
                   "mapping, else the public IP two peers agree on, else this machine's address).")
@click.option("--seed", "seed_options", multiple=True, metavar="ADDRESS",
              help="A peer to start from (repeatable; adds to config.toml's seed list and the seeds file).")
@click.option("--seeds", "seeds_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A file of seed addresses, one per line (default: <home>/seeds).")
@click.option("--hops", type=Count(0, 6), default=2, show_default=True,
              help="Also replicate feeds followed by followed feeds, up to this many hops.")
@click.option("--relay", is_flag=True, help="Replicate every feed peers offer (for seed and relay nodes).")
@click.option("--keep-distant", type=Count(0, 10**9), default=0,
              help="Keep only the latest N entries of feeds at hop 2 and beyond, to save disk (0: whole feeds).")
@click.option("--proxy", default=None, metavar="socks5://HOST:PORT",
              help="Open every outbound connection through this SOCKS5 proxy (e.g. Tor's); needed for .onion.")
@click.option("--tor-control", type=Count(1, 65535), default=None, metavar="PORT",
              help="Publish this node as a Tor onion service through Tor's control port on 127.0.0.1.")
@click.option("--no-upnp", is_flag=True,
              help="Do not ask the home router to forward the port (UPnP, NAT-PMP, PCP).")
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
    then 'web URL' when it serves the web app, and 'listening ADDRESS (why)' whenever the address to dial
    changes (a public IP learned from peers, a router port mapping, an onion service). Settings not given as
    flags come from <home>/config.toml when it has them."""
    home = ctx.obj["home"]
    given = {name for name in params if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT}
    with user_errors():
        settings = merge_config(home, params, given)
    setup_logging(settings["log_level"])
    with user_errors():
        try:
            host, port = parse_listen(settings["listen"])
            web = parse_web_option(settings["web_option"], settings["web_public"])
            if web is not None and settings["web_option"] == DEFAULT_WEB:
                web = dataclasses.replace(web, fallback=True)
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
@FULL_OPTION
@JSON_OPTION
@click.pass_context
def peers(ctx: click.Context, full: bool, as_json: bool) -> None:
    """List known and connected peers. The peer book and, while the node runs, the connected ones."""
    with local(ctx) as node:
        book = node.store.peer_book()
        running = runtime_info(node.home) or {}
        names = present.Names(node.store, full)
        connected = {p["id"]: p for p in running.get("peers", [])}
        rows = []
        for row in book:
            ident = feed_id(row["key"])
            item = {"address": row["address"], "id": ident, "source": row["source"], "failures": row["failures"],
                    "last_seen": row["last_seen"], "connected": ident in connected}
            if ident in connected:
                item["in_sync"] = connected[ident].get("in_sync")
            rows.append(item)
        known = {item["id"] for item in rows}
        for ident, peer in connected.items():
            if ident not in known:
                rows.append({"address": peer.get("address"), "id": ident, "source": "inbound", "connected": True,
                             "in_sync": peer.get("in_sync")})
        if as_json:
            for item in rows:
                emit(item)
        elif rows:
            shown = [{**item, **{k: v for k, v in connected.get(item["id"], {}).items() if k in ("left", "rate")}}
                     for item in rows]
            statusview.print_table(statusview.peers_table(shown, names))
    if not rows:
        say("no peers known yet: 'p2pnode run --seed ADDRESS' starts from one")


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script. For example eval "$(p2pnode completion bash)" in ~/.bashrc."""
    from click.shell_completion import get_completion_class
    completer = get_completion_class(shell)
    assert completer is not None
    click.echo(completer(main, {}, "p2pnode", "_P2PNODE_COMPLETE").source())


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
