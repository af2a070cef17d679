"""AsyncLLM with the model in an engine process: results reach every stream, and a failure
on the relay side ends the streams with an error instead of leaving them waiting."""

from __future__ import annotations

import asyncio

import pytest

from pagedllm.config import EngineConfig
from pagedllm.engine.async_llm import AsyncLLM, EngineDeadError
from pagedllm.sampling_params import SamplingParams


async def _collect(llm: AsyncLLM, prompt: list[int], request_id: str, max_tokens: int) -> list[int]:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
    tokens: list[int] = []
    async for output in llm.generate({"prompt_token_ids": prompt}, params, request_id):
        assert output.prompt_token_ids == prompt
        tokens.extend(output.outputs[0].token_ids)
    return tokens


def test_engine_process_streams_and_relay_failure(tiny_llama_dir):
    config = EngineConfig(model=str(tiny_llama_dir), dtype="float32", num_kv_blocks=64)
    llm = AsyncLLM(config, model_name="tiny", engine_process=True)
    try:
        prompts = [list(range(10 + i, 22 + i)) for i in range(4)]

        async def concurrent():
            return await asyncio.wait_for(
                asyncio.gather(*(_collect(llm, p, f"r{i}", 5) for i, p in enumerate(prompts))), 60
            )

        # Several streams share each step's single delivery; every one gets all its tokens.
        results = asyncio.run(concurrent())
        assert [len(r) for r in results] == [5, 5, 5, 5]

        def broken(*args, **kwargs):
            raise RuntimeError("metrics exploded")

        llm.metrics.record_step = broken
        with pytest.raises(EngineDeadError, match="metrics exploded"):
            asyncio.run(asyncio.wait_for(_collect(llm, prompts[0], "after", 50), 30))
        assert not llm.is_running
    finally:
        llm.shutdown()
