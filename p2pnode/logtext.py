# The node's log lines carry text from peers (close reasons, hosts, names). Call sites render such text with
# render.log_text; this formatter is the safety net under them: every log message leaves with its control,
# format and separator characters escaped (backslashes are left alone, so text already rendered is not
# escaped twice), so no line written by a peer can forge a log line or drive a terminal. Tracebacks (our
# own text) are kept as they are.
from __future__ import annotations

import logging
import unicodedata

_ESCAPED = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _one_line(text: str) -> str:
    out = []
    for char in text:
        if unicodedata.category(char) in _ESCAPED:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


class SafeFormatter(logging.Formatter):
    """A logging.Formatter whose message part is one line with nothing in it that drives a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.msg, record.args
        record.msg, record.args = _one_line(record.getMessage()), None
        try:
            return super().format(record)
        finally:
            record.msg, record.args = saved
