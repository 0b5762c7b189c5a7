"""Progress of a long step on stderr: work done out of the total, elapsed and time left (METHOD.md §10).

A background timer prints a line at least every `interval` seconds while the step runs, so a long batch
never leaves the log silent, whether stderr is a terminal or a file. The time left is the elapsed time
per unit of work done times the work left, with units as small as the step allows (prompt rows, not
whole groups of concepts).
"""

from __future__ import annotations

import sys
import threading
import time

REPORT_EVERY = 15.0  # seconds between progress lines


class Progress:
    """`with Progress(total, what) as p:` ... `p.add(n)` as units finish; `quiet` prints nothing."""

    def __init__(self, total: int, what: str, quiet: bool = False, interval: float = REPORT_EVERY,
                 unit: str = "rows"):
        self.total, self.what, self.quiet, self.interval, self.unit = total, what, quiet, interval, unit
        self.done, self.start = 0, time.time()
        self._stop = threading.Event()
        self._timer = None

    def add(self, n: int = 1) -> None:
        self.done += n

    def line(self) -> str:
        spent = time.time() - self.start
        left = f"~{spent / self.done * max(self.total - self.done, 0):.0f}s left" if self.done else "estimating"
        return f"[{self.what}] {self.done}/{self.total} {self.unit}, {spent:.0f}s elapsed, {left}"

    def report(self) -> None:
        print(self.line(), file=sys.stderr, flush=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.report()

    def __enter__(self) -> "Progress":
        self.start = time.time()
        if not self.quiet and self.total > 0:
            self._timer = threading.Thread(target=self._run, daemon=True)
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
            if exc[0] is None:
                self.report()
