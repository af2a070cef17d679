"""The decode-graph step's buffers and padding, checked on CPU.

`CudaGraphStepCompiler` is given a recorder that "replays" by running the recorded step again
on the same fixed buffers and writing its output tensor, as a replayed CUDA graph would: every
piece of the graph step but the capture itself (inputs copied in, rows padded to the captured
size, the Triton backend planned once per size, outputs sliced back) runs for real, with the
Triton kernels in the interpreter. The CUDA capture is checked on a GPU (tests/gpu/).
Generation through the graph step must equal generation without it.
"""

from __future__ import annotations

import os

import pytest
import torch

import tiny_models
from pagedllm import LLM, SamplingParams
from pagedllm.platforms.cuda_graphs import CudaGraphStep, CudaGraphStepCompiler

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    os.environ.get("PAGEDLLM_CPU_KERNELS") == "0", reason="runs once, in the run with the CPU kernels"
)


class EagerReplay:
    """Replays a recorded step by running it again and writing the recorded output tensor."""

    def __init__(self):
        self.replays = 0

    def record(self, step):
        output = step()

        def replay():
            self.replays += 1
            output.copy_(step())

        return replay, output


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory):
    return tiny_models.save_tiny(tiny_models.gemma3_config(), tmp_path_factory.mktemp("tiny-gemma3"), seed=5)


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "gemma3_dir"])
def test_graph_step_equals_eager_for_padded_decode_batches(fixture, request):
    folder = request.getfixturevalue(fixture)
    gen = torch.Generator().manual_seed(3)
    # 5 requests: decode steps of 5 replay the size-8 graph (3 padding rows), and as requests
    # finish (different max_tokens) sizes 4, 2 and 1 replay with and without padding.
    prompts = [torch.randint(3, tiny_models.VOCAB, (n,), generator=gen).tolist() for n in (3, 9, 14, 20, 27)]
    params = [
        SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, logprobs=1) for n in (4, 6, 9, 12, 14)
    ]
    batch = [{"prompt_token_ids": p} for p in prompts]

    def run(graphs: bool):
        llm = LLM(
            str(folder),
            dtype="float32",
            attention_backend="triton",
            num_kv_blocks=64,
            block_size=4,
            max_num_seqs=8,
        )
        runner = llm.engine.engine_core.executor.runner
        recorder = EagerReplay()
        if graphs:
            compiler = CudaGraphStepCompiler(
                8, runner.scheduler_config.max_model_len, "cpu", capture=recorder
            )
            runner.compiled_step = compiler.compile(runner.model)
            assert isinstance(runner.compiled_step, CudaGraphStep)
            assert runner.compiled_step.sizes == [1, 2, 4, 8]
        return llm.generate(batch, params), recorder.replays

    eager, _ = run(graphs=False)
    graphed, replays = run(graphs=True)
    assert replays >= 12  # every decode step after the prefills
    for a, b in zip(eager, graphed):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for lp_a, lp_b, token in zip(a.outputs[0].logprobs, b.outputs[0].logprobs, a.outputs[0].token_ids):
            assert lp_b[token].logprob == pytest.approx(lp_a[token].logprob, abs=1e-5)


def test_graphs_are_declined_for_backends_with_step_dependent_host_work(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), dtype="float32", attention_backend="torch", num_kv_blocks=32, block_size=4)
    runner = llm.engine.engine_core.executor.runner
    compiler = CudaGraphStepCompiler(8, 64, "cpu", capture=EagerReplay())
    assert compiler.compile(runner.model) is None


def test_graphs_are_declined_for_layers_that_do_host_work_each_step(tmp_path):
    folder = tiny_models.save_tiny(tiny_models.mixtral_config(), tmp_path / "mixtral")
    llm = LLM(str(folder), dtype="float32", attention_backend="triton", num_kv_blocks=32, block_size=4)
    runner = llm.engine.engine_core.executor.runner
    compiler = CudaGraphStepCompiler(8, 64, "cpu", capture=EagerReplay())
    assert compiler.compile(runner.model) is None
