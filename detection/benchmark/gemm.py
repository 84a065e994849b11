"""Dense matrix-multiply throughput: the practical FLOP/s limit the other figures are compared with.

On a CPU two libraries multiply matrices: ``torch.mm`` goes to the BLAS (MKL, which on AMD processors runs its
AVX2 kernels: a third of what an AVX-512 core does) and the convolutions go to oneDNN. oneDNN's own matrix
multiply (``torch._C._nn.mkldnn_linear`` on a oneDNN tensor, what ``torch.utils.mkldnn`` uses) is measured too,
and the faster of the two is the limit: the detector's convolutions run in oneDNN, and comparing them with a
slower BLAS would flatter them. On CUDA, ``torch.mm`` (cuBLAS) with TF32 off is the fp32 limit.
"""
from typing import Callable, Dict, Sequence, Tuple

import torch

from .timing import interleaved

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def gemm_callables(device, dtype: torch.dtype, n: int) -> Dict[str, Callable[[], torch.Tensor]]:
    """Callables that each multiply two n×n matrices (2·n³ FLOP) with one library."""
    gen = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    fns = {"blas": lambda: torch.mm(a, b)}
    if (torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch._C._nn, "mkldnn_linear")):
        a_onednn, b_t = a.to_mkldnn(), b.t().contiguous()
        fns["onednn"] = lambda: torch._C._nn.mkldnn_linear(a_onednn, b_t, None)  # a @ b_t.T = a @ b
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


def gemm_probes(device, gemm: Dict[str, dict]) -> Dict[str, Tuple[Callable[[], torch.Tensor], float]]:
    """Each dtype's best GEMM again, as probes timed beside other measurements: {dtype: (callable, FLOP per call)}."""
    probes = {}
    for name, result in gemm.items():
        lib, n = result["best"].split("@")
        probes[name] = (gemm_callables(device, DTYPES[name], int(n))[lib], 2.0 * int(n) ** 3)
    return probes
