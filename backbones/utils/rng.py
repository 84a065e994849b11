"""Random-number state: seeding, capture/restore for exact resume, and per-sample generators.

Per-sample generators make data augmentation a pure function of ``(seed, epoch, index)``: the result does not depend
on the number of DataLoader workers, on the process count, or on where a run was resumed.
"""
import random
from typing import Any, Dict

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and all CUDA devices) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. ``seed, epoch, index``), identical on every platform."""
    words = np.random.SeedSequence([int(k) % 2**64 for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def generator_for(*keys: int) -> torch.Generator:
    """A fresh CPU ``torch.Generator`` seeded by ``derive_seed(*keys)``."""
    g = torch.Generator()
    g.manual_seed(derive_seed(*keys))
    return g


def get_rng_state() -> Dict[str, Any]:
    """Global generator states in a form ``torch.load(weights_only=True)`` accepts (tensors, ints, tuples)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore states captured by ``get_rng_state`` (CUDA states only when present and CUDA is usable)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python/NumPy in each worker from torch's per-worker seed.

    Only needed by code that draws from the global generators inside workers; resdet's pretraining transforms use
    ``generator_for`` instead.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
