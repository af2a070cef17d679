"""The figures `compare_rounds.py` derives and prints: weight bytes per token, MFU and read-
bandwidth fractions per round, and the median (min-max) and per-round ratio tables."""

from __future__ import annotations

import statistics

from compare_rounds_plan import Entry, Plan, Round
from hardware_bounds import model_flops_utilization


def weight_bytes_per_token(entry: Entry, plan: Plan, flops: dict[str, float]) -> float:
    """Weight bytes one decode step reads (the tied embedding is read whole, as the LM head).

    pagedllm: bf16 2 bytes per parameter; int8 1 byte plus a bf16 scale per output row; int4
    half a byte plus a bf16 scale and zero per 32 (0.625 bytes), its LM head int8; int4-g128 the
    same per 128 (0.53125 bytes: the 1B shape's K are all multiples of 128). llama.cpp:
    the GGUF's size (its tensors are all read per token; metadata is well under 1%).
    """
    matmul_params, head_params = flops["matmul"] / 2, flops["lm_head"] / 2
    if entry.engine == "llamacpp":
        return float(plan.gguf[entry.fmt][1].stat().st_size)
    if entry.fmt == "int8":
        return matmul_params + head_params
    if entry.fmt == "int4":
        return matmul_params * 0.625 + head_params
    if entry.fmt == "int4-g128":
        return matmul_params * 0.53125 + head_params
    return 2.0 * (matmul_params + head_params)


def derived(entry: Entry, plan: Plan, flops: dict[str, float], rnd: Round) -> None:
    """MFU for (a) and bandwidth fraction for (b), against this round's probes; the highest
    serving concurrency's output rate as a percentage of this round's offline rate."""
    values = rnd.values.get(entry.label(plan), {})
    top = f"c{max(c for _, c in plan.serving)}.output" if plan.serving else None
    if top in values and values.get("a.output", 0) > 0:
        values["c.served"] = 100.0 * values[top] / values["a.output"]
    best = max(rnd.torch_gflops, rnd.packed_gflops)
    if "a.output" in values:
        values["a.mfu"] = model_flops_utilization(flops, best, values["a.output"], values["a.total"])
    if "b.decode" in values and rnd.read_gbps:
        read = values["b.decode"] * weight_bytes_per_token(entry, plan, flops)
        values["b.bw"] = 100.0 * read / (rnd.read_gbps * 1e9)


def rows(plan: Plan, workloads: str) -> list[tuple[str, str]]:
    count, prompt_len, output_len = plan.offline
    single_prompt, single_output, _ = plan.single
    out = []
    if "a" in workloads:
        head = f"(a) offline {count}x{prompt_len}->{output_len}"
        out += [("a.output", f"{head}: output tok/s"), ("a.mfu", f"{head}: MFU %")]
    if "b" in workloads:
        head = f"(b) single stream {single_prompt}->{single_output}"
        out += [
            ("b.decode", f"{head}: decode tok/s"),
            ("b.bw", f"{head}: % of read bandwidth"),
            ("b.ttft", f"{head}: TTFT ms"),
        ]
    if "c" in workloads:
        for num, concurrency in plan.serving:
            head = f"(c) serve c={concurrency} ({num}x{plan.serving_lengths[0]}->{plan.serving_lengths[1]})"
            out += [
                (f"c{concurrency}.output", f"{head}: output tok/s"),
                (f"c{concurrency}.ttft", f"{head}: median TTFT ms"),
                (f"c{concurrency}.tpot", f"{head}: median TPOT ms"),
            ]
        if "a" in workloads and plan.serving:
            top = max(c for _, c in plan.serving)
            out.append(("c.served", f"(c) serve c={top}: output as % of (a) offline, same round"))
        out.append(("c.startup", "(c) server start-up s"))
    return out


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.1f}"
    return f"{median:.1f} ({min(values):.1f}-{max(values):.1f})"


def figure_table(plan: Plan, labels: list[str], rounds: list[Round], workloads: str) -> list[list[str]]:
    table = [["", *labels]]
    for key, name in rows(plan, workloads):
        table.append(
            [
                name,
                *(
                    spread([r.values[lb][key] for r in rounds if key in r.values.get(lb, {})])
                    for lb in labels
                ),
            ]
        )
    return table


LOWER_IS_BETTER = ("ttft", "tpot", "startup")


def ratio_table(plan: Plan, entries: list[Entry], rounds: list[Round], workloads: str) -> list[list[str]]:
    """pagedllm / each peer on the same format, per round; speed ratios (above 1: pagedllm faster)."""
    table = [["pagedllm / peer (same round)", "peer", "median (min-max)"]]
    for mine in (e for e in entries if e.engine == "pagedllm"):
        for peer in (e for e in entries if e.engine != "pagedllm" and e.fmt == mine.fmt):
            for key, name in rows(plan, workloads):
                if key in ("a.mfu", "b.bw", "c.served", "c.startup"):
                    continue
                ratios = []
                for r in rounds:
                    a, b = r.values.get(mine.label(plan), {}), r.values.get(peer.label(plan), {})
                    if key in a and key in b and a[key] > 0 and b[key] > 0:
                        faster = any(k in key for k in LOWER_IS_BETTER)
                        ratios.append(b[key] / a[key] if faster else a[key] / b[key])
                if ratios:
                    text = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
                    table.append([f"{mine.label(plan)}: {name}", peer.label(plan), text])
    return table


def markdown(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)
