"""Where pagedllm keeps downloaded models and files converted from them.

The root (`<cache>` below) is `pagedllm.cache_dir.cache_dir()`.

    <cache>/models/<alias>/<file>          assembled once from registry packages
    <cache>/converted/<key>/config.json    a GGUF's config, parsed once
    <cache>/converted/<key>/tokenizer/     a GGUF's tokenizer, built once

`<key>` names the GGUF file by name, size and modification time, so replacing the file
invalidates what was converted from it without hashing hundreds of megabytes on each start.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from pagedllm.cache_dir import cache_dir


def converted_dir(gguf_path: Path, root: Path | None = None) -> Path:
    """The folder holding what was derived from one GGUF file (may not exist yet)."""
    stat = gguf_path.stat()
    fingerprint = f"{gguf_path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    key = f"{gguf_path.stem}-{hashlib.sha256(fingerprint).hexdigest()[:16]}"
    return (root or cache_dir()) / "converted" / key


def publish_dir(target: Path, build: Callable[[Path], None]) -> Path:
    """Create `target` by running `build(tmp)` on a private folder and renaming it into place.

    Concurrent first runs each build their own copy; the first rename wins and the others
    discard theirs, so a reader never sees a half-written folder.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
