# Linux network namespaces for tests that need real networks (LAN discovery, a NAT router, a proxy): a Lab
# makes namespaces and veth links with names unique to this process, runs commands inside them, and always
# removes them. Needs root and `ip`; `require_root()` skips with the reason on a plain machine and fails under
# CI=true, so a green CI never hides a skipped capability. Only the lab's own addresses are ever dialled.
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

_COUNTER = itertools.count()


def require(condition: bool, reason: str) -> None:
    """Skip the test with `reason` unless `condition`; under CI=true fail instead."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI cannot run this test: {reason}")
    pytest.skip(reason)


def require_root() -> None:
    require(os.name == "posix" and os.geteuid() == 0, "needs root for network namespaces")
    require(shutil.which("ip") is not None, "needs the `ip` command (iproute2)")


def require_command(name: str, package: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"needs `{name}` (Debian package {package}; test.sh installs it)")
    assert path is not None
    return path


class Lab:
    """Namespaces and links of one test. Names: p2p<pid><n><name> (namespaces), v<pid><n><i>[ab] (links)."""

    def __init__(self) -> None:
        self.tag = f"{os.getpid() % 100000}{next(_COUNTER) % 100}"
        self.namespaces: list[str] = []
        self._links = itertools.count()

    def namespace(self, name: str) -> str:
        ns = f"p2p{self.tag}{name}"
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return ns

    def link(self, ns_a: str, cidr_a: str, ns_b: str, cidr_b: str | None) -> tuple[str, str]:
        """A veth pair between two namespaces with an address at each end (None: no address); the names."""
        i = next(self._links)
        a, b = f"v{self.tag}{i}a", f"v{self.tag}{i}b"
        run(["ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b])
        for ns, dev, cidr in ((ns_a, a, cidr_a), (ns_b, b, cidr_b)):
            if cidr is not None:
                run(["ip", "-n", ns, "addr", "add", cidr, "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        return a, b

    def exec(self, ns: str) -> list[str]:
        """The command prefix that runs a command inside `ns`."""
        return ["ip", "netns", "exec", ns]

    def run(self, ns: str, *command: str) -> str:
        return run([*self.exec(ns), *command])

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()


def run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


@contextmanager
def open_lab() -> Iterator[Lab]:
    """A Lab for one test (root required: see require_root), removed whatever happens."""
    require_root()
    made = Lab()
    try:
        yield made
    finally:
        made.close()
