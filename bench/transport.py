# Benchmark of the transport: secret handshakes per second (in process, memory streams) and
# encrypted throughput between two OS processes over loopback TCP. Prints figures; not a test.
# Usage: python bench/transport.py [--mb 64] [--handshakes 300]
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio  # noqa: E402
import trio.testing  # noqa: E402
from nacl.signing import SigningKey  # noqa: E402

from p2pnode import connection as tc  # noqa: E402

REFERENCE_MB_S = 28.5  # npm pull-box-stream, each way, measured on this machine
MESSAGE = 65_536  # bytes per wire message in the throughput runs
SERVER = SigningKey(bytes(range(32)))
CLIENT = SigningKey(bytes(range(1, 33)))


async def _handshakes(count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        a, b = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tc.server_handshake, b, SERVER)
            await tc.client_handshake(a, CLIENT, bytes(SERVER.verify_key))
    return count / (time.perf_counter() - start)


async def _pump_out(conn: tc.Connection, total: int) -> None:
    payload = os.urandom(MESSAGE)
    for _ in range(total // MESSAGE):
        await conn.send(payload)


async def _pump_in(conn: tc.Connection, total: int) -> None:
    got = 0
    while got < total:
        got += len(await conn.receive())


async def _child() -> None:
    """The server process: prints its port, serves one connection, obeys the client's commands."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    stream = await listeners[0].accept()
    conn = await tc.server_handshake(stream, SERVER)
    while True:
        try:
            command = (await conn.receive()).decode().split()
        except tc.ConnectionClosed:
            break
        what, total = command[0], int(command[1])
        async with trio.open_nursery() as nursery:
            if what in ("upload", "both"):
                nursery.start_soon(_pump_in, conn, total)
            if what in ("download", "both"):
                nursery.start_soon(_pump_out, conn, total)
        await conn.send(b"done")
    await conn.aclose()


async def _throughput(total: int) -> dict[str, float]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--child"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = await tc.client_handshake(stream, CLIENT, bytes(SERVER.verify_key))
        results: dict[str, float] = {}
        for what in ("upload", "download", "both"):
            start = time.perf_counter()
            await conn.send(f"{what} {total}".encode())
            async with trio.open_nursery() as nursery:
                if what in ("upload", "both"):
                    nursery.start_soon(_pump_out, conn, total)
                if what in ("download", "both"):
                    nursery.start_soon(_pump_in, conn, total)
            assert await conn.receive() == b"done"
            results[what] = total / 1e6 / (time.perf_counter() - start)
        await conn.aclose()
    finally:
        child.wait(timeout=30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=64, help="megabytes moved each way per run")
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        trio.run(_child)
        return
    rate = trio.run(_handshakes, args.handshakes)
    print(f"handshakes (in process, memory streams): {rate:,.0f} per second over {args.handshakes}")
    total = args.mb * 1_000_000 // MESSAGE * MESSAGE
    mb = trio.run(_throughput, total)
    print(f"throughput between two processes over loopback TCP, {total / 1e6:.0f} MB in "
          f"{MESSAGE // 1024} KiB messages:")
    for what, label in (("upload", "client -> server only"), ("download", "server -> client only"),
                        ("both", "both ways at once, each way")):
        print(f"  {label:30s} {mb[what]:7.1f} MB/s  ({mb[what] / REFERENCE_MB_S:.2f}x the JS reference's "
              f"{REFERENCE_MB_S} MB/s each way)")


if __name__ == "__main__":
    main()
