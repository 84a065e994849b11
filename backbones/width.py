"""Channel scaling for reduced-width variants of the ImageNet-family nets (``width_mult``)."""


def scaled_channels(channels: int, width_mult: float) -> int:
    """``channels`` × ``width_mult``, rounded, at least 1; 1.0 returns the paper's count unchanged."""
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
    return max(1, int(round(channels * width_mult)))


def width_mult_of(family: str, state_dict) -> float:
    """The ``width_mult`` a state dict was built with, from its stem's output channels (64 at full width);
    1.0 for families that have no width option or a state dict without a stem."""
    key = {"imagenet_resnet": "conv1.weight", "vgg": "features.0.weight"}.get(family)
    if key is None or key not in state_dict:
        return 1.0
    return int(state_dict[key].shape[0]) / 64
