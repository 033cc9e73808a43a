# Who may use the web app, and how that is checked: the access token kept in the home (mode 0600), the
# cookie it becomes, the CSRF token derived from it, the Host and Origin rules (DNS rebinding, cross-site
# forms), the `--web` option, and the URL that `p2pnode web` prints. No I/O but the token file.
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

TOKEN_FILE = "web-token"
DEFAULT_WEB = "127.0.0.1:8766"


class WebConfigError(Exception):
    """A bad --web option or token file, worded for the user."""


class WebStartError(Exception):
    """The web app could not start (its port is taken), worded for the user."""


@dataclass(frozen=True)
class WebOptions:
    host: str
    port: int
    public: bool = False  # binding a non-loopback address was asked for explicitly
    # the default address, not one the owner chose: when another node on this machine has its port, any free
    # port will do (so that two nodes run side by side as the README shows), and the node says which
    fallback: bool = False


def parse_web_option(text: str, public: bool = False) -> WebOptions | None:
    """`HOST:PORT` (IPv6 in brackets), or `off` (None). A non-loopback host needs `public`."""
    if text.strip().lower() == "off":
        return None
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise WebConfigError(f"--web must be HOST:PORT or 'off', not {text!r}")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not public:
        raise WebConfigError(f"--web {text}: the web app lets whoever has its token act as you; binding a "
                             "non-loopback address needs --web-public as well")
    return WebOptions(host, int(port), public=not loopback)


def load_or_create_token(home: Path) -> str:
    """The access token of this home's web app: created once (mode 0600), refused if others can read it."""
    path = home / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    return read_token(home)


def read_token(home: Path) -> str:
    path = home / TOKEN_FILE
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except FileNotFoundError:
        raise WebConfigError(f"no web token in {home}: 'p2pnode run' creates it") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise WebConfigError(f"web token file {path} is accessible by group or others "
                             f"(mode {stat.S_IMODE(mode):o}); run 'chmod 600 {path}'")
    if len(token) < 32 or not all(c.isalnum() or c in "-_" for c in token):
        raise WebConfigError(f"web token file {path} is damaged: delete it and restart the node for a new one")
    return token


def open_url(base_url: str, token: str) -> str:
    """The URL to open once: the base URL with the token, which the app swaps for a cookie."""
    return f"{base_url.rstrip('/')}/?token={token}"


def host_header_ok(host_header: str | None, served: WebOptions, port: int) -> bool:
    """The Host a browser sends must name this server: an IP literal (loopback ones when served on loopback)
    or `localhost`, with the served port. A DNS name is refused, so a rebound name can never reach the app."""
    if not host_header:
        return False
    name, sep, port_text = host_header.rpartition(":")
    if not sep or port_text != str(port):
        return False
    if name == "localhost":
        return not served.public or served.host in ("localhost", "0.0.0.0", "::")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if not served.public:
        return address.is_loopback
    return served.host in ("0.0.0.0", "::") or address == ipaddress.ip_address(served.host)


def origin_ok(origin: str | None, host_header: str) -> bool:
    """A state-changing request must come from a page of this app: Origin is exactly http://<Host>."""
    return origin is not None and hmac.compare_digest(origin, f"http://{host_header}")


def token_ok(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def csrf_token(token: str) -> str:
    """The CSRF token put in every form: derived from the access token, so it needs no server state."""
    return hmac.new(token.encode(), b"p2pnode web csrf", hashlib.sha256).hexdigest()


def cookie_name(port: int) -> str:
    """Cookies are shared by every port of a host: each served port gets its own cookie name."""
    return f"p2pnode_{port}"
