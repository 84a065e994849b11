#!/usr/bin/env python
"""detectron2's own outputs on inputs that resdet regenerates from a seed: the golden files of the parity tests.

    PYTHONPATH=/path/to/detectron2 tools/detectron2_golden.py            # writes tests/data/detectron2_golden/*.json
    PYTHONPATH=/path/to/detectron2 tools/detectron2_golden.py --only inference -o /tmp/golden

resdet builds a calibrated R50-C4 detector (``calibrated_detector``: seeded random weights that detect something),
exports it in detectron2's model-zoo format (``tools/convert_weights.py --to detectron2 --detector``), and detectron2
runs that file:

- inference: ``DefaultPredictor`` on ``INFER_SIZES`` images at test size, for the detector as built and with its
  objectness logits x ``SATURATION`` (most sigmoid scores exactly 1.0 in float32, as a trained RPN's) -> detections;
- training: its ``build_detection_train_loader`` (a COCO-format set of ``TRAIN_SIZES`` PNG images registered with
  ``register_coco_instances``), ``build_model``, ``build_optimizer``, ``build_lr_scheduler`` and ``SimpleTrainer``
  for ``TRAIN_ITERS`` iterations with sampling that keeps every labelled anchor and every proposal (no randomness)
  -> each loss at each iteration and each parameter's update (sum, sum of |.|, ``PROBES`` fixed entries).

Only these outputs are committed (tests/data/detectron2_golden/); tests/test_detectron2_golden.py runs resdet on the
same regenerated inputs (``tools/train_det.py`` for training, ``build_inference_model`` for inference) and compares.
detectron2 itself is needed only to write the files (built from source, CPU only: docs/DETECTION.md).
"""
import argparse
import json
import sys
import zlib
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = ROOT / "tests" / "data" / "detectron2_golden"
PRESET = ROOT / "configs" / "detection" / "detectron2_c4.yaml"
SEED = 0
CATEGORIES = [{"id": i, "name": f"class{i}"} for i in range(1, 6)]
INFER_SIZES = [(384, 512), (384, 576)]  # at test size: no resize on either side
INFER_OVERRIDES = ["input.min_size_test=384", "input.max_size_test=1333", "model.rpn.pre_nms_top_n_test=2000",
                   "model.rpn.post_nms_top_n_test=100"]
SATURATION = 1000.0  # x the calibrated logits (top ones ~0.02-0.05): the top 2000 anchors all score exactly 1.0
TRAIN_SIZES = [(320, 448), (320, 480)]  # one aspect group, padded to 480 wide in the batch
TRAIN_ITERS = 3
PROBES = 16  # entries of each parameter's update stored, at positions fixed by its name
# The deterministic training set-up, as resdet keys and as the detectron2 keys that mean the same.
TRAIN_SETUP = [
    ("solver.ims_per_batch", 2, "SOLVER.IMS_PER_BATCH"),
    ("solver.base_lr", 0.005, "SOLVER.BASE_LR"),
    ("solver.max_iter", TRAIN_ITERS, "SOLVER.MAX_ITER"),
    ("solver.steps", [2], "SOLVER.STEPS"),
    ("solver.warmup_iters", 1, "SOLVER.WARMUP_ITERS"),
    ("solver.warmup_factor", 0.5, "SOLVER.WARMUP_FACTOR"),
    ("input.min_size_train", [320], "INPUT.MIN_SIZE_TRAIN"),
    ("input.max_size_train", 1333, "INPUT.MAX_SIZE_TRAIN"),
    ("model.rpn.batch_size_per_image", 40000, "MODEL.RPN.BATCH_SIZE_PER_IMAGE"),
    ("model.rpn.positive_fraction", 1.0, "MODEL.RPN.POSITIVE_FRACTION"),
    ("model.rpn.pre_nms_top_n_train", 600, "MODEL.RPN.PRE_NMS_TOPK_TRAIN"),
    ("model.rpn.post_nms_top_n_train", 24, "MODEL.RPN.POST_NMS_TOPK_TRAIN"),
    ("model.roi_heads.batch_size_per_image", 64, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"),  # >= 24 proposals + GT
    ("model.roi_heads.positive_fraction", 1.0, "MODEL.ROI_HEADS.POSITIVE_FRACTION"),
]
TRAIN_RESDET_ONLY = ["input.hflip_prob=0.0", "data.test=none", "data.num_workers=0", "solver.log_period=1",
                     "solver.checkpoint_period=1000", "device=cpu"]
LOSSES = {"loss_classifier": "loss_cls", "loss_box_reg": "loss_box_reg", "loss_objectness": "loss_rpn_cls",
          "loss_rpn_box_reg": "loss_rpn_loc"}  # resdet -> detectron2


# ------------------------------------------------------------------------------------------- inputs, from the seed
def calibrated_detector(saturation: float = 1.0, seed: int = SEED):
    """(resdet R50-C4 under detectron2 conventions with seeded weights that detect something, its config)."""
    from detection.config import load_det_config
    from detection.model.detector import build_detector

    cfg = load_det_config(str(PRESET), ["model.backbone=resnet50", *INFER_OVERRIDES])
    torch.manual_seed(seed)
    model = build_detector(cfg, len(CATEGORIES), weights=None).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # tame the random trunk (deep He-initialised ResNets explode), then make it detect
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) * 2 + 3)
            elif name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
        predictor, rpn = model.roi_heads.box_predictor, model.rpn.head
        predictor.cls_score.weight.normal_(0, 1.0, generator=g)
        predictor.cls_score.bias[1:] += 3.0
        predictor.bbox_pred.weight.normal_(0, 5e-4, generator=g)
        rpn.cls_logits.weight.normal_(0, 0.01, generator=g)
        rpn.bbox_pred.weight.normal_(0, 5e-4, generator=g)
        rpn.cls_logits.weight.mul_(saturation)
        rpn.cls_logits.bias.mul_(saturation)
    return model, cfg


def golden_images(sizes, seed: int = SEED + 1, radius: Tuple[float, float] = (15, 120)) -> List[np.ndarray]:
    """uint8 BGR HWC images with structure (blobs of ``radius`` px on a gradient), at the given (h, w)."""
    rng = np.random.default_rng(seed)
    images = []
    for h, w in sizes:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (h + w) * 255], -1)
        for _ in range(12):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(*radius)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 8, img.shape)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return images


def golden_boxes(sizes, seed: int = SEED + 2) -> List[List[Tuple[List[float], int]]]:
    """Per image, 3-4 ([x, y, w, h], category id) ground-truth objects of 40-200 px inside the image."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in sizes:
        objects = []
        for _ in range(int(rng.integers(3, 5))):
            bw, bh = rng.uniform(40, 200, 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            objects.append(([round(float(v), 2) for v in (x, y, bw, bh)], int(rng.integers(1, len(CATEGORIES) + 1))))
        out.append(objects)
    return out


def write_training_set(folder: Path) -> Tuple[Path, Path]:
    """The training images (PNG, lossless) and their COCO-format annotations; returns (annotation file, image dir)."""
    from PIL import Image

    image_dir = folder / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, (img, objects) in enumerate(zip(golden_images(TRAIN_SIZES), golden_boxes(TRAIN_SIZES)), 1):
        name = f"train{i}.png"
        Image.fromarray(img[:, :, ::-1]).save(image_dir / name)  # stored RGB; both readers give back these pixels
        images.append({"id": i, "file_name": name, "height": img.shape[0], "width": img.shape[1]})
        for bbox, category in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": category, "bbox": bbox,
                                "area": bbox[2] * bbox[3], "iscrowd": 0})
    ann = folder / "train.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return ann, image_dir


def train_overrides() -> List[str]:
    """``key=value`` overrides of tools/train_det.py for the deterministic set-up."""
    from detection.config import as_override

    return [as_override(key, value) for key, value, _ in TRAIN_SETUP] + TRAIN_RESDET_ONLY


def image_tensor(bgr: np.ndarray) -> torch.Tensor:
    """RGB float in [0, 1], CHW: the image as resdet's tools hand it to a detector."""
    return torch.from_numpy(bgr[:, :, ::-1].astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------------------------------------------- comparisons
def probe_positions(name: str, numel: int) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(name.encode())).integers(0, numel, PROBES)


def update_summary(name: str, before: torch.Tensor, after: torch.Tensor) -> Dict[str, object]:
    """A parameter's update (after - before) in float64: its sum, sum of |.|, and ``PROBES`` fixed entries."""
    delta = (after.double() - before.double()).flatten()
    return {"sum": float(delta.sum()), "abs_sum": float(delta.abs().sum()),
            "probes": [float(v) for v in delta[torch.from_numpy(probe_positions(name, delta.numel()))]]}


def comparable_updates(before: Dict[str, torch.Tensor], after: Dict[str, torch.Tensor]) -> Dict[str, dict]:
    """Update summaries of every trained parameter in resdet's names; the predictor's background box rows, which
    detectron2 does not have, are left out."""
    out = {}
    for name, value in after.items():
        if not value.is_floating_point() or "running_" in name or name.endswith("num_batches_tracked"):
            continue
        b, a = before[name], value
        if name.startswith("roi_heads.box_predictor.bbox_pred."):
            b, a = b[4:], a[4:]
        if torch.equal(a, b):
            continue  # frozen (stem, res2) and the frozen BN's affine buffers
        out[name] = update_summary(name, b, a)
    return out


def match_detections(reference: List[dict], boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                     box_tol: float = 0.05, score_tol: float = 1e-4) -> Tuple[int, float, float]:
    """(matched, largest box difference, largest score difference): each reference detection (detectron2's, in its
    score order) takes the first unmatched one of ours with the same class within the tolerances."""
    used = torch.zeros(len(boxes), dtype=torch.bool)
    matched, box_diff, score_diff = 0, 0.0, 0.0
    for det in reference:
        ref_box = torch.tensor(det["box"], dtype=boxes.dtype)
        diff = (boxes - ref_box).abs().amax(1) if len(boxes) else torch.zeros(0)
        ok = (~used) & (labels == det["label"]) & (diff < box_tol) & ((scores - det["score"]).abs() < score_tol)
        if bool(ok.any()):
            j = int(ok.nonzero()[0])
            used[j] = True
            matched += 1
            box_diff, score_diff = max(box_diff, float(diff[j])), max(score_diff, float(abs(scores[j] - det["score"])))
    return matched, box_diff, score_diff


# ----------------------------------------------------------------------------------------------- detectron2's side
def _export(model, cfg, folder: Path, name: str) -> Path:
    """The resdet detector as a detectron2 model-zoo ``.pkl`` (+ its overrides ``.yaml``), as a user exports it."""
    from detection.model.detectron2_detector import export_detectron2_detector
    from detection.model.io import save_detector

    src = save_detector(folder / f"{name}.pth", model, cfg, CATEGORIES)
    pkl, _, _ = export_detectron2_detector(src, folder / f"{name}.pkl", "resnet50")
    return pkl


def _d2_config(pkl: Path):
    import detectron2
    from detectron2.config import get_cfg

    package = Path(detectron2.__file__).resolve().parent
    name = "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"  # in the package (pip install) or beside it (source tree)
    config = next(p for p in (package / "model_zoo" / "configs" / name, package.parent / "configs" / name)
                  if p.is_file())
    cfg = get_cfg()
    cfg.merge_from_file(str(config))
    cfg.merge_from_file(str(pkl.with_suffix(".yaml")))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def d2_inference(folder: Path) -> dict:
    from detectron2.engine import DefaultPredictor

    out = {}
    for variant, saturation in (("calibrated", 1.0), ("saturated", SATURATION)):
        model, cfg = calibrated_detector(saturation)
        predictor = DefaultPredictor(_d2_config(_export(model, cfg, folder, variant)))
        per_image = []
        for img in golden_images(INFER_SIZES):
            with torch.no_grad():
                inst = predictor(img)["instances"]
            per_image.append([{"box": [round(float(v), 4) for v in box], "score": float(score), "label": int(c) + 1}
                              for box, score, c in zip(inst.pred_boxes.tensor, inst.scores, inst.pred_classes)])
        out[variant] = per_image
    return out


def d2_training(folder: Path) -> dict:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import build_detection_train_loader
    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import SimpleTrainer, hooks
    from detectron2.modeling import build_model
    from detectron2.solver import build_lr_scheduler, build_optimizer

    from detection.model.detectron2_detector import detectron2_to_resdet_state

    model, cfg = calibrated_detector()
    pkl = _export(model, cfg, folder, "train_init")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ann, image_dir = write_training_set(folder / "data")
    register_coco_instances("resdet_golden_train", {}, str(ann), str(image_dir))
    d2cfg = _d2_config(pkl)
    for _, value, key in TRAIN_SETUP:
        d2cfg.merge_from_list([key, tuple(value) if isinstance(value, list) else value])
    d2cfg.merge_from_list(["INPUT.RANDOM_FLIP", "none", "DATALOADER.NUM_WORKERS", 0,
                           "DATASETS.TRAIN", ("resdet_golden_train",), "SEED", 0])
    net = build_model(d2cfg)
    DetectionCheckpointer(net).load(str(pkl))
    optimizer = build_optimizer(d2cfg, net)
    trainer = SimpleTrainer(net, build_detection_train_loader(d2cfg), optimizer)
    losses: List[Dict[str, float]] = []
    lrs: List[float] = []

    class Record(hooks.HookBase):
        def after_step(self):
            history = self.trainer.storage.histories()
            losses.append({ours: float(history[theirs].latest()) for ours, theirs in LOSSES.items()})
            lrs.append(float(self.trainer.optimizer.param_groups[0]["lr"]))

    trainer.register_hooks([Record(), hooks.LRScheduler(optimizer, build_lr_scheduler(d2cfg, optimizer))])
    trainer.train(0, TRAIN_ITERS)
    state = {k: v.detach() for k, v in net.state_dict().items()}
    wanted = ("backbone.", "proposal_generator.rpn_head.", "roi_heads.res5.", "roi_heads.box_predictor.")
    after = detectron2_to_resdet_state({k: v for k, v in state.items() if k.startswith(wanted)}, "detectron2 after training")
    after = {k: v for k, v in after.items() if k in before}
    return {"losses": losses, "lr": lrs, "updates": comparable_updates(before, after),
            "setup": {key: value for key, value, _ in TRAIN_SETUP}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output-dir", default=str(GOLDEN_DIR))
    parser.add_argument("--only", choices=("inference", "training"))
    parser.add_argument("--work-dir", default="runs/detectron2_golden", help="scratch folder for the exported files")
    args = parser.parse_args(argv)
    try:
        import detectron2
    except ImportError as e:
        print(f"error: detectron2 is not importable ({e}); build it from source (docs/DETECTION.md)", file=sys.stderr)
        return 1
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out, work = Path(args.output_dir), Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    commit = getattr(detectron2, "__version__", "?")
    for part, run in (("inference", d2_inference), ("training", d2_training)):
        if args.only not in (None, part):
            continue
        result = {"detectron2": commit, "torch": torch.__version__, **run(work)}
        (out / f"{part}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out / f'{part}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
