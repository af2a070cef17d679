"""Chained block hashes: encoding, seeding, salt, and incremental O(new tokens) updates."""

import ast
import hashlib
import pathlib
import struct

import pagedllm.core
from pagedllm.core import block_hash
from pagedllm.core.block_hash import BlockHasher, hash_block_tokens, resolve_hash_seed


def test_hash_encoding_is_sha256_of_parent_tokens_and_extra():
    parent = b"p" * 32
    expected = hashlib.sha256(parent + struct.pack("<4q", 1, 2, 3, 2**40) + b"xy").digest()
    assert hash_block_tokens(parent, [1, 2, 3, 2**40], b"xy") == expected
    assert (
        hash_block_tokens(parent, [1, 2, 3, 4])
        == hashlib.sha256(parent + struct.pack("<4q", 1, 2, 3, 4)).digest()
    )


def test_hashes_chain_over_full_blocks_only(make_request):
    hasher = BlockHasher(block_size=4, hash_seed=b"s")
    request = make_request(range(10))
    hasher.update(request)
    assert len(request.block_hashes) == 2  # tokens 8, 9 do not fill a block
    h0 = hash_block_tokens(hasher.root_hash, [0, 1, 2, 3])
    assert request.block_hashes == [h0, hash_block_tokens(h0, [4, 5, 6, 7])]


def test_same_block_after_different_prefix_hashes_differently(make_request):
    hasher = BlockHasher(block_size=2, hash_seed=b"s")
    a, b = make_request([1, 2, 7, 7]), make_request([1, 3, 7, 7])
    hasher.update(a)
    hasher.update(b)
    assert a.block_hashes[1] != b.block_hashes[1]


def test_seed_changes_every_hash(make_request, monkeypatch):
    a, b, c = make_request([1, 2, 3, 4]), make_request([1, 2, 3, 4]), make_request([1, 2, 3, 4])
    BlockHasher(4, hash_seed=b"one").update(a)
    BlockHasher(4, hash_seed=b"two").update(b)
    BlockHasher(4, hash_seed=b"one").update(c)
    assert a.block_hashes != b.block_hashes
    assert a.block_hashes == c.block_hashes


def test_seed_from_env_or_random(monkeypatch):
    monkeypatch.setenv(block_hash.HASH_SEED_ENV, "fixed")
    assert resolve_hash_seed() == b"fixed"
    assert resolve_hash_seed(b"arg") == b"arg"
    monkeypatch.delenv(block_hash.HASH_SEED_ENV)
    assert resolve_hash_seed() != resolve_hash_seed()
    assert len(resolve_hash_seed()) == 32


def test_cache_salt_changes_first_block_and_so_all(make_request):
    hasher = BlockHasher(2, hash_seed=b"s")
    plain, salted, other = (make_request([1, 2, 3, 4], cache_salt=s) for s in (None, "a", "b"))
    for request in (plain, salted, other):
        hasher.update(request)
    assert all(x != y for x, y in zip(plain.block_hashes, salted.block_hashes, strict=True))
    assert all(x != y for x, y in zip(salted.block_hashes, other.block_hashes, strict=True))


def test_update_hashes_only_new_blocks(make_request, monkeypatch):
    calls = []
    real = block_hash.hash_block_tokens

    def counting(parent, tokens, extra=b""):
        calls.append(list(tokens))
        return real(parent, tokens, extra)

    monkeypatch.setattr(block_hash, "hash_block_tokens", counting)
    hasher = BlockHasher(4, hash_seed=b"s")
    request = make_request(range(6))
    hasher.update(request)
    assert calls == [[0, 1, 2, 3]]
    request.append_output_token(6)
    hasher.update(request)
    assert calls == [[0, 1, 2, 3]]
    request.append_output_token(7)
    hasher.update(request)
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert len(request.block_hashes) == 2


def test_core_imports_no_torch_numpy_worker_or_model():
    core_dir = pathlib.Path(pagedllm.core.__file__).parent
    banned = ("torch", "numpy", "pagedllm.worker", "pagedllm.model", "pagedllm.engine")
    for path in core_dir.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(banned), f"{path.name} imports {name}"
