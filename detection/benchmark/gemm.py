"""Dense matrix-multiply throughput: the practical FLOP/s limit the other figures are compared with.

On a CPU two libraries multiply matrices: ``torch.mm`` goes to the BLAS (MKL, which on AMD processors may not
pick its AVX-512 kernels) and convolutions go to oneDNN. A 1×1 convolution over an NHWC ``[1, K, M/64, 64]``
tensor with a ``[N, K, 1, 1]`` kernel *is* an M×K by K×N GEMM in oneDNN, so both are measured and the faster one is
the limit: the detector's convolutions run in oneDNN, and comparing them with a slower BLAS would flatter them.
On CUDA, ``torch.mm`` (cuBLAS) with TF32 off is the fp32 limit.
"""
from typing import Callable, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F

from .timing import interleaved

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def gemm_callables(device, dtype: torch.dtype, n: int) -> Dict[str, Callable[[], torch.Tensor]]:
    """Callables that each multiply two n×n matrices (2·n³ FLOP) with one library."""
    gen = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    fns = {"blas": lambda: torch.mm(a, b)}
    if torch.device(device).type == "cpu" and n % 64 == 0 and torch.backends.mkldnn.is_available():
        x = a.t().reshape(1, n, n // 64, 64).contiguous(memory_format=torch.channels_last)
        w = b.t().reshape(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
        fns["onednn"] = lambda: F.conv2d(x, w)
    return fns


def measure_gemm(device, dtype_names: Sequence[str], sizes: Sequence[int], repeats: int) -> Dict[str, dict]:
    """Per dtype: FLOP/s of every (library, size) and the best of them (``peak_flops``)."""
    out = {}
    for name in dtype_names:
        dtype = DTYPES[name]
        fns, flops = {}, {}
        for n in sizes:
            for lib, fn in gemm_callables(device, dtype, n).items():
                fns[f"{lib}@{n}"] = fn
                flops[f"{lib}@{n}"] = 2.0 * n ** 3
        with torch.inference_mode():
            times = interleaved(fns, repeats, warmup=1, device=device)
        rates = {k: flops[k] / times[k]["median"] for k in fns}
        best = max(rates, key=rates.get)
        out[name] = {"peak_flops": rates[best], "best": best, "flops_by_library_and_size": rates}
    return out


def gemm_probe(device, best: str) -> Tuple[Callable[[], torch.Tensor], float]:
    """The best fp32 GEMM again, as a probe timed beside other measurements; returns (callable, FLOP per call)."""
    lib, n = best.split("@")
    n = int(n)
    return gemm_callables(device, torch.float32, n)[lib], 2.0 * n ** 3
