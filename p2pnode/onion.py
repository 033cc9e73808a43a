# Publishing the node as a Tor onion service (spec/peers.md, "Onion service"): with --tor-control PORT the node
# asks the local Tor (its control port on 127.0.0.1, through stem) for an onion service that forwards the node's
# port to its listener, keeps the service's key in <home>/onion_key (mode 0600) so the .onion address stays the
# same from run to run, and advertises HOST.onion:PORT. The service lives as long as the control connection:
# it goes when the node stops. stem blocks, so its calls run in a worker thread.
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger("p2pnode.onion")


class OnionState:
    def __init__(self) -> None:
        self.state = "starting"  # starting | published | failed
        self.detail = "asking Tor for an onion service"
        self.address: str | None = None
        self.at = time.time()

    def set(self, state: str, detail: str, address: str | None = None) -> None:
        self.state, self.detail, self.address, self.at = state, detail, address, time.time()

    def report(self) -> dict[str, Any]:
        return {"state": self.state, "detail": self.detail, "onion": self.address, "at": int(self.at)}


def _read_key(path: Path | None) -> tuple[str, str]:
    if path is not None and path.is_file():
        text = path.read_text().strip()
        kind, _, content = text.partition(":")
        if kind == "ED25519-V3" and content:
            return kind, content
        raise RuntimeError(f"{path} is not an onion service key (expected ED25519-V3:...); move it away")
    return "NEW", "ED25519-V3"


def _save_key(path: Path, kind: str, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{kind}:{content}\n")


def _publish(control_port: int, virtual_port: int, target: str, key_path: Path | None) -> tuple[Any, str]:
    from stem import SocketError
    from stem.control import Controller

    try:
        controller = Controller.from_port(address="127.0.0.1", port=control_port)
    except SocketError as exc:
        raise RuntimeError(f"cannot connect to Tor's control port 127.0.0.1:{control_port}: {exc}") from None
    try:
        try:
            controller.authenticate()
        except Exception as exc:
            raise RuntimeError(f"Tor's control port 127.0.0.1:{control_port} refused us: {exc}") from None
        kind, content = _read_key(key_path)
        response = controller.create_ephemeral_hidden_service(
            {virtual_port: target}, key_type=kind, key_content=content, await_publication=False)
        if kind == "NEW" and key_path is not None and response.private_key:
            _save_key(key_path, response.private_key_type, response.private_key)
        return controller, f"{response.service_id}.onion"
    except BaseException:
        controller.close()
        raise


async def run_onion_service(control_port: int, port: int, target_host: str, key_path: Path | None,
                            state: OnionState, published: Callable[[str | None], None]) -> None:
    """Publish HOST.onion:`port` -> `target_host`:`port` until cancelled; report in `state`."""
    controller = None
    try:
        try:
            controller, onion = await trio.to_thread.run_sync(_publish, control_port, port,
                                                              f"{target_host}:{port}", key_path)
        except Exception as exc:  # stem raises its own types; none may stop the node
            text = str(exc) or type(exc).__name__
            log.warning("no onion service: %s", text)
            state.set("failed", text)
            return
        log.info("published as the onion service %s:%d (Tor control port %d)", onion, port, control_port)
        state.set("published", f"Tor publishes {onion}:{port} for this node", onion)
        published(onion)
        await trio.sleep_forever()
    finally:
        if controller is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await trio.to_thread.run_sync(controller.close, abandon_on_cancel=True)
