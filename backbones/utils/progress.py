"""Progress of long loops: a tqdm bar on a terminal, plain lines when the output is a file or a pipe.

A redrawn bar writes a carriage return per update, so a log file (CI, nohup, ``| tee``) fills with thousands of
partial lines. Off a terminal, training writes one line per log period (iteration, the loop's figures, s/iteration,
ETA) and other loops at most one line every few seconds plus a closing line.
"""
import math
import sys
import time
from typing import Iterable, Iterator, Optional, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
LINE_INTERVAL_S = 10.0  # loops without a log period: at most one progress line this often


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def format_duration(seconds: float) -> str:
    """``h:mm:ss``; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _text(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class TrainingProgress:
    """Iteration progress of a training loop: ``update()`` once per iteration, ``log(loss=..., lr=...)`` once per
    log period. On a terminal the figures go to the bar's postfix; otherwise each ``log`` writes one line::

        resnet20 on digits: iter 40/600 | loss 0.5123 | lr 0.02 | 0.153 s/iter | ETA 0:01:25
    """

    def __init__(self, total: int, initial: int = 0, desc: str = "", enabled: bool = True,
                 stream: Optional[TextIO] = None):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.iteration, self.desc, self.enabled = total, initial, desc, enabled
        self.bar = (tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=self.stream)
                    if enabled and is_terminal(self.stream) else None)
        self._mark = (time.perf_counter(), initial)  # start of the current log period

    def update(self, n: int = 1) -> None:
        self.iteration += n
        if self.bar is not None:
            self.bar.update(n)

    def log(self, **figures) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix({k: _text(v) for k, v in figures.items()})
            return
        now = time.perf_counter()
        start, first = self._mark
        per_iter = (now - start) / (self.iteration - first) if self.iteration > first else math.nan
        self._mark = (now, self.iteration)
        parts = [f"iter {self.iteration}/{self.total}", *(f"{k} {_text(v)}" for k, v in figures.items()),
                 f"{per_iter:.3f} s/iter", f"ETA {format_duration(per_iter * (self.total - self.iteration))}"]
        prefix = f"{self.desc}: " if self.desc else ""
        print(prefix + " | ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "TrainingProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(iterable: Iterable[T], desc: str, total: Optional[int] = None, unit: str = "batches", enabled: bool = True,
          stream: Optional[TextIO] = None, interval_s: float = LINE_INTERVAL_S) -> Iterator[T]:
    """Yield from ``iterable`` showing progress: a transient bar on a terminal; otherwise a line at most every
    ``interval_s`` seconds and one when the loop ends (``desc: 40/200 batches | 0.051 s each | ETA 0:00:08``)."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        yield from iterable
        return
    if is_terminal(stream):
        yield from tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False, file=stream)
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    start = last = time.perf_counter()
    done = 0

    def line(now: float) -> None:
        each = (now - start) / done if done else math.nan
        parts = [f"{done}/{total if total is not None else '?'} {unit}", f"{each:.3f} s each"]
        if total is not None and done < total:
            parts.append(f"ETA {format_duration(each * (total - done))}")
        print(f"{desc}: " + " | ".join(parts), file=stream, flush=True)

    for item in iterable:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= interval_s:
            line(now)
            last = now
    line(time.perf_counter())
