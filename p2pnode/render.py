# Text from the network shown to a person: one renderer for the terminal and the log, so that a peer's
# close reason, a host name or a profile name can never pass for the node's own output (spec/decisions.md).
# Pure functions, no I/O, shared by the CLI and the node's logs.
#
# What is shown escaped (as \xNN, \uNNNN or \UNNNNNNNN; a backslash is doubled, so the text reads as itself):
# - control characters (C0, DEL, C1): escape sequences recolour, move the cursor, retitle the window;
#   newline, carriage return and tab would start a line that passes for the program's own output;
# - format characters (Unicode Cf): bidi overrides and isolates that reorder what follows, zero-width
#   spaces and joiners, soft hyphens, tags, the BOM; a zero-width joiner between two emoji is kept;
# - line and paragraph separators, surrogates, private-use and unassigned code points;
# - invisible letters (Hangul fillers and the like), variation selectors not after an emoji, and
#   combining marks beyond MAX_COMBINING on one base character.
from __future__ import annotations

import unicodedata

MAX_COMBINING = 4
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_INVISIBLE = frozenset({0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x2800, 0x3164, 0xFFA0})
_ZWJ = 0x200D


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _is_variation_selector(code: int) -> bool:
    return 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF or 0x180B <= code <= 0x180F


def _emoji_like(char: str) -> bool:
    return unicodedata.category(char) in ("So", "Sk")


def terminal_text(s: str) -> str:
    """`s` as one line that is safe to print: every character that could change the terminal's state,
    start a new line, reorder or hide text is shown escaped, and a backslash is doubled (see the module
    comment)."""
    if s.isascii() and s.isprintable():  # the common case: nothing to look at more closely
        return s.replace("\\", "\\\\")
    out: list[str] = []
    combining = 0
    previous = ""
    for index, char in enumerate(s):
        code = ord(char)
        category = unicodedata.category(char)
        keep = True
        if char == "\\":
            out.append("\\\\")
            previous = ""
            combining = 0
            continue
        if code == _ZWJ:
            following = s[index + 1] if index + 1 < len(s) else ""
            keep = bool(previous) and bool(following) and _emoji_like(previous) and _emoji_like(following)
        elif category in _ESCAPED_CATEGORIES or code in _INVISIBLE:
            keep = False
        elif category in ("Mn", "Me"):
            if _is_variation_selector(code):
                keep = bool(previous) and (_emoji_like(previous) or previous in "0123456789#*")
            else:
                combining += 1
                keep = combining <= MAX_COMBINING and bool(out)
        else:
            combining = 0
        if keep:
            out.append(char)
            if category not in ("Mn", "Me"):
                previous = char
        else:
            out.append(_escape(char))
            previous = ""
    return "".join(out)


def terminal_lines(s: str, tab_size: int = 4) -> list[str]:
    """Multi-line text (a post) as safe lines: split at newlines (\\n, \\r\\n), tabs expanded to spaces,
    trailing white space dropped, each line through terminal_text. Never an empty list."""
    lines = s.replace("\r\n", "\n").split("\n")
    return [terminal_text(line.expandtabs(tab_size).rstrip()) for line in lines]


def one_line(s: str, limit: int) -> str:
    """The start of a text as one safe line of at most about `limit` characters (for previews): white
    space runs, newlines included, become one space; a cut is marked with an ellipsis."""
    flat = " ".join(s.split())
    if len(flat) > limit:
        flat = flat[: max(1, limit - 1)].rstrip() + "…"
    return terminal_text(flat)


def display_name(name: str) -> str:
    """A profile name as shown beside posts: white space runs become one space, no leading or trailing
    space (a name must not look indented), then terminal_text."""
    return terminal_text(" ".join(name.split()))


log_text = terminal_text  # the same rules for a log line
