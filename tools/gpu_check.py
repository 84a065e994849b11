#!/usr/bin/env python
"""The prepared check for a lent GPU (make gpu-check): <= 8 minutes, one JSON, one table.

    tools/gpu_check.py --json runs/gpu_check.json

AMP (bf16 autocast, low-precision guards) and fp32 training steps of R50-C4 and R101-C4 at 600x1000, 2 images per
GPU, with achieved TFLOP/s; detector inference images/s in fp32 and bf16; ResNet-50 classification training img/s
(channels_last + bf16, batch 256); peak memory; bf16 proposals/boxes against fp32 on the same weights. Without CUDA
it says so and exits 0 doing nothing. Exit 1 when the bf16-vs-fp32 check fails or a loss is not finite.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones.utils.atomic_io import atomic_write_json  # noqa: E402
from detection.rehearsal.gpu_check import FULL, cuda_accelerator, run_gpu_check, table  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default="runs/gpu_check.json", help="results (default runs/gpu_check.json)")
    return p


def main(args, accelerator=None) -> int:
    acc = accelerator or cuda_accelerator()
    if acc is None:
        print("gpu-check: no CUDA device here; nothing to do (run it on a machine with a GPU)")
        return 0
    result = run_gpu_check(acc, FULL, log=lambda m: print(m, file=sys.stderr, flush=True))
    atomic_write_json(args.json, result)
    print(table(result))
    print(f"written: {args.json}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
