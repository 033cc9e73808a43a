# Real `p2pnode run` processes for end-to-end tests: start one, read its `listening ADDRESS` line,
# wait on conditions with a deadline, stop it with SIGTERM and check it exits 0.
from __future__ import annotations

import json
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import cli_command, cli_env, run_cli

START_TIMEOUT_S = 30.0


class NodeProcess:
    def __init__(self, home: Path, *args: str, wrap: list[str] | None = None, new_session: bool = False,
                 log_path: Path | None = None) -> None:
        """`wrap`: a command prefix, e.g. ["ip", "netns", "exec", NAME] (tests/netns.py); it must exec the node.
        `new_session`: the node leads a process group of its own; `log_path`: where its stderr goes."""
        self.home = home
        self.log_path = log_path or home.parent / f"{home.name}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*(wrap or []), *cli_command(), "run", "--listen", "127.0.0.1:0", "--log-level", "debug", *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=cli_env(home), cwd=str(home.parent),
            start_new_session=new_session)
        self.address = self._read_listening()

    def _read_listening(self) -> str:
        assert self.proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        if not selector.select(START_TIMEOUT_S):
            self.proc.kill()
            raise AssertionError(f"no 'listening' line within {START_TIMEOUT_S} s; log: {self.log_text()}")
        line = self.proc.stdout.readline().strip()
        assert line.startswith("listening "), f"first line was {line!r}; log: {self.log_text()}"
        return line.split(" ", 1)[1]

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-4000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"node did not stop within 20 s after SIGTERM; log: {self.log_text()}") from None
        self.log.close()
        return self.proc.returncode


def init_home(home: Path) -> str:
    result = run_cli(home, "init", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["id"]


def feed_entries(home: Path, feed_id: str) -> list[dict]:
    result = run_cli(home, "feed", feed_id, "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        pause.wait(0.1)


def status_json(home: Path) -> dict[str, Any]:
    """`p2pnode status --json` of the home, which must succeed."""
    result = run_cli(home, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
