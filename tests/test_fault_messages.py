# Messages that name the cause, through the real CLI: a read-only home (a tmpfs remounted read-only), missing
# permissions (root without its file-permission override, through setpriv), a store written by a newer
# version, and a store `check` cannot read (its message must not send the user to `check`).
# The read-only and permission cases need root and setpriv: skipped with the reason on a plain machine,
# failures under CI=true.
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from conftest import CliResult, cli_command, cli_env, run_cli

from p2pnode.home import STORE_FILE, load_identity
from p2pnode.store import Store


def missing_prerequisite(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"cannot run under CI: {why}")
    pytest.skip(why)


def one_line_error(result: CliResult) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def init(home: Path) -> None:
    result = run_cli(home, "init")
    assert result.returncode == 0, result.stderr
    assert run_cli(home, "post", "hello").returncode == 0


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    if os.geteuid() != 0:
        missing_prerequisite("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "p2pnode-test", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        missing_prerequisite(f"cannot mount a tmpfs: {result.stderr.strip() or result.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_home_is_named(mount_point: Path) -> None:
    home = mount_point / "home"
    init(home)
    result = subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    expected = f"Error: the home {home} is on a read-only filesystem: p2pnode needs to write there"
    for args in (["post", "more"], ["feed"], ["run", "--listen", "127.0.0.1:0"]):
        assert one_line_error(run_cli(home, *args)) == expected, args


def as_root_without_override(home: Path, *args: str) -> CliResult:
    """Run the CLI as root without CAP_DAC_OVERRIDE, so that file modes apply to it as to any user."""
    if shutil.which("setpriv") is None:
        missing_prerequisite("setpriv (util-linux) is needed to drop root's permission override")
    if os.geteuid() != 0:
        missing_prerequisite("dropping root's permission override needs root")
    completed = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cli_command(), *args],
                               capture_output=True, text=True, env=cli_env(home), cwd=str(home.parent), timeout=60)
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def test_missing_permissions_are_named(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init(home)
    store = home / STORE_FILE
    try:
        store.chmod(0o000)
        line = one_line_error(as_root_without_override(home, "feed"))
        assert line == f"Error: no permission to read and write {store} as user root: check its owner and mode"
        store.chmod(0o600)
        home.chmod(0o500)
        line = one_line_error(as_root_without_override(home, "post", "x"))
        assert line == f"Error: no permission to read and write {home} as user root: check its owner and mode"
    finally:
        home.chmod(0o700)
        store.chmod(0o600)
    assert as_root_without_override(home, "post", "now it works").returncode == 0


def test_store_of_a_newer_version_is_named(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init(home)
    with closing(sqlite3.connect(home / STORE_FILE)) as db:
        db.execute("INSERT INTO schema_migrations VALUES (99, 0)")
        db.commit()
    for args in (["feed"], ["post", "x"], ["check"], ["run", "--listen", "127.0.0.1:0"]):
        line = one_line_error(run_cli(home, *args))
        assert "written by a newer version of p2pnode (schema version 99;" in line, (args, line)


def test_check_that_cannot_read_the_store_does_not_send_the_user_to_check(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init(home)
    key = load_identity(home)
    with Store(home / STORE_FILE, bytes(key.verify_key)) as store:
        for number in range(50):
            store.publish(key, {"type": "post", "text": f"post {number} " + "x" * 2000})
    with open(home / STORE_FILE, "r+b") as handle:  # zero the pages after the schema
        handle.seek(8192)
        handle.write(bytes(32768))
    line = one_line_error(run_cli(home, "check"))
    assert "'p2pnode check'" not in line, line
    assert line.startswith("Error: the store cannot be read (") and "it is damaged" in line, line
