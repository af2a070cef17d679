"""Weight-only quantization: the quantized matmuls against F.linear on the weights they stand for.

Every path is checked against its own dequantized weight, so the tolerances only cover the
arithmetic (float32 exact to rounding; bf16 to the rounding of its outputs): the fused CPU
kernels (a few rows) and the dequantize-then-matmul path (many rows), every linear layer kind,
the LM head and embedding, and 4-bit checkpoint groups loaded without a float round trip.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedllm.config import ConfigError, EngineConfig
from pagedllm.model.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.model.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from pagedllm.model.layers.quantization import (
    SCHEMES,
    Int4Blocks,
    Int4Weight,
    Int8Weight,
    int4,
    int8,
    process_weights_after_loading,
    scheme_for,
)
from pagedllm.model.layers.quantization.int4 import quantize_groups
from pagedllm.ops.int4_gemv import GEMV_MAX_ROWS

# The fused CPU kernels take 1 and 3 rows; the last size takes the dequantize path.
FUSED_MAX_ROWS = max(int8.OP_MAX_ROWS, int4.OP_MAX_ROWS, GEMV_MAX_ROWS)
ROWS = (1, 3, FUSED_MAX_ROWS + 5)


def random_blocks(rows: int, cols: int, seed: int = 0) -> Int4Blocks:
    gen = torch.Generator().manual_seed(seed)
    groups = cols // 32
    return Int4Blocks(
        torch.randint(0, 16, (rows, cols), generator=gen, dtype=torch.uint8),
        torch.rand(rows, groups, generator=gen) * 0.02 + 0.001,
        torch.randn(rows, groups, generator=gen) * 0.05,
        32,
    )


def test_row_sizes_cover_both_paths():
    assert min(int8.OP_MAX_ROWS, int4.OP_MAX_ROWS, GEMV_MAX_ROWS) >= 3 and ROWS[-1] > FUSED_MAX_ROWS


def assert_matches(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias=None, label="") -> None:
    """`out` against x @ weight^T (+ bias) computed in float64."""
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    scale = expected.abs().max().item()
    # float32: accumulation order only; bf16: the output's own rounding (8 bits) plus the
    # activation dtype of the dequantized weight on the many-rows path.
    tol = 1e-5 if x.dtype == torch.float32 else 2e-2
    err = (out.double() - expected).abs().max().item()
    assert err <= tol * scale, f"{label}: max error {err:.3g} vs output scale {scale:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", ROWS)
def test_int8_weight_matches_its_dequantized_weight(dtype, rows):
    weight = torch.randn(96, 80) * 0.05
    q = Int8Weight.from_float(weight.to(dtype))
    assert q.fused and q.qweight.dtype == torch.int8
    # Within half a step per row (a step more where the scale's own rounding clamps the row's max).
    error = (q.dequantize(torch.float32) - weight.to(dtype).float()).abs().amax(dim=1)
    assert (error <= q.scale.float() * (0.51 if dtype == torch.float32 else 1.0)).all()
    x = torch.randn(rows, 80).to(dtype)
    assert_matches(q.linear(x), x, q.dequantize(torch.float32), label=f"int8 {rows} rows")
    ids = torch.tensor([[0, 95], [7, 7]])
    assert torch.equal(q.embed(ids), q.dequantize()[ids])


def test_int8_weight_with_unfused_width_dequantizes():
    """The fused int8 kernel needs K % 16 == 0; other widths take the dequantize path."""
    q = Int8Weight.from_float(torch.randn(32, 40) * 0.05)
    assert not q.fused
    x = torch.randn(2, 40)
    assert_matches(q.linear(x), x, q.dequantize(torch.float32), label="int8 K=40")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("out_features", [128, 80, 48])  # full 64-row blocks, 64 + 16, a 48 tail
def test_int4_weight_matches_its_dequantized_weight(dtype, rows, out_features):
    blocks = random_blocks(out_features, 96)
    q = Int4Weight(blocks, dtype)
    assert q.fused and q.unpackable
    assert q.layout == int4.default_layout("cpu") == "torch"  # the portable format on CPU tensors
    # The packed codes read back exactly, and the weight is the blocks' (scales in `dtype`).
    assert torch.equal(q.codes_t().t(), blocks.codes)
    tol = 0 if dtype == torch.float32 else 2e-2 * blocks.zero.abs().max().item()
    assert (q.dequantize(torch.float32) - blocks.dequantize()).abs().max() <= tol + 1e-6
    x = torch.randn(rows, 96).to(dtype)
    assert_matches(q.linear(x), x, q.dequantize(torch.float32), label=f"int4 {rows} rows")


@pytest.mark.parametrize("rows", ROWS)
def test_unfused_layouts_for_other_devices_match(rows):
    """Off the CPU (CUDA) the codes are kept in order (int4: two per byte) and every matmul
    dequantizes; the same code runs here when the fused kernels are switched off."""
    blocks = random_blocks(64, 64)
    q4 = Int4Weight(blocks, torch.float32, fused=False)
    assert not q4.fused and torch.equal(q4.packed[:, 0], blocks.codes[:, 0] | (blocks.codes[:, 1] << 4))
    assert torch.equal(q4.codes_t().t(), blocks.codes)
    q8 = Int8Weight.from_float(torch.randn(64, 64) * 0.05)
    q8 = Int8Weight(q8.qweight, q8.scale, fused=False)
    x = torch.randn(rows, 64)
    assert_matches(q4.linear(x), x, blocks.dequantize(), label="int4 plain layout")
    assert_matches(q8.linear(x), x, q8.dequantize(), label="int8 unfused")


@pytest.mark.parametrize("fused", [True, False])
def test_large_weights_dequantize_in_slices(fused):
    """Weights over a million entries are dequantized a slice of rows at a time; the slices
    (including int4's 48-row tail block, and a last short slice) add up to the whole product."""
    x = torch.randn(ROWS[-1], 576)
    blocks = random_blocks(56 * 64 + 48, 576)
    q4 = Int4Weight(blocks, torch.float32, fused=fused)
    assert_matches(q4.linear(x), x, blocks.dequantize(), label="int4 sliced")
    q8 = Int8Weight.from_float(torch.randn(4000, 576) * 0.05)
    q8 = Int8Weight(q8.qweight, q8.scale, fused=fused)
    assert_matches(q8.linear(x), x, q8.dequantize(), label="int8 sliced")


def test_quantize_groups_round_trip():
    weight = torch.randn(32, 64) * 0.1
    weight[3, :32] = 0.25  # a constant group
    blocks = quantize_groups(weight)
    assert blocks.codes.max() <= 15
    error = (blocks.dequantize() - weight).abs()
    step = blocks.scale.repeat_interleave(32, dim=1)
    assert (error <= step * 0.5 + 1e-6).all()
    assert torch.allclose(blocks.dequantize()[3, :32], weight[3, :32])


def _load(layer, weights: dict) -> None:
    """Feed checkpoint tensors through the layer's weight loaders: {shard_id: tensor}."""
    for shard_id, tensor in weights.items():
        layer.weight.weight_loader(layer.weight, tensor, shard_id)


def _layers(dtype):
    """(layer, checkpoint parts {shard_id: weight}, the full float weight) for every layer kind."""
    torch.manual_seed(0)
    with torch.device("cpu"):
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            col = ColumnParallelLinear(64, 96, bias=True)
            row = RowParallelLinear(96, 64, bias=True)
            merged = MergedColumnParallelLinear(64, [48, 48])
            qkv = QKVParallelLinear(64, 16, 4, 2)
            rep = ReplicatedLinear(64, 32)
        finally:
            torch.set_default_dtype(prev)
    w = {name: torch.randn(shape) * 0.05 for name, shape in {
        "col": (96, 64), "row": (64, 96), "gate": (48, 64), "up": (48, 64),
        "q": (64, 64), "k": (32, 64), "v": (32, 64), "rep": (32, 64)}.items()}  # fmt: skip
    return [
        (col, {None: w["col"]}, w["col"]),
        (row, {None: w["row"]}, w["row"]),
        (merged, {0: w["gate"], 1: w["up"]}, torch.cat([w["gate"], w["up"]])),
        (qkv, {"q": w["q"], "k": w["k"], "v": w["v"]}, torch.cat([w["q"], w["k"], w["v"]])),
        (rep, {None: w["rep"]}, w["rep"]),
    ]


@pytest.mark.parametrize("method", ["int8", "int4", "int4-g128"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_linear_kind_runs_its_quantized_weight(method, dtype):
    for layer, parts, full in _layers(dtype):
        _load(layer, parts)
        if layer.bias is not None:
            layer.bias.data.copy_(torch.randn(layer.bias.shape) * 0.1)
        process_weights_after_loading(layer, method)
        label = f"{method} {type(layer).__name__}"
        assert layer.weight is None and layer.quant is not None, label
        expected_kind = Int4Weight if method.startswith("int4") else Int8Weight
        assert isinstance(layer.quant, expected_kind), label
        if method.startswith("int4"):
            assert layer.quant.group_size == int4.group_size_for(
                layer.input_size, SCHEMES[method].int4_group_size
            )
        dequantized = layer.quant.dequantize(torch.float32)
        # Quantization error within half a step of the format.
        assert (dequantized - full.to(dtype).float()).abs().max() < 0.02, label
        for rows in ROWS:
            x = torch.randn(rows, layer.input_size).to(dtype)
            assert_matches(layer(x), x, dequantized, layer.bias, f"{label}, {rows} rows")


def test_int4_falls_back_to_int8_for_shapes_the_kernel_cannot_take():
    layer = ReplicatedLinear(64, 8)  # 8 rows: not a multiple of 16
    _load(layer, {None: torch.randn(8, 64)})
    process_weights_after_loading(layer, "int4")
    assert isinstance(layer.quant, Int8Weight)


def test_checkpoint_int4_groups_load_exactly_into_every_kind():
    """4-bit checkpoint groups (GGUF Q4_0/Q4_1) keep their codes and scales through the weight
    loaders' slicing, and through a mix with float shards in one fused layer."""
    qkv = QKVParallelLinear(64, 16, 4, 2)
    q_blocks, k_blocks = random_blocks(64, 64, 1), random_blocks(32, 64, 2)
    v_float = torch.randn(32, 64) * 0.05
    _load(qkv, {"q": q_blocks, "k": k_blocks, "v": v_float})
    process_weights_after_loading(qkv, "int4")
    codes = qkv.quant.codes_t().t()
    assert torch.equal(codes[:64], q_blocks.codes) and torch.equal(codes[64:96], k_blocks.codes)
    weight = qkv.quant.dequantize(torch.float32)
    assert torch.allclose(weight[:64], q_blocks.dequantize(), atol=1e-6)
    assert torch.allclose(weight[64:96], k_blocks.dequantize(), atol=1e-6)
    # The float shard is quantized as any float weight would be.
    assert torch.allclose(weight[96:], quantize_groups(v_float).dequantize(), atol=1e-6)

    # Row-parallel rank 1 of 2 takes columns 32..63: whole groups, still exact.
    row = RowParallelLinear(64, 32, tp_rank=1, tp_size=2)
    blocks = random_blocks(32, 64, 3)
    _load(row, {None: blocks})
    process_weights_after_loading(row, "int4")
    assert torch.equal(row.quant.codes_t().t(), blocks.codes[:, 32:])

    # Without quantization (or under int8) the groups are dequantized into the float weight.
    plain = ColumnParallelLinear(64, 32)
    blocks = random_blocks(32, 64, 4)
    _load(plain, {None: blocks})
    process_weights_after_loading(plain, None)
    assert torch.allclose(plain.weight, blocks.dequantize(), atol=1e-6)


@pytest.mark.parametrize("tied", [True, False])
def test_lm_head_and_embedding(tied):
    vocab, dim = 160, 64
    embed = VocabParallelEmbedding(vocab, dim)
    head = ParallelLMHead(vocab, dim, tied_to=embed if tied else None)
    table = torch.randn(vocab, dim) * 0.05
    embed.weight.weight_loader(embed.weight, table)
    if not tied:
        head.weight.weight_loader(head.weight, table * 2)
    module = torch.nn.ModuleDict({"embed": embed, "head": head})
    process_weights_after_loading(module, "int4")
    assert embed.weight is None and head.weight is None
    assert isinstance(embed.quant, Int8Weight) and isinstance(head.quant, Int8Weight)
    assert (embed.quant is head.quant) == tied  # a tied pair shares one quantized weight
    ids = torch.tensor([0, 5, 159, 5])
    assert torch.equal(embed(ids), embed.quant.dequantize()[ids])
    for rows in ROWS:
        hidden = torch.randn(rows, dim)
        assert_matches(head.compute_logits(hidden), hidden, head.quant.dequantize(torch.float32))


def test_cli_flag_reaches_the_engine_config():
    import argparse

    from pagedllm.engine.arg_utils import add_engine_args, engine_config_from_args

    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    assert engine_config_from_args(parser.parse_args(["--quantization", "int4"])).quantization == "int4"
    assert engine_config_from_args(parser.parse_args([])).quantization is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--quantization", "fp8"])


def test_schemes_and_config_validation():
    assert scheme_for(None) is None and scheme_for("none") is None
    assert SCHEMES["int4"].linear == "int4"
    with pytest.raises(ValueError, match="int8, int4"):
        scheme_for("fp8")
    assert EngineConfig(quantization="int4").quantization == "int4"
    with pytest.raises(
        ConfigError, match="quantization must be one of none, int8, int4, int4-g128; got 'q4'"
    ):
        EngineConfig(quantization="q4")


def test_group_sizes_and_regrouping():
    """A scheme's group is the largest of 128, 64, 32 (up to its own) dividing K; larger groups
    split into smaller ones exactly (what the Triton kernels, which take 32, are given)."""
    assert [int4.group_size_for(k, 128) for k in (2048, 576, 96, 8192)] == [128, 64, 32, 128]
    assert int4.group_size_for(2048) == 32
    with pytest.raises(ValueError, match="32, 64, 128"):
        int4.group_size_for(2048, 256)
    weight = torch.randn(48, 256) * 0.05
    blocks = quantize_groups(weight, 128)
    assert blocks.scale.shape == (48, 2)
    split = blocks.regroup(32)
    assert split.group_size == 32 and split.scale.shape == (48, 8)
    assert torch.equal(split.dequantize(), blocks.dequantize())
    with pytest.raises(ValueError, match="regroup"):
        quantize_groups(weight, 32).regroup(64)


@pytest.mark.parametrize("group", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_weight_in_larger_groups(group, dtype):
    """The portable format takes groups of 64 and 128 (torch's fused op and the dequantize
    path), and rounds a weight closer than 4 bits' half step."""
    weight = torch.randn(80, 256) * 0.05
    blocks = quantize_groups(weight, group)
    q = Int4Weight(blocks, dtype)
    assert q.group_size == group and torch.equal(q.codes_t().t(), blocks.codes)
    tol = 0 if dtype == torch.float32 else 2e-2 * blocks.zero.abs().max().item()
    assert (q.dequantize(torch.float32) - blocks.dequantize()).abs().max() <= tol + 1e-6
    step = (blocks.scale.max() / 2).item()
    assert (blocks.dequantize() - weight).abs().max() <= step + 1e-6
    for rows in ROWS:
        x = torch.randn(rows, 256).to(dtype)
        assert_matches(q.linear(x), x, q.dequantize(torch.float32), label=f"int4 group {group}, {rows} rows")
