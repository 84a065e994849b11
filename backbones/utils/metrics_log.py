"""Training metrics: one JSON object per line in ``metrics.jsonl`` plus TensorBoard scalars under ``tb/``.

Each line is written with a single ``write`` + fsync on an append-mode file, so a crash leaves at most one partial
last line; ``read_metrics`` ignores it and ``MetricsLogger.resume_at`` drops it together with every line logged after
the checkpoint a run resumes from, so a resumed run's log reads as if it had never stopped.
"""
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .atomic_io import PathLike, atomic_write_text

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    # JSON has no NaN/Inf; a non-finite metric is written as null rather than corrupting the file.
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: PathLike) -> List[Dict[str, Any]]:
    """All complete records of a ``metrics.jsonl`` file (or of ``RUN_DIR/metrics.jsonl`` when given a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    records = []
    if not path.is_file():
        return records
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return records


class MetricsLogger:
    """Append scalars to ``DIR/metrics.jsonl`` and ``DIR/tb/``; a no-op on non-main processes.

    Args:
        output_dir: run folder.
        enabled: False on ranks other than 0 (they compute the same all-reduced numbers).
        tensorboard: also write TensorBoard event files to ``output_dir/tb``.
    """

    def __init__(self, output_dir: PathLike, enabled: bool = True, tensorboard: bool = True):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / METRICS_FILE
        self.enabled = enabled
        self.tensorboard = tensorboard and enabled
        self._writer = None
        self._purge_step: Optional[int] = None

    def resume_at(self, iteration: int, keep_at: Optional[Callable[[Dict[str, Any]], bool]] = None) -> None:
        """Forget records after ``iteration`` (they came from work lost at the crash) and any partial last line.

        ``keep_at(record)`` decides about the records logged *at* ``iteration`` (default: keep them), e.g. to drop a
        final evaluation that the resumed run will repeat.
        """
        if not self.enabled:
            return
        kept = [r for r in read_metrics(self.path) if int(r.get("iter", 0)) < iteration
                or (int(r.get("iter", 0)) == iteration and (keep_at is None or keep_at(r)))]
        if self.path.exists():
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._purge_step = iteration + 1

    def log(self, iteration: int, **scalars: Any) -> None:
        """Write one record ``{"iter": iteration, **scalars}``; names like ``eval/top1_err`` group in TensorBoard."""
        if not self.enabled:
            return
        record = {"iter": int(iteration), **{k: _clean(v) for k, v in scalars.items()}}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        writer = self._tb()
        if writer is not None:
            for key, value in record.items():
                if key != "iter" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(key, value, iteration)

    def _tb(self):
        if not self.tensorboard:
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a crashed run wrote after the checkpoint it is resumed from.
            self._writer = SummaryWriter(str(self.output_dir / "tb"), purge_step=self._purge_step)
        return self._writer

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
