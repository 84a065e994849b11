import importlib.util

import pytest
from PIL import Image

from backbones.pretrain.curves import plot_error_curves
from backbones.utils.atomic_io import atomic_write_json
from backbones.utils.metrics_log import MetricsLogger
from test_pretrain_fixtures import REPO


def _fake_run(folder, arch, slope):
    logger = MetricsLogger(folder, tensorboard=False)
    for it in range(10, 110, 10):
        logger.log(it, lr=0.1, loss=1.0, train_err=max(0.0, 90 - slope * it))
        if it % 50 == 0:
            logger.log(it, **{"eval/top1_err": 95 - slope * it, "eval/top5_err": 10.0})
    atomic_write_json(folder / "final.json", {"arch": arch, "iters": 100, "train_err": 90 - slope * 100,
                                              "top1_err": 95 - slope * 100, "protocol": "single"})
    return folder


def _plot_tool():
    spec = importlib.util.spec_from_file_location("plot_curves", REPO / "tools" / "plot_curves.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_two_runs(tmp_path, capsys):
    runs = [_fake_run(tmp_path / "a", "plain20", 0.5), _fake_run(tmp_path / "b", "resnet20", 0.8)]
    tool = _plot_tool()
    out = tmp_path / "fig" / "curves.png"
    assert tool.main(tool.get_args_parser().parse_args([*map(str, runs), "-o", str(out), "--title", "t"])) == 0
    table = capsys.readouterr().out
    assert f"| {runs[0]} | plain20 | 100 | 40.00 | 45.00 | single |" in table
    assert f"| {runs[1]} | resnet20 | 100 | 10.00 | 15.00 | single |" in table
    with Image.open(out) as image:
        assert image.size[0] > 400 and len(image.convert("L").getcolors(65536)) > 10  # an actual drawing


def test_plot_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no metrics.jsonl"):
        plot_error_curves([tmp_path / "empty"], tmp_path / "x.png")
    run = _fake_run(tmp_path / "a", "plain20", 0.5)
    with pytest.raises(ValueError, match="2 labels given for 1 runs"):
        plot_error_curves([run], tmp_path / "x.png", labels=["a", "b"])


def test_panels_split_families(tmp_path):
    runs = [_fake_run(tmp_path / n, n, 0.5) for n in ("plain20", "plain56", "resnet20")]
    single = plot_error_curves(runs, tmp_path / "one.png")
    double = plot_error_curves(runs, tmp_path / "two.png", panels=True)
    with Image.open(single) as a, Image.open(double) as b:
        assert b.size[0] > a.size[0] * 1.5  # two panels side by side
