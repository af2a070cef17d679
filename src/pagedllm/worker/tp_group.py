"""The tensor-parallel process group: one rank per process, bound to loopback by default.

gloo on CPU, NCCL on CUDA. Ranks meet at the master address (127.0.0.1 for local processes, rank
0's node for ranks spread over a cluster) and a free port. With a loopback master gloo's sockets
stay on the loopback interface (GLOO_SOCKET_IFNAME=lo), so nothing listens on other interfaces;
across nodes each rank uses the interface holding its own node's address, since gloo's default
(the address the hostname resolves to) is often a loopback one that other nodes cannot reach.
A GLOO_SOCKET_IFNAME the user set always wins.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket

import torch
import torch.distributed as dist

# A collective waiting longer than this raises (a peer that stopped without closing its socket):
# generous, since one CPU prefill step of a large model takes minutes.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing on `host` listens on now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def is_loopback(host: str) -> bool:
    """Whether `host` (an IP address or a name) is this machine's loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


def interface_of(address: str) -> str | None:
    """The name of the network interface holding `address`, or None if none here does."""
    try:
        import psutil  # installed with accelerate, a pagedllm dependency
    except ImportError:
        return None
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addrs):
            return name
    return None


def init_tp_group(
    rank: int,
    world_size: int,
    port: int,
    device: torch.device,
    master_addr: str = "127.0.0.1",
    local_addr: str | None = None,
) -> None:
    """Join the group as `rank` of `world_size` at `master_addr:port` (blocks until every rank
    has joined). `local_addr`: this rank's own address when the group spans nodes, whose
    interface gloo then binds (see the module docstring)."""
    os.environ["MASTER_ADDR"] = master_addr
    os.environ["MASTER_PORT"] = str(port)
    if is_loopback(master_addr):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    elif local_addr is not None and "GLOO_SOCKET_IFNAME" not in os.environ:
        interface = interface_of(local_addr)
        if interface is not None:
            os.environ["GLOO_SOCKET_IFNAME"] = interface
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)


def destroy_tp_group() -> None:
    """Leave the group (a no-op when this process is in none)."""
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
