"""Thread policy of every tool, for machines shared with other busy processes. Import it before torch.

By default OpenMP threads busy-wait (spin) at every barrier before sleeping. When another process holds a core, a
spinning thread burns the time slice the thread it waits for needs, and every parallel region stalls: the digits
detector trained at 8 s/iteration with one competing busy process versus 0.26 s quiet (docs/BENCHMARKS.md, "loaded
machine"). Passive waiting (``OMP_WAIT_POLICY=PASSIVE``; ``KMP_BLOCKTIME=0`` for Intel's OpenMP) removes the collapse
at a small cost on a quiet machine. OpenMP reads these variables once, when torch loads it, hence "before torch".

Anything the user set in the environment wins. ``--threads N`` (or ``OMP_NUM_THREADS``) sets the thread count;
the default stays torch's (one per core).
"""
import os
from typing import Dict, MutableMapping, Optional

OPENMP_DEFAULTS: Dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def configure_openmp(environ: MutableMapping[str, str] = os.environ) -> Dict[str, str]:
    """Set ``OPENMP_DEFAULTS`` in ``environ`` where the user has not; returns what was set."""
    applied = {k: v for k, v in OPENMP_DEFAULTS.items() if k not in environ}
    environ.update(applied)
    return applied


def add_threads_argument(parser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: $OMP_NUM_THREADS, else one per core); child "
                             "processes inherit it")


def set_threads(threads: Optional[int]) -> None:
    """Use ``threads`` torch threads here and in child processes (DataLoader workers, study steps); None: keep."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


configure_openmp()
