"""Compiling a Triton launch for a GPU target without a GPU (the compile-check scripts' core).

Triton lowers a kernel to PTX and assembles it with the ptxas it ships, for a named target; the
launch is specialised as its launcher would be on a GPU: pointers (the caching allocator's,
256-byte aligned) and integers that are multiples of 16 are marked divisible by 16, which is
what lets loads vectorise and loops pipeline.
"""

from __future__ import annotations

import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

# Ampere (A100) and Hopper (H100/H200).
TARGETS = [GPUTarget("cuda", 80, 32), GPUTarget("cuda", 90, 32)]
_POINTER_TYPES = {
    torch.float32: "*fp32",
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.int8: "*i8",
    torch.uint8: "*u8",
    torch.int32: "*i32",
    torch.int64: "*i64",
}


def signature(launch) -> tuple[dict, dict, dict]:
    """Triton's (argument types, constexprs, attributes) of a launch (see the module docstring)."""
    types, attrs = {}, {}
    for index, (name, value) in enumerate(zip(launch.kernel.arg_names, launch.args)):
        if isinstance(value, torch.Tensor):
            types[name] = _POINTER_TYPES[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            types[name] = "fp32"
        else:
            types[name] = "i64" if abs(int(value)) >= 2**31 else "i32"
            if int(value) % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    for name in launch.constants:
        types[name] = "constexpr"
    return types, dict(launch.constants), attrs


def compile_launch(launch, target: GPUTarget) -> tuple[int, float]:
    """(cubin bytes, seconds) of `launch` compiled for `target`."""
    start = time.perf_counter()
    types, constants, attrs = signature(launch)
    source = ASTSource(fn=launch.kernel, signature=types, constexprs=constants, attrs=attrs)
    options = {"num_warps": launch.num_warps, "num_stages": launch.num_stages}
    compiled = triton.compile(source, target=target, options=options)
    return len(compiled.asm["cubin"]), time.perf_counter() - start
