"""Guard against non-finite (NaN/Inf) losses and gradients.

Policy ``stop`` raises ``NonFiniteError`` naming the iteration and the last good checkpoint; ``skip`` drops the
optimiser step and goes on, up to ``max_consecutive_skips`` in a row. Under DDP the decision is all-reduced so every
process takes the same branch. ``assert_finite_state`` is called before writing a checkpoint, so a non-finite
model is never saved.
"""
from typing import Iterable, Mapping, Optional

import torch

from .dist import all_reduce_sum

NAN_POLICIES = ("stop", "skip")


class NonFiniteError(RuntimeError):
    """Training produced a NaN/Inf; the message names the iteration, what was non-finite and how to resume."""

    def __init__(self, message: str, iteration: Optional[int] = None, last_checkpoint: Optional[str] = None):
        super().__init__(message)
        self.iteration = iteration
        self.last_checkpoint = last_checkpoint


def grads_finite(parameters: Iterable[torch.nn.Parameter]) -> bool:
    """True when every existing gradient is finite (one fused reduction, one host sync)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    norms = torch._foreach_norm(grads) if hasattr(torch, "_foreach_norm") else [g.norm() for g in grads]
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


def assert_finite_state(state: Mapping[str, torch.Tensor], what: str = "model") -> None:
    """Raise ``NonFiniteError`` if a floating tensor of ``state`` (a state dict) holds NaN/Inf."""
    for name, tensor in state.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(f"{what} tensor '{name}' holds NaN/Inf; refusing to write it to a checkpoint")


class NanGuard:
    """Decide, once per iteration and identically on every process, whether the optimiser step may be taken.

    Args:
        policy: "stop" or "skip".
        max_consecutive_skips: with "skip", stop anyway after this many non-finite iterations in a row.
        check_grads: also check gradients. Leave False when an fp16 GradScaler is active: it already skips steps with
            inf gradients and lowers its scale, which is its normal operation rather than a fault.
    """

    def __init__(self, policy: str = "stop", max_consecutive_skips: int = 10, check_grads: bool = True):
        if policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {policy!r}")
        if max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {max_consecutive_skips}")
        self.policy = policy
        self.max_consecutive_skips = max_consecutive_skips
        self.check_grads = check_grads
        self.skipped_total = 0
        self.consecutive = 0

    def step_ok(
        self,
        iteration: int,
        loss: torch.Tensor,
        parameters: Iterable[torch.nn.Parameter] = (),
        last_checkpoint: Optional[str] = None,
    ) -> bool:
        """True → take the step. False → skip it (policy "skip"). Raises ``NonFiniteError`` with policy "stop"."""
        loss_bad = not bool(torch.isfinite(loss.detach()).all())
        grad_bad = self.check_grads and not loss_bad and not grads_finite(parameters)
        flags = torch.tensor([float(loss_bad), float(grad_bad)], device=loss.device)
        loss_bad, grad_bad = (bool(v > 0) for v in all_reduce_sum(flags).tolist())
        if not (loss_bad or grad_bad):
            self.consecutive = 0
            return True
        what = "loss" if loss_bad else "gradient"
        where = last_checkpoint or "none written yet"
        if self.policy == "skip" and self.consecutive < self.max_consecutive_skips:
            self.consecutive += 1
            self.skipped_total += 1
            return False
        reason = (
            f"{self.consecutive} consecutive skipped steps before it (max_consecutive_skips="
            f"{self.max_consecutive_skips})" if self.policy == "skip" else "nan_policy=stop"
        )
        raise NonFiniteError(
            f"non-finite {what} at iteration {iteration} ({reason}); last good checkpoint: {where}. "
            f"Lower the learning rate or enable warm-up, then resume from that checkpoint.",
            iteration=iteration,
            last_checkpoint=last_checkpoint,
        )

    def state_dict(self) -> dict:
        return {"skipped_total": self.skipped_total, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_total = int(state.get("skipped_total", 0))
        self.consecutive = int(state.get("consecutive", 0))
