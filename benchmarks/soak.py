"""Soak: minutes of mixed traffic at high concurrency against a small KV pool, then the checks.

    python benchmarks/soak.py --minutes 5                      # starts its own server
    python benchmarks/soak.py --minutes 5 --block-size 32      # unknown flags go to `pagedllm serve`
    python benchmarks/soak.py --base-url http://127.0.0.1:8000 --server-pid 1234

Each worker loops over requests of a kind drawn with its own seeded RNG: completions and chat
completions (streamed or not), streams the client closes mid-way (the intended cancels), n > 1,
logprobs, long prompts sharing a few prefixes (prefix cache, preemption), response_format
json_schema, and forced tool calls. The first part of the run is a warm-up whose end gives the
memory baseline. Afterwards it reports:

- unexpected errors (anything but the intended cancels), counted by message;
- greedy outputs that differ from the same request sent alone on the idle server, by the
  near-tie rule of tests/numerics.py (float noise between batch shapes is not a difference);
- KV usage and running/waiting requests once the load drained (/metrics);
- VmRSS of the server and of its engine core child process(es), against the baseline.

Exit status 1 if there are unexpected errors, differing outputs, KV held after the drain, or
(with --max-memory-growth) more growth than allowed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import psutil
from processes import Server, free_port, tail
from prometheus_client.parser import text_string_to_metric_families

MODEL = "smollm2-135m-instruct"
# tests/numerics.py NEAR_TIE: the same rule, kept here so that the script stands alone.
NEAR_TIE = 1e-3

# Relative weights of the request kinds.
KINDS = {
    "completion": 3,
    "completion_stream": 3,
    "chat": 3,
    "chat_stream": 3,
    "cancel": 3,
    "n_best": 2,
    "long_prefix": 3,
    "json_schema": 2,
    "tool_call": 2,
}
# These kinds are sent greedy (with logprobs=2) half the time; those are the rechecked ones.
GREEDY_KINDS = {
    "completion",
    "completion_stream",
    "chat",
    "chat_stream",
    "long_prefix",
    "json_schema",
    "tool_call",
}

# Prompts are made of these (a fixed list, so that a seed gives the same prompts everywhere).
_TEXT = (
    "river stone light garden window quiet morning engine paper silver market winter signal "
    "forest letter copper harbor thunder candle orbit meadow bridge lantern whisper velvet compass "
    "island marble feather canyon ember glacier violet anchor mirror falcon"
)
WORDS = _TEXT.split()

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
TOOL_SCHEMAS = {
    "get_weather": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 1, "maxLength": 20},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
    "add": {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "minimum": 0, "maximum": 99},
            "b": {"type": "integer", "minimum": 0, "maximum": 99},
        },
        "required": ["a", "b"],
    },
}
TOOLS = [
    {"type": "function", "function": {"name": name, "description": f"{name} tool", "parameters": schema}}
    for name, schema in TOOL_SCHEMAS.items()
]
# Fields the openai client has no parameter for: sent through extra_body.
EXTRA_FIELDS = {"completions": {"ignore_eos", "response_format"}, "chat": {"ignore_eos"}}
FINISH = {"completions": {"stop", "length"}, "chat": {"stop", "length", "tool_calls"}}


@dataclass
class Plan:
    """One request: where it goes, its JSON body, and what the worker does with it."""

    kind: str
    endpoint: str  # "completions" | "chat"
    body: dict[str, Any]
    greedy: bool = False
    cancel_after: int | None = None  # close the stream after this many chunks


@dataclass
class Choice:
    text: str = ""
    finish: str | None = None
    tokens: list[str] = field(default_factory=list)
    top2: list[list[tuple[str, float]]] = field(default_factory=list)
    tool_calls: dict[int, dict[str, str]] = field(default_factory=dict)


class Cancelled(Exception):
    """The client closed the stream on purpose."""


class Invalid(Exception):
    """A 200 answer that breaks the API's promises (bad JSON, missing calls, wrong n, ...)."""


# ---- the traffic ----------------------------------------------------------------------------------


class Traffic:
    """Builds the requests: the shared prefixes from `seed`, each request from the worker's RNG."""

    def __init__(self, model: str, seed: int, num_prefixes: int = 4):
        self.model = model
        rng = random.Random(seed)
        # Long prompts share these, as token ids so that the shared part fills whole blocks.
        self.prefix_ids = [
            [rng.randrange(1000, 49000) for _ in range(rng.randrange(300, 480))] for _ in range(num_prefixes)
        ]
        self.prefix_texts = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randrange(250, 350))) for _ in range(num_prefixes)
        ]

    @staticmethod
    def words(rng: random.Random, lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(lo, hi)))

    def sampling(self, rng: random.Random, greedy: bool) -> dict[str, Any]:
        if greedy:
            return {"temperature": 0.0}
        return {"temperature": 0.8, "top_p": 0.95, "seed": rng.randrange(1 << 30)}

    def completion(self, rng, prompt, greedy: bool, max_tokens: int, stream: bool) -> dict[str, Any]:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "stream": stream}
        body |= self.sampling(rng, greedy)
        if greedy:
            # A fixed length, so the recheck compares every position.
            body |= {"logprobs": 2, "ignore_eos": True}
        elif rng.random() < 0.5:
            body["logprobs"] = rng.randrange(0, 6)
        return body

    def chat(self, rng, messages, greedy: bool, max_tokens: int, stream: bool) -> dict[str, Any]:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "stream": stream}
        body |= self.sampling(rng, greedy)
        if greedy:
            body |= {"logprobs": True, "top_logprobs": 2}
        elif rng.random() < 0.5:
            body |= {"logprobs": True, "top_logprobs": rng.randrange(0, 6)}
        return body

    def ask(self, rng) -> list[dict[str, str]]:
        messages = [{"role": "user", "content": f"Write about {self.words(rng, 3, 12)}."}]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": f"You like {self.words(rng, 2, 6)}."})
        return messages

    def plan(self, rng: random.Random) -> Plan:
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        greedy = kind in GREEDY_KINDS and rng.random() < 0.5
        if kind in ("completion", "completion_stream"):
            prompt = self.words(rng, 4, 30)
            body = self.completion(rng, prompt, greedy, rng.randrange(4, 25), kind == "completion_stream")
            return Plan(kind, "completions", body, greedy)
        if kind in ("chat", "chat_stream"):
            body = self.chat(rng, self.ask(rng), greedy, rng.randrange(8, 33), kind == "chat_stream")
            return Plan(kind, "chat", body, greedy)
        if kind == "cancel":
            after = rng.randrange(1, 7)
            if rng.random() < 0.5:
                body = self.completion(rng, self.words(rng, 4, 30), False, rng.randrange(64, 129), True)
            else:
                body = self.chat(rng, self.ask(rng), False, rng.randrange(64, 129), True)
            # Long enough that closing after `after` chunks is mid-stream.
            body["ignore_eos"] = True
            return Plan(kind, "completions" if "prompt" in body else "chat", body, cancel_after=after)
        if kind == "n_best":
            n = rng.randrange(2, 5)
            stream = rng.random() < 0.5
            if rng.random() < 0.5:
                body = self.completion(rng, self.words(rng, 4, 20), False, rng.randrange(4, 17), stream)
            else:
                body = self.chat(rng, self.ask(rng), False, rng.randrange(4, 17), stream)
            body["n"] = n
            return Plan(kind, "completions" if "prompt" in body else "chat", body)
        if kind == "long_prefix":
            i = rng.randrange(len(self.prefix_ids))
            stream = rng.random() < 0.5
            if rng.random() < 0.6:
                prompt = self.prefix_ids[i] + [
                    rng.randrange(1000, 49000) for _ in range(rng.randrange(8, 64))
                ]
                body = self.completion(rng, prompt, greedy, rng.randrange(8, 25), stream)
                return Plan(kind, "completions", body, greedy)
            messages = [{"role": "system", "content": self.prefix_texts[i]}, *self.ask(rng)]
            return Plan(kind, "chat", self.chat(rng, messages, greedy, rng.randrange(8, 25), stream), greedy)
        if kind == "json_schema":
            stream = rng.random() < 0.5
            fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
            if rng.random() < 0.5:
                prompt = f"A person who likes {self.words(rng, 2, 6)}, as JSON:"
                body = self.completion(rng, prompt, greedy, 64, stream)
                body.pop("ignore_eos", None)  # the grammar's end is the answer's end
            else:
                messages = [
                    {"role": "user", "content": f"Describe a person who likes {self.words(rng, 2, 6)}."}
                ]
                body = self.chat(rng, messages, greedy, 64, stream)
            body["response_format"] = fmt
            return Plan(kind, "completions" if "prompt" in body else "chat", body, greedy)
        # tool_call
        messages = [
            {"role": "user", "content": f"Weather in {rng.choice(WORDS)}? Add {rng.randrange(99)} and 7."}
        ]
        body = self.chat(rng, messages, greedy, 128, rng.random() < 0.5)
        body["tools"] = TOOLS
        if rng.random() < 0.5:
            body["tool_choice"] = "required"
            body["parallel_tool_calls"] = rng.random() < 0.5
        else:
            body["tool_choice"] = {"type": "function", "function": {"name": rng.choice(list(TOOL_SCHEMAS))}}
        return Plan(kind, "chat", body, greedy)


# ---- sending and reading ---------------------------------------------------------------------------


def _top2(pairs) -> list[tuple[str, float]]:
    return sorted(pairs, key=lambda kv: -kv[1])[:2]


def _add_completion_logprobs(choice: Choice, lp) -> None:
    if lp is None or not lp.tokens:
        return
    choice.tokens += lp.tokens
    choice.top2 += [_top2((top or {}).items()) for top in (lp.top_logprobs or [None] * len(lp.tokens))]


def _add_chat_logprobs(choice: Choice, lp) -> None:
    if lp is None or not lp.content:
        return
    for entry in lp.content:
        choice.tokens.append(entry.token)
        choice.top2.append(_top2((t.token, t.logprob) for t in entry.top_logprobs or []))


def _add_tool_calls(choice: Choice, calls) -> None:
    for i, call in enumerate(calls or []):
        index = getattr(call, "index", None)
        slot = choice.tool_calls.setdefault(i if index is None else index, {"name": "", "arguments": ""})
        if call.function is not None:
            slot["name"] += call.function.name or ""
            slot["arguments"] += call.function.arguments or ""


async def send(client: openai.AsyncOpenAI, plan: Plan) -> list[Choice]:
    """The request's choices, by index; raises Cancelled when the worker closed the stream."""
    extra = {k: v for k, v in plan.body.items() if k in EXTRA_FIELDS[plan.endpoint]}
    kwargs = {k: v for k, v in plan.body.items() if k not in extra}
    api = client.completions if plan.endpoint == "completions" else client.chat.completions
    reply = await api.create(**kwargs, extra_body=extra or None)
    choices: dict[int, Choice] = {}
    if not plan.body["stream"]:
        for c in reply.choices:
            choice = choices.setdefault(c.index, Choice(finish=c.finish_reason))
            if plan.endpoint == "completions":
                choice.text = c.text
                _add_completion_logprobs(choice, c.logprobs)
            else:
                choice.text = c.message.content or ""
                _add_chat_logprobs(choice, c.logprobs)
                _add_tool_calls(choice, c.message.tool_calls)
        return [choices[i] for i in sorted(choices)]
    chunks = 0
    async for chunk in reply:
        chunks += 1
        for c in chunk.choices:
            choice = choices.setdefault(c.index, Choice())
            if plan.endpoint == "completions":
                choice.text += c.text
                _add_completion_logprobs(choice, c.logprobs)
            else:
                choice.text += c.delta.content or ""
                _add_chat_logprobs(choice, c.logprobs)
                _add_tool_calls(choice, c.delta.tool_calls)
            choice.finish = c.finish_reason or choice.finish
        if plan.cancel_after is not None and chunks >= plan.cancel_after:
            # Leaving mid-stream: the connection closes and the server must abort the request.
            await reply.close()
            raise Cancelled
    return [choices[i] for i in sorted(choices)]


def check(plan: Plan, choices: list[Choice]) -> list[str]:
    """Raise Invalid where a 200 answer breaks what the request asked for; else name what was checked."""
    checked = []
    n = plan.body.get("n", 1)
    if len(choices) != n:
        raise Invalid(f"{len(choices)} choices for n={n}")
    for choice in choices:
        if choice.finish not in FINISH[plan.endpoint]:
            raise Invalid(f"finish_reason {choice.finish!r}")
        if plan.greedy and not choice.tokens:
            raise Invalid("logprobs asked for but none returned")
        if plan.kind in ("json_schema", "tool_call") and choice.finish == "length":
            checked.append(f"{plan.kind} cut by max_tokens")
        elif plan.kind == "json_schema":
            try:
                jsonschema.validate(json.loads(choice.text), PERSON)
            except (ValueError, jsonschema.ValidationError) as exc:
                raise Invalid(f"structured output not valid: {type(exc).__name__}") from exc
            checked.append("json_schema valid")
        elif plan.kind == "tool_call":
            _check_tool_calls(plan, choice)
            checked.append("tool_call valid")
    return checked


def _check_tool_calls(plan: Plan, choice: Choice) -> None:
    if not choice.tool_calls:
        raise Invalid(f"no tool_calls (finish_reason {choice.finish!r})")
    named = plan.body["tool_choice"]
    for call in choice.tool_calls.values():
        if call["name"] not in TOOL_SCHEMAS or (
            isinstance(named, dict) and call["name"] != named["function"]["name"]
        ):
            raise Invalid(f"tool call of {call['name']!r}")
        try:
            jsonschema.validate(json.loads(call["arguments"]), TOOL_SCHEMAS[call["name"]])
        except (ValueError, jsonschema.ValidationError) as exc:
            raise Invalid(f"tool arguments not valid: {type(exc).__name__}") from exc


def describe(exc: BaseException) -> str:
    """One line per distinct failure, so that counting by message groups like with like."""
    if isinstance(exc, openai.APIStatusError):
        try:
            message = exc.response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.response.text
        return f"HTTP {exc.status_code}: {message[:300]}"
    if isinstance(exc, openai.APITimeoutError):
        return "client timeout (no answer in time: a hang?)"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection error: {type(exc.__cause__).__name__}: {str(exc.__cause__)[:200]}"
    if isinstance(exc, Invalid):
        return f"invalid answer: {exc}"
    return f"{type(exc).__name__}: {str(exc)[:300]}"


# ---- the near-tie rule -----------------------------------------------------------------------------


def compare_greedy(ours: Choice, alone: Choice) -> tuple[str, str]:
    """("same" | "near-tie" | "differs", detail), by tests/numerics.py's `assert_greedy_match`.

    A divergence is allowed only where the alone run's top-2 gap is under NEAR_TIE nats and each
    run's token is in the other's top 2; the sequences are not compared after that step."""
    for step, (a, b) in enumerate(zip(ours.tokens, alone.tokens)):
        if a == b:
            continue
        ref = alone.top2[step]
        if len(ref) < 2:
            return "differs", f"step {step}: {a!r} vs alone {b!r}; alone has no top-2"
        (id1, lp1), (id2, lp2) = ref[:2]
        gap = lp1 - lp2
        ours_ids = {t for t, _ in ours.top2[step]}
        if gap < NEAR_TIE and a in (id1, id2) and b in ours_ids:
            return "near-tie", f"step {step}: gap {gap:.1e}"
        return "differs", f"step {step}: {a!r} vs alone {b!r}; alone's top-2 {ref[:2]} (gap {gap:.2e} nats)"
    if len(ours.tokens) != len(alone.tokens):
        return "differs", f"lengths {len(ours.tokens)} vs alone {len(alone.tokens)}"
    return "same", ""


# ---- metrics and memory ----------------------------------------------------------------------------


async def metrics(http: httpx.AsyncClient, base_url: str) -> dict[str, float]:
    """pagedllm's samples summed over labels (replicas), and by finish reason as NAME:REASON."""
    try:
        text = (await http.get(f"{base_url}/metrics")).text
    except httpx.HTTPError:
        return {}  # a server gone shows as NaN figures, which fail the drain check
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            keys = [sample.name]
            if "finished_reason" in sample.labels:
                keys.append(f"{sample.name}:{sample.labels['finished_reason']}")
            for key in keys:
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def engine_cores(server_pid: int) -> list[int]:
    """The server's children started by multiprocessing's spawn (not its resource tracker)."""
    try:
        children = psutil.Process(server_pid).children()
    except psutil.Error:
        return []
    cores = []
    for child in children:
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                cores.append(child.pid)
        except psutil.Error:
            pass
    return sorted(cores)


class Memory:
    """VmRSS of the server and its engine core(s), sampled every `interval` seconds."""

    def __init__(self, server_pid: int | None, interval: float):
        self.server_pid, self.interval = server_pid, interval
        self.samples: list[tuple[float, str, dict[int, int]]] = []  # (seconds, phase, pid -> KiB)
        self.roles: dict[int, str] = {}
        self.phase = "warm-up"

    def sample(self, started: float) -> None:
        if self.server_pid is None:
            return
        pids = {self.server_pid: "server"} | {pid: "engine core" for pid in engine_cores(self.server_pid)}
        self.roles |= pids
        rss = {pid: kib for pid in pids if (kib := rss_kib(pid)) is not None}
        self.samples.append((time.monotonic() - started, self.phase, rss))

    async def run(self, started: float) -> None:
        while True:
            self.sample(started)
            await asyncio.sleep(self.interval)

    def report(self) -> list[dict[str, Any]]:
        """Per process: baseline (end of warm-up), peak under load, after the drain, growth in %."""
        rows = []
        for pid, role in self.roles.items():
            series = [(phase, rss[pid]) for _, phase, rss in self.samples if pid in rss]
            warm = [kib for phase, kib in series if phase == "warm-up"]
            load = [kib for phase, kib in series if phase == "load"]
            drained = [kib for phase, kib in series if phase == "drained"]
            if not warm or not drained:
                rows.append({"role": role, "pid": pid, "note": "not alive through the whole run"})
                continue
            base = warm[-1]
            peak = max(load or [base])
            rows.append(
                {
                    "role": role,
                    "pid": pid,
                    "baseline_mib": base / 1024,
                    "peak_mib": peak / 1024,
                    "drained_mib": drained[-1] / 1024,
                    "peak_growth_pct": 100 * (peak - base) / base,
                    "growth_pct": 100 * (drained[-1] - base) / base,
                }
            )
        return rows


# ---- the run ---------------------------------------------------------------------------------------


@dataclass
class Tally:
    done: Counter = field(default_factory=Counter)
    cancelled: int = 0
    checked: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    error_examples: dict[str, dict] = field(default_factory=dict)
    greedy: list[tuple[Plan, list[Choice]]] = field(default_factory=list)

    def error(self, plan: Plan, exc: BaseException) -> None:
        message = f"{plan.kind}: {describe(exc)}"
        self.errors[message] += 1
        self.error_examples.setdefault(message, {"endpoint": plan.endpoint, "body": plan.body})


async def worker(index: int, seed: int, traffic: Traffic, client, tally: Tally, until: float) -> None:
    rng = random.Random(seed * 1_000_003 + index)
    while time.monotonic() < until:
        plan = traffic.plan(rng)
        try:
            choices = await send(client, plan)
            tally.checked.update(check(plan, choices))
        except Cancelled:
            tally.cancelled += 1
            continue
        except Exception as exc:  # every failure is counted, none ends the run
            tally.error(plan, exc)
            continue
        tally.done[plan.kind] += 1
        if plan.greedy:
            tally.greedy.append((plan, choices))


async def drain(http: httpx.AsyncClient, base_url: str, timeout: float) -> dict[str, float]:
    """Poll /metrics until nothing runs, waits or holds KV blocks (aborts free theirs a step later)."""
    deadline = time.monotonic() + timeout
    while True:
        m = await metrics(http, base_url)
        state = {
            "kv_cache_usage_perc": m.get("pagedllm:kv_cache_usage_perc", float("nan")),
            "num_requests_running": m.get("pagedllm:num_requests_running", float("nan")),
            "num_requests_waiting": m.get("pagedllm:num_requests_waiting", float("nan")),
        }
        if all(v == 0 for v in state.values()) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.5)


async def recheck(client, tally: Tally, rng: random.Random, count: int) -> dict[str, Any]:
    """Rerun a sample of the greedy requests one at a time and compare token by token."""
    by_kind: dict[str, list] = {}
    for item in tally.greedy:
        by_kind.setdefault(item[0].kind, []).append(item)
    for items in by_kind.values():
        rng.shuffle(items)
    picked = []
    # Round robin over the kinds, so that rare kinds are rechecked too.
    while len(picked) < count and any(by_kind.values()):
        for kind in sorted(by_kind):
            if by_kind[kind] and len(picked) < count:
                picked.append(by_kind[kind].pop())
    verdicts: Counter = Counter()
    differing = []
    for plan, choices in picked:
        try:
            alone = await send(client, plan)
        except Exception as exc:
            tally.error(plan, exc)
            verdicts["error"] += 1
            continue
        verdict, detail = compare_greedy(choices[0], alone[0])
        verdicts[verdict] += 1
        if verdict == "differs":
            differing.append(
                {"kind": plan.kind, "endpoint": plan.endpoint, "detail": detail, "body": plan.body}
            )
    return {"rechecked": len(picked), "verdicts": dict(verdicts), "differing": differing}


async def soak(args, base_url: str, server_pid: int | None) -> dict[str, Any]:
    duration = args.minutes * 60
    warmup = args.warmup_seconds if args.warmup_seconds is not None else min(60.0, duration / 4)
    traffic = Traffic(args.model, args.seed)
    tally = Tally()
    memory = Memory(server_pid, args.sample_seconds)
    timeout = httpx.Timeout(args.request_timeout, connect=30)
    limits = httpx.Limits(
        max_connections=args.concurrency + 16, max_keepalive_connections=args.concurrency + 16
    )
    async with (
        httpx.AsyncClient(timeout=30) as http,
        openai.AsyncOpenAI(
            base_url=f"{base_url}/v1",
            api_key=args.api_key,
            max_retries=0,
            http_client=httpx.AsyncClient(timeout=timeout, limits=limits),
        ) as client,
    ):
        before = await metrics(http, base_url)
        started = time.monotonic()
        sampler = asyncio.create_task(memory.run(started))
        until = started + duration
        tasks = [
            asyncio.create_task(worker(i, args.seed, traffic, client, tally, until))
            for i in range(args.concurrency)
        ]
        await asyncio.sleep(warmup)
        memory.sample(started)  # the baseline: the last warm-up sample
        memory.phase = "load"
        done, hung = await asyncio.wait(
            tasks, timeout=max(0.0, until - time.monotonic()) + args.request_timeout
        )
        for task in hung:
            task.cancel()
        for _ in hung:
            tally.errors["a worker's request never finished (hang)"] += 1
        tail_seconds = time.monotonic() - until
        state = await drain(http, base_url, args.drain_timeout)
        memory.phase = "drained"
        memory.sample(started)
        sampler.cancel()
        after = await metrics(http, base_url)
        recheck_started = time.monotonic()
        rechecks = await recheck(client, tally, random.Random(args.seed), args.greedy_samples)
        rechecks["seconds"] = time.monotonic() - recheck_started
        state_after_rechecks = await drain(http, base_url, args.drain_timeout)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    queries = delta("pagedllm:prefix_cache_queries_total")
    return {
        "config": {
            "minutes": args.minutes,
            "warmup_seconds": warmup,
            "concurrency": args.concurrency,
            "seed": args.seed,
            "model": args.model,
            "base_url": base_url,
        },
        "tail_seconds": tail_seconds,
        # The client shares the machine's cores with the server: its CPU time says how much it took.
        "client_cpu_seconds": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
        "requests_done": dict(tally.done),
        "cancelled": tally.cancelled,
        "checked": dict(tally.checked),
        "unexpected_errors": sum(tally.errors.values()),
        "errors": dict(tally.errors),
        "error_examples": tally.error_examples,
        "greedy_completed": len(tally.greedy),
        "rechecks": rechecks,
        "differing_outputs": len(rechecks["differing"]),
        "after_drain": state,
        "after_rechecks": state_after_rechecks,
        "generation_tokens": delta("pagedllm:generation_tokens_total"),
        "preemptions": delta("pagedllm:num_preemptions_total"),
        "prefix_cache_hit_pct": 100 * delta("pagedllm:prefix_cache_hits_total") / queries
        if queries
        else None,
        "aborted": delta("pagedllm:request_success_total:abort"),
        "memory": memory.report(),
    }


def failures(report: dict[str, Any], max_growth: float | None) -> list[str]:
    reasons = []
    if report["unexpected_errors"]:
        reasons.append(f"{report['unexpected_errors']} unexpected errors")
    if report["differing_outputs"]:
        reasons.append(f"{report['differing_outputs']} greedy outputs differ from the same request alone")
    for when in ("after_drain", "after_rechecks"):
        if any(v != 0 for v in report[when].values()):
            reasons.append(f"not drained {when.replace('_', ' ')}: {report[when]}")
    if max_growth is not None:
        for row in report["memory"]:
            if row.get("growth_pct", 0.0) > max_growth:
                reasons.append(f"{row['role']} RSS grew {row['growth_pct']:.1f}% (> {max_growth}%)")
    return reasons


def render(report: dict[str, Any]) -> str:
    c = report["config"]
    done = report["requests_done"]
    rc = report["rechecks"]
    v = rc["verdicts"]
    lines = [
        f"soak: {c['minutes']:g} min of load (then {report['tail_seconds']:.0f} s for the requests in flight), "
        f"concurrency {c['concurrency']}, warm-up {c['warmup_seconds']:.0f} s, seed {c['seed']}, {c['model']}",
        f"{'requests':<22}{sum(done.values())} answered, {report['cancelled']} cancelled mid-stream (intended; "
        f"the server counted {report['aborted']:.0f} aborts)",
        f"{'  by kind':<22}" + ", ".join(f"{k} {done[k]}" for k in sorted(done)),
        f"{'outputs checked':<22}" + ", ".join(f"{v} {k}" for k, v in sorted(report["checked"].items())),
        f"{'generated tokens':<22}{report['generation_tokens']:.0f} (client CPU {report['client_cpu_seconds']:.0f} s)",
        f"{'preemptions':<22}{report['preemptions']:.0f}",
    ]
    hit = report["prefix_cache_hit_pct"]
    lines.append(f"{'prefix-cache hits':<22}" + ("n/a" if hit is None else f"{hit:.1f}% of prompt tokens"))
    lines.append(f"{'unexpected errors':<22}{report['unexpected_errors']}")
    for message, count in sorted(report["errors"].items(), key=lambda kv: -kv[1]):
        lines.append(f"{'':<24}{count} x {message}")
    lines.append(
        f"{'greedy rechecked':<22}{rc['rechecked']} of {report['greedy_completed']} alone: "
        f"{v.get('same', 0)} same, {v.get('near-tie', 0)} near-tie, {v.get('differs', 0)} differ"
        + (f", {v['error']} failed" if v.get("error") else "")
        + f" ({rc['seconds']:.0f} s)"
    )
    for d in rc["differing"]:
        lines.append(f"{'':<24}{d['kind']}: {d['detail']}")
    for when in ("after_drain", "after_rechecks"):
        s = report[when]
        lines.append(
            f"{'KV ' + when.replace('_', ' '):<22}{100 * s['kv_cache_usage_perc']:.1f}% "
            f"(running {s['num_requests_running']:.0f}, waiting {s['num_requests_waiting']:.0f})"
        )
    if not report["memory"]:
        lines.append(f"{'RSS':<22}not measured (no server pid)")
    for row in report["memory"]:
        label = f"RSS {row['role']}"
        if "note" in row:
            lines.append(f"{label:<22}pid {row['pid']}: {row['note']}")
            continue
        lines.append(
            f"{label:<22}baseline {row['baseline_mib']:.0f} MiB, peak {row['peak_mib']:.0f} MiB "
            f"({row['peak_growth_pct']:+.1f}%), drained {row['drained_mib']:.0f} MiB ({row['growth_pct']:+.1f}%)"
        )
    if "server_log_tracebacks" in report:
        lines.append(f"{'server log':<22}{report['server_log_tracebacks']} tracebacks")
    reasons = report["failures"]
    lines.append(f"{'verdict':<22}" + ("PASS" if not reasons else "FAIL: " + "; ".join(reasons)))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Other flags are passed to `pagedllm serve`."
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=5.0,
        help="how long new requests are sent, warm-up included (those in flight then finish)",
    )
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-seconds", type=float, help="default: a quarter of the run, at most 60 s")
    p.add_argument("--greedy-samples", type=int, default=32, help="greedy requests rerun alone")
    p.add_argument("--output-json", type=Path)
    p.add_argument("--base-url", help="an already running server (not started nor stopped here)")
    p.add_argument("--server-pid", type=int, help="with --base-url: its pid, for the memory figures")
    p.add_argument("--server-log", type=Path, help="with --base-url: its log, scanned for tracebacks")
    p.add_argument("--max-memory-growth", type=float, metavar="PCT", help="fail above this RSS growth")
    p.add_argument("--api-key", default="unused")
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds; longer counts as a hang")
    p.add_argument("--drain-timeout", type=float, default=60.0)
    p.add_argument("--sample-seconds", type=float, default=2.0, help="RSS sampling period")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--dtype", default="float32", help="float32 keeps greedy comparable across batch shapes")
    p.add_argument("--num-kv-blocks", type=int, default=128)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--startup-timeout", type=float, default=600.0)
    args, serve_flags = p.parse_known_args(argv)
    if args.base_url and serve_flags:
        p.error(f"flags for `pagedllm serve` ({' '.join(serve_flags)}) make no sense with --base-url")
    return args, serve_flags


def main(argv: list[str] | None = None) -> int:
    args, serve_flags = parse_args(argv)
    if args.base_url:
        report = asyncio.run(soak(args, args.base_url.rstrip("/"), args.server_pid))
        log = args.server_log
    else:
        log = Path(tempfile.mkdtemp(prefix="pagedllm-soak-")) / "server.log"
        command = [sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", args.model]
        command += ["--dtype", args.dtype, "--num-kv-blocks", str(args.num_kv_blocks)]
        command += ["--max-num-seqs", str(args.max_num_seqs), "--host", "127.0.0.1"]
        if args.api_key != "unused":
            command += ["--api-key", args.api_key]
        port = free_port()
        with Server("pagedllm", command + serve_flags + ["--port", str(port)], port, log) as server:
            server.wait_healthy(args.startup_timeout)
            print(f"server up in {server.startup_s:.0f} s (log: {log})", flush=True)
            report = asyncio.run(soak(args, server.base_url, server.proc.pid))
            if server.proc.poll() is not None:
                report["unexpected_errors"] += 1
                report["errors"][f"the server exited with {server.proc.returncode}:\n{tail(log)}"] = 1
    if log is not None and log.exists():
        report["server_log"] = str(log)
        report["server_log_tracebacks"] = log.read_text(errors="replace").count(
            "Traceback (most recent call last)"
        )
    report["failures"] = failures(report, args.max_memory_growth)
    print(render(report), flush=True)
    if args.output_json:
        args.output_json.write_text(json.dumps(report, indent=2, default=str))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
