# The CLI on a real pseudo-terminal (pexpect): long output goes through the pager as with git (less, which
# the person quits with q), a short one does not wait, and `check` draws a progress bar. Needs `less`
# (test.sh installs it in CI): skipped with the reason on a machine without it, a failure under CI=true.
from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import nacl.signing
import pytest
from conftest import cli_command, cli_env
from test_cli import init, ok

from p2pnode.store import Store
from protocol.ids import parse_feed_id

pexpect = pytest.importorskip("pexpect")
WAIT_S = 30


def require(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (required under CI=true; test.sh installs it)")
        pytest.skip(reason)


def fill(home: Path, count: int) -> None:
    owner = init(home)
    key = nacl.signing.SigningKey(bytes.fromhex(json.loads((home / "secret").read_text())["seed"]))
    with Store(home / "store.sqlite3", parse_feed_id(owner)) as store:
        for i in range(count):
            store.publish(key, {"type": "post", "text": f"post number {i}"})


def spawn(home: Path, *args: str, **env: str):  # type: ignore[no-untyped-def]
    environment = cli_env(home)
    for name in ("PAGER", "P2PNODE_PAGER", "LESS", "COLUMNS", "LINES"):
        environment.pop(name, None)
    environment.update({"TERM": "xterm", **env})
    command = cli_command()
    return pexpect.spawn(command[0], [*command[1:], *args], env=environment, dimensions=(24, 80),
                         encoding="utf-8", timeout=WAIT_S)


def test_long_output_goes_through_the_pager(home: Path) -> None:
    require(shutil.which("less") is not None, "less is not installed")
    fill(home, 60)
    child = spawn(home, "timeline", "--all")
    transcript = io.StringIO()
    child.logfile_read = transcript
    child.expect("post number 59")
    child.send("q")  # less waits for this on its first screen; without a pager everything scrolls past
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    seen = transcript.getvalue()
    assert "post number 50" in seen and "post number 0\r" not in seen and "post number 1\r" not in seen
    # lines fit the 80-column terminal
    wide = spawn(home, "feed", "--limit", "2", "--full", "--no-pager")
    wide.expect(pexpect.EOF)
    wide.close()
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", wide.before or "")
    lines = [line for line in text.split("\r\n") if line.strip()]
    assert lines and all(len(line) <= 80 for line in lines), lines
    assert any(line.endswith("…") for line in lines)  # the long header with whole ids is cut to fit


def test_a_short_output_and_cat_do_not_wait(home: Path) -> None:
    require(shutil.which("less") is not None, "less is not installed")
    fill(home, 3)
    child = spawn(home, "timeline")  # fits one screen: less -F prints it and quits
    child.expect("post number 0")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    fill(home.parent / "long", 60)
    plain = spawn(home.parent / "long", "timeline", "--all", P2PNODE_PAGER="cat")
    plain.expect("post number 0")
    plain.expect(pexpect.EOF)
    plain.close()
    assert plain.exitstatus == 0
    nopager = spawn(home.parent / "long", "timeline", "--all", "--no-pager")
    nopager.expect("post number 0")
    nopager.expect(pexpect.EOF)


def test_check_draws_a_progress_bar(home: Path) -> None:
    fill(home, 2_000)
    child = spawn(home, "check")
    child.expect("checking")
    child.expect(r"2000/2000(\x1b\[[0-9;]*m)? entries")
    child.expect("ok: every stored entry verifies")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    # no bar when stderr is not a terminal, nor with --json
    assert ok(home, "check").startswith("ok")


def test_status_watch_redraws_until_ctrl_c(home: Path) -> None:
    fill(home, 1)
    child = spawn(home, "status", "--watch", "--interval", "0.2")
    for _ in range(2):  # two refreshes, each ending with the hint line
        child.expect("Ctrl-C stops")
    child.expect("entries: 1")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
