# Writing to the user's terminal: the pager (as git does: only when stdout is a terminal; $P2PNODE_PAGER,
# else $PAGER, else less with LESS=FRX so that a short output prints and returns), lines that fit the
# terminal's width (a wrapped body line keeps its indentation, so nothing a stranger wrote can start at
# column 0), and rich consoles for tables and progress bars.
from __future__ import annotations

import functools
import io
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Protocol

from rich.console import Console
from rich.text import Text

from .present import Shown

BODY_INDENT = "    "
THREAD_GUTTER = "  | "


class LineWriter(Protocol):
    def __call__(self, line: str) -> None: ...


def is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def terminal_width(stream: IO[str] | None = None) -> int | None:
    """The width to fit lines to: the terminal's when `stream` is one (or $COLUMNS is set), else None."""
    stream = stream or sys.stdout
    if "COLUMNS" in os.environ or is_terminal(stream):
        return max(20, shutil.get_terminal_size((80, 24)).columns)
    return None


def console(stream: IO[str] | None = None) -> Console:
    """A rich console that never interprets markup or emoji codes in what it prints (network text)."""
    stream = stream or sys.stdout
    width = terminal_width(stream)
    return Console(file=stream, markup=False, emoji=False, highlight=False, width=width or 10_000,
                   force_terminal=is_terminal(stream), soft_wrap=width is None)


def pager_command() -> str | None:
    for variable in ("P2PNODE_PAGER", "PAGER"):
        if variable in os.environ:
            command = os.environ[variable].strip()
            return None if command in ("", "cat") else command
    return "less" if shutil.which("less") else None


@contextmanager
def output(page: bool) -> Iterator[LineWriter]:
    """A writer of lines to stdout, through the pager when `page` and stdout is a terminal. A pager the
    user quits early, or a closed pipe, ends the output quietly (BrokenPipeError reaches the caller only
    for a pipe, so that it can exit 0)."""
    command = pager_command() if page and is_terminal(sys.stdout) and is_terminal(sys.stdin) else None
    if command is None:
        def write(line: str) -> None:
            sys.stdout.write(line + "\n")
        yield write
        sys.stdout.flush()
        return
    env = dict(os.environ)
    env.setdefault("LESS", "FRX")
    env.setdefault("LV", "-c")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the pager's, as with git
    process = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE, env=env, text=True,
                               encoding="utf-8", errors="replace")
    assert process.stdin is not None
    stdin = process.stdin

    class Quit(Exception):
        pass

    def write_paged(line: str) -> None:
        try:
            stdin.write(line + "\n")
        except (BrokenPipeError, OSError):
            raise Quit() from None

    try:
        yield write_paged
    except Quit:
        pass
    finally:
        try:
            stdin.close()
        except (BrokenPipeError, OSError):
            pass
        process.wait()
        signal.signal(signal.SIGINT, previous)


@functools.cache
def _measure() -> Console:
    """A console used only to measure and wrap text (never printed to)."""
    return Console(file=io.StringIO(), markup=False, emoji=False, highlight=False, width=1000)


def fit(line: str, width: int | None, indent: str = "") -> list[str]:
    """`indent + line` cut into lines of at most `width` cells, each continuation indented the same."""
    if width is None:
        return [indent + line]
    room = max(10, width - len(indent))
    text = Text(line, no_wrap=False, overflow="fold")
    pieces = text.wrap(_measure(), room, overflow="fold")
    return [indent + str(piece).rstrip() for piece in pieces] or [indent]


def header_fit(line: str, width: int | None, indent: str = "") -> str:
    """A header line cut (with an ellipsis) to the width: headers never wrap."""
    if width is None:
        return indent + line
    text = Text(line)
    text.truncate(max(10, width - len(indent)), overflow="ellipsis")
    return indent + str(text)




def entry_lines(shown: Shown, width: int | None, thread: bool = False) -> Iterator[str]:
    """The lines of one entry: the header at the entry's depth, the body below it, indented."""
    indent = BODY_INDENT * shown.depth
    yield header_fit(shown.header, width, indent)
    body_indent = indent + (THREAD_GUTTER if thread else BODY_INDENT)
    for line in shown.body:
        yield from fit(line, width, body_indent)
