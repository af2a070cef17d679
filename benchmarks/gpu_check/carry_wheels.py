"""Download the wheels a GPU machine without network needs to run pagedllm's server, its tests
and the GPU check, for that machine's Python and platform.

What travels is the dependency closure of `ROOTS` at the versions installed here (the versions
the suite passes with), less what every torch + transformers image already has (`ON_THE_IMAGE`).
Run it where pip reaches PyPI, with the project's virtualenv:

    .venv/bin/python benchmarks/gpu_check/carry_wheels.py --python-version 3.12 --dest wheels

It prints the folder's size and the install line for the GPU machine:

    pip install --no-index --find-links wheels/ fastapi uvicorn ...

There pip takes what the image lacks from the folder and leaves the rest installed as it is.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# What pagedllm imports beyond torch, triton and transformers (the server, the engine wire
# format, GGUF reading), what the tests and the GPU check need (pytest, the openai client),
# and uvicorn's C HTTP parser. xgrammar (structured outputs) and aiohttp (`bench serve`) stay
# behind: nothing on the GPU check's path imports them.
ROOTS = [
    "fastapi",
    "uvicorn",
    "pydantic",
    "jinja2",
    "gguf",
    "msgspec",
    "prometheus-client",
    "httptools",
    "pytest",
    "openai",
]
# Dependencies of torch and transformers themselves: on any image that runs them.
ON_THE_IMAGE = {
    "numpy",
    "pyyaml",
    "tqdm",
    "packaging",
    "typing-extensions",
    "filelock",
    "torch",
    "triton",
    "transformers",
}
# Tags a current x86-64 Linux (glibc 2.28 or newer) accepts, newest first.
LINUX_X86_64 = [
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
]


def closure(roots: list[str], python_version: str) -> dict[str, str]:
    """name -> installed version for `roots` and their dependencies (markers evaluated for the
    target Python on Linux), without extras."""
    env = dict(default_environment(), python_version=python_version, sys_platform="linux", extra="")
    env["python_full_version"] = python_version + ".0"
    env["platform_system"], env["platform_machine"] = "Linux", "x86_64"
    found: dict[str, str] = {}
    pending = list(roots)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in found or name in ON_THE_IMAGE:
            continue
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            sys.exit(f"{name} is not installed here: run this with the project's virtualenv")
        for text in requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(env):
                pending.append(requirement.name)
    return found


def download(pins: dict[str, str], dest: Path, python_version: str, platforms: list[str]) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    command += ["--python-version", python_version, "--implementation", "cp"]
    for tag in platforms:
        command += ["--platform", tag]
    command += [f"{name}=={pinned}" for name, pinned in sorted(pins.items())]
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (X.Y)")
    parser.add_argument("--platform", action="append", help="wheel platform tags (default: x86-64 Linux)")
    parser.add_argument("--dest", type=Path, default=Path("wheels"))
    args = parser.parse_args()
    pins = closure(ROOTS, args.python_version)
    args.dest.mkdir(parents=True, exist_ok=True)
    download(pins, args.dest, args.python_version, args.platform or LINUX_X86_64)
    wheels = sorted(args.dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    print(f"{len(wheels)} wheels, {size / 1e6:.1f} MB in {args.dest}/")
    print(f"on the GPU machine: pip install --no-index --find-links {args.dest}/ {' '.join(ROOTS)}")


if __name__ == "__main__":
    main()
