"""The sidecar's log lines: `event=... key=value ...`, one line per event whatever the values hold.

Values come from clients (request ids, the prefiller header), so control characters are escaped and a value
holding a newline cannot forge a line.
"""

import logging
from typing import Final

FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"

_CONTROL: Final = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F]} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def escape(text: str) -> str:
    """`text` with control characters escaped."""
    return text if text.isprintable() else text.translate(_CONTROL)


class OneLineFormatter(logging.Formatter):
    """A Formatter whose messages stay on one line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)


def configure(level: str) -> None:
    """Send every logger's records at `level` and above to stderr, one line each."""
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
