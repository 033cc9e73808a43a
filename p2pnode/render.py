# Text from the network shown to a person: one renderer for the terminal and the log, so that a peer's
# close reason, a host name or a profile name can never pass for the node's own output (spec/decisions.md).
from __future__ import annotations

import unicodedata

# characters that move the cursor, reorder text or hide themselves: shown as \u escapes
_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"}


def terminal_text(text: str) -> str:
    """`text` with every control, format (bidi overrides, zero-width), separator and unassigned character
    escaped as \\xNN or \\uNNNN, and backslashes doubled, so that it prints on one line as itself."""
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif unicodedata.category(char) in _INVISIBLE_CATEGORIES:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


log_text = terminal_text
