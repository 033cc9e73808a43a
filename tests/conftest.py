# Shared, generic test fixtures: a home directory under tmp_path and `run_cli`, which runs the real
# `p2pnode` console script in a subprocess against a home and returns (returncode, stdout, stderr).
# Feature-specific fixtures belong in their own modules, not here.
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

CLI_TIMEOUT_S = 60.0


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def cli_command() -> list[str]:
    """How to start the installed console script: the `p2pnode` script of this interpreter's environment
    (what `pip install -e .` creates), else the same entry point through `python -c`."""
    bin_dir = Path(sys.executable).parent
    for name in ("p2pnode", "p2pnode.exe"):
        script = bin_dir / name
        if script.is_file() and os.access(script, os.X_OK):
            return [str(script)]
    return [sys.executable, "-c", "import cli; cli.main(prog_name='p2pnode')"]


def cli_env(home: Path) -> dict[str, str]:
    """The environment for a CLI subprocess: the given home, and nothing of the real user's home."""
    env = dict(os.environ)
    env["P2PNODE_HOME"] = str(home)
    env["HOME"] = str(home.parent)
    env["XDG_DATA_HOME"] = str(home.parent / "xdg-data")
    env["PYTHONUTF8"] = "1"
    env["P2PNODE_WEB"] = "off"  # nodes in tests serve no web app unless a test asks (--web 127.0.0.1:0)
    env.pop("PYTHONWARNINGS", None)
    return env


def run_cli(home: Path, *args: str, input: str | None = None, timeout: float = CLI_TIMEOUT_S) -> CliResult:
    """Run `p2pnode ARGS...` with P2PNODE_HOME=home; stdin is `input` (empty when None)."""
    completed = subprocess.run(
        [*cli_command(), *args],
        input="" if input is None else input,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=cli_env(home),
        cwd=str(home.parent),
        timeout=timeout,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A node home directory that does not exist yet (init creates it)."""
    return tmp_path / "home"


@pytest.fixture(name="run_cli")
def run_cli_fixture() -> Callable[..., CliResult]:
    """The `run_cli(home, *args, input=None)` helper, as a fixture."""
    return run_cli


def under_ci() -> bool:
    """CI runs with CI=true: there, a capability that could not be tested is a failure, never a skip."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Under CI=true every skip becomes a failure with its reason, so a green CI proves every capability."""
    outcome = yield
    report = outcome.get_result()
    if under_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must prove every capability: {reason}"


@pytest.fixture
def nodes() -> Any:
    """A list to append started NodeProcesses to (tests/nodeproc.py); each is stopped at teardown."""
    started: list[Any] = []
    yield started
    for node in reversed(started):
        node.stop()
