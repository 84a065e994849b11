"""Detection data: VOC XML, COCO / COCO-format JSON, generated digits; augmentation, samplers, bad-data policy."""
from .catalog import DATASETS, SPLITS, data_root, test_source, train_source
from .dataset import DetectionDataset, collate
from .issues import DataError, DataIssues
from .records import DetectionSource, coco_ground_truth
from .samplers import GroupedInfiniteBatchSampler, ShardedSequentialSampler
from .transforms import TrainAugmentation

__all__ = [
    "DATASETS", "SPLITS", "data_root", "train_source", "test_source", "DetectionDataset", "collate", "DataError",
    "DataIssues", "DetectionSource", "coco_ground_truth", "GroupedInfiniteBatchSampler", "ShardedSequentialSampler",
    "TrainAugmentation",
]
