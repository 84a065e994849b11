"""Iteration-based learning-rate schedule with the paper's options.

lr(it) = base · warm-up factor · gamma^(number of drops so far). Drops happen at fixed iterations (``policy="step"``,
the CIFAR recipe's 32k/48k) or when the validation error stops improving (``policy="plateau"``, the ImageNet
recipe's "divided by 10 when the error plateaus"). Warm-up multiplies by ``warmup_factor`` (constant) or ramps
linearly from it, for ``warmup_iters`` iterations or — with ``warmup_until_err`` > 0 — until the recent training
error falls below that value (ResNet-110 on CIFAR: 0.01 until training error < 80%); ``warmup_iters`` then caps it.
"""
from typing import Dict, Sequence

POLICIES = ("step", "plateau")
WARMUP_METHODS = ("constant", "linear")


def linear_warmup_factor(iteration: int, warmup_iters: int, warmup_factor: float) -> float:
    """The linear warm-up's multiplier at ``iteration``: ``warmup_factor`` at 0, rising to 1 at ``warmup_iters``."""
    if iteration >= warmup_iters:
        return 1.0
    alpha = iteration / warmup_iters
    return warmup_factor * (1 - alpha) + alpha


class LRSchedule:
    def __init__(self, base_lr: float, policy: str = "step", steps: Sequence[int] = (), gamma: float = 0.1,
                 warmup_iters: int = 0, warmup_factor: float = 0.1, warmup_method: str = "constant",
                 warmup_until_err: float = 0.0, plateau_patience: int = 3, plateau_threshold: float = 0.1,
                 max_drops: int = 3):
        if policy not in POLICIES:
            raise ValueError(f"lr policy must be one of {POLICIES}, got {policy!r}")
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(f"warm-up method must be one of {WARMUP_METHODS}, got {warmup_method!r}")
        self.base_lr, self.policy, self.steps, self.gamma = base_lr, policy, sorted(steps), gamma
        self.warmup_iters, self.warmup_factor, self.warmup_method = warmup_iters, warmup_factor, warmup_method
        self.warmup_until_err = warmup_until_err
        self.plateau_patience, self.plateau_threshold, self.max_drops = plateau_patience, plateau_threshold, max_drops
        # Mutable state (saved in checkpoints).
        self.warmup_done_at = 0 if warmup_iters == 0 else -1
        self.plateau_drops = 0
        self.best_err = float("inf")
        self.bad_evals = 0

    def _in_warmup(self, iteration: int) -> bool:
        if self.warmup_done_at >= 0:
            return False
        return iteration < self.warmup_iters

    def lr(self, iteration: int) -> float:
        """Learning rate for (0-based) ``iteration``."""
        if self.policy == "step":
            drops = sum(1 for s in self.steps if iteration >= s)
        else:
            drops = self.plateau_drops
        lr = self.base_lr * self.gamma ** drops
        if self._in_warmup(iteration):
            if self.warmup_method == "linear" and not self.warmup_until_err:
                lr *= linear_warmup_factor(iteration, self.warmup_iters, self.warmup_factor)
            else:
                lr *= self.warmup_factor
        return lr

    def observe_train(self, iteration: int, recent_train_err: float) -> None:
        """Called after each iteration with the recent training error (%): ends an error-driven warm-up."""
        if self.warmup_done_at < 0:
            if iteration + 1 >= self.warmup_iters or (
                self.warmup_until_err and recent_train_err < self.warmup_until_err
            ):
                self.warmup_done_at = iteration + 1

    def observe_eval(self, val_err: float) -> bool:
        """Called after each evaluation with the validation top-1 error (%); True when the lr was just divided."""
        if self.policy != "plateau":
            return False
        if val_err < self.best_err - self.plateau_threshold:
            self.best_err, self.bad_evals = val_err, 0
            return False
        self.bad_evals += 1
        if self.bad_evals >= self.plateau_patience and self.plateau_drops < self.max_drops:
            self.plateau_drops += 1
            self.bad_evals = 0
            self.best_err = val_err
            return True
        return False

    def state_dict(self) -> Dict[str, float]:
        return {"warmup_done_at": self.warmup_done_at, "plateau_drops": self.plateau_drops,
                "best_err": self.best_err, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.warmup_done_at = int(state["warmup_done_at"])
        self.plateau_drops = int(state["plateau_drops"])
        self.best_err = float(state["best_err"])
        self.bad_evals = int(state["bad_evals"])
