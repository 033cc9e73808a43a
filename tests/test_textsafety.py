# Text from peers is data (issue 8): a close reason with a newline and terminal escapes cannot forge a
# line in the node's log or reach the terminal as control characters.
from __future__ import annotations

from pathlib import Path

import trio
from attackers import handshake, hello, open_tcp
from nodeproc import NodeProcess, init_home

from p2pnode.render import terminal_text
from protocol import wire

FORGED = "2026-01-01 00:00:00,000 ERROR p2pnode.node: forged by a peer"


def test_terminal_text_escapes_what_could_forge_or_drive_a_terminal() -> None:
    assert terminal_text("plain text, é, 🌍") == "plain text, é, 🌍"
    assert terminal_text("a\nb\rc\td") == "a\\x0ab\\x0dc\\x09d"
    assert terminal_text("\x1b[31mred\x07") == "\\x1b[31mred\\x07"
    assert terminal_text("x\u202eevil\u2028y\x85") == "x\\u202eevil\\u2028y\\x85"
    assert "\n" not in terminal_text("".join(chr(c) for c in range(0x3000)))


async def test_a_close_reason_cannot_forge_a_log_line(tmp_path: Path) -> None:
    home = tmp_path / "victim"
    init_home(home)
    node = NodeProcess(home)
    try:
        stream = await open_tcp(node.address, None)
        peer = await handshake(stream, node.address)
        await peer.send(hello())
        await peer.send(wire.Close(f"bye\n{FORGED}\x1b]0;title\x07"))
        with trio.fail_after(30):
            while "disconnected: peer closed: bye" not in node.log_text():
                await trio.sleep(0.05)
        await trio.aclose_forcefully(stream)
    finally:
        assert node.stop() == 0, node.log_text()
    text = node.log_path.read_text()
    assert not any(line.startswith(FORGED) for line in text.splitlines()), text[-2000:]
    assert "\x1b" not in text and "\x07" not in text
    assert f"peer closed: bye\\x0a{FORGED}\\x1b]0;title\\x07" in text
