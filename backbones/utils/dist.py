"""Distributed helpers that work unchanged for one process and for ``torchrun`` jobs (gloo on CPU, nccl on GPU).

Every function here is safe to call without an initialised process group: it then behaves as world size 1.
Batch-size rule used by resdet: configs give the **global** batch; each process gets ``global / world_size`` and
the global batch must divide evenly (``per_process_batch``). Learning rates in configs are stated at a reference
batch and scaled linearly (``linear_scaled_lr``; Goyal et al., arXiv 1706.02677).
"""
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: Optional[str]
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` → this process's GPU when CUDA is available, else CPU; ``"cuda"`` → ``cuda:<local_rank>``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but CUDA is not available on this machine")
        return torch.device("cuda", local_rank)
    return torch.device(device)


def init_distributed(device: str = "auto", backend: Optional[str] = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Without those variables (or with WORLD_SIZE=1) nothing is initialised and a single-process ``DistInfo`` is
    returned. ``timeout_s`` bounds how long a collective waits for a dead peer before raising, so a job whose rank
    died exits non-zero instead of hanging.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    target = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(0, 1, 0, None, target)
    if backend is None:
        backend = "nccl" if target.type == "cuda" else "gloo"
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        kwargs = {"device_id": target} if backend == "nccl" else {}
        timeout = timedelta(seconds=timeout_s)
        store = _attempt_store(world_size, timeout)
        if store is not None:
            kwargs.update(store=store, rank=rank, world_size=world_size)
        dist.init_process_group(backend, timeout=timeout, **kwargs)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend, target)


def _attempt_store(world_size: int, timeout: timedelta) -> Optional[dist.Store]:
    """This torchrun attempt's view of the agent's store, or None outside torchrun.

    torchrun keeps one store across ``--max-restarts`` attempts: without a per-attempt prefix the restarted processes
    read the dead attempt's addresses and fail to connect, so a restart could never resume.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], _env_int("MASTER_PORT", 0), world_size, is_master=False,
                          timeout=timeout)
    return dist.PrefixStore(f"resdet/attempt_{attempt}", store)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place; returns it (unchanged for one process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any) -> List[Any]:
    """Every process's ``obj`` (picklable), in rank order."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as held by rank ``src``, on every process (used to share e.g. an error message from rank 0)."""
    if not is_distributed():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_process_batch(global_batch: int, world_size: int, key: str = "batch_size") -> int:
    """The per-process share of ``global_batch``; raises ValueError naming ``key`` when it does not divide evenly."""
    if global_batch < 1:
        raise ValueError(f"{key} must be >= 1, got {global_batch}")
    if global_batch % world_size:
        raise ValueError(
            f"{key}={global_batch} (global batch) is not divisible by the world size {world_size}; "
            f"use a multiple of {world_size}"
        )
    return global_batch // world_size


def linear_scaled_lr(base_lr: float, global_batch: int, reference_batch: int) -> float:
    """Linear scaling rule: ``base_lr`` is the rate at ``reference_batch``; the rate used is ``base_lr·B/ref``."""
    if reference_batch < 1:
        raise ValueError(f"reference batch must be >= 1, got {reference_batch}")
    return base_lr * global_batch / reference_batch

