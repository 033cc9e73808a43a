# The node's log lines carry text from peers (close reasons, hosts, names): this formatter passes every
# message through render.terminal_text, so such text can never forge a log line or drive a terminal.
# Tracebacks (our own text) are kept as they are.
from __future__ import annotations

import logging

from .render import terminal_text


class SafeFormatter(logging.Formatter):
    """A logging.Formatter whose message part is one escaped line."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.msg, record.args
        record.msg, record.args = terminal_text(record.getMessage()), None
        try:
            return super().format(record)
        finally:
            record.msg, record.args = saved
