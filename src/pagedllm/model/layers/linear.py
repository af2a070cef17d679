"""Linear layers sharded for tensor parallelism, each loading its own shard of a checkpoint.

Column-parallel layers split the output features over ranks (each rank computes a slice of
the outputs); row-parallel layers split the input features and sum the partial products.
A transformer block pairs them (QKV or gate/up column-parallel, o_proj or down row-parallel)
so only one all-reduce per pair is needed. Every parameter carries a
`weight_loader(param, loaded_weight, shard_id=None)` that copies the rank's slice of a full
checkpoint tensor into place. A checkpoint weight may also arrive as 4-bit groups
(`Int4Blocks`, GGUF Q4_0/Q4_1 under `--quantization int4`): the same slicing applies, and the
groups are kept aside (`Int4Staging`) until `process_weights_after_loading` quantizes the layer
(see `quantization/`); from then on `forward` runs the quantized matmul and `weight` is None.
Unquantized weights take the platform's format there (`LayerOps.pack_float_weight`) or keep
their float weight and the platform's dense matmul (`LayerOps.dense_linear`), chosen once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.model.layers.direct_call import DirectCall
from pagedllm.model.layers.layer_ops import NATIVE, LayerOps
from pagedllm.model.layers.parallel import all_reduce, divide, new_parameter
from pagedllm.model.layers.quantization import QuantScheme, SharedWeights, quantize_weight
from pagedllm.model.layers.quantization.int4_blocks import Int4Blocks, Int4Staging
from pagedllm.ops.weight_spec import WeightSpec

Checkpoint = torch.Tensor | Int4Blocks


def _copy_checked(target: torch.Tensor, source: torch.Tensor, name: str) -> None:
    if target.shape != source.shape:
        raise ValueError(
            f"{name}: checkpoint shard has shape {tuple(source.shape)}, expected {tuple(target.shape)}"
        )
    target.copy_(source)


def _narrow(loaded: Checkpoint, dim: int, start: int, length: int) -> Checkpoint:
    """A slice of a checkpoint tensor; 4-bit groups cut inside a group are dequantized first."""
    if isinstance(loaded, Int4Blocks) and not loaded.can_narrow(dim, start, length):
        loaded = loaded.dequantize()
    return loaded.narrow(dim, start, length)


class LinearBase(DirectCall, nn.Module):
    """Holds `weight [out, in]` and optional `bias [out]` with their weight loaders."""

    def __init__(self, input_size: int, output_size: int, bias: bool, tp_rank: int, tp_size: int):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.input_size, self.output_size = input_size, output_size
        self.weight = new_parameter(output_size, input_size)
        self.weight.weight_loader = self.weight_loader
        self.bias = None
        if bias:
            self.bias = new_parameter(output_size)
            self.bias.weight_loader = self.weight_loader
        self.quant: nn.Module | None = None  # the weight in a quantized or platform format
        self.dense_linear = F.linear  # the matmul of a float weight (the platform's, once loaded)
        self._int4_staging: Int4Staging | None = None

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        raise NotImplementedError

    def _load(
        self, param: nn.Parameter, source: Checkpoint, name: str, offset: int = 0, size: int | None = None
    ) -> None:
        """Copy a (sliced) checkpoint tensor into `param`, or into its rows offset..offset+size."""
        target = param.data if size is None else param.data.narrow(0, offset, size)
        if isinstance(source, Int4Blocks):
            if param is self.weight and source.shape == target.shape:
                if self._int4_staging is None:
                    rows, cols = param.shape
                    self._int4_staging = Int4Staging(rows, cols, source.group_size, param.device)
                if self._int4_staging.accepts(source, 0, offset):
                    self._int4_staging.store(source, 0, offset)
                    return
            source = source.dequantize()
        _copy_checked(target, source, name)

    def process_weights_after_loading(
        self, scheme: QuantScheme | None, shared: SharedWeights, layer_ops: LayerOps = NATIVE
    ) -> None:
        """Quantize the weight as `scheme` says (None: keep floats, taking in any 4-bit groups,
        in the platform's format if it has one)."""
        staging, self._int4_staging = self._int4_staging, None
        if scheme is None:
            if staging is not None:
                staging.write_into(self.weight.data)
            platform_weight = layer_ops.pack_float_weight(self.weight)
            if platform_weight is not None:
                self.quant = platform_weight
                self.weight = None
            else:
                self.dense_linear = layer_ops.dense_linear
            return
        self.quant = quantize_weight(
            scheme.linear, self.weight, staging, shared, layer_ops, scheme.int4_group_size
        )
        self.weight = None

    def weight_spec(self) -> WeightSpec | None:
        """The weight as a step compiler may take it (see ops/weight_spec.py); None for formats
        no compiled step takes (int8, torch's 4-bit layout)."""
        if self.quant is None:
            return WeightSpec(kind="plain", tensor=self.weight)
        describe = getattr(self.quant, "weight_spec", None)
        return None if describe is None else describe()

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W^T without the bias."""
        if self.quant is not None:
            return self.quant.linear(x)
        return self.dense_linear(x, self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant is not None:
            return self.quant.linear(x, self.bias)
        return self.dense_linear(x, self.weight, self.bias)


class ColumnParallelLinear(LinearBase):
    """y = x W^T + b with W's rows (output features) split across ranks; output stays sharded."""

    def __init__(
        self, input_size: int, output_size: int, bias: bool = False, tp_rank: int = 0, tp_size: int = 1
    ):
        super().__init__(input_size, divide(output_size, tp_size, "output size"), bias, tp_rank, tp_size)

    def weight_loader(self, param: nn.Parameter, loaded_weight: Checkpoint, shard_id=None) -> None:
        rows = param.shape[0]
        self._load(param, _narrow(loaded_weight, 0, self.tp_rank * rows, rows), "column-parallel weight")


class RowParallelLinear(LinearBase):
    """y = sum over ranks of x_r W_r^T, with W's columns (input features) split; the bias is added once."""

    def __init__(
        self, input_size: int, output_size: int, bias: bool = False, tp_rank: int = 0, tp_size: int = 1
    ):
        super().__init__(divide(input_size, tp_size, "input size"), output_size, bias, tp_rank, tp_size)

    def weight_loader(self, param: nn.Parameter, loaded_weight: Checkpoint, shard_id=None) -> None:
        if param.dim() == 1:  # the bias is not split
            self._load(param, loaded_weight, "row-parallel bias")
            return
        cols = param.shape[1]
        self._load(param, _narrow(loaded_weight, 1, self.tp_rank * cols, cols), "row-parallel weight")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = all_reduce(self._matmul(x), self.tp_size)
        # Added after the reduction so it counts once, not tp_size times.
        return out if self.bias is None else out + self.bias


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of one input fused into one matmul (gate/up: shard ids 0, 1)."""

    def __init__(
        self, input_size: int, output_sizes: list[int], bias: bool = False, tp_rank: int = 0, tp_size: int = 1
    ):
        super().__init__(input_size, sum(output_sizes), bias, tp_rank, tp_size)
        self.output_sizes = [divide(size, tp_size, "output size") for size in output_sizes]

    def weight_loader(self, param: nn.Parameter, loaded_weight: Checkpoint, shard_id=None) -> None:
        if shard_id is None:  # an already fused checkpoint tensor: split it into its parts
            for index, part in enumerate(loaded_weight.split([s * self.tp_size for s in self.output_sizes])):
                self.weight_loader(param, part, index)
            return
        size = self.output_sizes[shard_id]
        offset = sum(self.output_sizes[:shard_id])
        source = _narrow(loaded_weight, 0, self.tp_rank * size, size)
        self._load(param, source, f"merged shard {shard_id}", offset, size)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections fused (shard ids 'q', 'k', 'v'), heads split across ranks.

    When there are fewer KV heads than ranks, each KV head is replicated on
    `tp_size // num_kv_heads` consecutive ranks.
    """

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool = False,
        tp_rank: int = 0,
        tp_size: int = 1,
    ):
        heads = divide(num_heads, tp_size, "number of attention heads")
        if num_kv_heads >= tp_size:
            kv_heads, kv_replicas = divide(num_kv_heads, tp_size, "number of KV heads"), 1
        else:
            kv_heads, kv_replicas = 1, divide(tp_size, num_kv_heads, "tensor-parallel size over KV heads")
        super().__init__(hidden_size, (heads + 2 * kv_heads) * head_dim * tp_size, bias, tp_rank, tp_size)
        self.head_dim, self.num_heads, self.num_kv_heads, self.kv_replicas = (
            head_dim,
            heads,
            kv_heads,
            kv_replicas,
        )
        self.q_size = heads * head_dim
        self.kv_size = kv_heads * head_dim

    def weight_loader(self, param: nn.Parameter, loaded_weight: Checkpoint, shard_id=None) -> None:
        if shard_id is None:  # a fused checkpoint qkv tensor
            full_kv = self.kv_size * self.tp_size // self.kv_replicas
            q, k, v = loaded_weight.split([self.q_size * self.tp_size, full_kv, full_kv])
            for part, name in ((q, "q"), (k, "k"), (v, "v")):
                self.weight_loader(param, part, name)
            return
        offset, size, source_rank = self._shard_layout(shard_id)
        source = _narrow(loaded_weight, 0, source_rank * size, size)
        self._load(param, source, f"qkv shard {shard_id!r}", offset, size)

    def _shard_layout(self, shard_id: str) -> tuple[int, int, int]:
        """(offset in the fused rows, rows, which slice of the checkpoint tensor) for one shard."""
        if shard_id == "q":
            return 0, self.q_size, self.tp_rank
        kv_rank = self.tp_rank // self.kv_replicas
        if shard_id == "k":
            return self.q_size, self.kv_size, kv_rank
        if shard_id == "v":
            return self.q_size + self.kv_size, self.kv_size, kv_rank
        raise ValueError(f"qkv shard id must be 'q', 'k' or 'v', got {shard_id!r}")

    def split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's q [T, heads*d], k and v [T, kv_heads*d] from the fused output."""
        return qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)


class ReplicatedLinear(LinearBase):
    """y = x W^T + b with the whole weight on every rank (small projections such as MoE routers)."""

    def __init__(
        self, input_size: int, output_size: int, bias: bool = False, tp_rank: int = 0, tp_size: int = 1
    ):
        super().__init__(input_size, output_size, bias, tp_rank, tp_size)

    def weight_loader(self, param: nn.Parameter, loaded_weight: Checkpoint, shard_id=None) -> None:
        self._load(param, loaded_weight, "replicated weight")
