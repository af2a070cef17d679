"""The mixture-of-experts layer: routing, grouped expert passes, and the checkpoint layouts it loads."""

from __future__ import annotations

import pytest
import torch
import transformers
from paged_batch import assign_blocks, bind_kv_caches, run_step

import tiny_models
from pagedllm.model.layers.moe import FusedMoE, expert_param_name
from pagedllm.model.loader.resolve import resolve_model
from pagedllm.model.model_config import ModelConfig
from pagedllm.model.model_loader import load_model

HIDDEN, INTER, EXPERTS, TOP_K = 32, 24, 8, 2


def random_moe(renormalize: bool) -> FusedMoE:
    torch.manual_seed(0)
    moe = FusedMoE(EXPERTS, TOP_K, HIDDEN, INTER, renormalize)
    with torch.no_grad():
        moe.w13_weight.normal_(std=0.2)
        moe.w2_weight.normal_(std=0.2)
    return moe


def per_token_reference(moe: FusedMoE, hidden: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
    """The definition, one token and one chosen expert at a time."""
    probs = torch.softmax(router_logits, dim=-1)
    out = torch.zeros_like(hidden)
    for t in range(hidden.shape[0]):
        weights, ids = probs[t].topk(TOP_K)
        if moe.renormalize:
            weights = weights / weights.sum()
        for w, e in zip(weights, ids.tolist()):
            gate, up = (moe.w13_weight[e] @ hidden[t]).chunk(2)
            out[t] += w * (moe.w2_weight[e] @ (torch.nn.functional.silu(gate) * up))
    return out


@pytest.mark.parametrize("renormalize", [True, False])
def test_grouped_experts_equal_the_per_token_definition(renormalize):
    moe = random_moe(renormalize)
    hidden, logits = torch.randn(40, HIDDEN), torch.randn(40, EXPERTS)
    torch.testing.assert_close(
        moe(hidden, logits), per_token_reference(moe, hidden, logits), atol=1e-5, rtol=1e-5
    )


def test_a_batch_runs_each_expert_at_most_once(monkeypatch):
    moe = random_moe(renormalize=True)
    calls = []
    original = FusedMoE.expert_forward

    def counted(self, expert, x):
        calls.append((expert, x.shape[0]))
        return original(self, expert, x)

    monkeypatch.setattr(FusedMoE, "expert_forward", counted)
    tokens = 500
    logits = torch.randn(tokens, EXPERTS)
    logits[:, 3] = -1e4  # expert 3 is never chosen: it must not run at all
    moe(torch.randn(tokens, HIDDEN), logits)
    experts = [e for e, _ in calls]
    assert len(calls) <= EXPERTS and len(set(experts)) == len(experts) and 3 not in experts
    assert sum(rows for _, rows in calls) == tokens * TOP_K  # every (token, expert) pair, once


def test_each_layer_of_a_model_step_runs_each_expert_at_most_once(monkeypatch, tmp_path):
    folder = tiny_models.save_tiny(tiny_models.mixtral_config(), tmp_path, seed=3)
    config = ModelConfig.from_resolved(resolve_model(str(folder)))
    model = load_model(config, torch.device("cpu"), torch.float32)
    calls: dict[int, int] = {}
    original = FusedMoE.expert_forward

    def counted(self, expert, x):
        calls[id(self)] = calls.get(id(self), 0) + 1
        return original(self, expert, x)

    monkeypatch.setattr(FusedMoE, "expert_forward", counted)
    lens = [60, 45, 33]
    prompts = [list(range(3, 3 + n)) for n in lens]
    tables = assign_blocks(lens, 8)
    bind_kv_caches(model, sum(len(t) for t in tables), 8)
    run_step(model, prompts, lens, tables, 8)
    experts = config.hf_config.num_local_experts
    assert len(calls) == config.num_layers and all(n <= experts for n in calls.values())


def test_expert_names_map_to_stacked_parameters():
    mixtral = "model.layers.1.mlp.experts.5.w3.weight"
    assert expert_param_name(mixtral) == ("model.layers.1.mlp.experts.w13_weight", (5, 1))
    qwen = "model.layers.0.mlp.experts.12.down_proj.weight"
    assert expert_param_name(qwen) == ("model.layers.0.mlp.experts.w2_weight", (12, "down"))
    stacked = "model.layers.0.mlp.experts.gate_up_proj"
    assert expert_param_name(stacked) == ("model.layers.0.mlp.experts.w13_weight", None)
    assert expert_param_name("model.layers.0.mlp.shared_expert.gate_proj.weight") is None
    assert expert_param_name("model.layers.0.mlp.gate.weight") is None


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_transformers_in_memory_stacked_experts_load_the_same(kind, tmp_path):
    """transformers 5 keeps experts stacked ([E, 2I, H], [E, H, I]) under `mlp.` in memory; a
    state dict in that layout loads to the same parameters as the per-expert checkpoint on disk."""
    folder = tiny_models.save_tiny(getattr(tiny_models, f"{kind}_config")(), tmp_path, seed=4)
    config = ModelConfig.from_resolved(resolve_model(str(folder)))
    from_disk = load_model(config, torch.device("cpu"), torch.float32)
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    state = reference.state_dict()
    assert any(name.endswith("experts.gate_up_proj") for name in state)
    model_class = type(from_disk)
    with torch.device("cpu"):
        from_memory = model_class(config.hf_config)
    from_memory.load_weights(state.items())
    disk_params = dict(from_disk.named_parameters())
    for name, param in from_memory.named_parameters():
        torch.testing.assert_close(param, disk_params[name], atol=0, rtol=0, msg=name)
