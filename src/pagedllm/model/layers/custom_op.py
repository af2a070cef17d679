"""Layers with a plain torch reference and an implementation chosen once.

A `CustomOp` names its operation (`op_name`) and the method platforms may replace
(`op_method`, usually "forward"); its torch reference is `<op_method>_native`. Until something
is bound the reference runs. After the weights load, `bind_layer_ops` offers every such layer
to the platform's implementations (`LayerOps.layer_impls`, keyed by op name): an implementation
that takes the layer is bound as an instance attribute, so a call goes straight to it, with no
per-call choice of device or kernel. Layers without a platform implementation (or whose
implementation declines them) keep the reference.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from pagedllm.model.layers.direct_call import DirectCall


class CustomOp(DirectCall, nn.Module):
    """Base of layers a platform may implement; see the module docstring."""

    op_name: ClassVar[str]
    op_method: ClassVar[str] = "forward"

    def __init__(self):
        super().__init__()
        self.implementation = "native"  # which implementation runs: "native" or the platform's

    def forward(self, *args, **kwargs):
        return self.forward_native(*args, **kwargs)

    def forward_native(self, *args, **kwargs):
        raise NotImplementedError

    def use_implementation(self, name: str, impl) -> None:
        """Run `impl` in place of the reference method from now on."""
        # An instance attribute shadows the class's method: calls skip any dispatch.
        object.__setattr__(self, self.op_method, impl)
        self.implementation = name


def bind_layer_ops(model: nn.Module, layer_impls: dict, name: str) -> dict[str, int]:
    """Offer each CustomOp of `model` to the implementation of its op name, once; returns how
    many layers of each op took the platform's implementation."""
    bound: dict[str, int] = {}
    for module in model.modules():
        if not isinstance(module, CustomOp):
            continue
        factory = layer_impls.get(module.op_name)
        impl = None if factory is None else factory(module)
        if impl is not None:
            module.use_implementation(name, impl)
            bound[module.op_name] = bound.get(module.op_name, 0) + 1
    return bound
