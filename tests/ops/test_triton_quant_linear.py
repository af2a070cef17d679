"""The Triton weight-only matmuls (ops/triton_quant_kernels.py) and their weight formats.

On CPU the kernels run in Triton's interpreter (tests/conftest.py switches it on), in float32
and float16 (the interpreter does not compute bf16; the compile check builds bf16 for GPU
targets). Every product is checked against float64 x @ W^T with W the portable format's
dequantized weight: the kernels' only errors are float32 accumulation (1e-5 of the sum of
|x| |w|), the rounding of the output to x's dtype (one ulp) and, for 4-bit weights, the
rounding of each dequantized weight to x's dtype (one ulp of each |x| |w| term).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tiny_models
from models.paged_batch import assign_blocks, bind_kv_caches, run_step
from pagedllm.config import ConfigError
from pagedllm.model.layers.linear import LinearBase
from pagedllm.model.layers.quantization import Int4Blocks, Int4Weight, Int8Weight, quantized_nbytes
from pagedllm.model.layers.quantization.int4 import quantize_groups
from pagedllm.model.loader.resolve import resolve_model
from pagedllm.model.model_config import ModelConfig
from pagedllm.model.model_loader import load_model
from pagedllm.ops import triton_quant_kernels as kernels
from pagedllm.ops.triton_launch import check_runs_on
from pagedllm.ops.triton_quant_linear import TritonInt4Weight, TritonInt8Weight, pack_int4, unpack_int4
from pagedllm.ops.triton_quant_tiles import DECODE_MAX_ROWS, QuantTiles, choose_tiles
from pagedllm.platforms.cuda_layer_ops import cuda_layer_ops

ROWS = [1, 5, 16, 64, 200]  # decode tiles up to 64 rows (16 and 64 fill them), prefill beyond
DTYPES = [torch.float32, torch.float16]
# (N, K): int8 with an odd N and a K no tile divides; 4-bit with 8 groups (4 per decode
# iteration), 18 groups (2 per iteration, SmolLM2's hidden size) and an odd N.
INT8_SHAPES = [(96, 256), (37, 80), (40, 576)]
INT4_SHAPES = [(96, 256), (48, 576), (35, 96)]


def random_blocks(n: int, k: int, seed: int = 0) -> Int4Blocks:
    """Arbitrary groups, as a GGUF file holds them (not from quantize_groups)."""
    gen = torch.Generator().manual_seed(seed)
    return Int4Blocks(
        torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8),
        torch.rand(n, k // 32, generator=gen) * 0.02 + 0.001,
        torch.randn(n, k // 32, generator=gen) * 0.05,
        32,
    )


def reference_int4(blocks: Int4Blocks, dtype: torch.dtype) -> torch.Tensor:
    """The float32 weight the portable format stands for (scale and zero rounded to `dtype`)."""
    if blocks.shape[0] % 16 == 0:
        return Int4Weight(blocks, dtype, fused=False).dequantize(torch.float32)
    rounded = Int4Blocks(blocks.codes, blocks.scale.to(dtype).float(), blocks.zero.to(dtype).float(), 32)
    return rounded.dequantize()


def assert_close_to_product(out, x, weight, dequantized_in_dtype=False, bias=None, label=""):
    """`out` against x @ weight^T (+ bias) in float64, within the errors the module docstring lists."""
    expected = x.double() @ weight.double().t()
    if bias is not None:
        expected += bias.double()
    magnitude = x.double().abs() @ weight.double().abs().t()
    ulp = 0.0 if x.dtype == torch.float32 else 2.0**-10
    bound = expected.abs() * ulp + (1e-5 + (ulp if dequantized_in_dtype else 0.0)) * magnitude + 1e-6
    excess = (out.double() - expected).abs() - bound
    assert out.dtype == x.dtype and out.shape == expected.shape, label
    assert (excess <= 0).all(), f"{label}: {int((excess > 0).sum())} outputs off, worst by {excess.max():.3g}"


def int8_weights(n: int, k: int, dtype: torch.dtype, seed: int = 0) -> tuple[Int8Weight, TritonInt8Weight]:
    gen = torch.Generator().manual_seed(seed)
    portable = Int8Weight.from_float((torch.randn(n, k, generator=gen) * 0.05).to(dtype))
    return portable, TritonInt8Weight(portable.qweight, portable.scale)


def activations(m: int, k: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    return torch.randn(m, k, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ---- layouts (no kernel) ----


def test_packed_codes_unpack_bit_exactly():
    codes = random_blocks(24, 128).codes
    packed = pack_int4(codes)
    assert packed.shape == (24, 64) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), codes)
    # Byte 16 g + j of a row: code 32 g + j low, code 32 g + 16 + j high.
    assert packed[3, 16 + 5] == codes[3, 32 + 5] | (codes[3, 48 + 5] << 4)


def test_int4_weight_keeps_checkpoint_groups_exactly():
    """GGUF Q4_1 (scale d, zero m + 8d) and Q4_0 (zero 0) groups: codes bit for bit, the weight
    exactly the groups' (float32 scales kept as they are)."""
    gen = torch.Generator().manual_seed(5)
    n, k = 32, 96
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    d = (torch.rand(n, k // 32, generator=gen) * 0.01).half().float()
    m = (-torch.rand(n, k // 32, generator=gen) * 0.1).half().float()
    for blocks in (Int4Blocks(codes, d, m + 8 * d, 32), Int4Blocks(codes, d, torch.zeros_like(d), 32)):
        q = TritonInt4Weight(blocks.codes, blocks.scale, blocks.zero, torch.float32)
        assert torch.equal(q.codes_t().t(), blocks.codes)
        torch.testing.assert_close(q.dequantize(), blocks.dequantize(), rtol=0, atol=1e-7)
        x = activations(7, k, torch.float32)
        assert_close_to_product(q.linear(x), x, blocks.dequantize(), label="checkpoint groups")


def test_embed_and_dequantize_equal_the_portable_formats():
    ids = torch.tensor([[3, 0], [17, 3]])
    portable8, q8 = int8_weights(40, 64, torch.float16)
    assert torch.equal(q8.dequantize(), portable8.dequantize())
    assert torch.equal(q8.embed(ids), portable8.embed(ids))
    blocks = random_blocks(32, 96)
    q4 = TritonInt4Weight(blocks.codes, blocks.scale, blocks.zero, torch.float32)
    torch.testing.assert_close(q4.dequantize(), reference_int4(blocks, torch.float32), rtol=0, atol=1e-7)
    assert torch.equal(q4.embed(ids), q4.dequantize()[ids])
    assert q4.embed(ids).shape == (2, 2, 96)


def test_buffers_move_and_count():
    _, q8 = int8_weights(40, 64, torch.float16)
    blocks = random_blocks(32, 96)
    q4 = TritonInt4Weight(blocks.codes, blocks.scale, blocks.zero, torch.float16)
    assert q4.nbytes == 32 * 96 // 2 + 2 * (3 * 32 * 2) and q8.nbytes == 40 * 64 + 40 * 2
    for q in (q8, q4):
        assert quantized_nbytes(q) == q.nbytes
        moved = q.to("meta")
        assert all(t.device.type == "meta" for t in moved.buffers())


def test_bad_inputs_say_what_is_expected():
    with pytest.raises(ValueError, match="multiple of 32"):
        TritonInt4Weight(
            torch.zeros(16, 40, dtype=torch.uint8), torch.ones(16, 1), torch.ones(16, 1), torch.float32
        )
    with pytest.raises(ValueError, match="int8 codes"):
        TritonInt8Weight(torch.zeros(4, 8), torch.ones(4))
    _, q8 = int8_weights(16, 32, torch.float32)
    with pytest.raises(ValueError, match=r"activations \[M, 32\]"):
        q8.linear(torch.zeros(2, 33))
    with pytest.raises(ValueError, match="bf16, fp16 or float32"):
        q8.linear(torch.zeros(2, 32, dtype=torch.float64))
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        check_runs_on(torch.device("cpu"), object(), "these kernels")  # a kernel decorated for a GPU


def test_tile_choice_by_rows():
    decode = [choose_tiles(m, 4096, 4096, 132) for m in (1, 16, 33, DECODE_MAX_ROWS)]
    assert [t.block_m for t in decode] == [16, 16, 64, 64]
    # The split of K depends on (N, K) alone: every decode batch sums a row in the same ranges.
    assert len({(t.block_k, t.split_k) for t in decode}) == 1 and decode[0].split_k > 1
    assert choose_tiles(1, 49152, 576, 132).split_k == 1  # enough column tiles already
    assert choose_tiles(1, 4096, 256, 132).split_k == 1  # too short to split
    prefill = choose_tiles(DECODE_MAX_ROWS + 1, 4096, 4096, 132)
    assert prefill.split_k == 1 and prefill.block_m >= 64 and prefill.block_k % 32 == 0
    assert kernels.groups_per_iteration(128, 576) == 2 and kernels.groups_per_iteration(128, 96) == 1


# ---- the kernels under the interpreter ----


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", INT8_SHAPES)
def test_int8_linear_matches_its_dequantized_weight(dtype, shape):
    portable, q = int8_weights(*shape, dtype)
    weight = portable.dequantize(torch.float32)
    for m in ROWS:
        x = activations(m, shape[1], dtype)
        assert_close_to_product(q.linear(x), x, weight, label=f"int8 {shape} {m} rows")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", INT4_SHAPES)
def test_int4_linear_matches_its_dequantized_weight(dtype, shape):
    blocks = random_blocks(*shape)
    q = TritonInt4Weight(blocks.codes, blocks.scale, blocks.zero, dtype)
    weight = reference_int4(blocks, dtype)
    for m in ROWS:
        x = activations(m, shape[1], dtype)
        assert_close_to_product(
            q.linear(x), x, weight, dequantized_in_dtype=True, label=f"int4 {shape} {m} rows"
        )


def test_quantized_float_weights_match():
    """Weights quantized here (quantize_groups, Int8Weight.from_float), through the factories."""
    w = torch.randn(64, 128) * 0.05
    ops = cuda_layer_ops(torch.float32)
    q8, q4 = ops.int8_weight(w), ops.int4_weight(quantize_groups(w), torch.float32)
    x = activations(3, 128, torch.float32)
    assert_close_to_product(q8.linear(x), x, Int8Weight.from_float(w).dequantize(), label="int8")
    assert_close_to_product(q4.linear(x), x, quantize_groups(w).dequantize(), label="int4")


@pytest.mark.parametrize(
    "tiles",
    [
        QuantTiles(16, 32, 64, split_k=2),
        QuantTiles(16, 64, 32, split_k=3),  # uneven: 8 iterations in ranges of 3, 3 and 2
        QuantTiles(32, 16, 128, split_k=1),
        QuantTiles(64, 128, 64, split_k=5),  # more splits than iterations: some add zeros
    ],
)
def test_forced_tilings_split_k_and_bias(tiles):
    """Any tiling gives the same product; split-K partial sums and the fused bias included."""
    m, n, k = 21, 80, 256
    x = activations(m, k, torch.float32)
    bias = torch.randn(n)
    portable, _ = int8_weights(n, k, torch.float32)
    out = kernels.int8_linear(x, portable.qweight, portable.scale, bias, tiles)
    assert_close_to_product(out, x, portable.dequantize(), bias=bias, label=f"int8 {tiles}")
    blocks = random_blocks(n, k)
    q = TritonInt4Weight(blocks.codes, blocks.scale, blocks.zero, torch.float32)
    out = kernels.int4_linear(x, q.codes, q.scale, q.zero, bias, tiles)
    assert_close_to_product(out, x, blocks.dequantize(), bias=bias, label=f"int4 {tiles}")


def test_strided_and_batched_activations():
    """x of more than two dims, or with a row stride beyond K (a column slice), and no rows."""
    portable, q = int8_weights(48, 64, torch.float32)
    wide = activations(6, 100, torch.float32)
    x = wide[:, 10:74]
    assert_close_to_product(q.linear(x), x, portable.dequantize(), label="strided")
    batched = q.linear(x.reshape(2, 3, 64), torch.ones(48))
    assert batched.shape == (2, 3, 48)
    torch.testing.assert_close(batched.reshape(6, 48), q.linear(x) + 1)
    assert q.linear(torch.zeros(0, 64)).shape == (0, 48)


# ---- the platform's layer ops on a tiny model ----


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-triton-quant")
    return tiny_models.save_tiny(tiny_models.llama_config(tie_word_embeddings=True), folder, seed=7)


def _logits(model) -> list[torch.Tensor]:
    """A prefill of two prompts, then one decode step each (the reference attention backend)."""
    prompts, block_size = [[1, 17, 250, 33, 90, 7, 4], [5, 300, 2, 8]], 4
    tables = assign_blocks([len(p) + 1 for p in prompts], block_size)
    bind_kv_caches(model, sum(len(t) for t in tables), block_size)
    lens = [len(p) for p in prompts]
    prefill = run_step(model, prompts, lens, tables, block_size)
    nexts = [[int(logits[-1].argmax())] for logits in prefill]
    decode = run_step(model, nexts, [n + 1 for n in lens], tables, block_size, num_decodes=2)
    return prefill + decode


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_cuda_layer_ops_put_the_triton_formats_in_place(method, tiny_llama):
    """Loaded with the CUDA platform's layer ops (here on CPU tensors), every quantized weight
    is in the Triton formats, a tied embedding and LM head share one, and the logits equal those
    of the portable formats (the same codes and scales)."""
    config = ModelConfig.from_resolved(resolve_model(str(tiny_llama)), quantization=method)
    ops = cuda_layer_ops(torch.float32)
    assert ops.name == "cuda" and ops.dense_linear is F.linear and not ops.layer_impls
    ours = load_model(config, "cpu", torch.float32, layer_ops=ops)
    portable = load_model(config, "cpu", torch.float32)
    linear_format = TritonInt4Weight if method == "int4" else TritonInt8Weight
    linears = [m for m in ours.modules() if isinstance(m, LinearBase)]
    assert linears and all(isinstance(m.quant, linear_format) and m.weight is None for m in linears)
    assert (
        isinstance(ours.lm_head.quant, TritonInt8Weight)
        and ours.model.embed_tokens.quant is ours.lm_head.quant
    )
    assert quantized_nbytes(ours) == quantized_nbytes(portable)
    for mine, theirs in zip(_logits(ours), _logits(portable)):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=2e-4)


# ---- GPU targets without a GPU ----


def test_kernels_compile_for_gpu_targets():
    """Every launch of the decode and prefill tile choices, bf16 and fp16, compiled for Hopper
    (in a process where the kernels are decorated for compilation, not interpretation)."""
    script = Path(__file__).with_name("compile_triton_quant_kernels.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for kernel in ("_int8_matmul_kernel", "_int4_matmul_kernel", "_split_k_sum_kernel"):
        assert f"{kernel} bfloat16" in done.stdout and f"{kernel} float16" in done.stdout, done.stdout


# ---- on a GPU ----


def _relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    return ((out.float() - expected.float()).norm() / expected.float().norm()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 7, 64, 65, 300])
def test_quantized_linears_on_cuda_against_bf16(dtype, m):
    """int8 and int4 against the unquantized weight (quantization error) and against their own
    dequantized weight (the kernels' arithmetic), decode and prefill tilings, with a bias."""
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    n, k = 1536, 2048
    weight = (torch.randn(n, k, device=device, generator=gen) * 0.02).to(dtype)
    bias = torch.randn(n, device=device, generator=gen).to(dtype)
    x = torch.randn(m, k, device=device, generator=gen).to(dtype)
    ops = cuda_layer_ops(dtype)
    q8 = ops.int8_weight(weight)
    q4 = ops.int4_weight(quantize_groups(weight), dtype)
    full = F.linear(x.float(), weight.float(), bias.float())
    for q, loss in ((q8, 0.01), (q4, 0.12)):  # RTN per row / per group of 32 on Gaussian weights
        out = q.linear(x, bias)
        assert out.dtype == dtype and out.shape == (m, n)
        assert _relative_error(out, full) < loss, f"{type(q).__name__} vs the float weight"
        own = F.linear(x.float(), q.dequantize(torch.float32), bias.float())
        assert _relative_error(out, own) < 5e-3, f"{type(q).__name__} vs its dequantized weight"


@pytest.mark.gpu
def test_split_k_and_tilings_agree_on_cuda():
    """Every forced tiling gives the decode product of the chosen one (bf16 output rounding apart)."""
    device = torch.device("cuda")
    blocks = random_blocks(512, 1024)
    q = TritonInt4Weight(blocks.codes, blocks.scale, blocks.zero, torch.bfloat16).to(device)
    x = torch.randn(3, 1024, device=device).to(torch.bfloat16)
    expected = q.linear(x).float()
    for tiles in (QuantTiles(16, 64, 128, 1), QuantTiles(16, 32, 64, 4), QuantTiles(64, 128, 64, 1)):
        out = kernels.int4_linear(x, q.codes, q.scale, q.zero, None, tiles)
        assert _relative_error(out, expected) < 1e-2, tiles
