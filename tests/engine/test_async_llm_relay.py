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


def test_abort_all_ends_the_streams_and_their_requests_in_the_engine(tiny_llama_dir):
    # What a server's drain does at its --shutdown-timeout: the streams raise the error, and the
    # engine stops computing their requests (it frees their blocks) rather than run them out.
    config = EngineConfig(model=str(tiny_llama_dir), dtype="float32", num_kv_blocks=64)
    llm = AsyncLLM(config, model_name="tiny", engine_process=False)
    try:

        async def scenario():
            params = SamplingParams(max_tokens=500, ignore_eos=True, temperature=0.0)
            started = asyncio.Event()

            async def long_stream(i: int):
                async for _ in llm.generate({"prompt_token_ids": [5 + i, 6, 7]}, params, f"long{i}"):
                    started.set()

            tasks = [asyncio.ensure_future(long_stream(i)) for i in range(3)]
            await asyncio.wait_for(started.wait(), 30)
            llm.abort_all(RuntimeError("shutting down"))
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
            assert [str(r) for r in results] == ["shutting down"] * 3
            # Aborted in the engine, not left to run to their 500 tokens.
            assert llm.metric_totals().sequences_aborted == 3
            for _ in range(200):
                if not llm.engine.has_unfinished_requests() and llm.stats().num_running == 0:
                    break
                await asyncio.sleep(0.05)
            assert not llm.engine.has_unfinished_requests()
            assert llm.stats().num_running == 0 and llm.stats().num_waiting == 0

        asyncio.run(scenario())
    finally:
        llm.shutdown()
