"""Grammar compilation with xgrammar: once per distinct constraint, off the caller's thread.

`GrammarCompiler.submit` returns a future of the compiled grammar; equal constraints share one
(an LRU of futures, bounded by count), so a schema sent a thousand times compiles once and two
requests racing on a new one wait for the same compile. `compile` waits at most `timeout`
seconds: a pathological regex becomes a clear error instead of a stalled request (xgrammar
cannot be interrupted, so that compile finishes in the background on a bounded pool).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from pagedllm.structured_output.schema_support import check_schema
from pagedllm.structured_outputs_params import StructuredOutputsError, StructuredOutputsParams

logger = logging.getLogger(__name__)

DEFAULT_MAX_CACHED = 256
DEFAULT_TIMEOUT_S = 10.0


def choice_grammar(choices: list[str]) -> str:
    """An EBNF grammar whose language is exactly `choices` (JSON string escaping fits EBNF's)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


class GrammarCompiler:
    """Compiles `StructuredOutputsParams` for one tokenizer and vocabulary; thread-safe."""

    def __init__(
        self,
        tokenizer_factory: Callable[[], object],
        vocab_size: int,
        stop_token_ids: list[int],
        max_cached: int = DEFAULT_MAX_CACHED,
        compile_threads: int = 1,
    ):
        self._tokenizer_factory = tokenizer_factory
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted(stop_token_ids)
        self.max_cached = max_cached
        self._xgr_compiler = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, Future] = OrderedDict()
        self._pool = ThreadPoolExecutor(compile_threads, thread_name_prefix="pagedllm-grammar")
        self.queries = 0
        self.hits = 0
        # Called with the seconds each compile took (metrics), from the compiling thread.
        self.on_compiled: Callable[[float], None] | None = None

    def submit(self, params: StructuredOutputsParams, count: bool = True) -> Future:
        """The future compiled grammar of `params` (shared with every equal constraint).

        `count`: whether the lookup counts in `queries`/`hits` (an in-process engine core looks
        up again what its front end already counted)."""
        key = params.key
        with self._lock:
            self.queries += count
            future = self._cache.get(key)
            if future is not None:
                self.hits += count
                self._cache.move_to_end(key)
                return future
            future = self._pool.submit(self._compile, params)
            self._cache[key] = future
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
            return future

    def compile(self, params: StructuredOutputsParams, timeout: float | None = DEFAULT_TIMEOUT_S):
        """The compiled grammar, or `StructuredOutputsError` (invalid, or too slow to compile)."""
        try:
            return self.submit(params).result(timeout)
        except FutureTimeout:
            raise StructuredOutputsError(
                f"compiling the {params.kind} constraint took longer than {timeout:g} s; simplify it"
            ) from None

    def _compiler(self):
        if self._xgr_compiler is None:
            import xgrammar as xgr

            info = xgr.TokenizerInfo.from_huggingface(
                self._tokenizer_factory(), vocab_size=self.vocab_size, stop_token_ids=self.stop_token_ids
            )
            # The pool is the parallelism: one thread per compile leaves the cores to the model.
            self._xgr_compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        return self._xgr_compiler

    def _compile(self, params: StructuredOutputsParams):
        start = time.perf_counter()
        compiler = self._compiler()
        kind = params.kind
        try:
            if kind == "json":
                check_schema(json.loads(params.json))
                grammar = compiler.compile_json_schema(
                    params.json, any_whitespace=params.any_whitespace, strict_mode=True
                )
            elif kind == "json_object":
                grammar = compiler.compile_json_schema(
                    '{"type": "object"}', any_whitespace=params.any_whitespace, strict_mode=False
                )
            elif kind == "regex":
                grammar = compiler.compile_regex(params.regex)
            elif kind == "choice":
                grammar = compiler.compile_grammar(choice_grammar(params.choice))
            elif kind == "grammar":
                grammar = compiler.compile_grammar(params.grammar)
            else:
                grammar = compiler.compile_structural_tag(params.structural_tag)
        except StructuredOutputsError:
            raise
        except Exception as exc:  # xgrammar reports a bad spec as RuntimeError/ValueError
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StructuredOutputsError(f"invalid {kind} constraint: {message}") from exc
        seconds = time.perf_counter() - start
        logger.debug("compiled a %s constraint in %.3f s", kind, seconds)
        if self.on_compiled is not None:
            self.on_compiled(seconds)
        return grammar


_SHARED: dict[tuple, GrammarCompiler] = {}
_SHARED_LOCK = threading.Lock()


def shared_grammar_compiler(key: tuple, factory: Callable[[], GrammarCompiler]) -> GrammarCompiler:
    """One compiler per model in a process: a front end and an in-process core share its cache."""
    with _SHARED_LOCK:
        compiler = _SHARED.get(key)
        if compiler is None:
            compiler = _SHARED[key] = factory()
        return compiler
