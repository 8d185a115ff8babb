"""A progress bar on stderr for long benchmark runs.

One line, redrawn in place at most a few times a second on a terminal; when stderr is not a terminal (CI,
a log file) it prints a plain line at most every `plain_every_s` seconds instead, so logs stay readable.
"""

import dataclasses
import sys
import time
from typing import TextIO


@dataclasses.dataclass(slots=True, kw_only=True)
class Counters:
    """What the load generator has done so far in the current run."""

    total: int = 0
    sent: int = 0
    done: int = 0
    failed: int = 0


@dataclasses.dataclass(slots=True, kw_only=True)
class Bar:
    """Draws `label` with the counters of the current run, and the step `step` of `steps` overall."""

    label: str = ""
    step: int = 0
    steps: int = 0
    counters: Counters = dataclasses.field(default_factory=Counters)
    stream: TextIO = dataclasses.field(default_factory=lambda: sys.stderr)
    width: int = 30
    plain_every_s: float = 5.0
    started: float = dataclasses.field(default_factory=time.monotonic)
    _last_plain: float = float("-inf")

    def line(self) -> str:
        c = self.counters
        filled = int(self.width * c.done / c.total) if c.total else 0
        bar = "#" * filled + "-" * (self.width - filled)
        failed = f" failed {c.failed}" if c.failed else ""
        return (
            f"[{self.step}/{self.steps}] {self.label} |{bar}| done {c.done}/{c.total} sent {c.sent}{failed}"
            f" {time.monotonic() - self.started:5.0f}s"
        )

    def draw(self) -> None:
        if self.stream.isatty():
            self.stream.write("\r\x1b[2K" + self.line())
            self.stream.flush()
            return
        now = time.monotonic()
        if now - self._last_plain >= self.plain_every_s:
            self._last_plain = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def finish(self) -> None:
        """End the current line so that what is printed next starts on its own line."""
        self._last_plain = float("-inf")
        if self.stream.isatty():
            self.stream.write("\r\x1b[2K" + self.line() + "\n")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
