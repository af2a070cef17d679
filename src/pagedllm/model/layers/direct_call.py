"""Calling hot-path modules without nn.Module's hook dispatch.

`module(x)` goes through `nn.Module._call_impl`, which checks for forward/backward hooks on
every call: about 2-3 us each here, and a decode step of a 30-layer model makes ~330 such
calls, a tenth of a single-stream token's time. Layers that never take hooks inherit
`DirectCall` first, so calling them runs `forward` directly.
"""

from __future__ import annotations


class DirectCall:
    """Mixin placed before nn.Module: `module(...)` is `module.forward(...)` (no hooks)."""

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)
