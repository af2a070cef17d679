"""pagedllm: an LLM inference and serving engine (paged KV cache, continuous batching)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# OpenMP workers spin ~300k iterations at each barrier before sleeping (libgomp's default).
# When anything else needs one of the cores (the HTTP front end, a tokenizer thread), the
# spinning worker holds it while the worker the barrier waits for is descheduled: a decode
# step measured 3x slower on a machine with one other busy process. A short spin keeps the
# hand-off between back-to-back kernels quick and yields soon after. Read by libgomp when
# torch loads, so it takes effect in processes that import pagedllm before torch (the CLI,
# the engine process); OMP_WAIT_POLICY or a user's own GOMP_SPINCOUNT win.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from pagedllm.outputs import CompletionOutput, Logprob, RequestOutput
from pagedllm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from pagedllm.entrypoints.llm import LLM

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import pagedllm.core` (pure Python) does not pull in torch.
    if name == "LLM":
        from pagedllm.entrypoints.llm import LLM

        return LLM
    raise AttributeError(f"module 'pagedllm' has no attribute {name!r}")
