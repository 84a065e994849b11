"""Training under bf16 autocast on the CPU, as ``DetectionTrainer`` runs it: box arithmetic stays float32.

A few SGD steps of a small detector prepared like the trainer's (``prepare_for_training``) under CPU bf16 autocast;
every step checks that anchors, proposals, box-regression targets and the box predictor's outputs are float32, and
that the proposals are exactly those a float32 run computes from the same RPN head outputs on the same weights. A
model without the guards fails both checks (the control at the end).
"""
import copy

import pytest
import torch

from detection.config import load_det_config
from detection.engine.trainer import training_amp_dtype
from detection.model import build_detector
from detection.model.optimize import bf16_supported, prepare_for_training

pytestmark = pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16")

# Large images: coordinates near 600 px are rounded to 4 px steps in bf16.
OVERRIDES = ["model.backbone=resnet20", "model.freeze_at=0", "input.min_size_train=[480]", "input.max_size_train=640",
             "model.anchor_sizes=[32,64,128]", "model.rpn.pre_nms_top_n_train=400", "model.rpn.post_nms_top_n_train=64",
             "model.roi_heads.batch_size_per_image=16", "model.roi_heads.pooler_resolution=8", "solver.amp=bf16"]


def _model_and_data():
    cfg = load_det_config(None, OVERRIDES)
    torch.manual_seed(0)
    model = prepare_for_training(build_detector(cfg, 3)).train()
    gen = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 480, 640, generator=gen) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[400.0, 300.0, 560.0, 420.0], [20.0, 30.0, 200.0, 260.0]]),
                "labels": torch.tensor([1, 2])} for _ in range(2)]
    return model, images, targets


class _Recorder:
    """Hooks recording the quantities the guards must keep in float32."""

    def __init__(self, model):
        self.seen = {}
        self.handles = [
            model.rpn.anchor_generator.register_forward_hook(lambda m, a, out: self.note("anchors", out)),
            model.rpn.head.register_forward_hook(lambda m, a, out: self.note("rpn_head", out)),
            model.rpn.register_forward_hook(lambda m, a, out: self.note("proposals", out[0])),
            model.roi_heads.box_predictor.register_forward_hook(lambda m, a, out: self.note("box_predictor", out)),
        ]
        coder = model.roi_heads.box_coder
        encode = coder.encode
        coder.encode = lambda *args: self.put("box_targets", encode(*args))

    def note(self, key, value) -> None:  # a forward hook: returns None, so the output is not replaced
        self.seen[key] = value

    def put(self, key, value):
        self.seen[key] = value
        return value

    def dtypes(self):
        def flat(v):
            return [t for x in v for t in flat(x)] if isinstance(v, (list, tuple)) else [v]
        return {k: {t.dtype for t in flat(v)} for k, v in self.seen.items()}


def _proposals_from(model, images, targets, head_outputs):
    """The float32 run's proposals on ``model``'s weights, with its RPN head replaced by ``head_outputs``."""
    head = model.rpn.head
    forward = head.forward
    head.forward = lambda features: head_outputs
    captured = {}
    handle = model.rpn.register_forward_hook(lambda m, a, out: captured.update(p=out[0]))
    try:
        torch.manual_seed(5)
        model(images, targets)
    finally:
        head.forward = forward
        handle.remove()
    return captured["p"]


def test_trainer_uses_bf16_autocast_on_a_bf16_cpu():
    assert training_amp_dtype("bf16", torch.device("cpu"), _Info()) is torch.bfloat16
    assert training_amp_dtype("none", torch.device("cpu"), _Info()) is None
    assert training_amp_dtype("fp16", torch.device("cpu"), _Info()) is None  # no fp16 autocast on the CPU


class _Info:
    is_main = False


def test_bf16_training_steps_keep_box_arithmetic_float32():
    model, images, targets = _model_and_data()
    recorder = _Recorder(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    for _ in range(3):
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = model(images, targets)
        assert recorder.dtypes() == {k: {torch.float32} for k in
                                     ("anchors", "rpn_head", "proposals", "box_predictor", "box_targets")}
        assert all(torch.isfinite(v) for v in losses.values())
        # the proposals a float32 run gets from the same head outputs (same weights, this step's)
        reference = _proposals_from(model, images, targets, recorder.seen["rpn_head"])
        assert all(torch.equal(a, b) for a, b in zip(recorder.seen["proposals"], reference))
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # Control: the same model without the guards makes its anchors and proposals in bf16.
    bare = copy.deepcopy(model)
    bare.rpn.head._forward_hooks.clear()
    bare.rpn.anchor_generator._forward_pre_hooks.clear()
    bare_recorder = _Recorder(bare)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bare(images, targets)
    assert bare_recorder.dtypes()["anchors"] == {torch.bfloat16}
    assert bare_recorder.dtypes()["proposals"] == {torch.bfloat16}
