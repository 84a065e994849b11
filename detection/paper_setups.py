"""The config a detection run starts from when the command line names none: the paper's setup for the dataset.

``tools/train_det.py --dataset coco`` means the paper's COCO experiment, ResNet-101 (its headline backbone, Tables
7/8); ``--backbone vgg16`` gives the VGG-16 baseline of the same table. The file is
``configs/detection/<dataset>_<backbone>.yaml``, else ``<dataset>_base.yaml``.
"""
from pathlib import Path
from typing import Optional

from backbones.utils.config import recipe_path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "detection"

# The CPU demo's detector backbone (configs/detection/digits_<name>.yaml, the `make demo` study's best arm).
DIGITS_BACKBONE = "resnet20"

# Headline backbone per dataset. voc07 (VOC2007 trainval only, Faster R-CNN's "07" row) is not in the ResNet paper,
# whose VOC07-test figure trains on voc0712; it gets the same backbone. coco_json (your own data) has no paper
# setup: the schema default (detection/config.py) applies.
DEFAULT_BACKBONES = {"voc07": "resnet101", "voc0712": "resnet101", "voc07++12": "resnet101", "coco": "resnet101",
                     "digits": DIGITS_BACKBONE}


def default_backbone(dataset: str) -> Optional[str]:
    return DEFAULT_BACKBONES.get(dataset)


def default_config_path(dataset: str, backbone: str) -> Optional[Path]:
    """``configs/detection/<dataset>_<backbone>.yaml`` if it exists, else ``<dataset>_base.yaml``, else None."""
    return recipe_path(CONFIG_DIR, dataset, backbone)
