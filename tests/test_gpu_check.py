"""tools/gpu_check.py: its whole logic on the CPU at tiny sizes (the CUDA calls sit behind one Accelerator)."""
import json

import pytest
import torch

from detection.rehearsal.gpu_check import TINY, cpu_accelerator, matched_fraction, run_gpu_check, table


@pytest.mark.slow  # ~15 s of CPU: two detectors built, trained, run in fp32 and bf16
def test_whole_check_runs_on_the_cpu_accelerator():
    result = run_gpu_check(cpu_accelerator(bf16=True), TINY, log=lambda *_: None)  # bf16 logic, emulated if need be
    json.dumps(result)  # the JSON the tool writes
    train = result["training"]["resnet18"]
    assert set(train) == {"bf16", "fp32"} and all(v["loss_finite"] for v in train.values())
    assert train["fp32"]["multiply_adds_per_iter"] > 0 and train["bf16"]["images_per_s"] > 0
    assert set(result["inference"]["resnet18"]) == {"fp32", "bf16"}
    assert result["classification"]["img_per_s"] > 0
    assert result["precision"]["proposals"]["count"] > 0 and result["precision"]["boxes"]["count"] > 0
    assert result["precision"]["passed"], result["precision"]  # guards on: bf16 boxes stay on fp32's
    assert "train resnet18-C4" in table(result)


@pytest.mark.parametrize("native", [False, True])
def test_cpu_accelerator_reports_bf16_only_where_the_cpu_has_it(monkeypatch, native):
    from detection.rehearsal import gpu_check

    monkeypatch.setattr(gpu_check, "bf16_supported", lambda device: native)
    assert cpu_accelerator().bf16 is native
    assert cpu_accelerator(bf16=True).bf16 is True  # asked for explicitly (the test above)


def test_matched_fraction_catches_moved_boxes():
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0], [500.0, 500.0, 900.0, 700.0]])
    assert matched_fraction(boxes, boxes.flip(0), 0.9)["matched"] == 1.0
    moved = boxes + torch.tensor([8.0, 0.0, 8.0, 0.0])  # 8 px: IoU of the first box 0.85
    result = matched_fraction(boxes, moved, 0.9)
    assert result["matched"] == 0.5 and result["mean_abs_px"] == 4.0
    assert matched_fraction(boxes, torch.zeros(0, 4), 0.9)["matched"] == 0.0


def test_without_cuda_the_tool_says_so_and_does_nothing(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "tools" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "gpu.json"
    if torch.cuda.is_available():  # the real path would run; check the message path with "no device"
        tool.cuda_accelerator = lambda: None
    assert tool.main(tool.get_args_parser().parse_args(["--json", str(out)])) == 0
    assert "no CUDA device" in capsys.readouterr().out and not out.exists()
