# Interop with the reference implementation (npm secret-handshake + pull-box-stream, driven by
# reference.js): real TCP on 127.0.0.1 in both directions, our vectors recomputed by the reference,
# and a reference client with the wrong network key refused. Skips without node_modules, except under CI.
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from p2pnode import connection as tc
from protocol.msgframing import encode_message

HERE = Path(__file__).resolve().parent
VECTORS = HERE.parents[1] / "spec" / "vectors" / "transport"
NODE = shutil.which("node")
READY = NODE is not None and (HERE / "node_modules" / "secret-handshake").is_dir()

pytestmark = pytest.mark.interop


@pytest.fixture(autouse=True)
def _need_reference() -> None:
    if READY:
        return
    why = "node or tests/interop/node_modules missing (run `npm install` in tests/interop)"
    if os.environ.get("CI"):
        pytest.fail(f"interop tests cannot run under CI: {why}")
    pytest.skip(why)


PY_SEED = hashlib.sha256(b"interop python").digest()
JS_SEED = hashlib.sha256(b"interop js").digest()
PY = SigningKey(PY_SEED)
JS_PK = bytes(SigningKey(JS_SEED).verify_key)
OTHER_NK = hashlib.sha256(b"interop other network").digest()

# What each side sends: several messages, the largest well over one 4,096-byte box-stream body.
PY_MESSAGES = [b"hello from python", bytes(i % 253 for i in range(10_000)), b"end"]
JS_MESSAGES = [b"hello from js", bytes(i % 239 for i in range(20_000)), b"bye"]
JS_WIRE = b"".join(encode_message(m) for m in JS_MESSAGES)  # sent by the reference in ONE write
PY_WIRE = b"".join(encode_message(m) for m in PY_MESSAGES)


class Reference:
    """One reference.js process, with line-by-line JSON from its stdout."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = bytearray()

    async def line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                raise AssertionError(f"reference.js exited early; output so far: {bytes(self._buffer)!r}")
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return json.loads(line)


async def _start(nursery: trio.Nursery, tmp_path: Path, config: dict[str, Any]) -> Reference:
    path = tmp_path / f"{config['mode']}.json"
    path.write_text(json.dumps(config))
    process = await nursery.start(
        lambda task_status: trio.run_process(
            [NODE, str(HERE / "reference.js"), str(path)],
            stdout=-1,  # subprocess.PIPE
            cwd=HERE,
            check=False,
            task_status=task_status,
        )
    )
    return Reference(process)


async def _python_session(conn: tc.Connection) -> list[bytes]:
    assert conn.remote_key == JS_PK
    for message in PY_MESSAGES:
        await conn.send(message)
    received = []
    with pytest.raises(tc.ConnectionClosed, match="^closed: peer said goodbye"):
        while True:
            received.append(await conn.receive())
    await conn.aclose()
    return received


def _check_report(report: dict[str, Any]) -> None:
    assert report["error"] is None, report
    assert report["remote"] == bytes(PY.verify_key).hex()
    assert report["received_len"] == len(PY_WIRE)
    assert report["received_sha256"] == hashlib.sha256(PY_WIRE).hexdigest()


def _config(mode: str, network_key: bytes = tc.DEFAULT_NETWORK_KEY, **extra: Any) -> dict[str, Any]:
    return {"mode": mode, "seed": JS_SEED.hex(), "network_key": network_key.hex(), "send_hex": JS_WIRE.hex(),
            **extra}


async def test_reference_server_with_our_client(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            ref = await _start(nursery, tmp_path, _config("server"))
            hello = await ref.line()
            assert hello["public_key"] == JS_PK.hex()
            stream = await trio.open_tcp_stream("127.0.0.1", hello["port"])
            conn = await tc.client_handshake(stream, PY, JS_PK)
            assert await _python_session(conn) == JS_MESSAGES
            _check_report(await ref.line())


async def test_reference_client_with_our_server(tmp_path: Path) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    received: list[list[bytes]] = []

    async def handler(stream: trio.SocketStream) -> None:
        conn = await tc.server_handshake(stream, PY)
        received.append(await _python_session(conn))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, listeners)
            ref = await _start(
                nursery, tmp_path, _config("client", port=port, server_key=bytes(PY.verify_key).hex())
            )
            _check_report(await ref.line())
            while not received:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert received == [JS_MESSAGES]


async def test_reference_client_with_wrong_network_key_is_refused(tmp_path: Path) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    failures: list[tc.HandshakeFailed] = []

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await tc.server_handshake(stream, PY)
        except tc.HandshakeFailed as exc:
            failures.append(exc)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, listeners)
            config = _config("client", OTHER_NK, port=port, server_key=bytes(PY.verify_key).hex())
            ref = await _start(nursery, tmp_path, config)
            report = await ref.line()
            while not failures:  # the reference may report before our handler has seen the end (bounded above)
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert report.get("error"), report
    assert "remote" not in report
    assert failures and failures[0].reason.startswith("invalid: client hello is not authenticated")


async def test_our_client_with_wrong_network_key_is_refused_by_reference(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            ref = await _start(nursery, tmp_path, _config("server"))
            hello = await ref.line()
            stream = await trio.open_tcp_stream("127.0.0.1", hello["port"])
            with pytest.raises(tc.HandshakeFailed, match="^closed: server closed the connection"):
                await tc.client_handshake(stream, PY, JS_PK, network_key=OTHER_NK)
            report = await ref.line()
            assert report.get("error"), report


async def test_reference_reproduces_our_vectors(tmp_path: Path) -> None:
    handshake = json.loads((VECTORS / "handshake.json").read_text())
    boxstream = json.loads((VECTORS / "boxstream.json").read_text())
    config = {"mode": "vectors", "handshakes": handshake["valid"], "boxstreams": boxstream["valid"]}
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            result = await (await _start(nursery, tmp_path, config)).line()
    for ours, theirs in zip(handshake["valid"], result["handshakes"], strict=True):
        for field in ("client_hello", "server_hello", "client_auth", "server_accept"):
            assert theirs[field] == ours[field], field
        assert theirs["client_encrypt_key"] == theirs["server_decrypt_key"] == ours["client_to_server_key"]
        assert theirs["server_encrypt_key"] == theirs["client_decrypt_key"] == ours["server_to_client_key"]
        assert theirs["client_encrypt_nonce"] == ours["client_to_server_nonce"]
        assert theirs["server_encrypt_nonce"] == ours["server_to_client_nonce"]
    assert result["boxstreams"] == [v["stream"] for v in boxstream["valid"]]
