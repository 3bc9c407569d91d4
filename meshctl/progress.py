"""Progress of long operations (infra apply/destroy, cluster create/edit/delete) on stderr.

Model: infra reports through the hooks of `infra.apply.ApplyProgress`; a
`Printer` turns them into text, always on stderr so stdout stays clean for
`--output json`. Every line starts with the time elapsed since the command
began. On a terminal, planned steps and waits rewrite one status line (what is
being done now, or what it waits for) and only stages, region results and
errors stay; anywhere else (a pipe, a CI log) every event is one line of its
own, so a log shows each step and each wait with its time.

Hooks may be called from several threads (regions are applied in parallel):
one lock orders the output.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, TextIO

from infra.apply import ApplyProgress


class Printer(ApplyProgress):
    def __init__(self, stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.t0 = clock()
        self.lock = threading.Lock()
        self.totals: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self._status = False  # a status line is showing (terminal only)

    def _emit(self, text: str, transient: bool = False) -> None:
        line = f"[{self.clock() - self.t0:6.1f}s] {text}"
        with self.lock:
            if self.tty:
                clear = "\r\x1b[K" if self._status else ""
                self.stream.write(clear + line + ("" if transient else "\n"))
                self._status = transient
            else:
                self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Leave the terminal on a fresh line."""
        with self.lock:
            if self._status:
                self.stream.write("\n")
                self.stream.flush()
                self._status = False

    # --- the hooks ---------------------------------------------------------------
    def start(self, region: str, total: int) -> None:
        with self.lock:
            self.totals[region], self.done[region] = total, 0
        self._emit(f"{region}: applying {total} change(s)")

    def step(self, region: str, change: Any) -> None:
        with self.lock:
            self.done[region] = self.done.get(region, 0) + 1
            n, total = self.done[region], self.totals.get(region, 0)
        self._emit(f"{region}: {n}/{total} {change.op} {change.resource}", transient=True)

    def finish(self, region: str, error: str | None) -> None:
        with self.lock:
            n, total = self.done.get(region, 0), self.totals.get(region, 0)
        self._emit(f"{region}: failed after {n}/{total}: {error}" if error else f"{region}: done, {n}/{total}")

    def phase(self, what: str) -> None:
        self._emit(what + " ...")

    def waiting(self, region: str, what: str) -> None:
        self._emit(f"{region}: waiting for {what}", transient=True)

    def note(self, region: str, text: str) -> None:
        self._emit(f"{region}: {text}", transient=True)

    def fact(self, text: str) -> None:
        self._emit(text)
