# `p2pnode run`: reads the seeds, opens the home's store, runs the Node until SIGINT or SIGTERM, prints the
# `listening ADDRESS` line (and `listening ADDRESS (why)` each time the advertised address changes), keeps
# node.json (what `status`, `peers` and `whoami` show) up to date, and shuts down cleanly: goodbye to every
# peer, store closed, node.json removed, exit 0.
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import nacl.signing
import trio

from protocol.errors import ProtocolError
from protocol.ids import Address, parse_address

from .diskspace import is_disk_full
from .home import LOCK_FILE, RUNTIME_FILE, SEEDS_FILE, STORE_FILE, load_identity
from .logtext import SafeFormatter
from .node import Node, NodeConfig
from .progress import SyncProgress, log_progress
from .proxy import make_network
from .store import Store
from .web.access import WebConfigError, WebOptions, WebStartError

log = logging.getLogger("p2pnode.run")
STATUS_INTERVAL = 0.5
# node.json is written at most this often: during a sync `changed` fires for every batch, and each write
# costs the event loop a status snapshot and a file replace
STATUS_MIN_SPACING = 0.25


class ConfigError(Exception):
    """A bad option or seed, worded for the user."""


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen must be HOST:PORT with a port from 0 to 65535, not {text!r}")
    return host, int(port)


def read_seeds_file(path: Path, warn: Callable[[str], None]) -> list[Address]:
    """One address per line; '#' starts a comment; a malformed line is reported with its number and skipped."""
    seeds = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            seeds.append(parse_address(text))
        except ProtocolError as exc:
            warn(f"{path}:{number}: skipped: {exc.message}")
    return seeds


def collect_seeds(home: Path, options: list[str], seeds_file: Path | None,
                  warn: Callable[[str], None]) -> list[Address]:
    seeds = []
    for text in options:
        try:
            seeds.append(parse_address(text))
        except ProtocolError as exc:
            raise ConfigError(f"--seed {text!r}: {exc.message}") from None
    path = seeds_file if seeds_file is not None else home / SEEDS_FILE
    if seeds_file is not None and not path.is_file():
        raise ConfigError(f"seeds file {path} does not exist")
    if path.is_file():
        seeds.extend(read_seeds_file(path, warn))
    return seeds


def run_node(home: Path, config: NodeConfig, seeds: list[Address], web: WebOptions | None = None) -> None:
    """Run a node in the foreground until SIGINT or SIGTERM, and the web app (p2pnode/web) with it unless
    `web` is None. Raises HomeError/StoreError before it starts."""
    key = load_identity(home)
    with _run_lock(home):
        _run_locked(home, key, config, seeds, web)


@contextmanager
def _run_lock(home: Path) -> Iterator[None]:
    """One `run` per home: an exclusive lock on <home>/run.lock, held until the node exits (the kernel
    drops it if the process dies, so a crash leaves nothing to clean up)."""
    handle = open(home / LOCK_FILE, "a+")  # noqa: SIM115 - closed below
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"a node is already running on {home}") from None
        yield
    finally:
        handle.close()


def _run_locked(home: Path, key: nacl.signing.SigningKey, config: NodeConfig, seeds: list[Address],
                web: WebOptions | None) -> None:
    store = Store(home / STORE_FILE, bytes(key.verify_key))
    try:
        trio.run(_main, home, key, store, config, seeds, web)
    except BaseExceptionGroup as group:
        # trio wraps a failure to listen (port in use, unknown host) in exception groups: say it in one line
        web_problem = _first_of(group, (WebStartError, WebConfigError))
        if web_problem is not None:
            raise ConfigError(str(web_problem)) from None
        problem = _first_os_error(group)
        if problem is None:
            raise
        raise ConfigError(f"cannot listen on {config.listen_host}:{config.listen_port}: "
                          f"{problem.strerror or problem}") from None
    finally:
        store.close()
        try:
            (home / RUNTIME_FILE).unlink()
        except FileNotFoundError:
            pass


def _first_of(group: BaseExceptionGroup, kinds: tuple[type[Exception], ...]) -> Exception | None:
    for exc in group.exceptions:
        if isinstance(exc, kinds):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_of(exc, kinds)
            if found is not None:
                return found
    return None


def _first_os_error(group: BaseExceptionGroup) -> OSError | None:
    for exc in group.exceptions:
        if isinstance(exc, OSError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_os_error(exc)
            if found is not None:
                return found
    return None


async def _main(home: Path, key: nacl.signing.SigningKey, store: Store, config: NodeConfig,
                seeds: list[Address], web: WebOptions | None) -> None:
    node = Node(key, store, config, network=make_network(config.proxy))
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(node.run, seeds)
            sys.stdout.write(f"listening {address}\n")
            log.info("node %s listening on %s:%s", address, config.listen_host, address.port)
            extra = {}
            if web is not None:
                from .web.app import serve_web  # Starlette, Jinja2 and hypercorn load only when the app runs

                try:
                    extra["web"] = await nursery.start(serve_web, home, web, node.status, lambda: node.changed)
                except (WebStartError, BaseExceptionGroup) as exc:
                    problem = exc if isinstance(exc, WebStartError) else _first_of(exc, (WebStartError,))
                    if problem is None or not web.fallback:
                        raise
                    log.warning("the web app's usual address %s:%d is taken (another node?); serving it on a free "
                                "port instead", web.host, web.port)
                    extra["web"] = await nursery.start(serve_web, home, dataclasses.replace(web, port=0),
                                                       node.status, lambda: node.changed)
                sys.stdout.write(f"web {extra['web']}\n")
                log.info("web app on %s ('p2pnode web' prints the URL to open)", extra["web"])
                if web.public:
                    log.warning("the web app listens on %s, not only on this machine: anyone who gets its "
                                "token can act as you", web.host)
            sys.stdout.flush()
            progress = SyncProgress(node)
            nursery.start_soon(_write_status, home, node, extra, progress)
            nursery.start_soon(_announce_address, node, str(address))
            nursery.start_soon(log_progress, progress)
            async for signum in signals:
                log.info("received %s: stopping", signal.Signals(signum).name)
                break
            await node.stop()
            nursery.cancel_scope.cancel()


async def _announce_address(node: Node, printed: str) -> None:
    """A new `listening ADDRESS (why)` line on stdout whenever the address the node advertises changes."""
    seen = node.address
    while True:
        await node.changed.wait()
        if node.address is seen:  # the common case during a sync: nothing to compare
            continue
        seen = node.address
        if seen is not None and str(seen) != printed:
            printed = str(seen)
            try:
                sys.stdout.write(f"listening {printed} ({node.reach.address_reason})\n")
                sys.stdout.flush()
            except OSError:  # nobody reads stdout any more (`run | head -1`): the node goes on without it
                log.info("stdout is closed: no more 'listening' lines")
                return


async def _write_status(home: Path, node: Node, extra: dict[str, str], progress: SyncProgress) -> None:
    failing = False
    while True:
        data = {"pid": os.getpid(), **node.status(), **extra}
        behind = progress.peers()
        for peer in data.get("peers", []):
            peer.update(behind.get(peer["id"], {}))
        try:
            write_runtime_file(home, data)
            if failing:
                log.info("%s is written again", home / RUNTIME_FILE)
            failing = False
        except OSError as exc:  # a full or failing disk: status goes stale, the node goes on
            if not failing:
                log.warning("cannot write %s (%s); `status` may be out of date until it can", home / RUNTIME_FILE,
                            exc.strerror or exc)
            failing = True
        written = trio.current_time()
        with trio.move_on_after(STATUS_INTERVAL):
            await node.changed.wait()
        # coalesce bursts of changes
        await trio.sleep(max(0.05, STATUS_MIN_SPACING - (trio.current_time() - written)))


RUNTIME_BLOCK = 4096


def write_runtime_file(home: Path, data: dict[str, object]) -> None:
    """Write node.json through a temporary file and a rename, padded with spaces (still valid JSON) to a
    multiple of 4 KiB. When the disk is full and the temporary file cannot be written, overwrite node.json in
    place instead: content of the same padded size fits in the blocks it already has, so that `status` can
    still say that the disk is full."""
    text = json.dumps(data)
    text += " " * (-len(text) % RUNTIME_BLOCK)
    path = home / RUNTIME_FILE
    tmp = home / (RUNTIME_FILE + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if not is_disk_full(exc) or not path.exists() or path.stat().st_size != len(text):
            raise
        with open(path, "r+") as handle:
            handle.write(text)


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # peers' text in a log line is escaped (p2pnode/logtext.py)
        handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
