# Text from the network made safe for a terminal or a log line (minimal version; the CLI work extends it).
# Every control, format, separator, surrogate, private-use or unassigned character is shown escaped
# (\xNN, \uNNNN, \UNNNNNNNN), so a peer's text can neither start a line of its own nor drive the terminal.
from __future__ import annotations

import unicodedata

_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def terminal_text(s: str) -> str:
    """`s` as one line that is safe to print: characters that could change the terminal's state, start a
    new line, or reorder or hide text are shown escaped."""
    return "".join(_escape(c) if unicodedata.category(c) in _ESCAPED_CATEGORIES else c for c in s)
