"""Detection evaluation: COCO (pycocotools semantics, exact fast path) and PASCAL VOC (devkit semantics)."""
from .base import DatasetEvaluator
from .coco import COCO_STAT_NAMES, COCOEvaluator, score_coco_results
from .outputs import flatten_metrics, write_eval_outputs
from .samples import write_samples
from .voc import VOCEvaluator, score_voc

__all__ = [
    "COCO_STAT_NAMES", "COCOEvaluator", "DatasetEvaluator", "VOCEvaluator", "flatten_metrics", "score_coco_results",
    "score_voc", "write_eval_outputs", "write_samples",
]
