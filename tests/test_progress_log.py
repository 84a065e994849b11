"""Progress written to a file reads as lines (one per log period), while a terminal keeps its tqdm bar."""
import io
import re

import pytest

from backbones.utils.progress import TrainingProgress, format_duration, track
from fault_helpers import start_tool, tool_args, tool_env

TRAIN_LINE = re.compile(r"^(?P<desc>.+): iter (?P<iter>\d+)/(?P<total>\d+) \| loss (?P<loss>[-+\d.e]+|nan) \| "
                        r"(?:\w+ [-+\d.e]+ \| )*lr (?P<lr>[-+\d.e]+) \| (?P<spi>[\d.]+) s/iter \| "
                        r"ETA (?P<eta>\d+:\d\d:\d\d)$")


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_file_gets_one_line_per_log_period():
    stream = io.StringIO()
    with TrainingProgress(6, 0, "net on data", stream=stream) as progress:
        for i in range(1, 7):
            progress.update()
            if i % 2 == 0:
                progress.log(loss=1.0 / i, lr=0.01)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 3
    matches = [TRAIN_LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m["iter"]) for m in matches] == [2, 4, 6] and {m["desc"] for m in matches} == {"net on data"}
    assert matches[-1]["eta"] == "0:00:00" and float(matches[0]["loss"]) == pytest.approx(0.5)


def test_terminal_keeps_the_bar_and_disabled_writes_nothing():
    tty = FakeTerminal()
    with TrainingProgress(4, 0, "net", stream=tty) as progress:
        for _ in range(4):
            progress.update()
        progress.log(loss=0.5, lr=0.1)
    assert "\r" in tty.getvalue() and "4/4" in tty.getvalue()  # tqdm redraws in place
    quiet = io.StringIO()
    with TrainingProgress(4, 0, "net", enabled=False, stream=quiet) as progress:
        progress.update()
        progress.log(loss=0.5, lr=0.1)
    assert quiet.getvalue() == ""


def test_track_writes_rate_limited_lines_and_a_closing_line():
    stream = io.StringIO()
    assert list(track(range(5), "inference", stream=stream, interval_s=3600)) == list(range(5))
    assert stream.getvalue().splitlines() == [stream.getvalue().strip()]  # only the closing line
    assert re.fullmatch(r"inference: 5/5 batches \| [\d.]+ s each\n", stream.getvalue())
    every = io.StringIO()
    list(track(iter(range(3)), "eval", total=3, stream=every, interval_s=0))
    lines = every.getvalue().splitlines()
    assert [line.split(" ")[1] for line in lines] == ["1/3", "2/3", "3/3", "3/3"] and "ETA" in lines[0]
    assert "\r" not in every.getvalue()


def test_format_duration():
    assert format_duration(3725.4) == "1:02:05" and format_duration(float("nan")) == "?"


def _run_to_file(tool, tmp_path, *overrides):
    log = tmp_path / "log.txt"
    data_root = tmp_path / "data"
    args = tool_args(tool, tmp_path / "run", *overrides, data_root=data_root)
    proc = start_tool(tool, args, tool_env(data_root), log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    return log.read_text()


def _train_lines(text):
    return [m for m in map(TRAIN_LINE.match, text.splitlines()) if m]


def test_detection_training_log_in_a_file(tmp_path):
    text = _run_to_file("train_det.py", tmp_path, "solver.max_iter=6", "solver.steps=[4]", "solver.log_period=2",
                        "solver.checkpoint_period=6")
    assert "\r" not in text
    lines = _train_lines(text)
    assert [int(m["iter"]) for m in lines] == [2, 4, 6], text[-2000:]
    assert {m["total"] for m in lines} == {"6"} and lines[0]["desc"] == "resnet20 on digits_train"
    assert all(float(m["spi"]) > 0 for m in lines)


def test_pretraining_log_in_a_file(tmp_path):
    text = _run_to_file("pretrain.py", tmp_path, "train.progress=true", "solver.max_iter=8", "solver.steps=[6]",
                        "train.log_period=4", "train.checkpoint_period=8")
    assert "\r" not in text
    lines = _train_lines(text)
    assert [int(m["iter"]) for m in lines] == [4, 8], text[-2000:]
    assert all(" | err " in m.group(0) for m in lines)  # pretraining also shows the running training error
    assert re.search(r"^eval single: 1/1 batches \| [\d.]+ s each$", text, re.M), text[-2000:]  # final evaluation


def test_track_on_a_terminal_draws_a_transient_bar():
    tty = FakeTerminal()
    assert list(track(range(3), "inference", stream=tty)) == [0, 1, 2]
    assert "\rinference:" in tty.getvalue() and "0/3 [" in tty.getvalue()  # a tqdm bar, cleared at the end
