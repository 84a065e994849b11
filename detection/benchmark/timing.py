"""Side-by-side timing: every variant runs once per round, rounds repeat, medians are reported.

Interleaving matters on a shared machine: a load spike from another process hits all variants of the same round
instead of biasing whichever ran during it, so ratios stay meaningful even when absolute times drift.
"""
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch


def synchronize(device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device="cpu") -> float:
    """Wall seconds of one call, with the device drained before and after (CUDA kernels are asynchronous)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def summarize(samples: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples),
            "samples": [round(s, 6) for s in samples]}


def interleaved(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1, device="cpu",
                probes: Optional[Dict[str, Callable[[], object]]] = None) -> Dict[str, Dict[str, float]]:
    """Median wall time of each function over ``repeats`` rounds; each round calls every function once.

    The order rotates every round so no variant always runs first (right after a warm cache or a GC).
    ``probes`` (e.g. GEMMs) are timed once per round too, under the keys ``"_probe_<name>"``: they track how much
    of the machine this process had while the variants ran.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    probes = probes or {}
    samples = {name: [] for name in names}
    for name, probe in probes.items():
        probe()
        samples[f"_probe_{name}"] = []
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(time_call(fns[name], device))
        for name, probe in probes.items():
            samples[f"_probe_{name}"].append(time_call(probe, device))
    return {name: summarize(s) for name, s in samples.items()}
