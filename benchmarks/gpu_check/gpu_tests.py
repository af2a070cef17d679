"""Phase (b) of the GPU check: every GPU-marked test (tests/gpu and `@pytest.mark.gpu` anywhere
under tests/), one row per test as it finishes.

Only the files that carry the marker are collected: other test modules import packages a GPU
image may lack (real-client libraries, browsers), and collecting them would only cost time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from report import PhaseReport

TESTS = Path(__file__).resolve().parents[2] / "tests"
MARKER = "pytest.mark.gpu"


def marked_files() -> list[str]:
    return sorted(str(p) for p in TESTS.rglob("test_*.py") if MARKER in p.read_text(errors="replace"))


class RowPerTest:
    """A pytest plugin: one report row per test (its call, or the setup that failed or skipped
    it), written through pytest's terminal writer, which prints past its capture."""

    def __init__(self):
        self.report: PhaseReport | None = None
        self.counts = {"passed": 0, "failed": 0, "skipped": 0}

    @pytest.hookimpl(trylast=True)  # after the terminal reporter is registered
    def pytest_configure(self, config) -> None:
        terminal = config.pluginmanager.get_plugin("terminalreporter")
        self.report = PhaseReport("tests", write=lambda line: terminal.write_line(line, flush=True))

    @pytest.hookimpl(wrapper=True)
    def pytest_report_teststatus(self, report, config):
        """No progress characters: the rows say it, and a character would start their line."""
        category, _letter, word = yield
        return category, "", word

    def pytest_runtest_logreport(self, report) -> None:
        name = report.nodeid.split("tests/", 1)[-1]
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.counts[report.outcome] += 1
            figure = report.outcome
            if report.failed:
                figure = f"failed: {failure_line(report)}"
            self.report.row(name, not report.failed, figure, report.duration)
        elif report.when == "teardown" and report.failed:
            self.counts["failed"] += 1
            self.report.row(f"{name} (teardown)", False, "failed", report.duration)


def failure_line(report) -> str:
    """The first line of the error that failed a test (pytest's crash summary)."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return (text.strip().splitlines() or ["?"])[0][:200]


def main() -> None:
    files = marked_files()
    rows = RowPerTest()
    code = pytest.main(["-m", "gpu", "-q", "-p", "no:cacheprovider", *files], plugins=[rows])
    c = rows.counts
    summary = f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped ({len(files)} files)"
    # All skipped means pytest saw no CUDA device: not a pass.
    (rows.report or PhaseReport("tests")).headline(summary, ok=code == 0 and c["passed"] > 0)
    sys.exit(0 if code == 0 else 1)


if __name__ == "__main__":
    main()
