"""What the model runner keeps per request between steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm.sampling_params import SamplingParams


@dataclass(slots=True, eq=False)
class RunnerRequestState:
    """Tokens, block table row and sampling state of one request, updated in place each step."""

    request_id: str
    token_ids: list[int]  # prompt + outputs the runner knows of
    num_prompt_tokens: int
    sampling_params: SamplingParams
    generator: torch.Generator | None
    row: int  # row in the persistent block tables (the same in every KV-cache group)
    num_blocks: list[int]  # per KV-cache group: entries written in its table
    num_computed_tokens: int

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]
