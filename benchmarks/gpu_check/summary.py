"""The GPU check's final table: one line per phase (result, headline figure, seconds), read from
what `gpu_check.sh` and the phases wrote into `$GPU_CHECK_DIR`. Exits 1 unless every phase passed.

`phases.tsv` holds, per phase run: name, exit status, budget, start and end (epoch seconds);
`<name>.headline` holds the phase's own verdict and figure, if it got that far.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TIMED_OUT = {124, 137}  # timeout's status, and SIGKILL's after --kill-after


def verdict(status: int, budget: str, headline: tuple[str, str] | None) -> tuple[str, str]:
    figure = headline[1] if headline else "-"
    if status in TIMED_OUT:
        return f"TIMEOUT ({budget} s)", figure
    if status != 0:
        return f"FAILED (exit {status})", figure
    if headline is None:
        return "FAILED (no result)", figure
    return headline[0], figure


def main() -> None:
    folder = Path(os.environ["GPU_CHECK_DIR"])
    rows, all_ok = [], True
    for line in (folder / "phases.tsv").read_text().splitlines():
        name, status, budget, start, end = line.split("\t")
        path = folder / f"{name}.headline"
        headline = tuple(path.read_text().rstrip("\n").split("\t", 1)) if path.exists() else None
        result, figure = verdict(int(status), budget, headline)
        all_ok &= result == "ok"
        rows.append((name, result, figure, f"{float(end) - float(start):.0f}"))
    total = sum(float(r[3]) for r in rows)
    print("\n| phase | result | figure | s |\n| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"| all | {'ok' if all_ok else 'FAILED'} | | {total:.0f} |")
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
