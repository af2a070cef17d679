"""Vocabulary-parallel token embedding and LM head.

Each rank holds a contiguous slice of `ceil(vocab / tp_size)` rows; the last slice is padded
with zero rows. Embedding lookups outside a rank's slice contribute zeros and the ranks' results
are summed; LM head logits are gathered across ranks and the padding is cut off.

Under `--quantization` the embedding keeps int8 rows (a lookup dequantizes only the gathered
rows) and the LM head runs a quantized logits matmul; a tied pair shares one quantized weight
(see `quantization/`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.model.layers.direct_call import DirectCall
from pagedllm.model.layers.layer_ops import NATIVE, LayerOps
from pagedllm.model.layers.parallel import all_gather_last_dim, all_reduce, new_parameter
from pagedllm.model.layers.quantization import QuantScheme, SharedWeights, quantize_weight
from pagedllm.model.layers.quantization.int4_blocks import Int4Blocks


class VocabParallelEmbedding(DirectCall, nn.Module):
    """Token id -> embedding row, with the vocabulary split over tensor-parallel ranks."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        tp_rank: int = 0,
        tp_size: int = 1,
        weight: nn.Parameter | None = None,
    ):
        super().__init__()
        self.vocab_size, self.embedding_dim = vocab_size, embedding_dim
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.rows_per_rank = -(-vocab_size // tp_size)
        self.vocab_start = tp_rank * self.rows_per_rank
        self.vocab_end = min(self.vocab_start + self.rows_per_rank, vocab_size)
        if weight is None:
            weight = new_parameter(self.rows_per_rank, embedding_dim)
            weight.weight_loader = self.weight_loader
        self.weight = weight
        self.quant: nn.Module | None = None  # the quantized weight, once processed

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        if isinstance(loaded_weight, Int4Blocks):
            loaded_weight = loaded_weight.dequantize()
        if loaded_weight.shape != (self.vocab_size, self.embedding_dim):
            raise ValueError(
                f"embedding checkpoint shape {tuple(loaded_weight.shape)} != "
                f"(vocab {self.vocab_size}, dim {self.embedding_dim})"
            )
        rows = self.vocab_end - self.vocab_start
        param.data[:rows].copy_(loaded_weight[self.vocab_start : self.vocab_end])
        param.data[rows:].zero_()

    def process_weights_after_loading(
        self, scheme: QuantScheme | None, shared: SharedWeights, layer_ops: LayerOps = NATIVE
    ) -> None:
        """Quantize the table as `scheme` says (None: keep it as it is)."""
        if scheme is not None:
            self.quant = quantize_weight(self._quant_format(scheme), self.weight, None, shared, layer_ops)
            self.weight = None

    def _quant_format(self, scheme: QuantScheme) -> str:
        return scheme.embedding

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self.quant is not None:
            return self.quant.embed(ids)
        return F.embedding(ids, self.weight)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return self._lookup(input_ids)
        local = input_ids - self.vocab_start
        outside = (input_ids < self.vocab_start) | (input_ids >= self.vocab_end)
        embedded = self._lookup(local.masked_fill(outside, 0))
        embedded.masked_fill_(outside[:, None], 0)
        return all_reduce(embedded, self.tp_size)


class ParallelLMHead(VocabParallelEmbedding):
    """Hidden states -> logits over the full vocabulary; may share its weight with the embedding."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        tp_rank: int = 0,
        tp_size: int = 1,
        tied_to: VocabParallelEmbedding | None = None,
    ):
        # Tied word embeddings: share the embedding's parameter instead of allocating a copy.
        weight = tied_to.weight if tied_to is not None else None
        super().__init__(vocab_size, embedding_dim, tp_rank, tp_size, weight)
        # A plain list so the embedding is not registered a second time as a submodule.
        self._tied_to = [tied_to] if tied_to is not None else []
        self.dense_linear = F.linear  # the logits matmul of a float table (the platform's, once loaded)

    def process_weights_after_loading(
        self, scheme: QuantScheme | None, shared: SharedWeights, layer_ops: LayerOps = NATIVE
    ) -> None:
        """As the embedding's; with no scheme, the table takes the platform's format if it has one
        (a tied embedding then looks its rows up in that table), else the platform's matmul."""
        if scheme is not None or self.weight is None:
            super().process_weights_after_loading(scheme, shared, layer_ops)
            return
        platform_weight = layer_ops.pack_float_weight(self.weight)
        if platform_weight is not None and self._tied_to and not hasattr(platform_weight, "embed"):
            platform_weight = None  # a format whose rows cannot be looked up keeps a tied table plain
        if platform_weight is None:
            self.dense_linear = layer_ops.dense_linear
            return
        self.quant = platform_weight
        self.weight = None
        for embedding in self._tied_to:
            embedding.quant = self.quant
            embedding.weight = None

    def _quant_format(self, scheme: QuantScheme) -> str:
        return scheme.lm_head

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] in the weight's dtype (callers upcast as they need)."""
        local = self.dense_linear(hidden, self.weight) if self.quant is None else self.quant.linear(hidden)
        logits = all_gather_last_dim(local, self.tp_size)
        return logits[..., : self.vocab_size]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.compute_logits(hidden)
