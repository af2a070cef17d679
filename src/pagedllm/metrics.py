"""Prometheus metrics of one engine, named as vLLM names them under the `pagedllm:` prefix.

`EngineMetrics` turns two things into metrics, both cheap enough to run after every step:

- the scheduler's `SchedulerStats` (gauges set as they are; its counters are cumulative, so
  the Prometheus counters grow by the difference since the previous snapshot);
- the step's `RequestOutput`s. Each carries `RequestMetrics` with the request's times and the
  number of tokens generated so far, whatever its output kind (delta, cumulative, final), so
  the new tokens of a step are that count minus the one seen before for the same request.

Per request: the prompt is counted once, when its first token arrives (as the OpenAI usage
counts it, even for n > 1); TTFT and queue time are observed then; every later token adds one
inter-token-latency observation (the gap since the request's previous token delivery, so a
"final"-kind request, delivered once, adds none); e2e latency when it finishes.
`request_success` counts sequences (each of the n samples) by finish reason; aborted requests
produce no output and are counted through `record_abort`.

Each instance has its own `CollectorRegistry` unless given one, so two engines in one process
never collide. Prometheus exports counters with a `_total` suffix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from pagedllm.metrics_history import MetricsHistory, MetricTotals

if TYPE_CHECKING:
    from pagedllm.core.scheduler import SchedulerStats
    from pagedllm.outputs import RequestOutput

logger = logging.getLogger("pagedllm.metrics")

PREFIX = "pagedllm:"
FINISH_REASONS = ("stop", "length", "abort")

# Bucket bounds (seconds) as vLLM uses them, so dashboards built for vLLM read ours alike.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


GRAMMAR_COMPILE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _GrammarCacheCollector:
    """The compiler's cumulative cache lookups and hits, read at scrape time."""

    def __init__(self, compiler, model_name: str):
        self.compiler = compiler
        self.model_name = model_name

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        for name, doc, value in (
            (
                "grammar_cache_queries",
                "Output constraints looked up in the grammar cache.",
                self.compiler.queries,
            ),
            ("grammar_cache_hits", "Output constraints found already compiled.", self.compiler.hits),
        ):
            family = CounterMetricFamily(PREFIX + name, doc, labels=["model_name"])
            family.add_metric([self.model_name], value)
            yield family


class _ReplicaCollector:
    """Per data-parallel replica, read at scrape time from the client's snapshot (`replica`
    label). The families without it keep meaning the whole server: their sums over replicas."""

    def __init__(self, replica_states, model_name: str):
        self.replica_states = replica_states
        self.model_name = model_name

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["model_name", "replica"]
        families = {
            "up": GaugeMetricFamily(
                PREFIX + "replica_up", "1 while the replica serves, 0 once it died.", labels=labels
            ),
            "running": GaugeMetricFamily(
                PREFIX + "replica_num_requests_running", "Requests running on the replica.", labels=labels
            ),
            "waiting": GaugeMetricFamily(
                PREFIX + "replica_num_requests_waiting", "Requests waiting on the replica.", labels=labels
            ),
            "kv": GaugeMetricFamily(
                PREFIX + "replica_kv_cache_usage_perc",
                "The replica's KV-cache usage (1 = full).",
                labels=labels,
            ),
            "load": GaugeMetricFamily(
                PREFIX + "replica_load_tokens",
                "Tokens (prompts and output so far) of the requests routed to the replica and unfinished.",
                labels=labels,
            ),
            "routed": CounterMetricFamily(
                PREFIX + "replica_requests_routed", "Requests the router sent to the replica.", labels=labels
            ),
            "generated": CounterMetricFamily(
                PREFIX + "replica_generation_tokens", "Tokens the replica generated.", labels=labels
            ),
            "queries": CounterMetricFamily(
                PREFIX + "replica_prefix_cache_queries",
                "Prompt tokens looked up in the replica's prefix cache.",
                labels=labels,
            ),
            "hits": CounterMetricFamily(
                PREFIX + "replica_prefix_cache_hits",
                "Prompt tokens served from the replica's prefix cache.",
                labels=labels,
            ),
            "preemptions": CounterMetricFamily(
                PREFIX + "replica_num_preemptions", "Preemptions on the replica.", labels=labels
            ),
            "restarts": CounterMetricFamily(
                PREFIX + "engine_restarts",
                "Engine cores started in place of a dead or hung one, by replica.",
                labels=labels,
            ),
        }
        for state in self.replica_states():
            key = [self.model_name, str(state.index)]
            stats = state.stats
            families["up"].add_metric(key, 1.0 if state.alive else 0.0)
            families["running"].add_metric(key, stats.num_running if stats and state.alive else 0)
            families["waiting"].add_metric(key, stats.num_waiting if stats and state.alive else 0)
            families["kv"].add_metric(key, stats.kv_cache_usage if stats and state.alive else 0.0)
            families["load"].add_metric(key, state.load_tokens)
            families["routed"].add_metric(key, state.num_routed)
            families["generated"].add_metric(key, state.generation_tokens)
            families["queries"].add_metric(key, stats.prefix_cache_queries if stats else 0)
            families["hits"].add_metric(key, stats.prefix_cache_hits if stats else 0)
            families["preemptions"].add_metric(key, stats.num_preemptions if stats else 0)
            families["restarts"].add_metric(key, state.restarts)
        yield from families.values()


@dataclass(slots=True)
class _RequestProgress:
    """What was already recorded for one live request."""

    num_generation_tokens: int = 0
    last_token_time: float | None = None
    finished_indices: set[int] = field(default_factory=set)


@dataclass(slots=True)
class _LogWindow:
    """Tokens counted since the last periodic log line."""

    start: float
    prompt_tokens: int = 0
    generation_tokens: int = 0


class EngineMetrics:
    """Prometheus metrics of one engine (`model_name` label), plus a periodic log line."""

    def __init__(
        self,
        model_name: str,
        registry: CollectorRegistry | None = None,
        log_interval_s: float = 10.0,
    ):
        self.model_name = model_name
        self.registry = registry if registry is not None else CollectorRegistry()
        self.log_interval_s = log_interval_s
        self._define_metrics()
        self._requests: dict[str, _RequestProgress] = {}
        self._last_stats: SchedulerStats | None = None
        self._window = _LogWindow(start=time.monotonic())
        self.totals = MetricTotals()
        self.history = MetricsHistory()

    content_type = CONTENT_TYPE_LATEST

    def _define_metrics(self) -> None:
        labels = ["model_name"]
        reg, name = self.registry, self.model_name

        def gauge(short: str, doc: str):
            return Gauge(PREFIX + short, doc, labels, registry=reg).labels(name)

        def counter(short: str, doc: str):
            return Counter(PREFIX + short, doc, labels, registry=reg).labels(name)

        def histogram(short: str, doc: str, buckets: tuple[float, ...]):
            return Histogram(PREFIX + short, doc, labels, registry=reg, buckets=buckets).labels(name)

        self.num_requests_running = gauge("num_requests_running", "Number of requests running on the engine.")
        self.num_requests_waiting = gauge(
            "num_requests_waiting", "Number of requests waiting to be scheduled."
        )
        self.kv_cache_usage_perc = gauge(
            "kv_cache_usage_perc", "Fraction of KV-cache blocks held by requests (1 means 100 percent)."
        )
        self.prefix_cache_queries = counter(
            "prefix_cache_queries", "Prompt tokens looked up in the prefix cache."
        )
        self.prefix_cache_hits = counter("prefix_cache_hits", "Prompt tokens served from the prefix cache.")
        self.num_preemptions = counter("num_preemptions", "Cumulative number of preemptions.")
        rejected = Counter(
            PREFIX + "requests_rejected",
            "Requests refused for load (429): a full waiting queue, or too long a wait in it.",
            labels + ["reason"],
            registry=reg,
        )
        self.requests_rejected = {
            reason: rejected.labels(name, reason) for reason in ("queue_full", "queue_timeout")
        }
        self.prompt_tokens = counter("prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("generation_tokens", "Number of generation tokens processed.")
        success = Counter(
            PREFIX + "request_success",
            "Count of finished requests (sequences), by finish reason.",
            labels + ["finished_reason"],
            registry=reg,
        )
        self.request_success = {reason: success.labels(name, reason) for reason in FINISH_REASONS}
        self._success_family = success
        self.time_to_first_token = histogram(
            "time_to_first_token_seconds", "Time from arrival to the first generated token.", TTFT_BUCKETS
        )
        self.inter_token_latency = histogram(
            "inter_token_latency_seconds", "Time between successive generated tokens.", ITL_BUCKETS
        )
        self.e2e_request_latency = histogram(
            "e2e_request_latency_seconds", "Time from arrival to finish.", REQUEST_LATENCY_BUCKETS
        )
        self.request_queue_time = histogram(
            "request_queue_time_seconds",
            "Time from arrival to first being scheduled.",
            REQUEST_LATENCY_BUCKETS,
        )

    def watch_grammar_compiler(self, compiler) -> None:
        """Export a GrammarCompiler's compile times and cache counters (constrained decoding)."""
        compile_seconds = Histogram(
            PREFIX + "grammar_compile_seconds",
            "Time to compile one output constraint (JSON schema, regex, choice, grammar).",
            ["model_name"],
            registry=self.registry,
            buckets=GRAMMAR_COMPILE_BUCKETS,
        ).labels(self.model_name)
        compiler.on_compiled = compile_seconds.observe
        self.registry.register(_GrammarCacheCollector(compiler, self.model_name))

    def watch_replicas(self, replica_states) -> None:
        """Export per-replica series (`replica` label) from `replica_states()`, a list of
        snapshots with index, alive, stats (SchedulerStats), load_tokens, num_routed and
        generation_tokens, read at each scrape."""
        self.registry.register(_ReplicaCollector(replica_states, self.model_name))

    # ---- recording (engine thread) --------------------------------------------------------------
    def record_step(self, stats: SchedulerStats | None, outputs: Iterable[RequestOutput]) -> None:
        """Everything one engine step changed."""
        if stats is not None:
            self.record_scheduler_stats(stats)
        self.record_outputs(outputs)

    def record_scheduler_stats(self, stats: SchedulerStats) -> None:
        """Set the gauges; grow the counters by what the scheduler's cumulative ones gained."""
        self.num_requests_running.set(stats.num_running)
        self.num_requests_waiting.set(stats.num_waiting)
        self.kv_cache_usage_perc.set(stats.kv_cache_usage)
        last = self._last_stats
        for attr in ("prefix_cache_queries", "prefix_cache_hits", "num_preemptions"):
            new = getattr(stats, attr)
            old = getattr(last, attr) if last is not None else 0
            # A counter that went backwards belongs to a fresh scheduler: all of it is new.
            gained = new - old if new >= old else new
            if gained:
                getattr(self, attr).inc(gained)
        self._last_stats = stats

    def record_outputs(self, outputs: Iterable[RequestOutput]) -> None:
        """Token counts and latencies from one step's outputs (O(outputs))."""
        prompt_tokens = generation_tokens = 0
        for output in outputs:
            metrics = output.metrics
            if metrics is None:
                continue
            progress = self._requests.get(output.request_id)
            if progress is None:
                progress = self._requests[output.request_id] = _RequestProgress()
            new_tokens = metrics.num_generation_tokens - progress.num_generation_tokens
            if new_tokens > 0:
                if progress.num_generation_tokens == 0:
                    prompt_tokens += len(output.prompt_token_ids)
                    self._observe_first_token(metrics)
                elif metrics.last_token_time is not None and progress.last_token_time is not None:
                    gap = metrics.last_token_time - progress.last_token_time
                    for _ in range(new_tokens):
                        self.inter_token_latency.observe(gap)
                generation_tokens += new_tokens
                progress.num_generation_tokens = metrics.num_generation_tokens
                progress.last_token_time = metrics.last_token_time
            self._count_finished_sequences(output, progress)
            if output.finished:
                del self._requests[output.request_id]
                if metrics.finished_time is not None:
                    self.e2e_request_latency.observe(metrics.finished_time - metrics.arrival_time)
        if prompt_tokens:
            self.prompt_tokens.inc(prompt_tokens)
            self._window.prompt_tokens += prompt_tokens
            self.totals.prompt_tokens += prompt_tokens
        if generation_tokens:
            self.generation_tokens.inc(generation_tokens)
            self._window.generation_tokens += generation_tokens
            self.totals.generation_tokens += generation_tokens

    def _observe_first_token(self, metrics) -> None:
        if metrics.first_token_time is not None:
            ttft = metrics.first_token_time - metrics.arrival_time
            self.time_to_first_token.observe(ttft)
            self.totals.first_tokens += 1
            self.totals.ttft_seconds += ttft
        if metrics.first_scheduled_time is not None:
            self.request_queue_time.observe(metrics.first_scheduled_time - metrics.arrival_time)

    def _count_finished_sequences(self, output: RequestOutput, progress: _RequestProgress) -> None:
        # Cumulative and final outputs repeat finished samples: count each index once.
        for completion in output.outputs:
            reason = completion.finish_reason
            if reason is not None and completion.index not in progress.finished_indices:
                progress.finished_indices.add(completion.index)
                self._success(reason).inc()
                if reason == "abort":
                    self.totals.sequences_aborted += 1
                else:
                    self.totals.sequences_finished += 1

    def _success(self, reason: str):
        child = self.request_success.get(reason)
        if child is None:
            child = self.request_success[reason] = self._success_family.labels(self.model_name, reason)
        return child

    def record_rejection(self, reason: str) -> None:
        """A request refused for load: "queue_full" or "queue_timeout"."""
        self.requests_rejected[reason].inc()

    def record_abort(self, request_id: str, num_sequences: int = 1) -> None:
        """A request aborted from outside (client gone): count its unfinished sequences."""
        self._requests.pop(request_id, None)
        if num_sequences > 0:
            self.request_success["abort"].inc(num_sequences)
            self.totals.sequences_aborted += num_sequences

    def sample_history(self) -> None:
        """Record a history sample if a second has passed (call often, idle or not)."""
        self.history.sample_if_due(self.totals, self._last_stats)

    # ---- periodic log line ------------------------------------------------------------------------
    def log_if_due(self, now: float | None = None) -> str | None:
        """Every `log_interval_s`, log throughput and load if anything happened; return the line."""
        now = time.monotonic() if now is None else now
        window = self._window
        elapsed = now - window.start
        if elapsed < self.log_interval_s:
            return None
        self._window = _LogWindow(start=now)
        stats = self._last_stats
        busy = window.prompt_tokens or window.generation_tokens
        busy = busy or (stats is not None and (stats.num_running or stats.num_waiting))
        if not busy:
            return None
        line = self.format_log_line(window.prompt_tokens / elapsed, window.generation_tokens / elapsed)
        logger.info(line)
        return line

    def format_log_line(self, prompt_throughput: float, generation_throughput: float) -> str:
        """The periodic line; load is the last snapshot, the hit rate covers every lookup so far."""
        stats = self._last_stats
        running = stats.num_running if stats else 0
        waiting = stats.num_waiting if stats else 0
        usage = stats.kv_cache_usage if stats else 0.0
        hit_rate = (
            stats.prefix_cache_hits / stats.prefix_cache_queries
            if stats and stats.prefix_cache_queries
            else 0.0
        )
        return (
            f"Avg prompt throughput: {prompt_throughput:.1f} tokens/s, "
            f"Avg generation throughput: {generation_throughput:.1f} tokens/s, "
            f"Running: {running} reqs, Waiting: {waiting} reqs, "
            f"KV cache usage: {usage * 100:.1f}%, Prefix cache hit rate: {hit_rate * 100:.1f}%"
        )

    # ---- export -------------------------------------------------------------------------------------
    def render(self) -> bytes:
        """The registry in Prometheus text format (for GET /metrics)."""
        return generate_latest(self.registry)
