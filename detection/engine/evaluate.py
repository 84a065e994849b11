"""Inference over a test split and scoring through the evaluation library (COCO AP, or VOC AP for VOC splits)."""
import contextlib
import io
import sys
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from backbones.utils.dist import get_rank, get_world_size, init_distributed, is_main_process
from backbones.utils.progress import track
from backbones.utils.precision import AMP_DTYPES

from ..config import as_override
from ..data import DataIssues, DetectionDataset, DetectionSource, ShardedSequentialSampler, collate, test_source
from ..data.records import coco_ground_truth
from ..evaluation import COCOEvaluator, VOCEvaluator, write_samples
from ..model.inference import build_inference_model
from ..model.io import load_detector



def coco_api(source: DetectionSource):
    """A pycocotools ``COCO`` over the source's cleaned ground truth (what the loader kept)."""
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = coco_ground_truth(source)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def voc_ground_truth(source: DetectionSource) -> Dict[int, List[dict]]:
    return {r["image_id"]: [{"label": int(label), "bbox": box, "difficult": bool(diff)}
                            for box, label, diff in zip(r["boxes"].tolist(), r["labels"].tolist(),
                                                        r["difficult"].tolist())]
            for r in source.records}


def build_evaluators(source: DetectionSource, output_dir=None) -> list:
    """COCO-style bbox AP for every source (VOC "difficult" objects count as crowd there: ignored), plus the
    devkit's VOC AP (11-point and area) for VOC sources."""
    evaluators = [COCOEvaluator(coco_api(source), source.label_to_category_id, output_dir=output_dir,
                                class_names=source.class_names)]
    if source.kind == "voc":
        names = {r["image_id"]: r["name"] for r in source.records}
        split = source.name.rsplit("_", 1)[-1] if source.name.startswith("voc_") else "test"
        evaluators.append(VOCEvaluator(source.class_names, voc_ground_truth(source), output_dir, names, split))
    return evaluators


@torch.no_grad()
def run_inference(model, dataset: DetectionDataset, device, batch_size: int = 1, num_workers: int = 0,
                  amp: str = "none", max_images: int = 0, progress: bool = False,
                  issues: Optional[DataIssues] = None) -> Iterable[Tuple[list, List[dict], List[Dict[str, torch.Tensor]]]]:
    """Yield ``(images, targets, outputs)`` per batch of this process's shard: the dataset's CPU images and targets
    and the model's outputs, on the CPU with boxes in original image pixels."""
    size = min(len(dataset), max_images) if max_images else len(dataset)
    sampler = ShardedSequentialSampler(size, get_rank(), get_world_size())
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        collate_fn=collate)
    dtype = AMP_DTYPES[amp] if device.type == "cuda" else None
    was_training = model.training
    model.eval()
    try:
        for images, targets in track(loader, "inference", enabled=progress and is_main_process()):
            if issues is not None:
                for t in targets:
                    for issue in t["issues"]:
                        issues.record(issue)
            with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                outputs = model([im.to(device, non_blocking=True) for im in images])
            outputs = [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()}
                       for o in outputs]
            yield images, targets, outputs
    finally:
        model.train(was_training)


def evaluate_model(model, source: DetectionSource, device, output_dir=None, batch_size: int = 1,
                   num_workers: int = 0, amp: str = "none", max_images: int = 0, max_image_pixels: int = 178956970,
                   progress: bool = False, num_samples: int = 0) -> Dict[str, Any]:
    """Run ``model`` on ``source`` and score it. Returns the metrics dict (``{"bbox": {...}}``, plus ``"voc"`` for
    VOC) on the main process and ``{}`` on the others; with ``output_dir`` the evaluation library writes
    metrics.json, pr_curves.json and the results files there, and ``samples.json`` with the first ``num_samples``
    images of the main process (for the report's sample grid)."""
    if not source.has_annotations:
        print(f"[resdet] {source.name} has no public ground truth; nothing to score (submit results to the "
              f"evaluation server)", file=sys.stderr)
        return {}
    dataset = DetectionDataset(source, train=False, max_image_pixels=max_image_pixels)
    if max_images:
        dataset.records = dataset.records[:max_images]
        source = DetectionSource(source.name, source.kind, dataset.records, source.categories, source.issues,
                                 source.has_annotations, source.year, source.extra)
    evaluators = build_evaluators(source, output_dir)
    issues = DataIssues(source.issues.on_error)
    samples = {"images": [], "targets": [], "outputs": []}
    for images, targets, outputs in run_inference(model, dataset, device, batch_size, num_workers, amp, 0, progress,
                                                  issues):
        for evaluator in evaluators:
            evaluator.process([t["image_id"] for t in targets], outputs)
        for key, values in (("images", images), ("targets", targets), ("outputs", outputs)):
            samples[key].extend(values[: max(0, num_samples - len(samples[key]))])
    metrics = {}
    for evaluator in evaluators:
        metrics.update(evaluator.evaluate())
    if output_dir is not None and samples["images"] and is_main_process():
        write_samples(output_dir, samples["images"], samples["outputs"], samples["targets"], source.class_names)
    summary = issues.summary(f"{source.name} (inference)")
    if summary and is_main_process():
        print(summary, file=sys.stderr)
    return metrics


def evaluate_checkpoint(weights, dataset_args: Optional[Dict[str, Any]] = None, output_dir=None,
                        device: str = "auto", overrides: Iterable[str] = (), max_images: int = 0,
                        progress: bool = True, retain_memory: bool = False) -> Dict[str, Any]:
    """Evaluate a trained detector file (``model_final.pth`` or a training checkpoint).

    Args:
        weights: path of the detector file.
        dataset_args: ``data.*`` config keys overriding the stored ones, e.g. ``{"dataset": "coco_json",
            "test_ann_file": ..., "test_image_dir": ...}`` or ``{"root": "/data", "test": "voc_2007_test"}``;
            None evaluates on the test split of the dataset it was trained on.
        output_dir: where the evaluation library writes metrics.json, results and curves (None: nothing written).
        overrides: further ``key=value`` config changes (e.g. ``model.roi_heads.score_thresh=0.0``;
            ``test.optimize=false`` for the plain model, ``test.precision=bf16``).
        retain_memory: keep freed memory for reuse (faster on CPU, process-wide; for inference-only processes).
    """
    data_overrides = [as_override(f"data.{k}", v) for k, v in (dataset_args or {}).items()]
    model, cfg, categories = load_detector(weights, [*data_overrides, *overrides])
    info = init_distributed(device)
    source = test_source(cfg, DataIssues(cfg.data.on_error))
    if source is None:
        raise ValueError("no test split to evaluate: give dataset_args (e.g. test_ann_file/test_image_dir for "
                         "coco_json, or test=<split name>)")
    if [c["name"] for c in source.categories] != [c["name"] for c in categories]:
        raise ValueError(f"{weights} was trained on classes {[c['name'] for c in categories][:10]}..., but "
                         f"{source.name} has {source.class_names[:10]}...; evaluate on data with the same classes")
    net = build_inference_model(model, cfg, info.device, retain_memory=retain_memory)
    metrics = evaluate_model(net, source, info.device, output_dir, cfg.test.ims_per_batch, cfg.data.num_workers,
                             "none", max_images or cfg.test.max_images, cfg.data.max_image_pixels, progress,
                             cfg.test.num_samples)
    return metrics

