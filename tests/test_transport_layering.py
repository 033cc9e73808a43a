# The transport's protocol/ modules stay sans-I/O: they import no event loop, socket, clock or p2pnode.
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"trio", "socket", "sqlite3", "asyncio", "time", "click", "p2pnode"}


@pytest.mark.parametrize("name", ["handshake.py", "boxstream.py", "msgframing.py"])
def test_protocol_module_imports_nothing_forbidden(name: str) -> None:
    tree = ast.parse((ROOT / "protocol" / name).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN
