"""The platform seam: the device decision made once, the switches, and layers bound once.

Bound implementations are compared with the layers' own torch references (`forward_native`,
`rotate_native`) on the same inputs: the kernels round where the eager code does, so the bits
agree (float32 RMSNorm up to summation order).
"""

from __future__ import annotations

import argparse
import logging

import pytest
import torch

import tiny_models
from pagedllm import LLM
from pagedllm.attention.backends.cpu_paged import CPUPagedBackend
from pagedllm.attention.backends.torch_ref import TorchReferenceBackend
from pagedllm.config import ConfigError, EngineConfig
from pagedllm.engine.arg_utils import add_engine_args, engine_config_from_args
from pagedllm.model.layers.activation import SiluAndMul
from pagedllm.model.layers.custom_op import CustomOp, bind_layer_ops
from pagedllm.model.layers.layer_ops import NATIVE
from pagedllm.model.layers.norm import GemmaRMSNorm, RMSNorm
from pagedllm.model.layers.quantization.int4 import quantize_groups
from pagedllm.model.layers.rotary import get_rope
from pagedllm.ops import cpu_kernels, int4_gemv, int8_gemv
from pagedllm.ops.linear import AMX_SKINNY_MAX_ROWS, SKINNY_MAX_ROWS
from pagedllm.ops.onednn_linear import OneDnnBF16Weight, onednn_available
from pagedllm.platforms import CpuPlatform, PlatformOptions, resolve_platform
from pagedllm.platforms import cpu as cpu_platform

kernels = pytest.mark.skipif(not cpu_kernels.available(), reason="CPU kernels not built")
SWITCH_ENVS = (
    "PAGEDLLM_CPU_KERNELS",
    "PAGEDLLM_PACKED_WEIGHTS",
    "PAGEDLLM_ONEDNN_WEIGHTS",
    "PAGEDLLM_DECODER_STACK",
    "PAGEDLLM_ATTENTION_BACKEND",
    "PAGEDLLM_HUGE_PAGES",
)


@pytest.fixture
def clean_env(monkeypatch):
    for name in SWITCH_ENVS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_cli_flags_become_config_fields_and_env_overrides_them(clean_env):
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    defaults = engine_config_from_args(parser.parse_args([]))
    assert (defaults.cpu_kernels, defaults.packed_weights, defaults.step_compiler) == (True, None, True)
    forced = engine_config_from_args(parser.parse_args(["--packed-weights"]))
    assert forced.packed_weights is True
    assert engine_config_from_args(parser.parse_args(["--onednn-weights"])).onednn_weights is True
    off = engine_config_from_args(
        parser.parse_args(["--no-cpu-kernels", "--no-packed-weights", "--no-step-compiler"])
    )
    assert (off.cpu_kernels, off.packed_weights, off.step_compiler) == (False, False, False)
    assert resolve_platform(off).options == PlatformOptions(False, False, False)
    assert engine_config_from_args(parser.parse_args([])).huge_pages is True
    no_huge = engine_config_from_args(parser.parse_args(["--no-huge-pages"]))
    assert no_huge.huge_pages is False and resolve_platform(no_huge).options.huge_pages is False
    clean_env.setenv("PAGEDLLM_HUGE_PAGES", "0")
    assert resolve_platform(EngineConfig()).options.huge_pages is False
    clean_env.setenv("PAGEDLLM_PACKED_WEIGHTS", "0")
    clean_env.setenv("PAGEDLLM_DECODER_STACK", "1")
    options = resolve_platform(EngineConfig(step_compiler=False)).options
    assert (options.cpu_kernels, options.packed_weights, options.step_compiler) == (True, False, True)


def test_cpu_is_chosen_here_and_cuda_refused_without_a_gpu(clean_env):
    platform = resolve_platform(EngineConfig())
    if not torch.cuda.is_available():
        assert isinstance(platform, CpuPlatform) and platform.device.type == "cpu"
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_platform(EngineConfig(device="cuda"))
    assert platform.select_dtype("float32") == torch.float32


def test_pure_torch_path_has_no_platform_pieces(clean_env):
    platform = resolve_platform(EngineConfig(device="cpu", cpu_kernels=False))
    assert platform.layer_ops(torch.bfloat16) is NATIVE
    assert isinstance(platform.attention_backend(), TorchReferenceBackend)
    assert platform.sample_kernel() is None and platform.step_compiler(torch.bfloat16) is None
    assert "kernels off" in platform.describe(torch.bfloat16, None)


@kernels
def test_kernel_platform_pieces(clean_env):
    platform = resolve_platform(EngineConfig(device="cpu"))
    assert isinstance(platform.attention_backend(), CPUPagedBackend)
    ops = platform.layer_ops(torch.bfloat16)
    assert set(ops.layer_impls) == {"rms_norm", "silu_and_mul", "rotary_embedding"}
    assert platform.sample_kernel() is not None and platform.step_compiler(torch.bfloat16) is not None
    no_packing = resolve_platform(EngineConfig(device="cpu", packed_weights=False)).layer_ops(torch.bfloat16)
    assert no_packing.pack_float_weight(torch.zeros(64, 64, dtype=torch.bfloat16)) is None


@kernels
@pytest.mark.parametrize("amx,tiles", [(False, False), (True, False), (True, True)])
def test_weight_packing_defaults_off_only_on_amx_cpus_without_the_tile_kernel(clean_env, amx, tiles):
    """Unset, the platform packs bf16 weights unless the CPU has AMX and the loaded build cannot
    multiply the panels on its tiles (oneDNN's bf16 matmul does there); set, the user's choice
    holds either way."""
    clean_env.setattr(cpu_platform, "cpu_has_amx_bf16", lambda: amx)
    clean_env.setattr(cpu_platform.cpu_kernels, "amx_tiles", lambda: tiles)
    weight = torch.zeros(64, 64, dtype=torch.bfloat16)
    if cpu_kernels.instruction_set() not in ("avx512_bf16", "avx2"):
        pytest.skip("this build has no vector matmul kernels")
    skinny_rows = AMX_SKINNY_MAX_ROWS if amx else SKINNY_MAX_ROWS
    quant_rows = (
        (
            int8_gemv.AMX_TILE_MAX_ROWS if tiles else int8_gemv.AMX_GEMV_MAX_ROWS,
            int4_gemv.AMX_TILE_MAX_ROWS if tiles else int4_gemv.AMX_GEMV_MAX_ROWS,
        )
        if amx
        else (int8_gemv.GEMV_MAX_ROWS, int4_gemv.GEMV_MAX_ROWS)
    )
    for configured, packs in ((None, not amx or tiles), (True, True), (False, False)):
        platform = resolve_platform(EngineConfig(device="cpu", packed_weights=configured))
        ops = platform.layer_ops(torch.bfloat16)
        assert (ops.pack_float_weight(weight) is not None) == packs, (configured, amx)
        # Plain weights take the skinny kernel up to the CPU's limit, in the layers and the stack.
        assert ops.dense_linear.skinny_max_rows == skinny_rows
        assert platform.step_compiler(torch.bfloat16).skinny_max_rows == skinny_rows
        # So do int8 and 4-bit weights their kernels (beyond: dequantize + oneDNN's matmul).
        int8_weight = ops.int8_weight(torch.randn(32, 64).to(torch.bfloat16))
        assert int8_weight.fused_rows == int8_weight.weight_spec().max_rows == quant_rows[0]
        int4_weight = ops.int4_weight(quantize_groups(torch.randn(32, 64), 32), torch.bfloat16)
        assert int4_weight.fused_rows == int4_weight.weight_spec().max_rows == quant_rows[1]
    clean_env.setenv("PAGEDLLM_PACKED_WEIGHTS", "1")
    assert resolve_platform(EngineConfig(device="cpu")).options.packed_weights is True


def test_onednn_weights_are_opt_in(clean_env):
    """`onednn_weights` (or PAGEDLLM_ONEDNN_WEIGHTS=1) packs bf16 weights for oneDNN's matmul."""
    if cpu_kernels.instruction_set() not in ("avx512_bf16", "avx2") or not onednn_available():
        pytest.skip("this build has no vector matmul kernels, or torch no oneDNN bf16 matmul")
    weight = torch.zeros(64, 64, dtype=torch.bfloat16)
    default = resolve_platform(EngineConfig(device="cpu")).layer_ops(torch.bfloat16)
    assert not isinstance(default.pack_float_weight(weight), OneDnnBF16Weight)
    platform = resolve_platform(EngineConfig(device="cpu", onednn_weights=True))
    ops = platform.layer_ops(torch.bfloat16)
    assert isinstance(ops.pack_float_weight(weight), OneDnnBF16Weight)
    assert platform.weight_packing_label(ops) == "oneDNN's layout"
    clean_env.setenv("PAGEDLLM_ONEDNN_WEIGHTS", "1")
    assert resolve_platform(EngineConfig(device="cpu")).options.onednn_weights is True


def _bind(layer: CustomOp) -> CustomOp:
    ops = resolve_platform(EngineConfig(device="cpu")).layer_ops(torch.bfloat16)
    bind_layer_ops(layer, ops.layer_impls, ops.name)
    return layer


@kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bound_norm_and_activation_match_their_references(dtype):
    torch.manual_seed(0)
    norm = RMSNorm(576, 1e-5).to(dtype)
    norm.weight.data = (torch.rand(576) + 0.5).to(dtype)
    _bind(norm)
    assert norm.implementation == "cpu"
    x, residual = torch.randn(9, 576).to(dtype), torch.randn(9, 576).to(dtype)
    close = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0, "rtol": 1e-2}
    torch.testing.assert_close(norm(x), norm.forward_native(x), **close)
    ref_out, ref_res = norm.forward_native(x.clone(), residual.clone())
    out, res = norm(x.clone(), residual.clone())  # in place in the inputs
    torch.testing.assert_close(res, ref_res, atol=0, rtol=0)
    torch.testing.assert_close(out, ref_out, **close)
    # A strided input is outside the kernel's preconditions: the reference answers.
    strided = torch.randn(9, 1152).to(dtype)[:, ::2]
    assert torch.equal(norm(strided), norm.forward_native(strided))

    act = _bind(SiluAndMul())
    assert act.implementation == "cpu"
    gate_up = torch.randn(9, 256).to(dtype)
    ulp = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    torch.testing.assert_close(act(gate_up), act.forward_native(gate_up), **ulp)


@kernels
def test_bound_rotary_matches_its_reference_and_gemma_norm_stays_native():
    torch.manual_seed(1)
    rope = _bind(get_rope(64, 256, 10000.0))
    assert rope.implementation == "cpu"
    positions = torch.randint(0, 256, (7,))
    x = torch.randn(7, 3 * 64).to(torch.bfloat16)
    assert torch.equal(rope.rotate(positions, x.clone()), rope.rotate_native(positions, x.clone()))
    gemma = _bind(GemmaRMSNorm(64))
    assert gemma.implementation == "native" and gemma.fusion_spec() is None


def test_engine_logs_one_platform_line(tmp_path, clean_env, caplog):
    path = tiny_models.save_tiny(tiny_models.llama_config(), tmp_path / "tiny")
    with caplog.at_level(logging.INFO, logger="pagedllm.worker.model_runner"):
        llm = LLM(str(path), dtype="float32", num_kv_blocks=16, cpu_kernels=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("platform ")]
    assert lines == [
        "platform cpu (cpu): dtype float32, attention torch, kernels off (torch reference), "
        "weight packing off, step compiler off"
    ]
    runner = llm.engine.engine_core.executor.runner
    norms = [m for m in runner.model.modules() if isinstance(m, RMSNorm)]
    assert norms and all(m.implementation == "native" for m in norms)


def test_attention_backend_flag_env_and_choice_on_cpu(clean_env):
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    config = engine_config_from_args(parser.parse_args(["--attention-backend", "torch", "--device", "cpu"]))
    assert config.attention_backend == "torch"
    assert isinstance(resolve_platform(config).attention_backend(), TorchReferenceBackend)
    # The environment overrides the flag; an unknown name is refused with the choices.
    clean_env.setenv("PAGEDLLM_ATTENTION_BACKEND", "triton")
    assert resolve_platform(config).options.attention_backend == "triton"
    clean_env.setenv("PAGEDLLM_ATTENTION_BACKEND", "flash")
    with pytest.raises(ConfigError, match="auto, torch, cpu, triton"):
        resolve_platform(config)
    clean_env.delenv("PAGEDLLM_ATTENTION_BACKEND")
    with pytest.raises(ConfigError, match="attention_backend must be one of"):
        EngineConfig(attention_backend="flash")
    # The compiled CPU backend needs the kernels.
    no_kernels = resolve_platform(EngineConfig(device="cpu", cpu_kernels=False, attention_backend="cpu"))
    with pytest.raises(ConfigError, match="needs the compiled CPU kernels"):
        no_kernels.attention_backend()


def test_triton_backend_on_cpu_runs_only_under_the_interpreter(tmp_path, clean_env):
    pytest.importorskip("triton")
    from pagedllm.attention.backends.triton_paged import TritonPagedBackend

    platform = resolve_platform(EngineConfig(device="cpu", attention_backend="triton"))
    assert isinstance(platform.attention_backend(), TritonPagedBackend)  # the suite sets TRITON_INTERPRET=1
    assert "attention triton" in platform.describe(torch.float32, None)
    clean_env.delenv("TRITON_INTERPRET")
    path = tiny_models.save_tiny(tiny_models.llama_config(), tmp_path / "tiny")
    with pytest.raises(ConfigError, match="set TRITON_INTERPRET=1"):
        LLM(str(path), dtype="float32", num_kv_blocks=16, attention_backend="triton")
