"""Exact key accounting when loading a state dict into a model."""
from typing import Iterable, Mapping

import torch
import torch.nn as nn


class WeightsMismatchError(RuntimeError):
    """Raised when a state dict does not match the model beyond the expected (replaced-head) keys."""


def _fmt(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:20])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > 20 else "")


def load_state_dict_exact(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    expected_missing: Iterable[str] = (),
    ignore_unexpected: Iterable[str] = (),
    source: str = "weights",
) -> None:
    """Load ``state_dict`` into ``model``; the only keys allowed to be missing are exactly ``expected_missing``.

    Shapes must match; ``num_batches_tracked`` counters are ignored both ways (FrozenBN has none).
    ``ignore_unexpected`` lists source keys that are dropped on purpose (e.g. a replaced classifier).
    """
    expected_missing = set(expected_missing)
    ignore = set(ignore_unexpected)
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked") and k not in ignore}
    missing = set(own) - set(given)
    unexpected = set(given) - set(own)
    problems = []
    if missing != expected_missing:
        extra_missing = missing - expected_missing
        not_missing = expected_missing - missing
        if extra_missing:
            problems.append(f"missing keys: {_fmt(extra_missing)}")
        if not_missing:
            problems.append(f"keys expected to be replaced but present: {_fmt(not_missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_fmt(unexpected)}")
    shapes = [
        f"{k}: {tuple(given[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(given) & set(own))
        if tuple(given[k].shape) != tuple(own[k].shape)
    ]
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes[:10]))
    if problems:
        raise WeightsMismatchError(f"{source} do not fit {type(model).__name__}: " + " | ".join(problems))
    result = model.load_state_dict(given, strict=False)
    leftover = {k for k in result.missing_keys if not k.endswith("num_batches_tracked")} - expected_missing
    if leftover or result.unexpected_keys:
        raise WeightsMismatchError(f"{source}: load left {_fmt(leftover | set(result.unexpected_keys))}")
