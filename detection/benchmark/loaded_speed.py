"""The digits detector's training s/iteration on a quiet machine and beside one competing busy process, with
OpenMP's default waiting and with the tools' thread policy (tools/_threads.py).

Every case is a fresh process (OpenMP reads its environment once, when torch loads it): ``python -m
detection.benchmark.loaded_speed STEPS`` builds the digits detector of ``configs/detection/digits_resnet20.yaml``
(4 images of 128x128 per iteration, as tools/train_det.py trains it) and prints the median s/iteration of STEPS SGD
steps after one warm-up step. The competing process is a Python busy loop (one core, like another user's job).
"""
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Mapping, Optional

REPO = Path(__file__).resolve().parents[2]
DIGITS_CONFIG = REPO / "configs" / "detection" / "digits_resnet20.yaml"


def _train_steps(steps: int) -> dict:
    import torch

    from detection.config import load_det_config
    from detection.model import build_detector
    from detection.model.optimize import prepare_for_training

    cfg = load_det_config(str(DIGITS_CONFIG), [])
    torch.manual_seed(0)
    model = prepare_for_training(build_detector(cfg, 10)).train()  # as DetectionTrainer builds it
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=gen) for _ in range(cfg.solver.ims_per_batch)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 40.0, 44.0], [60.0, 50.0, 96.0, 100.0]]),
                "labels": torch.tensor([1, 2])} for _ in images]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def step():
        loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"s_per_iter": statistics.median(times), "samples": [round(t, 4) for t in times],
            "threads": torch.get_num_threads()}


def _run_case(env: Mapping[str, str], steps: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "detection.benchmark.loaded_speed", str(steps)], cwd=str(REPO),
                         env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_loaded(policy_env: Mapping[str, str], steps: int = 5, threads: Optional[int] = None, log=print) -> dict:
    """s/iteration for {openmp_default, resdet_policy} x {quiet, one_busy_process}; ``policy_env``: the variables
    the tools set (``tools._threads.OPENMP_DEFAULTS``). The cases of one policy run back to back."""
    base = {k: v for k, v in os.environ.items() if k not in policy_env}
    if threads:
        base["OMP_NUM_THREADS"] = str(threads)
    policies: Dict[str, Dict[str, str]] = {"openmp_default": base, "resdet_policy": {**base, **policy_env}}
    result = {"steps": steps, "config": str(DIGITS_CONFIG.relative_to(REPO)), "policy_env": dict(policy_env),
              "cases": {}}
    for name, env in policies.items():
        log(f"[loaded machine] {name}: quiet")
        quiet = _run_case(env, steps)
        log(f"[loaded machine] {name}: one busy process")
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            loaded = _run_case(env, steps)
        finally:
            busy.kill()
            busy.wait()
        result["cases"][name] = {"quiet": quiet, "one_busy_process": loaded,
                                 "slowdown": loaded["s_per_iter"] / quiet["s_per_iter"]}
    return result


if __name__ == "__main__":
    print(json.dumps(_train_steps(int(sys.argv[1]))))
