"""Chained hashes of full KV blocks: the keys of the automatic prefix cache.

With block_size 4 and a request whose tokens are t0..t9::

    tokens   | t0 t1 t2 t3 | t4 t5 t6 t7 | t8 t9 . . |
    hashes     h0            h1            (none: the block is not full yet)

    h0 = sha256(root + bytes(t0..t3) + extra keys)
    h1 = sha256(h0   + bytes(t4..t7))

Each hash covers the whole prefix up to the end of its block, so two requests share block i
only if they agree on every token before it. The root is derived from a per-process random
seed so that hashes cannot be predicted (and collisions cannot be engineered) from outside.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pagedllm.request import Request

HASH_SEED_ENV = "PAGEDLLM_HASH_SEED"


def resolve_hash_seed(hash_seed: bytes | None = None) -> bytes:
    """The seed to use: the argument, else $PAGEDLLM_HASH_SEED, else 32 random bytes."""
    if hash_seed is not None:
        return hash_seed
    from_env = os.environ.get(HASH_SEED_ENV)
    if from_env:
        return from_env.encode("utf-8")
    return os.urandom(32)


def hash_block_tokens(parent_hash: bytes, token_ids: Sequence[int], extra_keys: bytes = b"") -> bytes:
    """sha256(parent digest + token ids as int64 little-endian + extra key bytes)."""
    hasher = hashlib.sha256(parent_hash)
    hasher.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    if extra_keys:
        hasher.update(extra_keys)
    return hasher.digest()


def request_extra_keys(request: Request) -> bytes:
    """Bytes that must match besides the tokens; mixed into a request's first block only.

    Chaining carries them into every later block. Token bytes have a fixed length per
    block, so appending the extra keys after them is unambiguous.
    """
    if request.cache_salt is None:
        return b""
    return b"salt\x00" + request.cache_salt.encode("utf-8")


class BlockHasher:
    """Appends the hashes of a request's newly full blocks to `request.block_hashes`."""

    def __init__(self, block_size: int, hash_seed: bytes | None = None):
        self.block_size = block_size
        self.root_hash = hashlib.sha256(b"pagedllm-kv-root\x00" + resolve_hash_seed(hash_seed)).digest()

    def update(self, request: Request) -> None:
        """Hash the blocks that became full since the last call: O(new tokens)."""
        bs = self.block_size
        hashes = request.block_hashes
        tokens = request.all_token_ids
        num_full_blocks = len(tokens) // bs
        parent = hashes[-1] if hashes else self.root_hash
        for i in range(len(hashes), num_full_blocks):
            extra = request_extra_keys(request) if i == 0 else b""
            # Looked up through the module so tests can monkeypatch it to force collisions.
            parent = hash_block_tokens(parent, tokens[i * bs : (i + 1) * bs], extra)
            hashes.append(parent)
