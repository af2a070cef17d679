"""The tensor-parallel process group: one rank per process, bound to loopback by default.

gloo on CPU, NCCL on CUDA. Ranks meet at MASTER_ADDR:MASTER_PORT (127.0.0.1 and a free port
unless the environment says otherwise); gloo's sockets stay on the loopback interface
(GLOO_SOCKET_IFNAME=lo) unless set, so nothing listens on other interfaces.
"""

from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist

# A collective waiting longer than this raises (a peer that stopped without closing its socket):
# generous, since one CPU prefill step of a large model takes minutes.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def init_tp_group(rank: int, world_size: int, port: int, device: torch.device) -> None:
    """Join the group as `rank` of `world_size` (blocks until every rank has joined)."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)


def destroy_tp_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_command(command=None):
    """Rank 0 sends `command` (pickled once, one broadcast); other ranks receive and return it."""
    box = [command]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree_on_blocks(counts: list[int]) -> list[int]:
    """Per KV-cache group, the fewest blocks any rank can hold (every rank allocates that many)."""
    tensor = torch.tensor(counts, dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor.tolist()
