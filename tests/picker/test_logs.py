"""The picker's log lines stay one line per event whatever clients put in the values."""

import logging
import sys

from frontier_picker import logs


def record(message: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("frontier_picker.director", logging.INFO, "p", 1, message, args, exc_info)


def test_a_model_name_with_a_newline_cannot_forge_a_log_line() -> None:
    formatter = logs.OneLineFormatter(logs.FORMAT)
    line = formatter.format(record("event=decision model=%s", "m\n2026-12-04 INFO forged event=refused"))
    assert "\n" not in line
    assert line.endswith(r"model=m\n2026-12-04 INFO forged event=refused")
    assert logs.escape("tab\tesc\x1b") == r"tab\tesc\x1b"
    assert logs.escape("plain é model/name:v1") == "plain é model/name:v1"  # printable text is untouched


def test_tracebacks_keep_their_lines() -> None:
    formatter = logs.OneLineFormatter(logs.FORMAT)
    try:
        raise ValueError("boom")
    except ValueError:
        line = formatter.format(record("event=internal_error", exc_info=sys.exc_info()))
    assert "\nTraceback" in line
