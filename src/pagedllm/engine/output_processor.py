"""Turns the core's token-level outputs into user-facing RequestOutputs.

Per core request (a "child"; a prompt with n > 1 has n of them) it detokenizes
incrementally, detects stop strings, converts logprobs; per user request (the
"parent") it assembles prompt logprobs and metrics and decides when to emit:

- "final": one RequestOutput when every child has finished;
- "cumulative": the whole text so far, whenever something new arrived;
- "delta": only what is new since the last RequestOutput (streaming). In delta mode
  a RequestOutput lists only the children with something new.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pagedllm.core.sched_output import EngineCoreOutput, TokenLogprobs
from pagedllm.engine.detokenizer import IncrementalDetokenizer
from pagedllm.engine.stop_checker import StopChecker
from pagedllm.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestMetrics, RequestOutput
from pagedllm.sampling_params import SamplingParams

OutputKind = Literal["final", "cumulative", "delta"]
_OUTPUT_KINDS = ("final", "cumulative", "delta")


@dataclass
class ProcessedOutputs:
    """What one engine step yields: outputs for users, and child ids the core must finish."""

    request_outputs: list[RequestOutput] = field(default_factory=list)
    # Children stopped here by a stop string, which the scheduler does not know about.
    reqs_to_abort: list[str] = field(default_factory=list)


class TokenTexts:
    """Each token's own text (`decode([id])`, as vLLM reports it), cached per token id.

    An id the tokenizer does not know (a model vocabulary larger than the tokenizer's, e.g. a
    dummy model) reads as empty text, as the detokenizer renders it."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._num_known = len(tokenizer)
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id]) if token_id < self._num_known else ""
            self._cache[token_id] = text
        return text

    def position_logprobs(
        self, ids: list[int], logprobs: list[float], rank: int, num_top: int
    ) -> PositionLogprobs:
        """One position's dict: the chosen token (with its true rank), then `num_top` best (rank 1..k)."""
        entry = {ids[0]: Logprob(logprobs[0], rank, self(ids[0]))}
        for pos in range(1, min(num_top, len(ids) - 1) + 1):
            # setdefault: when the chosen token is also in the top-k, keep its computed rank.
            entry.setdefault(ids[pos], Logprob(logprobs[pos], pos, self(ids[pos])))
        return entry


class ChildState:
    """One core request: its tokens, text, logprobs and finish state."""

    def __init__(self, index: int, prompt_token_ids: list[int], params: SamplingParams, texts: TokenTexts):
        self.index = index
        self.params = params
        self.texts = texts
        self.detokenizer = IncrementalDetokenizer(
            texts.tokenizer,
            prompt_token_ids,
            params.skip_special_tokens,
            params.spaces_between_special_tokens,
        )
        self.stop_checker = StopChecker(params.stop, params.include_stop_str_in_output)
        self.token_ids: list[int] = []
        self.logprobs: list[PositionLogprobs] | None = [] if params.logprobs is not None else None
        self.cumulative_logprob: float | None = 0.0 if params.logprobs is not None else None
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.has_update = False
        self._sent_tokens = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def update(self, out: EngineCoreOutput) -> bool:
        """Take one core output; return True if a stop string finished the sequence here."""
        new_ids = out.new_token_ids
        self.token_ids.extend(new_ids)
        if out.new_logprobs is not None and self.logprobs is not None:
            self._add_logprobs(out.new_logprobs)
        self.has_update = self.has_update or bool(new_ids) or out.finished
        # Like vLLM, a stop token's (EOS or stop_token_ids) own text is not part of the output.
        text_ids = new_ids
        if out.finish_reason == "stop" and new_ids and not self.params.include_stop_str_in_output:
            text_ids = new_ids[:-1]
        delta = self.detokenizer.add_tokens(text_ids)
        if out.finished:
            delta += self.detokenizer.flush()
        # Stop strings count only once min_tokens tokens exist (vLLM's rule).
        stop_str = self.stop_checker.append(delta, check_stop=len(self.token_ids) > self.params.min_tokens)
        if stop_str is not None:
            self.finish_reason, self.stop_reason = "stop", stop_str
            return True
        if out.finished:
            self.finish_reason, self.stop_reason = out.finish_reason, out.stop_reason
        return False

    def _add_logprobs(self, new: TokenLogprobs) -> None:
        num_top = self.params.logprobs
        for ids, values, rank in zip(new.token_ids, new.logprobs, new.ranks):
            self.logprobs.append(self.texts.position_logprobs(ids, values, rank, num_top))
            self.cumulative_logprob += values[0]

    def make_output(self, delta: bool) -> CompletionOutput:
        """The sequence so far (cumulative) or what is new since the last call (delta)."""
        self.has_update = False
        if delta:
            start, self._sent_tokens = self._sent_tokens, len(self.token_ids)
            text = self.stop_checker.take_delta(self.finished)
            token_ids = self.token_ids[start:]
            logprobs = self.logprobs[start:] if self.logprobs is not None else None
        else:
            text = self.stop_checker.text(self.finished)
            token_ids = list(self.token_ids)
            logprobs = list(self.logprobs) if self.logprobs is not None else None
        return CompletionOutput(
            index=self.index,
            text=text,
            token_ids=token_ids,
            cumulative_logprob=self.cumulative_logprob,
            logprobs=logprobs,
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
        )


class ParentState:
    """One user request: its children, prompt logprobs, metrics and output mode."""

    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        child_ids: list[str],
        arrival_time: float,
        output_kind: OutputKind,
        texts: TokenTexts,
    ):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.output_kind = output_kind
        self.texts = texts
        self.children = {
            cid: ChildState(i, prompt_token_ids, params, texts) for i, cid in enumerate(child_ids)
        }
        # n=1, most requests: the per-step checks skip iterating over one child.
        self._only_child = next(iter(self.children.values())) if len(self.children) == 1 else None
        self.prompt_logprobs: list[PositionLogprobs | None] | None = None
        if params.prompt_logprobs is not None:
            self.prompt_logprobs = [None] * len(prompt_token_ids)
        self._prompt_logprobs_sent = False
        self.metrics = RequestMetrics(arrival_time=arrival_time)
        self.num_cached_tokens = 0

    @property
    def finished(self) -> bool:
        if self._only_child is not None:
            return self._only_child.finish_reason is not None
        return all(c.finished for c in self.children.values())

    def add_prompt_logprobs(self, start: int, values: TokenLogprobs) -> None:
        """Fill positions start.. ; positions already filled (a recomputed chunk) are kept."""
        if self.prompt_logprobs is None:
            return
        num_top = self.params.prompt_logprobs
        rows = zip(values.token_ids, values.logprobs, values.ranks)
        for position, (ids, lps, rank) in enumerate(rows, start=start):
            if 0 < position < len(self.prompt_logprobs) and self.prompt_logprobs[position] is None:
                self.prompt_logprobs[position] = self.texts.position_logprobs(ids, lps, rank, num_top)

    def make_output(self) -> RequestOutput | None:
        """The RequestOutput this mode calls for now, or None."""
        finished = self.finished
        if self.output_kind == "final" and not finished:
            return None
        delta = self.output_kind == "delta"
        if self._only_child is not None:
            children = [self._only_child]  # a touched parent's only child has an update
        else:
            children = [c for c in self.children.values() if c.has_update or not delta]
        prompt_logprobs = self.prompt_logprobs
        if delta:
            # Streaming sends the prompt logprobs once, with the first output.
            prompt_logprobs = None if self._prompt_logprobs_sent else prompt_logprobs
            self._prompt_logprobs_sent = True
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            prompt_logprobs=prompt_logprobs,
            outputs=[c.make_output(delta) for c in children],
            finished=finished,
            num_cached_tokens=self.num_cached_tokens,
            metrics=self.metrics.copy(),
        )


class OutputProcessor:
    """Keeps the text-side state of every live request (the front end's side; no torch)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._texts = TokenTexts(tokenizer)
        self._parents: dict[str, ParentState] = {}
        self._parent_of: dict[str, ParentState] = {}  # child (core) id -> parent

    def get_num_unfinished_requests(self) -> int:
        return len(self._parents)

    def has_unfinished_requests(self) -> bool:
        return bool(self._parents)

    def add_request(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        child_request_ids: list[str],
        arrival_time: float,
        output_kind: OutputKind = "final",
    ) -> None:
        """Register a user request and the ids of its core requests (one per sample)."""
        if output_kind not in _OUTPUT_KINDS:
            raise ValueError(f"output_kind must be one of {_OUTPUT_KINDS}, got {output_kind!r}")
        if request_id in self._parents:
            raise ValueError(f"request id {request_id!r} is already in use")
        if not child_request_ids:
            raise ValueError("a request needs at least one child request id")
        parent = ParentState(
            request_id,
            prompt,
            prompt_token_ids,
            params,
            child_request_ids,
            arrival_time,
            output_kind,
            self._texts,
        )
        self._parents[request_id] = parent
        for child_id in child_request_ids:
            self._parent_of[child_id] = parent

    def abort_request(self, request_id: str) -> list[str]:
        """Forget a user request; return its unfinished child ids for the core to abort."""
        parent = self._parents.pop(request_id, None)
        if parent is None:
            return []
        self._forget_children(parent)
        return [cid for cid, child in parent.children.items() if not child.finished]

    def reject(self, child_request_id: str) -> tuple[str | None, list[str]]:
        """The core refused one core request: forget its user request; return that request's
        id (None if unknown) and its other unfinished core requests, for the core to abort."""
        parent = self._parent_of.get(child_request_id)
        if parent is None:
            return None, []
        siblings = self.abort_request(parent.request_id)
        return parent.request_id, [c for c in siblings if c != child_request_id]

    def process_outputs(self, outputs: list[EngineCoreOutput], now: float) -> ProcessedOutputs:
        """Apply one step's core outputs; return the RequestOutputs due and children to stop."""
        result = ProcessedOutputs()
        touched: dict[str, ParentState] = {}
        for out in outputs:
            parent = self._parent_of.get(out.request_id)
            if parent is None:
                continue  # aborted, or stopped here by a stop string one step earlier
            child = parent.children[out.request_id]
            if child.finished:
                continue
            self._update_parent(parent, out, now)
            if child.update(out) and not out.finished:
                result.reqs_to_abort.append(out.request_id)
            if child.has_update:
                touched[parent.request_id] = parent
        for parent in touched.values():
            if parent.finished:
                parent.metrics.finished_time = now
                self._parents.pop(parent.request_id, None)
                self._forget_children(parent)
            request_output = parent.make_output()
            if request_output is not None:
                result.request_outputs.append(request_output)
        return result

    def _update_parent(self, parent: ParentState, out: EngineCoreOutput, now: float) -> None:
        if out.new_prompt_logprobs is not None:
            parent.add_prompt_logprobs(*out.new_prompt_logprobs)
        parent.num_cached_tokens = max(parent.num_cached_tokens, out.num_cached_tokens)
        metrics = parent.metrics
        if metrics.first_scheduled_time is None:
            metrics.first_scheduled_time = out.first_scheduled_time
        if out.new_token_ids:
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            metrics.last_token_time = now
            metrics.num_generation_tokens += len(out.new_token_ids)

    def _forget_children(self, parent: ParentState) -> None:
        for child_id in parent.children:
            self._parent_of.pop(child_id, None)
