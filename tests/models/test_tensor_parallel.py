"""Tensor-parallel sharding: two gloo ranks on the CPU reproduce the single-rank logits."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from paged_batch import assign_blocks, bind_kv_caches, run_step

from pagedllm.model.loader.resolve import resolve_model
from pagedllm.model.model_config import ModelConfig
from pagedllm.model.model_loader import load_model

PROMPTS = [[5, 9, 33, 200, 7, 1, 64], [300, 2, 11, 90, 45]]
BLOCK_SIZE = 4


def logits_for(folder, tp_rank: int = 0, tp_size: int = 1) -> list[torch.Tensor]:
    torch.set_num_threads(1)
    config = ModelConfig.from_resolved(resolve_model(str(folder)))
    model = load_model(config, torch.device("cpu"), torch.float32, tp_rank, tp_size)
    tables = assign_blocks([len(p) for p in PROMPTS], BLOCK_SIZE)
    bind_kv_caches(model, sum(len(t) for t in tables), BLOCK_SIZE)
    return run_step(model, PROMPTS, [len(p) for p in PROMPTS], tables, BLOCK_SIZE)


def _rank(rank: int, world: int, port: int, folders: dict, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for kind, folder in folders.items():
            results[(kind, rank)] = [t.clone() for t in logits_for(folder, rank, world)]
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_match_one(tiny_model_dir):
    # llama: 2 KV heads split one per rank; mistral: 1 KV head replicated on both ranks.
    folders = {kind: tiny_model_dir(kind) for kind in ("llama", "mistral")}
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(2, free_port(), folders, results), nprocs=2, join=True)
        for kind, folder in folders.items():
            expected = logits_for(folder)
            for rank in range(2):
                for ours, reference in zip(results[(kind, rank)], expected):
                    torch.testing.assert_close(
                        ours, reference, atol=1e-4, rtol=1e-4, msg=f"{kind} rank {rank}"
                    )
