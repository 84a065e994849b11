"""Resident memory of a process tree sampled over time, read from /proc (no psutil needed).

Each sample sums every process of the tree (the launcher, its workers and their DataLoader workers). It uses the
proportional set size (``Pss`` in ``/proc/<pid>/smaps_rollup``: shared pages divided among the processes sharing
them), because forked DataLoader workers share most of their parent's pages: summing RSS would count those once per
process, and PSS is also where the classic copy-on-write growth of forked workers shows. Where smaps_rollup is not
readable, RSS from ``/proc/<pid>/statm`` is used instead (``kind`` says which).
"""
import os
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def children_map(proc: Path = Path("/proc")) -> Dict[int, List[int]]:
    """{parent pid: [child pids]} of every process visible in /proc."""
    out: Dict[int, List[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the command name may hold spaces and parentheses
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def process_tree(root: int, proc: Path = Path("/proc")) -> List[int]:
    """``root`` and all its descendants."""
    kids, tree, todo = children_map(proc), [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(kids.get(pid, []))
    return tree


def process_memory(pid: int, proc: Path = Path("/proc")) -> Optional[Dict[str, int]]:
    """{"pss": bytes or None, "rss": bytes} of one process, or None once it has exited."""
    try:
        rss = int((proc / str(pid) / "statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None
    pss = None
    try:
        for line in (proc / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return {"pss": pss, "rss": rss}


def tree_memory(root: int, proc: Path = Path("/proc")) -> Dict[str, int]:
    """Summed memory of the tree under ``root``: {"bytes", "rss", "processes", "kind"} (kind "pss" or "rss")."""
    total_pss, total_rss, count, all_pss = 0, 0, 0, True
    for pid in process_tree(root, proc):
        m = process_memory(pid, proc)
        if m is None:
            continue
        count += 1
        total_rss += m["rss"]
        if m["pss"] is None:
            all_pss = False
        else:
            total_pss += m["pss"]
    return {"bytes": total_pss if all_pss else total_rss, "rss": total_rss, "processes": count,
            "kind": "pss" if all_pss else "rss"}


class MemorySampler:
    """Samples ``tree_memory(pid)`` every ``interval`` seconds in a thread, tagged with ``tag()`` (e.g. the last
    logged training iteration) and the phase name set with ``phase``.

        with MemorySampler(proc.pid, tag=lambda: last_iteration(run)) as sampler:
            ...
        sampler.samples  # [{"t", "phase", "tag", "bytes", "rss", "processes", "kind"}, ...]
    """

    def __init__(self, pid: int, interval: float = 1.0, tag: Optional[Callable[[], object]] = None,
                 phase: str = "", t0: Optional[float] = None):
        self.pid, self.interval, self.tag, self.current_phase = pid, interval, tag, phase
        self.t0 = time.time() if t0 is None else t0
        self.samples: List[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def phase(self, name: str) -> None:
        self.current_phase = name

    def sample(self) -> Optional[dict]:
        m = tree_memory(self.pid)
        if not m["processes"]:
            return None
        s = {"t": round(time.time() - self.t0, 2), "phase": self.current_phase,
             "tag": self.tag() if self.tag else None, **m}
        self.samples.append(s)
        return s

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
