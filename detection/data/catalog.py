"""Named splits and datasets: where each lives under the data root, and which splits a ``--dataset`` trains/tests on.

Data root: ``data.root`` (``--data-root``), else ``$RESDET_DATASETS``, else ``./datasets``.
"""
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .coco import COCO_LAYOUT, combine_coco, load_coco_json
from .digits import generate_digits
from .issues import DataIssues
from .records import DetectionSource
from .voc import voc_source

# split name → ("voc", year, image set) | ("coco", annotation file, image folder) under the data root.
SPLITS = {
    **{f"voc_{y}_{s}": ("voc", y, s) for y in (2007, 2012) for s in ("train", "val", "trainval", "test")},
    "coco_2017_train": ("coco", "coco/annotations/instances_train2017.json", "coco/train2017"),
    "coco_2017_val": ("coco", "coco/annotations/instances_val2017.json", "coco/val2017"),
    "coco_2014_train": ("coco", "coco/annotations/instances_train2014.json", "coco/train2014"),
    "coco_2014_val": ("coco", "coco/annotations/instances_val2014.json", "coco/val2014"),
    # The 2014 "minival" (5k of val2014) and its complement "valminusminival" (35k), both with images in val2014.
    "coco_2014_minival": ("coco", "coco/annotations/instances_minival2014.json", "coco/val2014"),
    "coco_2014_valminusminival": ("coco", "coco/annotations/instances_valminusminival2014.json", "coco/val2014"),
    "digits_train": ("digits", "train"),
    "digits_val": ("digits", "val"),
}

# --dataset → (training splits, test split). VOC2012 test has no public ground truth (evaluation server only), so
# 07++12 runs evaluate nothing by default; data.test=voc_2012_test runs the model there without scoring.
DATASETS = {
    "voc07": (["voc_2007_trainval"], "voc_2007_test"),
    "voc0712": (["voc_2007_trainval", "voc_2012_trainval"], "voc_2007_test"),
    "voc07++12": (["voc_2007_trainval", "voc_2007_test", "voc_2012_trainval"], ""),
    "coco": (["coco_2014_train"], "coco_2014_val"),  # or 2017: data.coco_year (standard_splits)
    "digits": (["digits_train"], "digits_val"),
    "coco_json": ([], ""),
}


def data_root(configured: Optional[str] = None) -> Path:
    return Path(configured or os.environ.get("RESDET_DATASETS") or "datasets")


def coco_year(cfg) -> int:
    """``data.coco_year``, or for 0 the year found under the data root: 2017 when only its training annotations are
    there, else 2014 (the paper's Table 8 protocol; also when neither is, so the error names the 2014 files)."""
    if cfg.data.coco_year:
        return cfg.data.coco_year
    root = data_root(cfg.data.root)
    only_2017 = (root / SPLITS["coco_2017_train"][1]).is_file() and not (root / SPLITS["coco_2014_train"][1]).is_file()
    return 2017 if only_2017 else 2014


def standard_splits(cfg) -> Tuple[List[str], str]:
    """The (training splits, test split) a ``--dataset`` uses when ``data.train`` / ``data.test`` are empty."""
    if cfg.data.dataset == "coco":
        year = coco_year(cfg)
        return [f"coco_{year}_train"], f"coco_{year}_val"
    return DATASETS[cfg.data.dataset]


def _split_kind(name: str) -> Tuple:
    if name not in SPLITS:
        raise KeyError(f"unknown split {name!r}; known splits: {', '.join(SPLITS)}")
    return SPLITS[name]


def digits_folder(cfg) -> Path:
    g = cfg.data.digits
    return generate_digits(data_root(cfg.data.root) / "digits", g.seed, g.num_train, g.num_val, g.canvas,
                           g.digit_size, g.per_image)


def load_splits(cfg, names: Sequence[str], issues: DataIssues) -> DetectionSource:
    """One source from split names of a single kind (VOC with VOC, COCO-format with COCO-format)."""
    kinds = {_split_kind(n)[0] for n in names}
    if len(kinds) != 1:
        raise ValueError(f"splits {list(names)} mix dataset kinds {sorted(kinds)}; combine one kind at a time")
    kind, root, label = kinds.pop(), data_root(cfg.data.root), "+".join(names)
    if kind == "voc":
        return voc_source(root, [SPLITS[n][1:] for n in names], issues, name=label)
    if kind == "digits":
        folder = digits_folder(cfg)
        parts = [load_coco_json(folder / f"instances_{SPLITS[n][1]}.json", folder, issues, name=n) for n in names]
    else:
        parts = []
        for n in names:
            ann, images = root / SPLITS[n][1], root / SPLITS[n][2]
            if not ann.is_file() or not images.is_dir():
                missing = ann if not ann.is_file() else images
                raise FileNotFoundError(f"COCO split {n}: {missing} not found (data root {root}).\n{COCO_LAYOUT}")
            parts.append(load_coco_json(ann, images, issues, name=n))
    return parts[0] if len(parts) == 1 else combine_coco(parts, label)


def train_source(cfg, issues: DataIssues) -> DetectionSource:
    d = cfg.data
    if d.dataset == "coco_json" and not d.train:
        if not d.ann_file:
            raise ValueError("coco_json training needs --ann FILE --images DIR (data.ann_file, data.image_dir)")
        return load_coco_json(Path(d.ann_file), Path(d.image_dir), issues)
    return load_splits(cfg, list(d.train) or standard_splits(cfg)[0], issues)


def test_split_names(cfg) -> List[str]:
    d = cfg.data
    if d.test == "none":
        return []
    if d.test:
        return [d.test]
    test = standard_splits(cfg)[1]
    return [test] if test else []


def test_source(cfg, issues: DataIssues) -> Optional[DetectionSource]:
    """The evaluation split, or None (``data.test: none``, or coco_json without ``test_ann_file``)."""
    d = cfg.data
    if d.dataset == "coco_json":
        if not d.test_ann_file or d.test == "none":
            return None
        return load_coco_json(Path(d.test_ann_file), Path(d.test_image_dir or d.image_dir), issues)
    names = test_split_names(cfg)
    return load_splits(cfg, names, issues) if names else None
