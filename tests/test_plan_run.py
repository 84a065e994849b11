"""tools/plan_run.py: saved-tensor accounting, the schedule arithmetic, and one tiny measured training step."""
import torch
import torch.nn as nn

from detection.rehearsal import planning
from detection.rehearsal.planning import Schedule, SavedTensorBytes, schedule_rows, training_step_figures


def test_saved_tensor_bytes_counts_activations_not_weights():
    torch.manual_seed(0)
    layer = nn.Linear(10, 6)
    x = torch.randn(4, 10, requires_grad=True)
    with SavedTensorBytes(layer.parameters()) as saved:
        y = layer(x).relu()  # saves x, the (transposed) weight (left out) and relu's output
    assert saved.bytes == x.nbytes + y.nbytes
    with SavedTensorBytes() as everything:
        layer(x).relu()
    assert everything.bytes == x.nbytes + y.nbytes + layer.weight.nbytes


def test_schedule_rows_arithmetic():
    figures = {"r@600x1000": {"backbone": "r", "size": [600, 1000], "multiply_adds_per_image": 5e11,
                              "fp32": {"activation_bytes": 2 * 2 ** 30, "fixed_bytes": 2 ** 30},
                              "bf16": {"activation_bytes": 2 ** 30, "fixed_bytes": 2 ** 30}}}
    rows = schedule_rows(figures, {"X": {"assumed_tflops": 100.0}},
                         [Schedule("s", 1000, 16, 8, (600, 1000)), Schedule("other", 1, 1, 1, (1, 1))])
    assert len(rows) == 1  # only schedules at a measured size
    row = rows[0]
    assert row["images_per_gpu"] == 2 and row["total_pflop"] == 2 * 5e11 * 16 * 1000 / 1e15
    assert row["hours_X"] == 2 * 5e11 * 16 * 1000 / (8 * 100e12) / 3600
    assert row["memory_gib_per_gpu_bf16"] == 1 + 2 * 1 and row["memory_gib_per_gpu_fp32"] == 1 + 2 * 2


def test_training_step_figures_on_a_tiny_detector():
    small = ["model.roi_heads.batch_size_per_image=8", "model.rpn.post_nms_top_n_train=32",
             "model.rpn.pre_nms_top_n_train=64"]
    fp32 = training_step_figures("resnet18", (64, 96), bf16=False, overrides=small)
    bf16 = training_step_figures("resnet18", (64, 96), bf16=True, count_flops=False, overrides=small)
    assert fp32["multiply_adds"] > 1e8 and "multiply_adds" not in bf16
    assert 0 < bf16["activation_bytes"] < fp32["activation_bytes"]  # bf16 activations are smaller
    assert bf16["fixed_bytes"] > fp32["fixed_bytes"]  # + autocast's bf16 weight copies


def test_calibration_arithmetic(monkeypatch):
    # The measured step is replaced by a round number: what is checked is the chain of published-speed ratios.
    monkeypatch.setattr(planning, "training_step_figures", lambda *a, **k: {"multiply_adds": 1.0e12})
    c = planning.calibrate(log=lambda *_: None)
    v100_detector = 2 * 1e12 * 2 / 0.551 / 1e12
    v100_cls = 367 * 6 * 4.09e9 / 1e12
    assert abs(c["v100_detector_tflops"] - v100_detector) < 1e-9
    assert abs(c["A100"] - v100_detector / v100_cls * 2470 * 6 * 4.09e9 / 1e12) < 1e-9
    assert c["H100"] == planning.H100_OVER_A100 * c["A100"]
