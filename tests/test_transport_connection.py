# Tests of the trio adapter p2pnode/connection.py over memory streams (virtual clock) and real TCP.
from __future__ import annotations

import hashlib

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2pnode import connection as tc

CLIENT = SigningKey(hashlib.sha256(b"conn client").digest())
SERVER = SigningKey(hashlib.sha256(b"conn server").digest())
SERVER_PK = bytes(SERVER.verify_key)
OTHER_NK = hashlib.sha256(b"a private network").digest()


async def _connect(
    client_stream: trio.abc.Stream,
    server_stream: trio.abc.Stream,
    client_kw: dict | None = None,
    server_kw: dict | None = None,
    server_key: bytes = SERVER_PK,
) -> tuple[tc.Connection, tc.Connection]:
    conns: dict[str, tc.Connection] = {}

    async def serve() -> None:
        conns["server"] = await tc.server_handshake(server_stream, SERVER, **(server_kw or {}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        conns["client"] = await tc.client_handshake(client_stream, CLIENT, server_key, **(client_kw or {}))
    return conns["client"], conns["server"]


async def _memory_pair(**kw: object) -> tuple[tc.Connection, tc.Connection]:
    a, b = trio.testing.memory_stream_pair()
    return await _connect(a, b, **kw)  # type: ignore[arg-type]


async def test_handshake_and_messages_both_ways() -> None:
    client, server = await _memory_pair()
    assert client.remote_key == SERVER_PK
    assert server.remote_key == bytes(CLIENT.verify_key)
    big = bytes(range(256)) * 100  # 25,600 bytes: spans several box-stream frames
    await client.send(b"hello")
    await client.send(big)
    assert await server.receive() == b"hello"
    assert await server.receive() == big
    await server.send(b"reply")
    assert await client.receive() == b"reply"
    await client.aclose()
    with pytest.raises(tc.ConnectionClosed, match="^closed: peer said goodbye"):
        await server.receive()
    with pytest.raises(tc.ConnectionClosed):  # sticky
        await server.receive()
    await server.aclose()


async def test_many_small_messages_and_concurrent_senders() -> None:
    client, server = await _memory_pair()
    count = 200

    async def sender(tag: int) -> None:
        for i in range(count):
            await client.send(f"{tag}:{i}".encode())

    received: list[bytes] = []

    async def receiver() -> None:
        for _ in range(3 * count):
            received.append(await server.receive())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            for tag in range(3):
                nursery.start_soon(sender, tag)
    for tag in range(3):  # each sender's messages arrive whole and in order
        mine = [m for m in received if m.startswith(f"{tag}:".encode())]
        assert mine == [f"{tag}:{i}".encode() for i in range(count)]
    await client.aclose()
    await server.aclose()


async def test_max_size_message_is_accepted() -> None:
    client, server = await _memory_pair(server_kw={"max_message_size": 10_000})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send, b"x" * 10_000)
        assert await server.receive() == b"x" * 10_000


async def test_oversized_message_ends_receiving_but_lets_us_say_why() -> None:
    client, server = await _memory_pair(server_kw={"max_message_size": 1000})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send, b"x" * 1001)
        with pytest.raises(tc.MessageTooLarge, match="^too-large:"):
            await server.receive()
    with pytest.raises(tc.MessageTooLarge):
        await server.receive()
    # the sending direction still works: the server tells the client why, then closes
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.send, b"close: too-large")
        assert await client.receive() == b"close: too-large"
    await server.aclose()
    with pytest.raises(tc.ConnectionClosed):
        await client.receive()


async def test_sending_too_large_or_empty_is_refused_locally() -> None:
    client, server = await _memory_pair(client_kw={"max_message_size": 100})
    with pytest.raises(tc.MessageTooLarge, match="^too-large:"):
        await client.send(b"x" * 101)
    with pytest.raises(ValueError):
        await client.send(b"")
    await client.send(b"still open")
    assert await server.receive() == b"still open"


async def test_wrong_network_key_fails_both_sides() -> None:
    a, b = trio.testing.memory_stream_pair()
    results: dict[str, BaseException] = {}

    async def serve() -> None:
        try:
            await tc.server_handshake(b, SERVER)
        except tc.HandshakeFailed as exc:
            results["server"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with pytest.raises(tc.HandshakeFailed) as info:
            await tc.client_handshake(a, CLIENT, SERVER_PK, network_key=OTHER_NK)
    assert info.value.reason.startswith("closed: server closed the connection during the handshake")
    assert results["server"].reason.startswith("invalid: client hello is not authenticated")  # type: ignore[attr-defined]


async def test_wrong_server_key_fails() -> None:
    a, b = trio.testing.memory_stream_pair()
    other = bytes(SigningKey(hashlib.sha256(b"someone else").digest()).verify_key)
    server_failure: list[tc.HandshakeFailed] = []

    async def serve() -> None:
        try:
            await tc.server_handshake(b, SERVER)
        except tc.HandshakeFailed as exc:
            server_failure.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with pytest.raises(tc.HandshakeFailed, match="^closed: server closed the connection"):
            await tc.client_handshake(a, CLIENT, other)
    assert server_failure[0].reason.startswith("invalid: client authenticate did not decrypt")


async def test_invalid_server_key_fails_without_raising_nacl_errors() -> None:
    a, _ = trio.testing.memory_stream_pair()
    with pytest.raises(tc.HandshakeFailed, match="^invalid:"):
        await tc.client_handshake(a, CLIENT, b"short")


async def test_handshake_timeout_with_silent_peer(autojump_clock: trio.testing.MockClock) -> None:
    a, _b = trio.testing.memory_stream_pair()
    with pytest.raises(tc.HandshakeFailed, match="^timeout:"):
        await tc.client_handshake(a, CLIENT, SERVER_PK, handshake_timeout=5)
    assert trio.current_time() == pytest.approx(5)
    with pytest.raises(trio.ClosedResourceError):  # the failure closed our stream
        await a.send_all(b"x")


async def test_server_handshake_timeout(autojump_clock: trio.testing.MockClock) -> None:
    _a, b = trio.testing.memory_stream_pair()
    with pytest.raises(tc.HandshakeFailed, match="^timeout:"):
        await tc.server_handshake(b, SERVER, handshake_timeout=3)


async def test_idle_timeout_keeps_connection_usable(autojump_clock: trio.testing.MockClock) -> None:
    client, server = await _memory_pair(server_kw={"idle_timeout": 30})
    start = trio.current_time()
    with pytest.raises(tc.IdleTimeout, match="^idle:"):
        await server.receive()
    assert trio.current_time() - start == pytest.approx(30)
    await client.send(b"late but fine")
    assert await server.receive() == b"late but fine"


async def test_truncated_stream_is_connection_closed() -> None:
    a, b = trio.testing.memory_stream_pair()
    client, server = await _connect(a, b)
    await client.send(b"last words")
    await a.aclose()  # drop the stream without a goodbye
    assert await server.receive() == b"last words"
    with pytest.raises(tc.ConnectionClosed, match="^truncated:"):
        await server.receive()


async def test_eof_in_the_middle_of_a_frame() -> None:
    a, b = trio.testing.memory_stream_pair()
    client, server = await _connect(a, b)
    frame = client._encoder.encrypt(b"\x00\x00\x00\x05hello")
    await a.send_all(frame[:-2])
    await a.aclose()
    with pytest.raises(tc.ConnectionClosed, match="^truncated:"):
        await server.receive()


async def test_goodbye_inside_a_message_is_truncated() -> None:
    a, b = trio.testing.memory_stream_pair()
    client, server = await _connect(a, b)
    await a.send_all(client._encoder.encrypt(b"\x00\x00\x00\x10only part") + client._encoder.goodbye())
    with pytest.raises(tc.ConnectionClosed, match="^truncated: peer said goodbye in the middle"):
        await server.receive()


async def test_forged_frame_is_invalid_and_ends_receiving() -> None:
    a, b = trio.testing.memory_stream_pair()
    client, server = await _connect(a, b)
    await a.send_all(bytes(40))
    with pytest.raises(tc.TransportError, match="^invalid: bad box stream frame") as info:
        await server.receive()
    assert not isinstance(info.value, tc.ConnectionClosed)
    with pytest.raises(tc.TransportError, match="^invalid:"):  # receiving stays failed
        await server.receive()
    await server.aclose()
    with pytest.raises(tc.ConnectionClosed):  # after the caller closes, sends say so
        await server.send(b"x")


async def test_zero_length_message_is_invalid() -> None:
    a, b = trio.testing.memory_stream_pair()
    client, server = await _connect(a, b)
    await a.send_all(client._encoder.encrypt(bytes(4)))
    with pytest.raises(tc.TransportError, match="^invalid: bad message framing"):
        await server.receive()


async def test_aclose_is_idempotent_and_sends_fail_after() -> None:
    client, server = await _memory_pair()
    await client.aclose()
    await client.aclose()
    with pytest.raises(tc.ConnectionClosed, match="^closed:"):
        await client.send(b"x")
    with pytest.raises(tc.ConnectionClosed):
        await client.receive()


async def test_aclose_while_receiving_wakes_receiver() -> None:
    client, server = await _memory_pair()
    async with trio.open_nursery() as nursery:

        async def receiver() -> None:
            with pytest.raises(tc.ConnectionClosed):
                await server.receive()

        nursery.start_soon(receiver)
        await trio.testing.wait_all_tasks_blocked()
        await server.aclose()


async def test_aclose_does_not_hang_when_peer_does_not_read(autojump_clock: trio.testing.MockClock) -> None:
    a, b = trio.testing.lockstep_stream_pair()
    client, server = await _connect(a, b)
    await client.aclose()  # the goodbye cannot be delivered: nobody reads b
    assert trio.current_time() <= tc.CLOSE_TIMEOUT + 1


async def test_peer_can_keep_sending_after_our_goodbye_is_received() -> None:
    client, server = await _memory_pair()
    await server.send(b"before")
    await a_goodbye_from(client)
    with pytest.raises(tc.ConnectionClosed):
        await server.receive()
    await server.send(b"after their goodbye")  # half-closed: our direction still works
    assert await client.receive() == b"before"
    assert await client.receive() == b"after their goodbye"


async def a_goodbye_from(conn: tc.Connection) -> None:
    async with conn._send_lock:
        await conn._stream.send_all(conn._encoder.goodbye())


async def test_server_sends_first_message_right_after_accept() -> None:
    # The accept and the first message may reach the client in one read; nothing may be lost.
    a, b = trio.testing.memory_stream_pair()
    conns: dict[str, tc.Connection] = {}

    async def serve() -> None:
        conns["server"] = conn = await tc.server_handshake(b, SERVER)
        await conn.send(b"welcome")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await trio.testing.wait_all_tasks_blocked()
        client = await tc.client_handshake(a, CLIENT, SERVER_PK)
    assert await client.receive() == b"welcome"


async def test_over_real_tcp() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    payload = bytes(range(256)) * 4000  # 1,024,000 bytes, near MAX_MESSAGE_SIZE
    echoed: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        conn = await tc.server_handshake(stream, SERVER)
        try:
            while True:
                await conn.send(await conn.receive())
        except tc.ConnectionClosed:
            pass
        finally:
            await conn.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, listeners)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            conn = await tc.client_handshake(stream, CLIENT, SERVER_PK)
            messages = [b"small", payload] + [b"m%d" % i for i in range(100)]
            for m in messages:
                await conn.send(m)
            for _ in messages:
                echoed.append(await conn.receive())
            await conn.aclose()
            nursery.cancel_scope.cancel()
    assert echoed == messages


async def test_tcp_wrong_network_key_refused() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    failures: list[tc.HandshakeFailed] = []

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await tc.server_handshake(stream, SERVER)
        except tc.HandshakeFailed as exc:
            failures.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, listeners)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            with pytest.raises(tc.HandshakeFailed):
                await tc.client_handshake(stream, CLIENT, SERVER_PK, network_key=OTHER_NK)
            while not failures:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert failures[0].reason.startswith("invalid:")


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300))
async def test_fuzz_garbage_handshake_only_raises_handshake_failed(data: bytes) -> None:
    a, b = trio.testing.memory_stream_pair()
    await a.send_all(data)
    await a.aclose()
    with trio.fail_after(5), pytest.raises(tc.HandshakeFailed, match="^(invalid|closed):"):
        await tc.server_handshake(b, SERVER)


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1, max_size=300))
async def test_fuzz_garbage_after_handshake_only_raises_transport_errors(data: bytes) -> None:
    a, b = trio.testing.memory_stream_pair()
    _client, server = await _connect(a, b)
    await a.send_all(data)
    await a.aclose()
    with trio.fail_after(5), pytest.raises(tc.TransportError) as info:
        await server.receive()
    assert not isinstance(info.value, tc.IdleTimeout)
