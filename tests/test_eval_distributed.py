"""Evaluators under torch.distributed (2 gloo processes): rank 0 scores everything once, as one process would."""
import contextlib
import io
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from pycocotools.coco import COCO

from backbones.utils import dist as rd
from detection.evaluation import COCOEvaluator, VOCEvaluator

CLASSES = ["a", "b"]
GT = {i: [{"label": 1 + i % 2, "bbox": [4.0 * i, 0.0, 4.0 * i + 30, 25.0], "difficult": i == 5},
          {"label": 1, "bbox": [50.0, 40.0, 90.0, 70.0], "difficult": False}] for i in range(7)}


def outputs_for(image_id: int) -> dict:
    g = GT[image_id]
    shift = 12 if image_id % 2 else 2  # a 12-pixel shift drops IoU below 0.5: false positive
    boxes = [g[0]["bbox"], [b + shift for b in g[1]["bbox"]], [0.0, 60.0, 10.0, 70.0]]
    return {"boxes": torch.tensor(boxes),
            "scores": torch.tensor([0.9, 0.6 + 0.01 * image_id, 0.95 if image_id % 3 == 0 else 0.3]),
            "labels": torch.tensor([g[0]["label"], 1, 2])}


def coco_gt() -> COCO:
    anns = [{"id": 1 + 2 * i + j, "image_id": i, "category_id": o["label"], "iscrowd": 0, "area": 30.0 * 25.0,
             "bbox": [o["bbox"][0], o["bbox"][1], o["bbox"][2] - o["bbox"][0], o["bbox"][3] - o["bbox"][1]]}
            for i, objs in GT.items() for j, o in enumerate(objs)]
    gt = COCO()
    gt.dataset = {"images": [{"id": i, "width": 100, "height": 80} for i in GT], "annotations": anns,
                  "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def run_evaluators(image_ids):
    voc, coco = VOCEvaluator(CLASSES, GT), COCOEvaluator(coco_gt(), {1: 1, 2: 2})
    for ev in (voc, coco):
        for i in image_ids:
            ev.process([i], [outputs_for(i)])
    return {**voc.evaluate(), **coco.evaluate()}


def _worker(rank, port, out):
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    rd.init_distributed("cpu", timeout_s=60)
    # A DistributedSampler over 7 images gives rank 1 a repeat of image 0 as padding.
    share = [0, 2, 4, 6] if rank == 0 else [1, 3, 5, 0]
    out[rank] = run_evaluators(share)
    rd.cleanup()


@pytest.mark.slow  # two spawned interpreters importing torch: ~20 s on a shared 2-core machine
def test_two_process_gather_equals_single_process():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
        results = dict(out)
    single = run_evaluators(list(GT))
    assert results[1] == {}
    assert results[0] == single
    assert single["voc"]["num_images"] == 7 and single["bbox"]["num_images"] == 7
    assert 0 < single["voc"]["mAP_07"] < 90 and 0 < single["bbox"]["AP50"] < 90
