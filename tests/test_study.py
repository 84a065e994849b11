"""Study planning: the commands a study runs, and skipping/resuming finished and interrupted steps."""
import pytest

from backbones.utils.config import ConfigError
from detection.study import load_study, plan


def _write(tmp_path, text):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return str(path)


STUDY = """
name: t
output_dir: {out}
overrides: [solver.max_iter=5]
runs:
  - name: r20-pre
    backbone: resnet20
    pretrain: {{dataset: digits, overrides: [solver.max_iter=3]}}
    detection: {{dataset: digits}}
  - name: r20-pre-again
    backbone: resnet20
    pretrain: {{dataset: digits, overrides: [solver.max_iter=3]}}
  - name: vgg-tv
    backbone: vgg16
    weights: torchvision
    detection: {{dataset: voc0712, config: configs/detection/voc0712_vgg16.yaml}}
"""


def test_plan_commands_share_pretraining(tmp_path):
    study = load_study(_write(tmp_path, STUDY.format(out=tmp_path / "runs")))
    steps = plan(study)
    assert [s.kind for s in steps] == ["pretrain", "detect", "detect", "detect", "report"]
    pre = steps[0]
    assert pre.argv[1:] == ["--arch", "resnet20", "--dataset", "digits", "--output-dir", str(pre.output_dir),
                            "solver.max_iter=3"]
    for det in steps[1:3]:  # both runs start from the one pretraining run
        assert det.argv[det.argv.index("--weights") + 1] == str(pre.output_dir / "model_final.pth")
        assert det.argv[-1] == "solver.max_iter=5"
    vgg = steps[3]
    assert vgg.argv[vgg.argv.index("--weights") + 1] == "torchvision"
    assert "--config" in vgg.argv and "voc0712" in vgg.argv
    assert steps[4].argv[-2:] == ["-o", str(tmp_path / "runs" / "report")]


def test_finished_steps_are_skipped_and_interrupted_ones_resume(tmp_path):
    study = load_study(_write(tmp_path, STUDY.format(out=tmp_path / "runs")))
    first = plan(study)
    (first[0].output_dir).mkdir(parents=True)
    (first[0].output_dir / "final.json").write_text("{}")
    ckpts = first[1].output_dir / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "model_0000010.pth").write_bytes(b"x")
    steps = plan(study)
    assert steps[0].done and not steps[0].resume
    assert not steps[1].done and steps[1].resume and steps[1].command()[-1] == "--resume"
    assert not steps[2].done and not steps[2].resume


def test_bad_studies(tmp_path):
    with pytest.raises(ConfigError, match="no runs"):
        load_study(_write(tmp_path, "name: x\n"))
    with pytest.raises(ConfigError, match="used twice"):
        load_study(_write(tmp_path, "runs:\n  - {name: a, backbone: resnet20}\n  - {name: a, backbone: resnet20}\n"))
    with pytest.raises(ConfigError, match=r"detectoin.*runs\[0\].*did you mean .detection."):
        load_study(_write(tmp_path, "runs:\n  - {name: a, backbone: resnet20, detectoin: {}}\n"))
    with pytest.raises(ConfigError, match="needs 'name' and 'backbone'"):
        load_study(_write(tmp_path, "runs:\n  - {name: a}\n"))
