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
from pathlib import Path

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


class HomeBehindNat:
    """Three namespaces: `home` (192.168.77.2/24, default route via the router) behind `router`, which
    masquerades it onto `net` (11.77.0.1/24; the outside: 11.77.0.2). The outside addresses are public-looking
    on purpose (miniupnpd refuses to map onto a private or reserved external address); they exist only in these
    namespaces, which have no link to the machine's own network. With `upnp`, Debian's miniupnpd runs on the
    router and may forward ports from 11.77.0.1 to the home namespace; with `natpmp` too, but with its UPnP
    turned off: only NAT-PMP and PCP (UDP 5351 on the router's LAN address) answer."""

    HOME_IP, ROUTER_LAN_IP, ROUTER_WAN_IP, OUTSIDE_IP = "192.168.77.2", "192.168.77.1", "11.77.0.1", "11.77.0.2"

    def __init__(self, lab: Lab, workdir: Path, upnp: bool, natpmp: bool = False) -> None:
        self.lab = lab
        self.home, self.router, self.net = lab.namespace("h"), lab.namespace("r"), lab.namespace("n")
        _, lan = lab.link(self.home, f"{self.HOME_IP}/24", self.router, f"{self.ROUTER_LAN_IP}/24")
        wan, _ = lab.link(self.router, f"{self.ROUTER_WAN_IP}/24", self.net, f"{self.OUTSIDE_IP}/24")
        lab.run(self.home, "ip", "route", "add", "default", "via", self.ROUTER_LAN_IP)
        lab.run(self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        rules = workdir / "router.nft"
        rules.write_text(_ROUTER_RULES.format(lan=lan, wan=wan))
        lab.run(self.router, "nft", "-f", str(rules))
        self.miniupnpd: subprocess.Popen[bytes] | None = None
        if upnp or natpmp:
            conf = workdir / "miniupnpd.conf"
            conf.write_text(_MINIUPNPD_CONF.format(lan=lan, wan=wan, net="192.168.77.0/24",
                                                   upnp="no" if natpmp else "yes"))
            self.log_path = workdir / "miniupnpd.log"
            with open(self.log_path, "wb") as log:
                self.miniupnpd = subprocess.Popen(
                    [*lab.exec(self.router), require_command("miniupnpd", "miniupnpd"), "-f", str(conf), "-d",
                     "-P", str(workdir / "miniupnpd.pid")], stdout=log, stderr=subprocess.STDOUT)

    def mappings(self) -> str:
        """The router's DNAT rules added by miniupnpd (nft), to see a mapping appear and go."""
        return self.lab.run(self.router, "nft", "list", "chain", "inet", "filter", "UPnP")

    def close(self) -> None:
        if self.miniupnpd is not None and self.miniupnpd.poll() is None:
            self.miniupnpd.terminate()
            try:
                self.miniupnpd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.miniupnpd.kill()
                self.miniupnpd.wait()


_ROUTER_RULES = """
table inet filter {{
  chain forward {{
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "{lan}" oifname "{wan}" accept
    jump forwardUPnP
  }}
  chain forwardUPnP {{
  }}
  chain prerouting {{
    type nat hook prerouting priority -100; policy accept;
    jump UPnP
  }}
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    jump UPnPpost
    oifname "{wan}" masquerade
  }}
  chain UPnP {{
  }}
  chain UPnPpost {{
  }}
}}
"""

_MINIUPNPD_CONF = """ext_ifname={wan}
listening_ip={lan}
http_port=0
enable_natpmp=yes
enable_upnp={upnp}
secure_mode=yes
system_uptime=yes
uuid=3b1f6c1e-5d6a-4f3e-9a51-2c1d0e7f8a90
upnp_table_name=filter
upnp_nat_table_name=filter
upnp_forward_chain=forwardUPnP
upnp_nat_chain=UPnP
upnp_nat_postrouting_chain=UPnPpost
allow 1024-65535 {net} 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"""
