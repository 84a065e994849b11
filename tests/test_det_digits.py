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


# Shortened from the recipe's 1500 pretraining iterations (val error 3.9 %; detection AP50 72-74): 500 give val error
# 31 % and, with the recipe's 600 detection iterations, AP50 25.8 (docs/DETECTION.md). The stalled detector of digits
# that fill the pretraining images reached AP50 9.3 after 1000 detection iterations.
SHORT_PRETRAIN = ("solver.max_iter=500", "solver.steps=[350,450]")
AP50_BOUND = 18.0


def test_resnet18_digits_chain_learns_to_classify_digits(tmp_path):
    """The ImageNet family's digits recipe (issue 16), shortened: resnet18 pretrained on context patches, then its
    stride-16 C4 detector. With digits that fill the pretraining images this detector stalls (AP50 0.8-5.7 at 200-300
    iterations, docs/DETECTION.md); the bound below needs a box classifier that tells digits apart."""
    pretrain = tmp_path / "pretrain"
    assert _main("pretrain")("--arch", "resnet18", "--dataset", "digits", "--output-dir", pretrain,
                             *SHORT_PRETRAIN, "train.eval_period=0", "train.progress=false", "train.device=cpu") == 0
    detect = tmp_path / "detect"
    assert _main("train_det")("--dataset", "digits", "--backbone", "resnet18",
                              "--weights", pretrain / "model_final.pth", "--data-root", tmp_path / "data",
                              "--output-dir", detect) == 0
    bbox = json.loads((detect / "final.json").read_text())["metrics"]["bbox"]
    assert bbox["AP50"] > AP50_BOUND, bbox
