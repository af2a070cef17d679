"""Per-request sampling parameters with vLLM's names, defaults and validation ranges."""

from __future__ import annotations

from dataclasses import dataclass, field

from pagedllm.structured_outputs_params import StructuredOutputsParams

_GREEDY_EPS = 1e-5


class SamplingParamsError(ValueError):
    """Invalid sampling parameter; `param` names the offending field."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclass
class SamplingParams:
    """How to sample one request. Mirrors vLLM's `SamplingParams`.

    `temperature == 0` means greedy. Logprobs are the model's raw log-softmax
    (before temperature, penalties and filtering), as vLLM returns by default.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    # Constrained decoding: the output must match a JSON schema, a regex, a choice or a grammar.
    structured_outputs: StructuredOutputsParams | None = None
    # Filled in by the engine: ids that end generation besides EOS (e.g. from generation_config).
    _all_stop_token_ids: set[int] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.top_k == -1:
            self.top_k = 0
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.logit_bias is not None:
            try:
                self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
            except (TypeError, ValueError) as exc:
                raise SamplingParamsError(
                    "logit_bias", f"logit_bias must map token ids to numbers, got {self.logit_bias!r}"
                ) from exc
        if isinstance(self.structured_outputs, dict):
            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
        self._validate()
        self._all_stop_token_ids = set(self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        """True when sampling degenerates to argmax."""
        return self.temperature < _GREEDY_EPS

    def _validate(self) -> None:
        def fail(param: str, message: str) -> None:
            raise SamplingParamsError(param, message)

        if not isinstance(self.n, int) or self.n < 1:
            fail("n", f"n must be an integer >= 1, got {self.n!r}")
        if self.temperature < 0.0:
            fail("temperature", f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            fail("top_p", f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            fail(
                "top_k",
                f"top_k must be -1 (disabled), 0 (disabled) or a positive integer, got {self.top_k!r}",
            )
        if not 0.0 <= self.min_p <= 1.0:
            fail("min_p", f"min_p must be in [0, 1], got {self.min_p}")
        if not -2.0 <= self.presence_penalty <= 2.0:
            fail("presence_penalty", f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            fail("frequency_penalty", f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        if not 0.0 < self.repetition_penalty <= 2.0:
            fail("repetition_penalty", f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            fail("max_tokens", f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            fail("min_tokens", f"min_tokens must be an integer >= 0, got {self.min_tokens!r}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            fail("min_tokens", f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or self.logprobs < 0):
            fail("logprobs", f"logprobs must be a non-negative integer, got {self.logprobs!r}")
        if self.prompt_logprobs is not None and (
            not isinstance(self.prompt_logprobs, int) or self.prompt_logprobs < 0
        ):
            fail(
                "prompt_logprobs",
                f"prompt_logprobs must be a non-negative integer, got {self.prompt_logprobs!r}",
            )
        if self.seed is not None and not isinstance(self.seed, int):
            fail("seed", f"seed must be an integer, got {self.seed!r}")
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            fail("stop", "stop must be a non-empty string or a list of non-empty strings")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            fail("stop_token_ids", "stop_token_ids must be non-negative integers")
        if self.allowed_token_ids is not None and (
            len(self.allowed_token_ids) == 0
            or any(not isinstance(t, int) or t < 0 for t in self.allowed_token_ids)
        ):
            fail("allowed_token_ids", "allowed_token_ids must be a non-empty list of non-negative token ids")
        if self.logit_bias is not None:
            for value in self.logit_bias.values():
                if not -100.0 <= value <= 100.0:
                    fail("logit_bias", f"logit_bias values must be in [-100, 100], got {value}")

    def validate_vocab(self, vocab_size: int) -> None:
        """Check token ids against the model's vocabulary (called by the engine)."""
        for name, ids in (
            ("allowed_token_ids", self.allowed_token_ids or []),
            ("logit_bias", list((self.logit_bias or {}).keys())),
            ("stop_token_ids", self.stop_token_ids),
        ):
            bad = [t for t in ids if t < 0 or t >= vocab_size]
            if bad:
                raise SamplingParamsError(
                    name, f"{name} contains token ids outside the vocabulary [0, {vocab_size}): {bad[:5]}"
                )

    def clone(self) -> SamplingParams:
        """A copy that can be given a different seed (used to fan out n > 1)."""
        import copy

        return copy.deepcopy(self)
