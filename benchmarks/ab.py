"""Before/after: the same workloads on two checkouts of pagedllm, run alternately, one table.

    python benchmarks/ab.py --a <git ref or path> --b <git ref or path> [--workloads a,b,c]
                            [--pairs 3] [--quick] [--output-json F]

    python benchmarks/ab.py --a HEAD --b .          # the last commit against the working tree
    python benchmarks/ab.py --a main --b HEAD~0 --workloads b --pairs 5

A git ref (commit, branch, `HEAD~3`) is checked out into a temporary detached `git worktree`,
removed at the end; a directory is used as it is (`--b .` is the working tree, uncommitted
changes included). Every run starts fresh processes that import pagedllm from that checkout's
`src/` (this interpreter, `PYTHONPATH=<checkout>/src` first), checked before anything is timed.

Each checkout first does one untimed warm-up run (builds its compiled CPU kernels, which are
cached by a hash of their sources, and fills the model caches). Then, for each pair, each
workload runs on A and then on B. The workloads are compare.py's, pagedllm only:

  (a) offline: `pagedllm bench throughput`, 128 requests x 128 random prompt tokens -> 128,
      bf16, temperature 1, ignore_eos: output tok/s and total tok/s.
  (b) single stream: offline_worker.py, a 64-token prompt -> 128 tokens, greedy: decode tok/s
      and TTFT ms (medians over 3 repetitions inside the run).
  (c) serving: `pagedllm serve` from the checkout, then `pagedllm bench serve`'s client (always
      the B checkout's, in a process of its own) after a warm-up round: 8 prompts at
      concurrency 1, 64 at 8, 64 at 32, 128 -> 128, ignore_eos: output tok/s, median TTFT and
      median TPOT per concurrency, and server start-up s (process start to /health OK).

The table has, per figure, the median over the pairs of A and of B, the median of the per-pair
ratios B/A and their min-max, whether higher or lower is better, and a verdict against
--tolerance (default 0.05: "same" when B/A is within 0.95-1.05).
"""

from __future__ import annotations

import os

# The environment the checkouts' processes get, as it was before anything here imports
# pagedllm (which sets variables of its own that an older checkout might not set).
BASE_ENV = dict(os.environ)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
# The sibling modules import pagedllm. In this process it comes from the tree ab.py is in (not
# from whatever tree the venv has installed, which may be mid-edit); in the (c) client process
# (`--serve-client`) from PYTHONPATH, the client checkout. Nothing timed runs in this process.
if sys.argv[1:2] != ["--serve-client"] and (HERE.parents[1] / "src" / "pagedllm").is_dir():
    sys.path.insert(0, str(HERE.parents[1] / "src"))

import compare  # noqa: E402  (a sibling script)
from compare_table import QUICK, Sizes, format_plain, table_rows  # noqa: E402
from processes import Server, free_port, run_logged, tail  # noqa: E402

SIDES = ("A", "B")
CLIENT_SIDE = "B"  # whose `pagedllm.bench.serve` drives the servers in (c), for both sides


# --- checkouts ------------------------------------------------------------------------------


@dataclass
class Checkout:
    side: str
    spec: str  # what was asked for: a ref or a path
    path: Path
    commit: str
    dirty: bool
    temporary: bool  # a worktree made here, removed at the end
    repo: Path | None = None  # the repository a temporary worktree belongs to
    engine_args: list[str] = field(default_factory=list)

    @property
    def src(self) -> Path:
        return self.path / "src"

    def describe(self) -> str:
        how = "temporary worktree" if self.temporary else "as is"
        state = " + uncommitted changes (dirty)" if self.dirty else ""
        args = f", engine args {' '.join(self.engine_args)}" if self.engine_args else ""
        return f"{self.side} = {self.spec}: {self.commit}{state} ({self.path}, {how}{args})"

    def env(self) -> dict[str, str]:
        env = dict(BASE_ENV)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.src), env.get("PYTHONPATH", "")) if p)
        return env


class CheckoutError(RuntimeError):
    """A checkout cannot be made or does not import its own pagedllm."""


def git(repo: Path, *args: str, check: bool = True) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise CheckoutError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip() if result.returncode == 0 else ""


def git_repo() -> Path:
    """The repository refs are read from: the one around the current directory, else ab.py's."""
    for start in (Path.cwd(), HERE.parent):
        top = git(start, "rev-parse", "--show-toplevel", check=False)
        if top:
            return Path(top)
    raise CheckoutError("not inside a git repository: pass checkout paths instead of refs")


def open_checkout(side: str, spec: str, trees: Path) -> Checkout:
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path.resolve()
        if not (path / "src" / "pagedllm" / "__init__.py").is_file():
            raise CheckoutError(f"--{side.lower()} {spec}: {path} has no src/pagedllm/__init__.py")
        commit = git(path, "rev-parse", "HEAD", check=False) or "unknown (not a git checkout)"
        dirty = bool(git(path, "status", "--porcelain", check=False))
        return Checkout(side, spec, path, commit, dirty, temporary=False)
    repo = git_repo()
    commit = git(repo, "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}", check=False)
    if not commit:
        raise CheckoutError(f"--{side.lower()} {spec}: neither a directory nor a git ref in {repo}")
    tree = trees / side.lower()
    print(f"{side}: git worktree add --detach {tree} {commit[:12]} ({spec})", flush=True)
    git(repo, "worktree", "add", "--detach", str(tree), commit)
    return Checkout(side, spec, tree, commit, dirty=False, temporary=True, repo=repo)


def close_checkouts(checkouts: list[Checkout], trees: Path) -> None:
    repos = {c.repo for c in checkouts if c.temporary}
    for checkout in checkouts:
        if checkout.temporary:
            print(f"{checkout.side}: git worktree remove {checkout.path}", flush=True)
            git(checkout.repo, "worktree", "remove", "--force", str(checkout.path), check=False)
    shutil.rmtree(trees, ignore_errors=True)
    for repo in repos:
        git(repo, "worktree", "prune", check=False)


def verify_imports(checkout: Checkout, module: str = "pagedllm") -> str:
    """In a fresh process with the checkout's environment, `module` must come from its src/."""
    code = f"import json, {module} as m; print(json.dumps(m.__file__))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=checkout.env(), timeout=600
    )
    if result.returncode != 0:
        raise CheckoutError(f"{checkout.side}: `import {module}` failed:\n{result.stderr[-2000:]}")
    file = Path(json.loads(result.stdout.strip().splitlines()[-1])).resolve()
    if not file.is_relative_to(checkout.src.resolve()):
        raise CheckoutError(
            f"{checkout.side}: {module} was imported from {file}, not from {checkout.src}; "
            "PYTHONPATH did not take precedence (is src/ there? does something shadow it?)"
        )
    return str(file)


# --- one run of one workload on one checkout ------------------------------------------------


@dataclass
class Run:
    pair: int
    side: str
    workload: str
    values: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    busy_before: float | None = None
    seconds: float = 0.0


def throughput_command(sizes_: SimpleNamespace, checkout: Checkout, out: Path) -> list[str]:
    """`pagedllm bench throughput` as compare.py runs it for workload (a)."""
    command = [sys.executable, "-m", "pagedllm.entrypoints.cli", "bench", "throughput"]
    command += ["--model", compare.MODEL_NAME, "--dtype", "bfloat16"]
    command += ["--num-prompts", str(sizes_.prompts), "--input-len", str(sizes_.input)]
    command += ["--output-len", str(sizes_.output), "--seed", str(compare.SEED_A)]
    return command + ["--output-json", str(out), *checkout.engine_args]


def run_a(checkout: Checkout, sizes: Sizes, workdir: Path) -> dict[str, float]:
    out = workdir / "throughput.json"
    shape = SimpleNamespace(prompts=sizes.a_prompts, input=sizes.a_input, output=sizes.a_output)
    run_logged(throughput_command(shape, checkout, out), workdir / "a.log", checkout.env())
    r = json.loads(out.read_text())
    expected = sizes.a_prompts * sizes.a_output
    if r["output_tokens"] != expected:
        raise RuntimeError(f"got {r['output_tokens']} output tokens, expected {expected}")
    return {"a.output": r["output_tokens_per_s"], "a.total": r["total_tokens_per_s"]}


def run_b(checkout: Checkout, sizes: Sizes, workdir: Path, vocab_size: int) -> dict[str, float]:
    spec = compare.offline_spec(
        "pagedllm", SimpleNamespace(sizes=sizes, vocab_size=vocab_size), "b", compare.MODEL_NAME
    )
    spec["engine_args"] = list(checkout.engine_args)
    result = compare.run_worker(sys.executable, spec, workdir, env=checkout.env())
    if "error" in result:
        raise RuntimeError(result["error"])
    single = result["single"]
    return {"b.decode": single["decode_tokens_per_s"], "b.ttft": single["ttft_ms"]}


def run_c(checkout: Checkout, client: Checkout, sizes: Sizes, workdir: Path, args, values: dict) -> None:
    """Fills `values` as it goes (start-up is kept if the client fails)."""
    port = free_port()
    command = [sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", compare.MODEL_NAME]
    command += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16", *checkout.engine_args]
    # The context manager stops the server (SIGTERM to its group, SIGKILL after 30 s) on every exit.
    with Server("pagedllm serve", command, port, workdir / "server.log", env=checkout.env()) as server:
        values["c.startup"] = server.wait_healthy(args.startup_timeout)
        print(f"    server healthy after {values['c.startup']:.1f} s", flush=True)
        spec_path, out_path = workdir / "client.spec.json", workdir / "client.out.json"
        spec = {
            "base_url": server.base_url,
            "runs": [list(r) for r in sizes.c_runs],
            "input_len": sizes.c_input,
            "output_len": sizes.c_output,
            "vocab_size": args.vocab_size,
            "src": str(client.src),
        }
        spec_path.write_text(json.dumps(spec))
        run_logged(
            [sys.executable, str(HERE), "--serve-client", str(spec_path), str(out_path)],
            workdir / "client.log",
            client.env(),
        )
    for concurrency, r in json.loads(out_path.read_text())["runs"].items():
        values[f"c{concurrency}.output"] = r["output_throughput"]
        values[f"c{concurrency}.ttft"] = r["median_ttft_ms"]
        values[f"c{concurrency}.tpot"] = r["median_tpot_ms"]


def serve_client(spec_path: str, out_path: str) -> int:
    """Child process for (c): compare.py's warm-up and runs with `pagedllm.bench.serve`, which
    resolves to the checkout on PYTHONPATH (checked)."""
    import pagedllm.bench.serve as serve_module

    spec = json.loads(Path(spec_path).read_text())
    if not Path(serve_module.__file__).resolve().is_relative_to(Path(spec["src"]).resolve()):
        raise RuntimeError(f"client imported {serve_module.__file__}, not from {spec['src']}")
    runs = [tuple(r) for r in spec["runs"]]
    vocab, input_len = spec["vocab_size"], spec["input_len"]
    top = max(c for _, c in runs)  # warm-up at the highest concurrency, prompts not reused
    compare.serve_bench(spec["base_url"], top, top, input_len, 16, compare.SEED_WARMUP, vocab)
    results = {}
    for index, (num, concurrency) in enumerate(runs):
        r = compare.serve_bench(
            spec["base_url"], num, concurrency, input_len, spec["output_len"], compare.SEED_C + index, vocab
        )
        results[str(concurrency)] = {k: v for k, v in r.items() if k != "errors"}
        print(
            f"c={concurrency}: {r['output_throughput']:.1f} output tok/s, median TTFT "
            f"{r['median_ttft_ms']:.1f} ms, median TPOT {r['median_tpot_ms']:.1f} ms",
            flush=True,
        )
    Path(out_path).write_text(json.dumps({"client": serve_module.__file__, "runs": results}, indent=2))
    return 0


def warm_up(checkout: Checkout, workdir: Path) -> None:
    """One small untimed run: builds the checkout's CPU kernels (cached by a hash of their
    sources) and fills the model caches, so no timed run pays for them."""
    print(f"\n=== warm-up {checkout.side} (untimed)", flush=True)
    start = time.perf_counter()
    log = workdir / f"warmup-{checkout.side}.log"
    shape = SimpleNamespace(prompts=2, input=16, output=4)
    run_logged(
        throughput_command(shape, checkout, workdir / f"warmup-{checkout.side}.json"), log, checkout.env()
    )
    print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    if "CPU kernels unavailable" in log.read_text(errors="replace"):
        print(
            f"  WARNING: {checkout.side}'s CPU kernels did not build (torch fallbacks will run):\n{tail(log)}"
        )


def timed_run(pair: int, checkout: Checkout, workload: str, ctx: SimpleNamespace) -> Run:
    run = Run(pair, checkout.side, workload)
    run.busy_before = compare.wait_until_quiet(ctx.args.quiet_wait)
    print(
        f"\n=== pair {pair}/{ctx.args.pairs}, {checkout.side} ({checkout.spec} {checkout.commit[:10]}): "
        f"({workload}) {WORKLOAD_NAMES[workload]}  [CPU {run.busy_before:.0%} busy before]",
        flush=True,
    )
    workdir = ctx.workdir / f"pair{pair}-{checkout.side}-{workload}"
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        if workload == "a":
            run.values = run_a(checkout, ctx.sizes, workdir)
        elif workload == "b":
            run.values = run_b(checkout, ctx.sizes, workdir, ctx.args.vocab_size)
        else:
            run_c(checkout, ctx.client, ctx.sizes, workdir, ctx.args, run.values)
    except Exception as exc:  # the others go on; this pair has no ratio for these figures
        run.error = f"{type(exc).__name__}: {exc}"
        print(f"  FAILED: {run.error}", flush=True)
    run.seconds = time.perf_counter() - start
    for key, value in run.values.items():
        print(f"  {key} = {value:.2f}", flush=True)
    return run


WORKLOAD_NAMES = {"a": "offline throughput", "b": "single stream", "c": "serving"}


# --- the summary ----------------------------------------------------------------------------


def summarize(runs: list[Run], rows, tolerance: float) -> list[dict]:
    summary = []
    for key, label, kind in rows:
        by_pair: dict[int, dict[str, float]] = {}
        for run in runs:
            if key in run.values:
                by_pair.setdefault(run.pair, {})[run.side] = run.values[key]
        a = [v["A"] for v in by_pair.values() if "A" in v]
        b = [v["B"] for v in by_pair.values() if "B" in v]
        ratios = [v["B"] / v["A"] for v in by_pair.values() if "A" in v and "B" in v and v["A"]]
        ratio = statistics.median(ratios) if ratios else None
        summary.append(
            {
                "key": key,
                "figure": label,
                "better": "higher" if kind == "rate" else "lower",
                "a_median": statistics.median(a) if a else None,
                "b_median": statistics.median(b) if b else None,
                "ratio_median": ratio,
                "ratio_min": min(ratios) if ratios else None,
                "ratio_max": max(ratios) if ratios else None,
                "pairs": len(ratios),
                "a_values": a,
                "b_values": b,
                "ratios": ratios,
                "verdict": verdict(ratio, kind, tolerance),
            }
        )
    return summary


def verdict(ratio: float | None, kind: str, tolerance: float) -> str:
    if ratio is None:
        return "-"
    gain = ratio if kind == "rate" else 1 / ratio  # above 1: B is faster
    if gain >= 1 + tolerance:
        return "B better"
    if gain > 1 - tolerance:
        return "same"
    return "B worse"


def format_summary(summary: list[dict], pairs: int) -> str:
    def number(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    header = ["figure", "better", "A median", "B median", "B/A median", "B/A min-max", "verdict"]
    table = [header]
    for s in summary:
        spread = f"{number(s['ratio_min'], 3)}-{number(s['ratio_max'], 3)}" if s["ratios"] else "-"
        count = f" ({s['pairs']}/{pairs} pairs)" if s["pairs"] != pairs else ""
        table.append(
            [
                s["figure"],
                s["better"],
                number(s["a_median"]),
                number(s["b_median"]),
                number(s["ratio_median"], 3),
                spread,
                s["verdict"] + count,
            ]
        )
    return format_plain(table)


def cpu_model() -> str:
    name = family = model = "?"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
            name,
        )
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            label, _, value = line.partition(":")
            if label.strip() == "cpu family" and family == "?":
                family = value.strip()
            elif label.strip() == "model" and model == "?":
                model = value.strip()
    except OSError:
        pass
    return f"{name} (family {family}, model {model}), {os.cpu_count()} CPUs"


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", required=True, help="before: a git ref or a checkout directory")
    parser.add_argument("--b", required=True, help="after: a git ref or a checkout directory")
    parser.add_argument("--workloads", default="a,b,c", help="comma-separated subset of a,b,c")
    parser.add_argument("--pairs", type=int, default=3, help="A/B pairs of timed runs (default 3)")
    parser.add_argument("--quick", action="store_true", help="small workloads, for a smoke run")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up per checkout")
    parser.add_argument(
        "--engine-args",
        default="",
        help='extra engine flags for every run of both sides (--engine-args="...")',
    )
    parser.add_argument("--a-args", default="", help='extra engine flags for A only (--a-args="...")')
    parser.add_argument("--b-args", default="", help='extra engine flags for B only (--b-args="...")')
    parser.add_argument(
        "--tolerance", type=float, default=0.05, help="B/A within 1 +- this is 'same' (default 0.05)"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each timed run, wait up to this many seconds for the CPU to be <25%% busy",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=600.0, help="seconds a server may take to start"
    )
    parser.add_argument("--workdir", default=None, help="keep logs and intermediate JSON here")
    parser.add_argument("--output-json", default=None, help="write every run and the summary here")
    args = parser.parse_args(argv)
    workloads = "".join(w.strip() for w in args.workloads.split(",") if w.strip())
    if not workloads or set(workloads) - set("abc"):
        parser.error(f"--workloads takes a comma-separated subset of a,b,c, got {args.workloads!r}")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    args.workload_set = "".join(sorted(set(workloads)))
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-client"]:
        return serve_client(argv[1], argv[2])
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so servers are stopped and worktrees removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = dataclasses.replace(QUICK if args.quick else Sizes())
    output_json = Path(args.output_json).resolve() if args.output_json else None
    trees = Path(tempfile.mkdtemp(prefix="pagedllm-ab-trees-"))
    checkouts: list[Checkout] = []
    try:
        for side, spec, extra in (("A", args.a, args.a_args), ("B", args.b, args.b_args)):
            checkouts.append(open_checkout(side, spec, trees))
            checkouts[-1].engine_args = args.engine_args.split() + extra.split()
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pagedllm-ab-")).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        os.chdir(workdir)  # `python -m` puts the current directory first on sys.path
        return run_all(args, sizes, checkouts, workdir, output_json)
    except CheckoutError as exc:
        print(f"ab.py: error: {exc}", file=sys.stderr)
        return 2
    finally:
        close_checkouts(checkouts, trees)


def run_all(args, sizes: Sizes, checkouts: list[Checkout], workdir: Path, output_json: Path | None) -> int:
    a, b = checkouts
    client = b if CLIENT_SIDE == "B" else a
    if args.pairs < 3:
        print(f"note: {args.pairs} pair(s); at least 3 are needed for a meaningful median and spread")
    for checkout in checkouts:
        print(checkout.describe())
        print(f"  pagedllm from {verify_imports(checkout)}")
    if "c" in args.workload_set:
        print(f"  (c) client: {verify_imports(client, 'pagedllm.bench.serve')} ({client.side}'s, for both)")
    print(f"logs: {workdir}", flush=True)
    args.vocab_size = compare.load_config(compare.setup_peers.default_gguf()).vocab_size
    if not args.no_warmup:
        for checkout in checkouts:
            warm_up(checkout, workdir)
    ctx = SimpleNamespace(args=args, sizes=sizes, workdir=workdir, client=client)
    runs: list[Run] = []
    start = time.perf_counter()
    for pair in range(1, args.pairs + 1):
        for workload in args.workload_set:
            for checkout in checkouts:
                runs.append(timed_run(pair, checkout, workload, ctx))
    rows = [r for r in table_rows(sizes, args.workload_set) if r[0] != "a.mfu"]
    summary = summarize(runs, rows, args.tolerance)
    print(f"\n(timed runs took {time.perf_counter() - start:.0f} s)\n")
    print(format_summary(summary, args.pairs))
    print()
    print(
        f"- B/A: per pair, B's figure over A's; the median and min-max over the pairs. 'better' says "
        f"which way is faster: a B/A above 1 is a gain for tok/s, below 1 for ms and s. Verdict from "
        f"the median, 'same' within {1 - args.tolerance:.2f}-{1 + args.tolerance:.2f} (in speed)."
    )
    for checkout in checkouts:
        print(f"- {checkout.describe()}")
    if "c" in args.workload_set:
        print(f"- (c) client: `pagedllm.bench.serve` from {client.side} ({client.src}), for both sides")
    print(f"- CPU: {cpu_model()}")
    busy = {side: [r.busy_before for r in runs if r.side == side] for side in SIDES}
    print(
        "- CPU busy with other work just before the timed runs: "
        + ", ".join(
            f"{side} {statistics.mean(v):.0%} mean, {max(v):.0%} max" for side, v in busy.items() if v
        )
    )
    errors = [r for r in runs if r.error]
    for run in errors:
        print(f"- pair {run.pair} {run.side} ({run.workload}) failed: {run.error.splitlines()[0][:300]}")
    print(f"- logs: {workdir}")
    if output_json:
        payload = {
            "sizes": dataclasses.asdict(sizes),
            "checkouts": [
                {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(c).items()}
                for c in checkouts
            ],
            "client": client.side,
            "cpu": cpu_model(),
            "tolerance": args.tolerance,
            "runs": [dataclasses.asdict(r) for r in runs],
            "summary": summary,
        }
        output_json.write_text(json.dumps(payload, indent=2, default=str))
        print(f"- figures: {output_json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
