"""Reports render from small fake run folders (written here with the real evaluators) and are self-contained."""
import base64
import contextlib
import io
import json
import runpy
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from detection.evaluation import COCOEvaluator, VOCEvaluator, flatten_metrics, write_samples
from detection.reports import build_report, load_run

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog"]
GT = {i: [{"label": 1 + i % 2, "bbox": [10.0 + i, 10.0, 60.0 + i, 50.0], "difficult": False},
          {"label": 1, "bbox": [70.0, 60.0, 110.0, 100.0], "difficult": i == 3}] for i in range(4)}


def fake_outputs(quality: int):
    """quality 2: every object found; 1: misses the second object and adds a wrong-class box."""
    outputs = []
    for i in range(4):
        boxes, scores, labels = [GT[i][0]["bbox"]], [0.9], [GT[i][0]["label"]]
        if quality == 2:
            boxes.append(GT[i][1]["bbox"]), scores.append(0.8), labels.append(1)
        else:
            boxes.append([0.0, 0.0, 20.0, 20.0]), scores.append(0.7), labels.append(2)
        outputs.append({"boxes": torch.tensor(boxes), "scores": torch.tensor(scores), "labels": torch.tensor(labels)})
    return outputs


def coco_gt() -> COCO:
    anns = [{"id": 1 + 2 * i + j, "image_id": i, "category_id": o["label"], "iscrowd": 0,
             "bbox": [o["bbox"][0], o["bbox"][1], o["bbox"][2] - o["bbox"][0], o["bbox"][3] - o["bbox"][1]],
             "area": (o["bbox"][2] - o["bbox"][0]) * (o["bbox"][3] - o["bbox"][1])}
            for i, objs in GT.items() for j, o in enumerate(objs)]
    gt = COCO()
    gt.dataset = {"images": [{"id": i, "width": 128, "height": 112} for i in GT], "annotations": anns,
                  "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def make_run(run_dir: Path, backbone: str, quality: int, dataset: str = "voc0712") -> Path:
    eval_dir = run_dir / "eval"
    outputs = fake_outputs(quality)
    voc = VOCEvaluator(CLASSES, GT, output_dir=eval_dir, image_names={i: f"{i:06d}" for i in GT})
    coco = COCOEvaluator(coco_gt(), {1: 1, 2: 2}, output_dir=eval_dir)
    for ev in (voc, coco):
        ev.process(list(GT), outputs)
    final_metrics = {**voc.evaluate(), **coco.evaluate()}
    rng = np.random.default_rng(quality)
    images = [rng.integers(0, 255, size=(112, 128, 3), dtype=np.uint8) for _ in range(3)]
    targets = [{"boxes": torch.tensor([o["bbox"] for o in GT[i]]), "labels": torch.tensor([o["label"] for o in GT[i]]),
                "difficult": torch.tensor([o["difficult"] for o in GT[i]])} for i in range(3)]
    write_samples(eval_dir, images, outputs[:3], targets, CLASSES, image_ids=[0, 1, 2])
    (run_dir / "config.yaml").write_text(f"model:\n  backbone: {backbone}\ndata:\n  dataset: {dataset}\n")
    lines = [json.dumps({"iter": it, "lr": 0.001 if it < 80 else 0.0001, "loss": 2.0 / it,
                         "loss_classifier": 1.0 / it, "loss_box_reg": 0.5 / it, "loss_objectness": 0.3 / it,
                         "loss_rpn_box_reg": 0.2 / it}) for it in range(10, 101, 10)]
    lines.insert(5, json.dumps({"iter": 50, **flatten_metrics(final_metrics)}))
    lines.append('{"iter": 100, "lr": 0.0')  # a run killed mid-write leaves a truncated last line
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "final.json").write_text(json.dumps({
        "backbone": backbone, "dataset": dataset, "iters": 100, "checkpoint": str(run_dir / "model_final.pth"),
        "weights_meta": {"arch": backbone, "source": "torchvision", "pixel_format": "RGB", "mean": [0.485, 0.456,
                                                                                                   0.406]}}))
    return run_dir


class _References(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [(tag, k, v) for k, v in attrs if k in ("src", "href", "srcset", "data", "action")]


def check_self_contained(html_text: str, min_images: int):
    parser = _References()
    parser.feed(html_text)
    assert not {"script", "link", "iframe", "object", "embed"} & set(parser.tags)
    assert "url(" not in html_text
    srcs = [v for tag, k, v in parser.refs if k == "src"]
    assert all(v.startswith("data:image/png;base64,") for v in srcs), [v[:40] for v in srcs]
    assert not [r for r in parser.refs if r[1] != "src"]
    assert len(srcs) >= min_images
    for v in srcs:
        assert base64.b64decode(v.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_run_report(tmp_path):
    run = make_run(tmp_path / "voc0712_resnet101", "resnet101", quality=2)
    loaded = load_run(run)
    assert [e["iter"] for e in loaded.train_log][-1] == 100 and len(loaded.eval_log) == 1
    md, html_file = build_report([run], tmp_path / "report")
    text = md.read_text()
    assert "COCO-style summary" in text and "PASCAL VOC summary" in text and "Per-class AP" in text
    assert "| cat |" in text and "Resolved config" in text and "weights meta: source | torchvision" in text
    for png in ("pr_overall", "pr_voc_per_class", "pr_bbox_per_class", "training", "samples"):
        assert (tmp_path / "report" / f"voc0712_resnet101_{png}.png").is_file()
        assert f"(voc0712_resnet101_{png}.png)" in text  # relative links in the Markdown
    check_self_contained(html_file.read_text(), min_images=5)
    assert "76.4" in text  # the paper's number for this benchmark


def test_study_report_has_deltas_and_paper_numbers(tmp_path):
    vgg = make_run(tmp_path / "vgg", "vgg16", quality=1)
    res = make_run(tmp_path / "res", "resnet101", quality=2)
    tool = runpy.run_path(str(REPO / "tools" / "report.py"))
    assert tool["main"](tool["get_args_parser"]().parse_args([str(res), str(vgg), "-o", str(tmp_path / "study")])) == 0
    md = (tmp_path / "study" / "report.md").read_text()
    m_vgg = json.loads((vgg / "eval" / "metrics.json").read_text())
    m_res = json.loads((res / "eval" / "metrics.json").read_text())
    assert m_res["voc"]["mAP_07"] > m_vgg["voc"]["mAP_07"]
    delta = m_res["voc"]["mAP_07"] - m_vgg["voc"]["mAP_07"]
    # The vgg16 run is the baseline even though it was given second.
    study_row = next(line for line in md.splitlines() if line.startswith("| res | resnet101"))
    assert f"{m_res['voc']['mAP_07']:.1f} ({delta:+.1f})" in study_row
    paper_row = next(line for line in md.splitlines() if line.startswith("| VOC 2007 test mAP"))
    cells = [c.strip() for c in paper_row.strip("|").split("|")]
    assert cells[2:] == ["73.2", "76.4", "+3.2", f"{m_vgg['voc']['mAP_07']:.1f}", f"{m_res['voc']['mAP_07']:.1f}",
                         f"{delta:+.1f}"]
    assert "| COCO val mAP@.5 | Table 8 | 41.5 | 48.4 | +6.9 | – | – | – |" in md  # no COCO runs here
    check_self_contained((tmp_path / "study" / "report.html").read_text(), min_images=11)


def test_bad_run_folders_are_named(tmp_path):
    run = make_run(tmp_path / "run", "resnet50", quality=2)
    with pytest.raises(ValueError, match="--baseline 'vgg19' matches no run"):
        build_report([run, run], tmp_path / "out", baseline="vgg19")
    log = run / "metrics.jsonl"
    lines = log.read_text().splitlines()
    lines[2] = "{not json"
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:3: not a JSON object"):
        load_run(run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is it a run folder"):
        load_run(tmp_path / "empty")


def _seeded_run(path: Path, backbone: str, ap50: float, ap: float) -> Path:
    run = make_run(path, backbone, quality=2, dataset="digits")
    metrics_file = run / "eval" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["bbox"].update(AP50=ap50, AP=ap)
    metrics_file.write_text(json.dumps(metrics))
    return run


def test_study_report_shows_mean_and_spread_and_states_only_resolved_differences(tmp_path):
    values = {"res": [(82.0, 50.0), (86.0, 54.0)], "plain": [(60.0, 41.0), (70.0, 53.0)]}
    arms = []
    for name, backbone in (("res", "resnet56"), ("plain", "plain56")):
        runs = [str(_seeded_run(tmp_path / name / f"seed{s}", backbone, *values[name][s])) for s in (0, 1)]
        arms.append({"name": name, "backbone": backbone, "init": "pretrained on digits", "runs": runs})
    manifest = {"name": "t", "description": "shortened schedules", "seeds": [0, 1], "arms": arms,
                "comparisons": [{"arm": "res", "baseline": "plain", "claim": "shortcuts help"}]}
    (tmp_path / "study.json").write_text(json.dumps(manifest))
    tool = runpy.run_path(str(REPO / "tools" / "report.py"))
    args = tool["get_args_parser"]().parse_args(["--study", str(tmp_path / "study.json"), "-o", str(tmp_path / "out")])
    assert tool["main"](args) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "shortened schedules" in md
    assert "| res | resnet56 | pretrained on digits | 2 | 100 | 84.0 ± 2.0 (82.0, 86.0) | 52.0 ± 2.0 (50.0, 54.0)" in md
    assert "| plain | plain56 | pretrained on digits | 2 | 100 | 65.0 ± 5.0 (60.0, 70.0) | 47.0 ± 6.0 (41.0, 53.0)" in md
    # AP50: +19.0 exceeds 2.0 + 5.0; AP: +5.0 lies within 2.0 + 6.0
    assert "| shortcuts help | res − plain | AP50 | +19.0 | ± 7.0 | resolved |" in md
    assert "| shortcuts help | res − plain | AP | +5.0 | ± 8.0 | not resolved at this scale |" in md
    assert "res beats plain by 19.0 AP50 points" in md
    assert "00_res_samples.png" in md and "01_plain_samples.png" in md  # each arm's first seed, sample grid included
    check_self_contained((tmp_path / "out" / "report.html").read_text(), min_images=9)

    # overlapping seed ranges: the same difference of means is no longer stated
    values["plain"] = [(60.0, 41.0), (100.0, 53.0)]
    for s in (0, 1):
        _seeded_run(tmp_path / "plain" / f"seed{s}", "plain56", *values["plain"][s])
    assert tool["main"](args) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| shortcuts help | res − plain | AP50 | +4.0 | ± 22.0 | not resolved at this scale |" in md
    assert "beats" not in md and "not resolved at this scale." in md


def test_study_report_errors_are_named(tmp_path):
    from detection.reports import build_study_report
    with pytest.raises(FileNotFoundError, match="study manifest .* not found"):
        build_study_report(tmp_path / "missing.json", tmp_path / "out")
    (tmp_path / "bad.json").write_text("{\"arms\": []}")
    with pytest.raises(ValueError, match="non-empty 'arms'"):
        build_study_report(tmp_path / "bad.json", tmp_path / "out")
