"""Phase (a) of the GPU check: the stack's versions, `import pagedllm`, the CUDA platform's
start-up line, and our Triton attention kernels compiled and run against the torch reference.

Each row is independent: a row that fails prints its error and the next one runs.
"""

from __future__ import annotations

import platform
import traceback

from report import PhaseReport, Timer

# bf16 keeps 8 bits of mantissa: outputs of unit scale differ by a few of its ulps.
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}


def versions() -> str:
    import numpy
    import torch
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "missing"
    return (
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"triton {triton_version}, transformers {transformers.__version__}, numpy {numpy.__version__}"
    )


def gpu() -> str:
    import torch

    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, sm_{props.major}{props.minor}, {props.total_memory / 2**30:.1f} GiB, {torch.cuda.device_count()} device(s)"


def platform_line() -> str:
    import pagedllm
    from pagedllm.config import EngineConfig
    from pagedllm.platforms import resolve_platform

    cuda = resolve_platform(EngineConfig(device="cuda"))
    return f"pagedllm from {pagedllm.__file__}; " + cuda.describe(cuda.select_dtype("auto"), None)


def attention_error(dtype_name: str, window: int | None) -> tuple[str, bool]:
    import torch
    from attention_step import max_difference

    error = max_difference(getattr(torch, dtype_name), window)
    return f"max |triton - torch| {error:.2e} (tolerance {TOLERANCE[dtype_name]:.0e})", error <= TOLERANCE[
        dtype_name
    ]


def main() -> None:
    report = PhaseReport("smoke")
    checks = [
        ("versions", lambda: (versions(), True)),
        ("gpu", lambda: (gpu(), True)),
        ("import pagedllm, platform", lambda: (platform_line(), True)),
    ]
    for dtype_name, window in [("float32", None), ("bfloat16", None), ("bfloat16", 16)]:
        checks.append(
            (f"attention {dtype_name}, window {window}", lambda d=dtype_name, w=window: attention_error(d, w))
        )
    for item, check in checks:
        with Timer() as t:
            try:
                figure, ok = check()
            except Exception as error:
                traceback.print_exc()
                figure, ok = f"{type(error).__name__}: {error}", False
        report.row(item, ok, figure, t.seconds)
    report.headline(f"{versions_short()}; {len(checks) - report.failures}/{len(checks)} checks")


def versions_short() -> str:
    try:
        import torch
        import transformers
        import triton

        return (
            f"torch {torch.__version__}, triton {triton.__version__}, transformers {transformers.__version__}"
        )
    except Exception as error:
        return f"{type(error).__name__}: {error}"


if __name__ == "__main__":
    main()
