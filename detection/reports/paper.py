"""The paper's detection results for the backbone swap (He et al. 2016, Tables 7 and 8; Faster R-CNN baseline).

Each benchmark names the training set (tools/train_det.py ``--dataset``) whose runs it compares with, and the
metrics.json value measured the same way: VOC 2007 test uses the 11-point AP (the VOC2007 devkit the paper used),
VOC 2012 test the area AP (evaluation server).
"""
from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class PaperBenchmark:
    label: str
    source: str
    dataset: str  # training set name in resdet
    metric: Tuple[str, str]  # (metrics.json section, key)
    vgg16: float
    resnet101: float

    @property
    def delta(self) -> float:
        return round(self.resnet101 - self.vgg16, 1)


PAPER_BENCHMARKS = (
    PaperBenchmark("VOC 2007 test mAP (train 07+12)", "Table 7", "voc0712", ("voc", "mAP_07"), 73.2, 76.4),
    PaperBenchmark("VOC 2012 test mAP (train 07++12)", "Table 7", "voc07++12", ("voc", "mAP_area"), 70.4, 73.8),
    PaperBenchmark("COCO val mAP@.5", "Table 8", "coco", ("bbox", "AP50"), 41.5, 48.4),
    PaperBenchmark("COCO val mAP@[.5, .95]", "Table 8", "coco", ("bbox", "AP"), 21.2, 27.2),
)

PAPER_CITATION = ("He, Zhang, Ren, Sun, \"Deep Residual Learning for Image Recognition\", CVPR 2016 "
                  "(arXiv:1512.03385), Tables 7 and 8: Faster R-CNN baseline, VGG-16 vs ResNet-101.")


def metric_value(metrics: dict, metric: Tuple[str, str]) -> Optional[float]:
    value = metrics.get(metric[0], {}).get(metric[1])
    return None if value is None else float(value)
