"""Mixture-of-experts feed-forward: top-k routing over SwiGLU experts kept as stacked tensors.

Routing: softmax over the router logits (in float32), keep the top k experts per token and,
where the config says so, renormalise their weights to sum to 1.

Experts run grouped, not per token: the step's (token, expert) pairs are sorted by expert, so
each expert with work runs once, on one contiguous slice of rows; the weighted rows are then
added back to their tokens with a single index_add. The Python loop is over experts only.

    pairs (token, expert):  (0,2) (0,0) (1,2) (1,1)      sorted by expert:  (0,0) | (1,1) | (0,2) (1,2)
                                                         expert 0 runs on [x0], 1 on [x1], 2 on [x0, x1]

Tensor parallelism: every rank holds every expert with its intermediate dimension split, the
gate/up half column-wise and the down projection row-wise; partial outputs are summed over ranks.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.model.layers.activation import SiluAndMul
from pagedllm.model.layers.parallel import all_reduce, divide, new_parameter

# Per-expert checkpoint projection -> (stacked parameter, part): part 0/1 are the gate/up halves of
# w13, "down" is w2. Mixtral names them w1/w3/w2, Qwen-MoE gate_proj/up_proj/down_proj.
_EXPERT_PARTS = {
    "w1": ("w13_weight", 0),
    "gate_proj": ("w13_weight", 0),
    "w3": ("w13_weight", 1),
    "up_proj": ("w13_weight", 1),
    "w2": ("w2_weight", "down"),
    "down_proj": ("w2_weight", "down"),
}
# Already stacked over experts, as transformers 5 holds them in memory: [E, 2I, H] and [E, H, I].
_STACKED_EXPERTS = {"gate_up_proj": "w13_weight", "down_proj": "w2_weight"}
_PER_EXPERT = re.compile(r"^(.*\.experts)\.(\d+)\.(\w+)\.weight$")
_ALL_EXPERTS = re.compile(r"^(.*\.experts)\.(gate_up_proj|down_proj)$")


def expert_param_name(name: str) -> tuple[str, object] | None:
    """(parameter, shard id) for an expert weight of a checkpoint, or None if `name` is not one."""
    if match := _PER_EXPERT.match(name):
        prefix, expert, proj = match.groups()
        if proj in _EXPERT_PARTS:
            param, part = _EXPERT_PARTS[proj]
            return f"{prefix}.{param}", (int(expert), part)
    if match := _ALL_EXPERTS.match(name):
        prefix, proj = match.groups()
        return f"{prefix}.{_STACKED_EXPERTS[proj]}", None
    return None


class FusedMoE(nn.Module):
    """`num_experts` SwiGLU experts, `w13_weight [E, 2I, H]` (gate; up) and `w2_weight [E, H, I]`.

    forward(hidden [T, H], router_logits [T, E]) -> [T, H]: the routed experts' outputs, weighted.
    """

    # Tokens are grouped per expert with counts read back to the host each step (a
    # synchronisation a CUDA graph cannot record).
    cuda_graph_safe = False

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        intermediate_size: int,
        renormalize: bool,
        tp_rank: int = 0,
        tp_size: int = 1,
        hidden_act: str = "silu",
    ):
        super().__init__()
        if hidden_act != "silu":
            raise ValueError(f"MoE experts support hidden_act 'silu' only, got {hidden_act!r}")
        if not 0 < top_k <= num_experts:
            raise ValueError(
                f"experts per token ({top_k}) must be in 1..{num_experts} (the number of experts)"
            )
        self.num_experts, self.top_k, self.renormalize = num_experts, top_k, renormalize
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.intermediate = divide(intermediate_size, tp_size, "expert intermediate size")
        self.w13_weight = new_parameter(num_experts, 2 * self.intermediate, hidden_size)
        self.w2_weight = new_parameter(num_experts, hidden_size, self.intermediate)
        self.w13_weight.weight_loader = self.weight_loader
        self.w2_weight.weight_loader = self.weight_loader
        self.act_fn = SiluAndMul()

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        """shard_id (expert, 0 | 1 | "down") loads one expert's gate, up or down projection;
        None loads all experts from a tensor stacked over experts."""
        if shard_id is None:
            if loaded_weight.shape[0] != self.num_experts:
                raise ValueError(
                    f"stacked experts: {loaded_weight.shape[0]} in checkpoint, {self.num_experts} here"
                )
            for expert, weight in enumerate(loaded_weight):
                if param is self.w2_weight:
                    self.weight_loader(param, weight, (expert, "down"))
                else:
                    for part, half in enumerate(weight.chunk(2)):
                        self.weight_loader(param, half, (expert, part))
            return
        expert, part = shard_id
        size = self.intermediate
        if part == "down":
            target, source = param.data[expert], loaded_weight.narrow(1, self.tp_rank * size, size)
        else:
            target = param.data[expert].narrow(0, part * size, size)
            source = loaded_weight.narrow(0, self.tp_rank * size, size)
        if target.shape != source.shape:
            raise ValueError(
                f"expert {expert} part {part}: checkpoint shard has shape {tuple(source.shape)}, "
                f"expected {tuple(target.shape)}"
            )
        target.copy_(source)

    def route(self, router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [T, k] float32, expert ids [T, k]) of each token's top-k experts."""
        probs = torch.softmax(router_logits.float(), dim=-1)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights, ids

    def forward(self, hidden: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        weights, ids = self.route(router_logits)
        flat_ids = ids.flatten()
        order = torch.argsort(flat_ids, stable=True)
        token_rows = order // self.top_k  # the token of each (token, expert) pair, in expert order
        counts = torch.bincount(flat_ids, minlength=self.num_experts).tolist()
        rows = hidden[token_rows]
        outputs = torch.empty_like(rows)
        start = 0
        for expert, count in enumerate(counts):
            if count:
                outputs[start : start + count] = self.expert_forward(expert, rows[start : start + count])
                start += count
        outputs *= weights.flatten()[order, None].to(outputs.dtype)
        combined = torch.zeros_like(hidden).index_add_(0, token_rows, outputs)
        return all_reduce(combined, self.tp_size)

    def expert_forward(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        """One expert's SwiGLU over the rows routed to it."""
        return F.linear(self.act_fn(F.linear(x, self.w13_weight[expert])), self.w2_weight[expert])
