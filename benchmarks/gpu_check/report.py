"""Rows the GPU check's phases print as they finish, and each phase's headline for the final table.

A row is printed at once and flushed: the phases run under `timeout`, and rows printed before a
phase is cut off must survive it. (The tests phase hands in pytest's terminal writer instead:
pytest captures file descriptor 1 while tests run.) A phase's headline (result and one figure)
goes to `$GPU_CHECK_DIR/<phase>.headline`, which `summary.py` reads; without `GPU_CHECK_DIR` (a
phase run by hand) only the rows are printed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

COLUMNS = ("phase", "item", "result", "figure", "s")


class PhaseReport:
    """Prints `| phase | item | result | figure | s |` rows; `headline` sets the phase's summary."""

    def __init__(self, phase: str, write: Callable[[str], None] | None = None):
        self.phase = phase
        self.write = write or (lambda line: print(line, flush=True))
        self.failures = 0
        self.write("| " + " | ".join(COLUMNS) + " |")

    def row(self, item: str, ok: bool, figure: str, seconds: float) -> None:
        self.failures += not ok
        result = "ok" if ok else "FAILED"
        self.write(f"| {self.phase} | {item} | {result} | {figure} | {seconds:.1f} |")

    def headline(self, figure: str, ok: bool | None = None) -> None:
        """The phase's line in the final table (ok unless a row failed, if not given)."""
        ok = self.failures == 0 if ok is None else ok
        folder = os.environ.get("GPU_CHECK_DIR")
        if folder:
            Path(folder, f"{self.phase}.headline").write_text(f"{'ok' if ok else 'FAILED'}\t{figure}\n")


class Timer:
    """`with Timer() as t: ...` then `t.seconds`."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
