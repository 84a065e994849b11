"""Training-data loading throughput: decode JPEG + resize (shorter side 600, longer <= 1000) + flip + collate.

Three pipelines read the same generated JPEGs through a ``DataLoader`` with the same workers and batch size, and
each batch is turned into what the model takes (float [0, 1] images on the device) in the main process:

- ``reference``: torchvision's detection-reference style: PIL decode, ``transforms.v2`` Resize/RandomHorizontalFlip
  on ``tv_tensors`` (boxes follow), ``ToImage`` + ``ToDtype(float32, scale=True)`` in the worker;
- ``resdet``: ``DetectionDataset`` with ``TrainAugmentation`` (PIL decode, albumentations/OpenCV resize and flip);
- ``resdet_fast``: ``FastDetectionDataset`` (libjpeg-turbo via torchvision.io, uint8 until the device, one thread
  per worker).
"""
import json
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from detection.data import DataIssues, DetectionDataset, TrainAugmentation, collate
from detection.data.coco import load_coco_json
from detection.data.fast_loader import FastDetectionDataset, images_to_float, worker_init_fn

from .timing import interleaved

IMAGE_SIZES = ((640, 480), (480, 640), (640, 427), (500, 375))  # (width, height), COCO-like


def generate_jpegs(folder: Path, count: int, seed: int = 0, quality: int = 90) -> Path:
    """``count`` natural-looking JPEGs (smooth gradients, shapes, sensor-like noise) and a COCO-format JSON."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(count):
        w, h = IMAGE_SIZES[i % len(IMAGE_SIZES)]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(0, 255, 3) + rng.uniform(-0.3, 0.3, 3) * xx[..., None] + rng.uniform(-0.3, 0.3, 3) * yy[..., None]
        for _ in range(4):
            x0, y0 = rng.integers(0, w - 60), rng.integers(0, h - 60)
            x1, y1 = x0 + rng.integers(40, min(300, w - x0)), y0 + rng.integers(40, min(300, h - y0))
            base[y0:y1, x0:x1] = rng.uniform(0, 255, 3)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 4)),
                                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                                "area": float((x1 - x0) * (y1 - y0)), "iscrowd": 0})
        pixels = (base + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8)
        name = f"{i:06d}.jpg"
        Image.fromarray(pixels).save(folder / name, quality=quality)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    categories = [{"id": c, "name": f"class{c}"} for c in (1, 2, 3)]
    ann = folder / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann


class ReferenceDataset(Dataset):
    """torchvision detection-reference style: PIL + ``transforms.v2`` with boxes as ``tv_tensors``."""

    def __init__(self, records, short_side: int, max_size: int, hflip_prob: float):
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        self.records, self.tv_tensors = records, tv_tensors
        # references/detection/presets.py order (PILToTensor … ToDtype, SanitizeBoundingBoxes, ToPureTensor), with
        # the resize moved from the model into the loader as the other pipelines do.
        self.transforms = v2.Compose([v2.PILToTensor(), v2.Resize(short_side, max_size=max_size),
                                      v2.RandomHorizontalFlip(hflip_prob), v2.ToDtype(torch.float32, scale=True),
                                      v2.SanitizeBoundingBoxes(), v2.ToPureTensor()])

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        r = self.records[index]
        image = Image.open(r["file"]).convert("RGB")
        boxes = self.tv_tensors.BoundingBoxes(torch.as_tensor(r["boxes"]), format="XYXY",
                                              canvas_size=(image.height, image.width))
        image, target = self.transforms(image, {"boxes": boxes, "labels": torch.as_tensor(r["labels"])})
        return image, target


class _IndexSeedBatches:
    """Batches of (index, per-sample seed), the keys resdet datasets take; plain indices for the reference."""

    def __init__(self, n: int, batch: int, with_seed: bool):
        self.n, self.batch, self.with_seed = n, batch, with_seed

    def __iter__(self):
        for start in range(0, self.n, self.batch):
            idx = range(start, min(start + self.batch, self.n))
            yield [(i, 1000 + i) for i in idx] if self.with_seed else list(idx)

    def __len__(self):
        return (self.n + self.batch - 1) // self.batch


class _Epoch:
    def __init__(self, loader: DataLoader, device):
        self.loader, self.device, self.images = loader, device, 0

    def __call__(self):
        count = 0
        for images, _ in self.loader:
            count += len(images_to_float(images, self.device))
        self.images = count


def build_pipelines(ann_file: Path, num_workers: int, batch: int, short_side: int = 600, max_size: int = 1000,
                    hflip_prob: float = 0.5, device="cpu") -> Dict[str, _Epoch]:
    source = load_coco_json(ann_file, ann_file.parent, DataIssues())
    aug = TrainAugmentation([short_side], max_size, hflip_prob)
    datasets = {
        "reference": (ReferenceDataset(source.records, short_side, max_size, hflip_prob), False, None),
        "resdet": (DetectionDataset(source, True, aug), True, None),
        "resdet_fast": (FastDetectionDataset(source, True, aug), True, worker_init_fn),
    }
    pipelines = {}
    for name, (dataset, with_seed, init) in datasets.items():
        loader = DataLoader(dataset, batch_sampler=_IndexSeedBatches(len(dataset), batch, with_seed),
                            num_workers=num_workers, collate_fn=collate, worker_init_fn=init,
                            persistent_workers=num_workers > 0)
        pipelines[name] = _Epoch(loader, device)
    return pipelines


def measure_loading(folder: Path, num_images: int, workers: Sequence[int], batch: int, repeats: int,
                    device="cpu", log=print) -> dict:
    """img/s of each pipeline for each worker count, one epoch over the generated images per timed call.

    The main process runs torch on one thread here: with 0 workers that makes the figure a true per-core one
    (OpenCV is then single-threaded too), and with N workers the main process (the consumer) does not fight the
    workers for the cores with a thread pool of its own. Workers fork with OpenCV's default threads; only
    ``resdet_fast`` turns them off (its ``worker_init_fn``), which is one of the choices measured.
    """
    import cv2

    threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    try:
        return _measure_loading(folder, num_images, workers, batch, repeats, device, log, cv2, cv2_threads)
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv2_threads)


def _measure_loading(folder, num_images, workers, batch, repeats, device, log, cv2, cv2_threads) -> dict:
    ann = generate_jpegs(folder, num_images)
    out = {"num_images": num_images, "batch": batch, "image_sizes": [list(s) for s in IMAGE_SIZES], "by_workers": {}}
    for n in workers:
        cv2.setNumThreads(0 if n == 0 else cv2_threads)
        pipelines = build_pipelines(ann, n, batch, device=device)
        log(f"[data loading] {n} worker(s): timing {list(pipelines)}")
        times = interleaved(pipelines, repeats, warmup=1)
        cores = max(n, 1)
        base = times["reference"]["median"]
        out["by_workers"][str(n)] = {
            k: {"img_per_s": pipelines[k].images / times[k]["median"],
                "img_per_s_per_core": pipelines[k].images / times[k]["median"] / cores,
                "speedup_vs_reference": base / times[k]["median"], "timing": times[k]} for k in pipelines}
        del pipelines
    return out
