"""torch.distributed for training: join torchrun's group, ranks, one GPU per rank, DDP.

Why apart from the trainer: the CLI joins the group before it builds a trainer,
and the trainer only asks "which rank am I, on which device, wrapped or not".
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .devices import resolve_device

__all__ = [
    "gather_json",
    "join_torchrun",
    "process_rank",
    "rank_device",
    "world_size",
    "wrap_ddp",
]


def join_torchrun(device: str | torch.device = "auto") -> Callable[[], None]:
    """Join torchrun's process group when torchrun started this process; returns the cleanup.

    ``napari-unetpp train`` calls it so that ``torchrun --nproc_per_node N -m
    napari_unetpp.cli train ...`` trains one model with DistributedDataParallel. Outside
    torchrun (no ``WORLD_SIZE`` > 1 with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``), or when a
    group already exists (the caller owns it), nothing happens and the cleanup does nothing.
    Backend: NCCL on CUDA (each rank on GPU ``LOCAL_RANK``), gloo otherwise.
    """
    env = os.environ
    dist = torch.distributed
    launched = int(env.get("WORLD_SIZE", "1")) > 1 and all(
        key in env for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR")
    )
    if not launched or not dist.is_available() or dist.is_initialized():
        return lambda: None
    cuda = resolve_device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(env["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.destroy_process_group


def process_rank() -> int:
    """This process's rank under torch.distributed (0 when not distributed): 0 alone writes."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the group (1 when not distributed); recorded in the provenance."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank_device(name: str | torch.device) -> torch.device:
    """The device named, but this rank's own GPU (``LOCAL_RANK``) under torchrun."""
    device = resolve_device(name)
    dist = torch.distributed
    if device.type == "cuda" and dist.is_available() and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))  # one GPU per rank
    return device


def wrap_ddp(net: nn.Module, device: torch.device) -> nn.Module:
    """Wrap in DistributedDataParallel under torchrun; the plain model otherwise."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids)


def gather_json(value: Any) -> list[Any] | None:
    """``value`` of every rank, in rank order, on every rank (None when not distributed).

    Why: each rank samples its own patches from its own RNG stream, but rank 0 alone
    writes ``last/``; the trainer gathers every rank's stream state so that a resumed
    run continues each one (it had given all ranks rank 0's stream: identical patches on
    every rank). A collective: every rank must call it. JSON through ``all_gather`` of
    byte tensors, never pickle.
    """
    if world_size() == 1:
        return None
    dist = torch.distributed
    device = rank_device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    data = torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8, device=device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64, device=device))
    longest = int(max(int(n) for n in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return [
        json.loads(bytes(part[: int(n)].cpu().tolist()).decode())
        for part, n in zip(parts, sizes, strict=True)
    ]
