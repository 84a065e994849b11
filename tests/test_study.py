"""Study planning: the commands a study runs, seeds, parallel steps, and skipping/resuming finished and interrupted
steps."""
import json
import os
from pathlib import Path

import pytest

from backbones.utils.config import ConfigError
from detection.study import load_study, plan

REPO = Path(__file__).resolve().parents[1]


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


SEEDED = """
name: seeded
output_dir: {out}
seeds: [0, 1]
jobs: 2
runs:
  - name: res-pre
    backbone: resnet20
    pretrain: {{dataset: digits}}
  - name: res-scratch
    backbone: resnet20
comparisons:
  - {{arm: res-pre, baseline: res-scratch, claim: pretraining helps}}
"""


def test_seeds_replicate_the_whole_chain(tmp_path):
    study = load_study(_write(tmp_path, SEEDED.format(out=tmp_path / "runs")))
    steps = plan(study)
    # seed by seed, each detector right after its pretraining
    assert [s.kind for s in steps] == ["pretrain", "detect", "detect", "pretrain", "detect", "detect", "report"]
    root = tmp_path / "runs"
    pre = [steps[0], steps[3]]
    assert [s.output_dir for s in pre] == [root / "pretrain" / "digits_resnet20_seed0",
                                           root / "pretrain" / "digits_resnet20_seed1"]
    assert [s.argv[-1] for s in pre] == ["train.seed=0", "train.seed=1"]
    det = [steps[1], steps[4], steps[2], steps[5]]
    assert [s.output_dir for s in det] == [root / "res-pre" / "seed0", root / "res-pre" / "seed1",
                                           root / "res-scratch" / "seed0", root / "res-scratch" / "seed1"]
    assert [s.argv[-1] for s in det] == ["seed=0", "seed=1", "seed=0", "seed=1"]
    # each seed's detector starts from that seed's pretraining; scratch arms need nothing
    assert det[1].argv[det[1].argv.index("--weights") + 1] == str(pre[1].output_dir / "model_final.pth")
    assert det[1].depends_on == [str(pre[1].output_dir)] and det[2].depends_on == []
    assert "--weights" not in det[2].argv
    assert steps[-1].argv[1:] == ["--study", str(root / "study.json"), "-o", str(root / "report")]


def test_bad_seeds_and_comparisons(tmp_path):
    base = "runs:\n  - {name: a, backbone: resnet20}\n"
    with pytest.raises(ConfigError, match="distinct integers"):
        load_study(_write(tmp_path, base + "seeds: [0, 0]\n"))
    with pytest.raises(ConfigError, match=r"comparisons\[0\].baseline = 'b' names no run"):
        load_study(_write(tmp_path, base + "comparisons: [{arm: a, baseline: b}]\n"))


FAKE_TOOL = """
import json, os, sys, time
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("{flag}") + 1])
out.mkdir(parents=True, exist_ok=True)
log = Path(os.environ["FAKE_LOG"])
with open(log, "a") as f:
    f.write(json.dumps(["start", str(out), time.time(), os.environ.get("OMP_NUM_THREADS")]) + "\\n")
if "--weights" in args:
    assert Path(args[args.index("--weights") + 1]).is_file(), "weights missing: the pretraining did not finish first"
time.sleep(0.3)
(out / "{product}").write_text("{{}}")
(out / "final.json").write_text("{{}}")
with open(log, "a") as f:
    f.write(json.dumps(["end", str(out), time.time(), None]) + "\\n")
"""


def test_parallel_steps_respect_dependencies_and_the_job_limit(tmp_path, monkeypatch):
    import detection.study as study_module
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "pretrain.py").write_text(FAKE_TOOL.format(flag="--output-dir", product="model_final.pth"))
    (tools / "train_det.py").write_text(FAKE_TOOL.format(flag="--output-dir", product="eval.txt"))
    (tools / "report.py").write_text(FAKE_TOOL.format(flag="-o", product="report.md"))
    monkeypatch.setattr(study_module, "TOOLS", tools)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "events.jsonl"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    study = load_study(_write(tmp_path, SEEDED.format(out=tmp_path / "runs")))
    study_module.run_study(study, log=lambda *_: None)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert sum(e[0] == "start" for e in events) == 7
    running, peak = 0, 0
    for kind, *_ in sorted(events, key=lambda e: e[2]):
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2  # two jobs ran side by side, never more
    assert {e[3] for e in events if e[0] == "start"} == {str(max(1, (os.cpu_count() or 1) // 2))}
    ends = {e[1]: e[2] for e in events if e[0] == "end"}
    starts = {e[1]: e[2] for e in events if e[0] == "start"}
    report = str(tmp_path / "runs" / "report")
    assert starts[report] >= max(t for d, t in ends.items() if d != report)
    manifest = json.loads((tmp_path / "runs" / "study.json").read_text())
    assert [a["runs"] for a in manifest["arms"]][1] == [str(tmp_path / "runs" / "res-scratch" / f"seed{s}")
                                                       for s in (0, 1)]
    # a re-run skips every finished step
    (tmp_path / "events.jsonl").unlink()
    (tmp_path / "runs" / "report" / "final.json").unlink()
    study_module.run_study(study, log=lambda *_: None)
    assert [json.loads(x)[1] for x in (tmp_path / "events.jsonl").read_text().splitlines()] == [report, report]


def _tool(name):
    import runpy
    return runpy.run_path(str(REPO / "tools" / f"{name}.py"))


@pytest.mark.parametrize("name", ["digits", "digits_table7", "digits_table9"])
def test_shipped_studies_validate(name):
    """`make demo` / `make table7` / `make table9`: two or more seeds per arm, comparisons, and every step's config
    is valid."""
    from backbones.pretrain import validate as validate_pretrain
    from detection.config import load_det_config
    study = load_study(str(REPO / "configs" / "study" / f"{name}.yaml"))
    assert len(study.seeds) >= 2 and study.comparisons
    tools = {"pretrain": _tool("pretrain"), "detect": _tool("train_det")}
    steps = plan(study)
    trained = [r for r in study.runs if not r.evaluate.arm]
    assert sum(s.kind == "detect" for s in steps) == len(trained) * len(study.seeds)
    assert sum(s.kind == "evaluate" for s in steps) == (len(study.runs) - len(trained)) * len(study.seeds)
    for step in steps[:-1]:
        if step.kind == "evaluate":  # test-time overrides on top of the stored detector's config
            load_det_config(None, step.argv[step.argv.index("--no-report") + 1:])
            continue
        tool = tools[step.kind]
        cfg, _ = tool["setup"](tool["get_args_parser"]().parse_args(step.argv[1:]))  # raises ConfigError if invalid
        if step.kind == "pretrain":
            validate_pretrain(cfg)
        else:
            assert cfg.seed in study.seeds and cfg.model.backbone in {r.backbone for r in study.runs}


def test_evaluate_arms_reuse_trained_detectors_and_carry_paper_rows(tmp_path):
    from detection.study import manifest

    text = """
name: t
output_dir: {out}
seeds: [0, 1]
runs:
  - {{name: base, backbone: resnet20, detection: {{dataset: digits}}, paper: {{row: "baseline", AP50: 48.4, AP: 27.2}}}}
  - name: refined
    evaluate: {{arm: base, overrides: [test.box_refinement=true]}}
    paper: {{row: "+ box refinement", AP50: 49.9, AP: 29.9}}
comparisons: [{{arm: refined, baseline: base}}]
"""
    study = load_study(_write(tmp_path, text.format(out=tmp_path / "runs")))
    steps = plan(study)
    evals = [s for s in steps if s.kind == "evaluate"]
    assert [s.depends_on for s in evals] == [[str(tmp_path / "runs" / "base" / f"seed{i}")] for i in (0, 1)]
    assert evals[0].argv[1:] == ["--weights", str(tmp_path / "runs/base/seed0/model_final.pth"), "-o",
                                 str(tmp_path / "runs/refined/seed0"), "--no-report", "test.box_refinement=true"]
    arms = manifest(study)["arms"]
    assert arms[1]["backbone"] == "resnet20" and arms[1]["paper"]["AP50"] == 49.9
    assert arms[1]["init"] == "base's detectors, test.box_refinement=true"
    (tmp_path / "runs/refined/seed0/eval").mkdir(parents=True)
    (tmp_path / "runs/refined/seed0/eval/metrics.json").write_text("{}")
    assert [s.done for s in plan(study) if s.kind == "evaluate"] == [True, False]
    with pytest.raises(ConfigError, match=r"runs\[0\].evaluate.arm = 'later' names no training run listed before"):
        load_study(_write(tmp_path, "runs:\n  - {name: a, evaluate: {arm: later}}\n  - {name: later, backbone: resnet20}\n"))


def test_report_puts_paper_rows_beside_the_arms(tmp_path):
    from detection.reports.study_report import paper_row_blocks, load_arms

    runs = []
    for name, ap50 in (("base", 40.0), ("refined", 44.0)):
        run = tmp_path / name
        (run / "eval").mkdir(parents=True)
        (run / "eval" / "metrics.json").write_text(json.dumps({"bbox": {"AP50": ap50, "AP": ap50 / 2}}))
        runs.append(str(run))
    manifest = {"arms": [{"name": "base", "backbone": "resnet101", "runs": [runs[0]]},
                         {"name": "refined", "backbone": "resnet101", "runs": [runs[1]],
                          "paper": {"row": "+ box refinement", "AP50": 49.9, "AP": 29.9}}]}
    (table, *_), = [paper_row_blocks(load_arms(manifest))[1:]]
    assert table.rows == [["+ box refinement", "49.9", "29.9", "refined", "44.0 ± 0.0", "22.0 ± 0.0"]]
