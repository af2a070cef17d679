"""Weights moved into the huge-page arena: same values, ties kept, views and small tensors left
where they were, the arena advised for huge pages."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from memory_maps import vm_flags
from pagedllm.platforms.cpu_huge_pages import MIN_BYTES, move_weights_to_huge_pages, transparent_huge_pages

pytestmark = pytest.mark.skipif(not transparent_huge_pages(), reason="no transparent huge pages here")


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(512, 128, dtype=torch.bfloat16)
        self.proj = nn.Linear(128, 384, bias=False, dtype=torch.bfloat16)
        self.head = nn.Linear(128, 512, bias=False, dtype=torch.bfloat16)
        self.head.weight = self.embed.weight  # tied, as an LM head to its embedding
        self.norm = nn.Parameter(torch.ones(128, dtype=torch.bfloat16), requires_grad=False)
        self.register_buffer("table", torch.randn(1024, 64))
        self.register_buffer("table_view", torch.randn(1024, 64)[:512])  # a view: stays where it is
        self.other = nn.Module()
        self.other.register_buffer("shared", self.table)  # one buffer in two modules


def test_weights_move_into_one_advised_arena_with_their_values_and_ties():
    model = _Tied().requires_grad_(False)
    before = {name: t.clone() for name, t in model.state_dict(keep_vars=True).items()}
    norm_ptr, view_ptr = model.norm.data_ptr(), model.table_view.data_ptr()
    embed_param = model.embed.weight
    proj_storage = model.proj.weight.data_ptr()
    shared_buffer = weakref.ref(model.table)

    moved = move_weights_to_huge_pages(model)

    # In the order model.modules() gives: the root's own tensors first.
    large = [model.table, model.embed.weight, model.proj.weight]
    assert moved == sum(t.nbytes for t in large)
    assert all(t.nbytes >= MIN_BYTES for t in large)
    assert model.embed.weight is embed_param and model.head.weight is model.embed.weight
    assert model.other.shared is model.table
    assert model.norm.data_ptr() == norm_ptr and model.table_view.data_ptr() == view_ptr
    # Back to back, in module order, in one mapping advised for huge pages.
    ptrs = [t.data_ptr() for t in large]
    assert ptrs == sorted(ptrs) and ptrs[-1] + large[-1].nbytes - ptrs[0] < 2 * moved
    for t in large:
        assert "hg" in vm_flags(t.data_ptr())
    for name, t in model.state_dict(keep_vars=True).items():
        assert torch.equal(t, before[name]), name
    # The originals are let go (the buffer held by two modules too), not kept beside the copies.
    gc.collect()
    assert shared_buffer() is None and model.proj.weight.data_ptr() != proj_storage
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    assert torch.equal(model.proj(x), x @ before["proj.weight"].t())


def test_the_arena_outlives_the_model_that_made_it():
    model = nn.Linear(256, 512, bias=False, dtype=torch.bfloat16).requires_grad_(False)
    expected = model.weight.clone()
    move_weights_to_huge_pages(model)
    weight = model.weight.detach()
    del model
    assert torch.equal(weight, expected)


def test_each_original_is_released_before_the_next_is_copied(monkeypatch):
    # The move must not hold the whole model twice: by the time a tensor is copied, every
    # tensor copied before it has been let go (its modules hold the copy).
    from pagedllm.platforms import cpu_huge_pages

    model = nn.Module()
    for i in range(3):
        model.register_buffer(f"b{i}", torch.randn(256, 128))
    model.child = nn.Module()
    model.child.register_buffer("shared", model.b1)
    originals = [weakref.ref(getattr(model, f"b{i}")) for i in range(3)]
    alive_at_copy = []
    copy_of = cpu_huge_pages.HugePageArena.copy_of

    def recording_copy_of(arena, tensor):
        gc.collect()
        alive_at_copy.append([ref() is not None for ref in originals])
        return copy_of(arena, tensor)

    monkeypatch.setattr(cpu_huge_pages.HugePageArena, "copy_of", recording_copy_of)
    move_weights_to_huge_pages(model)
    assert alive_at_copy == [[True, True, True], [False, True, True], [False, False, True]]
    assert model.child.shared is model.b1
