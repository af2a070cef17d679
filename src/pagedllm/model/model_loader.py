"""Building a model and loading its weights (the checkpoint readers are in loader/)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from pagedllm.model.layers.custom_op import bind_layer_ops
from pagedllm.model.layers.layer_ops import NATIVE, LayerOps
from pagedllm.model.layers.quantization import process_weights_after_loading, quantized_nbytes, scheme_for
from pagedllm.model.loader.dummy_weights import initialize_dummy_weights
from pagedllm.model.loader.weights import iterate_weights
from pagedllm.model.model_config import ModelConfig
from pagedllm.model.registry import get_model_class

logger = logging.getLogger(__name__)


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@torch.no_grad()
def load_model(
    model_config: ModelConfig,
    device: torch.device | str,
    dtype: torch.dtype,
    tp_rank: int = 0,
    tp_size: int = 1,
    layer_ops: LayerOps = NATIVE,
    seed: int = 0,
) -> nn.Module:
    """Build the model for `model_config` on `device` in `dtype`, load its weights, quantize them
    (`model_config.quantization`), and set eval mode.

    Parameters are allocated uninitialised on the target device and filled straight from the
    checkpoint, one tensor at a time, so peak memory is the model plus one checkpoint tensor
    (plus, under int4, the 4-bit groups a GGUF file already holds); then each quantized layer
    replaces its float weight once (`process_weights_after_loading`), in the formats of the
    platform's `layer_ops`, whose layer implementations are then bound (see layers/custom_op.py).

    A model resolved with the dummy load format has no checkpoint: its parameters are filled
    in place with random values drawn from `seed` (loader/dummy_weights.py) instead.
    """
    model_class = get_model_class(model_config.architecture)
    scheme = scheme_for(model_config.quantization)
    with _default_dtype(dtype), torch.device(device):
        model = model_class(model_config.hf_config, tp_rank=tp_rank, tp_size=tp_size)
    if model_config.resolved.format == "dummy":
        initialize_dummy_weights(model, seed)
        logger.info("weights are random (load format dummy), seed %d", seed)
    else:
        int4_blocks = scheme is not None and scheme.linear == "int4"
        model.load_weights(iterate_weights(model_config.resolved, int4_blocks))
    process_weights_after_loading(model, model_config.quantization, layer_ops)
    bound = bind_layer_ops(model, layer_ops.layer_impls, layer_ops.name)
    if bound:
        logger.debug("%s layer implementations: %s", layer_ops.name, bound)
    if scheme is not None:
        logger.info(
            "weights quantized to %s: %.1f MB in all",
            model_config.quantization,
            quantized_nbytes(model) / 1e6,
        )
    return model.eval()


__all__ = ["load_model"]
