"""Seeded random weights for `--load-format dummy`, drawn in place on the target device.

The model's parameters are already allocated (uninitialised) on the device in the model dtype;
each is filled by in-place `normal_`/`fill_`, so no host copy of the model is ever made. The
values keep activations in range through many layers in bf16:

- matrices (linear, expert, router, embedding and LM head weights): N(0, 1 / fan_in), where
  fan_in is the last dimension, so every projection roughly keeps the variance of its input;
  a pre-norm residual stream then grows by about one unit of variance per layer and logits
  have a std near 1;
- norm scales: 1 (Gemma's norms store scale - 1, so 0), LayerNorm biases 0;
- other vectors (biases): N(0, 0.02^2).

torch draws random numbers on one CPU thread (about 0.25 G values/s), so a large model is
drawn in fixed chunks on a thread pool, each chunk from its own generator whose seed comes
from `seed` and the chunk's index: the same seed gives the same weights whatever the number of
threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from pagedllm.model.layers.layernorm import LayerNorm
from pagedllm.model.layers.norm import GemmaRMSNorm, RMSNorm

BIAS_STD = 0.02
# Elements drawn from one generator (large enough that per-chunk overhead is negligible).
CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True, slots=True)
class _Draw:
    """Fill `values` with N(0, std^2), or with `constant` when std is None."""

    values: torch.Tensor
    std: float | None
    constant: float = 0.0


@torch.no_grad()
def initialize_dummy_weights(model: nn.Module, seed: int) -> None:
    """Fill every parameter of `model` with seeded random values (see the module docstring)."""
    draws = [
        piece for module, name, data in _parameters(model) for piece in _chunks(_draw_for(module, name, data))
    ]
    seeds = torch.randint(2**62, (len(draws),), generator=torch.Generator().manual_seed(seed)).tolist()
    on_cpu = all(d.values.device.type == "cpu" for d in draws)
    # Other devices draw fast enough from one thread.
    with ThreadPoolExecutor(torch.get_num_threads() if on_cpu else 1) as pool:
        list(pool.map(_fill, draws, seeds))


def _parameters(model: nn.Module):
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) not in seen:  # a tied weight is drawn once
                seen.add(id(param))
                yield module, name, param.data


def _draw_for(module: nn.Module, name: str, data: torch.Tensor) -> _Draw:
    if isinstance(module, GemmaRMSNorm):
        return _Draw(data, None, 0.0)  # the stored offset from a scale of 1
    if isinstance(module, (RMSNorm, LayerNorm)):
        return _Draw(data, None, 1.0 if name == "weight" else 0.0)
    if data.dim() >= 2:
        return _Draw(data, data.shape[-1] ** -0.5)
    return _Draw(data, BIAS_STD)


def _chunks(draw: _Draw) -> list[_Draw]:
    if draw.std is None:
        return [draw]
    flat = draw.values.view(-1)
    return [_Draw(piece, draw.std) for piece in flat.split(CHUNK_ELEMENTS)]


def _fill(draw: _Draw, seed: int) -> None:
    if draw.std is None:
        draw.values.fill_(draw.constant)
        return
    generator = torch.Generator(device=draw.values.device).manual_seed(seed)
    draw.values.normal_(0.0, draw.std, generator=generator)
