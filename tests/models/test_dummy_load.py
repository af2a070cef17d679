"""`--load-format dummy`: built-in shapes and config files resolve without weights, and random
weights are seeded, on the device in the dtype, quantizable, and keep bf16 logits finite."""

from __future__ import annotations

import json

import pytest
import torch
from paged_batch import assign_blocks, bind_kv_caches, run_step

from pagedllm.model.layers.linear import LinearBase
from pagedllm.model.layers.quantization import Int8Weight
from pagedllm.model.loader.dummy_shapes import SHAPES
from pagedllm.model.loader.resolve import ModelNotFoundError, resolve_model
from pagedllm.model.model_config import ModelConfig
from pagedllm.model.model_loader import load_model
from pagedllm.model.registry import get_model_class

# Parameter counts the shapes' models publish (billions, as rounded on their model cards or
# counted from their checkpoints).
PUBLISHED_BILLIONS = {
    "smollm2-135m": 0.135,
    "llama-3.2-1b": 1.24,
    "llama-3.2-3b": 3.21,
    "llama-3.1-8b": 8.03,
    "llama-3.1-70b": 70.55,
    "mistral-7b": 7.25,
    "qwen2.5-7b": 7.62,
    "qwen3-8b": 8.19,
    "gemma-3-1b": 1.00,
    "mixtral-8x7b": 46.70,
}
BLOCK_SIZE = 4


def test_every_shape_is_listed_with_its_published_size(tmp_path):
    assert set(SHAPES) == set(PUBLISHED_BILLIONS)
    for name, billions in PUBLISHED_BILLIONS.items():
        resolved = resolve_model(name, cache_dir=tmp_path, load_format="dummy")
        assert resolved.format == "dummy" and resolved.path.is_relative_to(tmp_path / "shapes")
        config = ModelConfig.from_resolved(resolved)
        with torch.device("meta"):  # the model's structure only, no memory
            model = get_model_class(config.architecture)(config.hf_config)
        count = sum(p.numel() for p in model.parameters()) / 1e9
        assert count == pytest.approx(billions, rel=0.005), name


def test_gemma_shape_keeps_its_local_and_global_layers(tmp_path):
    config = ModelConfig.from_resolved(resolve_model("gemma-3-1b", tmp_path, "dummy"))
    assert config.sliding_windows == tuple(None if (i + 1) % 6 == 0 else 512 for i in range(26))
    assert (config.num_kv_heads, config.head_dim, config.bos_token_id) == (1, 256, 2)


def test_unknown_name_lists_the_shapes(tmp_path):
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model("llama-9-1t", tmp_path, "dummy")
    for name in SHAPES:
        assert name in str(error.value)
    # A checkpoint alias is no shape: dummy weights need a config, which it does not name.
    with pytest.raises(ModelNotFoundError, match="built-in shape"):
        resolve_model("smollm2-135m-instruct", tmp_path, "dummy")


def _tiny_config(**overrides) -> dict:
    config = dict(SHAPES["smollm2-135m"].config)
    config.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=256)
    config.update(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    config.update(overrides)
    return config


def test_config_file_and_its_folder_resolve(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_tiny_config()))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 7]}))
    for given in (tmp_path, tmp_path / "config.json"):
        resolved = resolve_model(str(given), load_format="dummy")
        assert (resolved.format, resolved.path, resolved.folder) == (
            "dummy",
            tmp_path / "config.json",
            tmp_path,
        )
        config = ModelConfig.from_resolved(resolved)
        assert (config.hidden_size, config.eos_token_ids) == (64, frozenset({0, 7}))
    # A config of another name stands alone: no companion files are read beside it.
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_tiny_config()))
    resolved = resolve_model(str(other), load_format="dummy")
    assert resolved.folder is None and ModelConfig.from_resolved(resolved).eos_token_ids == {0}


def test_a_folder_without_config_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("no config here")
    with pytest.raises(ModelNotFoundError, match="nor a folder holding config.json"):
        resolve_model(str(tmp_path), load_format="dummy")
    (tmp_path / "notes.txt").rename(tmp_path / "weights.bin")
    with pytest.raises(ModelNotFoundError, match="neither"):
        resolve_model(str(tmp_path / "weights.bin"), load_format="dummy")


def _load(config: dict, folder, dtype=torch.bfloat16, seed: int = 0, quantization=None):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    model_config = ModelConfig.from_resolved(
        resolve_model(str(folder), load_format="dummy"), quantization=quantization
    )
    return model_config, load_model(model_config, torch.device("cpu"), dtype, seed=seed)


def test_weights_are_seeded_on_the_device_in_the_dtype(tmp_path, caplog):
    config = _tiny_config()
    with caplog.at_level("INFO", logger="pagedllm.model.model_loader"):
        _, first = _load(config, tmp_path / "a", seed=5)
    assert "weights are random (load format dummy), seed 5" in caplog.text
    _, again = _load(config, tmp_path / "b", seed=5)
    _, other = _load(config, tmp_path / "c", seed=6)
    params = dict(first.named_parameters())
    assert params and all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in params.values())
    for name, param in again.named_parameters():
        assert torch.equal(param, params[name]), name
    assert not torch.equal(
        dict(other.named_parameters())["model.layers.0.mlp.down_proj.weight"],
        params["model.layers.0.mlp.down_proj.weight"],
    )
    assert torch.equal(first.model.norm.weight, torch.ones(64, dtype=torch.bfloat16))
    down = params["model.layers.1.mlp.down_proj.weight"].float()
    assert down.std().item() == pytest.approx(128**-0.5, rel=0.1)


def test_gemma_norms_store_an_offset_from_one(tmp_path):
    config = dict(SHAPES["gemma-3-1b"].config)
    config.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=256, head_dim=32)
    _, model = _load(config, tmp_path / "gemma")
    assert torch.equal(model.model.norm.weight, torch.zeros(64, dtype=torch.bfloat16))
    assert torch.equal(model.model.layers[0].self_attn.q_norm.weight, torch.zeros(32, dtype=torch.bfloat16))


def _logits(model, model_config, dtype=torch.bfloat16) -> torch.Tensor:
    prompt = torch.randint(
        0, model_config.vocab_size, (13,), generator=torch.Generator().manual_seed(1)
    ).tolist()
    tables = assign_blocks([len(prompt)], BLOCK_SIZE)
    bind_kv_caches(model, len(tables[0]), BLOCK_SIZE, dtype)
    return run_step(model, [prompt], [len(prompt)], tables, BLOCK_SIZE)[0]


def test_int8_quantization_runs_on_dummy_weights(tmp_path):
    model_config, model = _load(_tiny_config(), tmp_path / "q", quantization="int8")
    linears = [m for m in model.modules() if isinstance(m, LinearBase)]
    assert linears and all(isinstance(m.quant, Int8Weight) for m in linears)
    assert torch.isfinite(_logits(model, model_config)).all()


def _narrow(name: str, layers: int) -> dict:
    """The shape with its published layer types, rope, norms and heads' ratio, narrowed to run fast."""
    config = dict(SHAPES[name].config)
    kv = min(config["num_key_value_heads"], 2)
    config.update(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=kv)
    config.update(vocab_size=1024, num_hidden_layers=layers, bos_token_id=1, eos_token_id=2)
    if "head_dim" in config:
        config["head_dim"] = 32
    return config


@pytest.mark.parametrize(
    ("name", "layers"),
    [("llama-3.1-70b", 80), ("qwen2.5-7b", 2), ("qwen3-8b", 2), ("gemma-3-1b", 6), ("mixtral-8x7b", 2)],
)
def test_bf16_logits_stay_finite(name, layers, tmp_path):
    """Every architecture family of the shapes, and the deepest shape at its full depth."""
    model_config, model = _load(_narrow(name, layers), tmp_path / name)
    logits = _logits(model, model_config)
    assert torch.isfinite(logits).all()
    # Neither collapsed nor blown up after every layer: each row of logits has a std near 1.
    stds = logits.std(dim=-1)
    assert stds.min().item() > 0.5 and stds.max().item() < 2
