# Outbound connections around blocks (spec/peers.md, "Proxies and onion addresses"): with --proxy
# socks5://HOST:PORT every connection the node opens (dials, address probes, dial-back checks) goes through that
# SOCKS5 proxy, Tor's for example, with names resolved by the proxy; `.onion` hosts are dialled only that way,
# never looked up in DNS. Listening is unchanged. Errors become OSErrors with one line saying what failed.
from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import trio

from .network import TcpNetwork

DEFAULT_SOCKS_PORT = 1080


class ProxySettingError(Exception):
    """A --proxy value that cannot be used, worded for the user."""


def parse_proxy(text: str) -> tuple[str, int]:
    """socks5://HOST:PORT (socks5h:// too) -> (host, port)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise ProxySettingError(f"--proxy {text!r}: expected socks5://HOST:PORT") from None
    if parts.scheme not in ("socks5", "socks5h") or not parts.hostname or parts.path not in ("", "/"):
        raise ProxySettingError(f"--proxy {text!r}: expected socks5://HOST:PORT (only SOCKS5 is supported)")
    if parts.username or parts.password:
        raise ProxySettingError(f"--proxy {text!r}: a user name or password in the proxy URL is not supported")
    return parts.hostname, port or DEFAULT_SOCKS_PORT


def is_onion(host: str) -> bool:
    return host.lower().rstrip(".").endswith(".onion")


class DirectNetwork(TcpNetwork):
    """Real TCP without a proxy; refuses `.onion` hosts instead of leaking them to DNS."""

    async def dial(self, host: str, port: int) -> trio.abc.Stream:
        if is_onion(host):
            raise OSError(f"{host} is an onion address: it can be dialled only through a Tor SOCKS proxy "
                          "(--proxy socks5://127.0.0.1:9050)")
        return await trio.open_tcp_stream(host, port)


class ProxyNetwork(DirectNetwork):
    """Every dial through a SOCKS5 proxy; the proxy resolves names (so `.onion` works through Tor)."""

    def __init__(self, url: str) -> None:
        self.host, self.port = parse_proxy(url)
        self.url = f"socks5://{_bracket(self.host)}:{self.port}"

    async def dial(self, host: str, port: int) -> trio.abc.Stream:
        from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError
        from python_socks.async_.trio import Proxy

        proxy = Proxy.from_url(self.url, rdns=True)
        try:
            sock = await proxy.connect(host, port)
        except ProxyConnectionError as exc:
            raise OSError(f"cannot reach the proxy {self.host}:{self.port}: {exc}") from None
        except ProxyTimeoutError:
            raise OSError(f"the proxy {self.host}:{self.port} did not answer in time") from None
        except ProxyError as exc:
            raise OSError(f"the proxy {self.host}:{self.port} could not connect to {host}:{port}: {exc}") from None
        stream = trio.SocketStream(sock)
        stream.proxied = True  # type: ignore[attr-defined]  # its peer is the proxy: no observed address
        return stream


def _bracket(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def make_network(proxy: str | None) -> DirectNetwork:
    return ProxyNetwork(proxy) if proxy else DirectNetwork()
