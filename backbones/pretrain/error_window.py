"""Running top-1 training error over the last N iterations (N = one epoch's worth of batches)."""
import torch


class ErrorWindow:
    """Ring buffer of per-iteration (correct, seen) counts; ``error()`` is the top-1 error (%) over the window."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self.correct = torch.zeros(size, dtype=torch.float64)
        self.seen = torch.zeros(size, dtype=torch.float64)
        self.position = 0
        self.filled = 0

    def add(self, correct: float, seen: float) -> None:
        self.correct[self.position] = correct
        self.seen[self.position] = seen
        self.position = (self.position + 1) % len(self.seen)
        self.filled = min(self.filled + 1, len(self.seen))

    def error(self, last: int = 0) -> float:
        """Error (%) over the last ``last`` iterations (0 = the whole window); NaN before the first iteration."""
        n = self.filled if not last else min(last, self.filled)
        if n == 0:
            return float("nan")
        idx = [(self.position - 1 - i) % len(self.seen) for i in range(n)]
        seen = float(self.seen[idx].sum())
        return 100.0 * (1.0 - float(self.correct[idx].sum()) / seen) if seen else float("nan")

    def state_dict(self) -> dict:
        return {"correct": self.correct.clone(), "seen": self.seen.clone(), "position": self.position,
                "filled": self.filled}

    def load_state_dict(self, state: dict) -> None:
        if len(state["seen"]) != len(self.seen):
            # Different batch size on resume: keep the most recent entries that fit.
            old = ErrorWindow(len(state["seen"]))
            old.load_state_dict(state)
            keep = min(old.filled, len(self.seen))
            for i in reversed(range(keep)):
                j = (old.position - 1 - i) % len(old.seen)
                self.add(float(old.correct[j]), float(old.seen[j]))
            return
        self.correct.copy_(state["correct"])
        self.seen.copy_(state["seen"])
        self.position, self.filled = int(state["position"]), int(state["filled"])
