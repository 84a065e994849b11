"""End to end on the CPU: tools/pretrain.py on digits → tools/train_det.py from that checkpoint → a clearly
non-trivial AP50 on the generated digits val canvases (docs/DETECTION.md has the full-length figures)."""
import importlib.util
import json
from pathlib import Path

import pytest

from fault_helpers import one_thread  # noqa: F401  (shared one-thread fixture)

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _main(tool):
    spec = importlib.util.spec_from_file_location(f"resdet_tool_{tool}", REPO / "tools" / f"{tool}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda *argv: module.main(module.get_args_parser().parse_args([str(a) for a in argv]))


def test_pretrained_digits_backbone_detects_digits(tmp_path):
    pretrain = tmp_path / "pretrain"
    # A shortened classification recipe: enough for useful first-layer features.
    assert _main("pretrain")("--config", REPO / "configs/pretrain/digits_resnet20.yaml", "--output-dir", pretrain,
                             "solver.max_iter=150", "solver.steps=[100,130]", "train.eval_period=0",
                             "train.progress=false", "train.device=cpu") == 0
    detect = tmp_path / "detect"
    assert _main("train_det")("--dataset", "digits", "--backbone", "resnet20",
                              "--weights", pretrain / "model_final.pth", "--data-root", tmp_path / "data",
                              "--output-dir", detect, "solver.max_iter=600", "solver.steps=[450]") == 0
    final = json.loads((detect / "final.json").read_text())
    assert final["weights_meta"]["source"].startswith("resdet")
    assert final["metrics"]["bbox"]["num_images"] == 200
    assert final["metrics"]["bbox"]["AP50"] > 15.0, final["metrics"]["bbox"]


# Shortened by width, not by schedule: the recipe's 1500 pretraining and 600 detection iterations at quarter width
# (model.width_mult=0.25 on both commands, as the resnet50/101/152 and vgg16 recipes use), about 6x cheaper than the
# full-width net, whose chain outgrew the slow suite's 15-minute limit in CI. Measured: pretraining val error 6.4 %,
# AP50 50.2 (full width: 72-74, docs/DETECTION.md). The stalled detector of digits that fill the pretraining images
# reached AP50 9.3 after 1000 detection iterations.
QUARTER_WIDTH = "model.width_mult=0.25"
AP50_BOUND = 18.0


def test_resnet18_digits_chain_learns_to_classify_digits(tmp_path):
    """The ImageNet family's digits recipe (issue 16) at quarter width: resnet18 pretrained on context patches, then its
    stride-16 C4 detector. With digits that fill the pretraining images this detector stalls (AP50 0.8-5.7 at 200-300
    iterations, docs/DETECTION.md); the bound below needs a box classifier that tells digits apart."""
    pretrain = tmp_path / "pretrain"
    assert _main("pretrain")("--arch", "resnet18", "--dataset", "digits", "--output-dir", pretrain, QUARTER_WIDTH,
                             "train.eval_period=0", "train.progress=false", "train.device=cpu") == 0
    detect = tmp_path / "detect"
    assert _main("train_det")("--dataset", "digits", "--backbone", "resnet18",
                              "--weights", pretrain / "model_final.pth", "--data-root", tmp_path / "data",
                              "--output-dir", detect, QUARTER_WIDTH) == 0
    bbox = json.loads((detect / "final.json").read_text())["metrics"]["bbox"]
    assert bbox["AP50"] > AP50_BOUND, bbox
