"""Multi-process training under torchrun: process-group setup from the
environment (gloo on CPU, nccl on CUDA), DDP and FSDP2 wrapping, and the few
collectives the trainer needs (mean of a scalar, gathering byte blobs).

Every helper works without torch.distributed being initialised (one process):
rank 0, world size 1, collectives are identities.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable, Optional, Union

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: Optional[str]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes files and logs."""
    return get_rank() == 0


def default_device(local_rank: int = 0) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def init_from_env(backend: Optional[str] = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's variables (RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Without them (a plain
    `python` run) nothing is initialised and rank 0 of 1 is returned.
    backend=None: nccl when CUDA is available, else gloo."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = default_device(local_rank)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, dist.get_backend())
    if world_size <= 1 or "RANK" not in os.environ:
        return DistInfo(0, 1, 0, device, None)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if backend is None:
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl', 'gloo' or None, got {backend!r}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=device if backend == "nccl" else None)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_mean(x: Union[torch.Tensor, float]) -> Union[torch.Tensor, float]:
    """Mean over ranks of a tensor (returned as a new tensor) or a float (returned as float)."""
    if not is_distributed():
        return x
    as_float = not isinstance(x, torch.Tensor)
    t = torch.tensor(float(x), dtype=torch.float64) if as_float else x.detach().clone()
    orig_device = t.device
    t = t.to(_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t = t / dist.get_world_size()
    return t.item() if as_float else t.to(orig_device)


def all_reduce_max(x: float) -> float:
    if not is_distributed():
        return x
    t = torch.tensor(float(x), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def all_gather_bytes(data: bytes) -> list[bytes]:
    """Every rank's `data`, in rank order (tensors only: nothing is pickled)."""
    if not is_distributed():
        return [data]
    device = _collective_device()
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    buf = torch.zeros(longest, dtype=torch.uint8, device=device)
    if data:
        buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    bufs = [torch.zeros_like(buf) for _ in sizes]
    dist.all_gather(bufs, buf)
    return [bytes(b[:int(s.item())].cpu().numpy().tobytes()) for b, s in zip(bufs, sizes)]


def wrap_ddp(model: nn.Module, device: Optional[torch.device] = None, **kwargs) -> nn.Module:
    """DistributedDataParallel around `model` (already on its device); the
    model itself when not distributed."""
    if not is_distributed():
        return model
    device = device or next(model.parameters()).device
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, **kwargs)


def fsdp_available() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


def _default_fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The blocks to shard one by one: children of every nn.ModuleList
    (transformer layers), else the direct children that own parameters."""
    units = [m for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst]
    if not units:
        units = [c for c in model.children() if any(True for _ in c.parameters())]
    return units


def apply_fsdp(model: nn.Module, units: Optional[Iterable[nn.Module]] = None, **kwargs) -> nn.Module:
    """FSDP2: fully_shard each unit (default: transformer blocks), then the
    root. The module is changed in place and returned. Needs an initialised
    process group; its parameters become DTensors."""
    if not fsdp_available():
        raise RuntimeError("FSDP2 (torch.distributed.fsdp.fully_shard) is not available in this PyTorch")
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("apply_fsdp needs an initialised process group (run under torchrun)")
    from torch.distributed.fsdp import fully_shard

    for unit in (list(units) if units is not None else _default_fsdp_units(model)):
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    return model


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


__all__ = ["DistInfo", "init_from_env", "cleanup", "is_distributed", "get_rank", "get_world_size", "is_main",
           "barrier", "all_reduce_mean", "all_reduce_max", "all_gather_bytes", "wrap_ddp", "apply_fsdp",
           "fsdp_available", "is_fsdp", "default_device"]
