"""The comparison table of benchmarks/compare.py: what is measured (Sizes), one engine's
figures (Column), the rows, and the plain-text and markdown renderings with ratios against
pagedllm bf16."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Sizes:
    a_prompts: int = 128
    a_input: int = 128
    a_output: int = 128
    b_input: int = 64
    b_output: int = 128
    b_repetitions: int = 3
    c_runs: tuple[tuple[int, int], ...] = ((8, 1), (64, 8), (64, 32))  # (prompts, concurrency)
    c_input: int = 128
    c_output: int = 128
    llamacpp_slots: int = 32


QUICK = Sizes(
    a_prompts=16, a_output=32, b_output=32, b_repetitions=1, c_runs=((2, 1), (8, 8), (16, 32)), c_output=32
)


@dataclass
class Column:
    """One engine (or pagedllm with a quantization): its figures, or why it has none."""

    engine: str
    label: str
    quantization: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    missing: str | None = None  # "not built", ... : shown in every cell
    errors: dict[str, str] = field(default_factory=dict)  # workload -> error
    busy_before: float | None = None  # CPU busy with other work just before this engine ran


# --- rows of the table ----------------------------------------------------------------------


def table_rows(sizes: Sizes, workloads: str) -> list[tuple[str, str, str]]:
    """(key, label, kind): kind 'rate' (higher is faster) or 'time' (lower is faster)."""
    rows: list[tuple[str, str, str]] = []
    if "a" in workloads:
        head = f"(a) offline {sizes.a_prompts}x{sizes.a_input}->{sizes.a_output}"
        rows += [
            ("a.output", f"{head}: output tok/s", "rate"),
            ("a.total", f"{head}: total tok/s", "rate"),
            ("a.mfu", f"{head}: MFU %", "rate"),
        ]
    if "b" in workloads:
        head = f"(b) single stream {sizes.b_input}->{sizes.b_output}"
        rows += [("b.decode", f"{head}: decode tok/s", "rate"), ("b.ttft", f"{head}: TTFT ms", "time")]
    if "c" in workloads:
        for prompts, concurrency in sizes.c_runs:
            head = f"(c) serve c={concurrency} ({prompts} prompts)"
            rows += [
                (f"c{concurrency}.output", f"{head}: output tok/s", "rate"),
                (f"c{concurrency}.ttft", f"{head}: median TTFT ms", "time"),
                (f"c{concurrency}.tpot", f"{head}: median TPOT ms", "time"),
            ]
        rows.append(("c.startup", "(c) server start-up s", "time"))
    return rows


def cell(column: Column, key: str, kind: str, base: Column | None) -> str:
    if column.missing:
        return column.missing
    value = column.values.get(key)
    if value is None:
        workload = key[0]
        if any(workload in w for w in column.errors):
            return "failed"
        return "-"
    text = f"{value:.2f}" if key == "a.mfu" else f"{value:.1f}"
    reference = base.values.get(key) if base is not None and base is not column else None
    if reference:
        ratio = value / reference if kind == "rate" else reference / value
        text += f" ({ratio:.2f}x)"
    return text


def build_table(columns: list[Column], rows) -> list[list[str]]:
    base = next((c for c in columns if c.engine == "pagedllm" and c.quantization is None), None)
    header = ["workload: metric", *(c.label for c in columns)]
    body = [[label, *(cell(c, key, kind, base) for c in columns)] for key, label, kind in rows]
    return [header, *body]


def format_plain(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for n, row in enumerate(table):
        parts = [row[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(parts))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(table[0]) + " |", "| --- " + "| ---: " * (len(table[0]) - 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)
