"""The evaluator interface (reset / process / evaluate) and the cross-rank gather every evaluator shares."""
from abc import ABC, abstractmethod
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from backbones.utils.dist import all_gather_objects


class DatasetEvaluator(ABC):
    """Accumulates a model's outputs image by image, then scores them.

    Output dicts hold ``boxes`` [N, 4] (x1, y1, x2, y2 in absolute pixels of the original image, 0-based continuous
    coordinates), ``scores`` [N] and ``labels`` [N] (contiguous 1..K, 0 is background); tensors or arrays.

    Under ``torch.distributed`` every rank calls ``process`` on its share; ``evaluate`` gathers them on rank 0, which
    returns the metrics dict (the ``metrics.json`` section) while the other ranks return ``{}``. After ``evaluate``,
    rank 0 also holds ``pr_curves`` (see ``pr_curves.py``) and can ``write_results(eval_dir)``.
    """

    #: key of this evaluator's section in metrics.json / pr_curves.json
    section: str = ""

    #: folder where ``evaluate`` writes metrics.json, pr_curves.json and results files (rank 0); None: nowhere
    output_dir = None

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything processed so far."""
        self._predictions: List[tuple] = []
        self.metrics: Dict[str, Any] = {}
        self.pr_curves: Dict[str, Any] = {}

    def process(self, image_ids: Sequence[int], outputs: Sequence[dict]) -> None:
        """Record the outputs of one batch; ``image_ids[i]`` is the id of ``outputs[i]``."""
        if len(image_ids) != len(outputs):
            raise ValueError(f"process() got {len(image_ids)} image ids for {len(outputs)} outputs")
        for image_id, output in zip(image_ids, outputs):
            prediction = to_numpy_prediction(image_id, output)
            self._check_prediction(prediction)
            self._predictions.append(prediction)

    def _check_prediction(self, prediction: tuple) -> None:
        """Raise a clear error for a prediction this evaluator cannot score."""

    @abstractmethod
    def evaluate(self) -> dict:
        """Score everything processed (all ranks); returns the metrics dict on rank 0 and ``{}`` elsewhere."""

    def _finish(self, section: dict, curves: dict) -> dict:
        self.metrics, self.pr_curves = {self.section: section}, {self.section: curves}
        if self.output_dir is not None:
            from .outputs import write_eval_outputs

            write_eval_outputs(self.output_dir, [self])
        return self.metrics

    @abstractmethod
    def write_results(self, eval_dir) -> List[str]:
        """Write the raw detections in the dataset's standard results format; returns the paths written."""


def to_numpy_prediction(image_id: int, output: dict) -> Tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Validate one output dict; returns (image_id, boxes [N,4] float64, scores [N] float64, labels [N] int64).

    Plain numpy arrays are cheap to pickle across ranks and keep no GPU memory alive.
    """
    for key in ("boxes", "scores", "labels"):
        if key not in output:
            raise KeyError(f"detection output for image {image_id} has no {key!r}; expected keys boxes/scores/labels")
    boxes = _as_array(output["boxes"], np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    elif boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"detection output for image {image_id}: boxes must be [N, 4], got shape {boxes.shape}")
    scores = _as_array(output["scores"], np.float64).reshape(-1)
    labels = _as_array(output["labels"], np.int64).reshape(-1)
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(
            f"detection output for image {image_id}: boxes/scores/labels lengths differ "
            f"({len(boxes)}, {len(scores)}, {len(labels)})"
        )
    return int(image_id), boxes, scores, labels


def _as_array(value, dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def gather_predictions(local: List[tuple]) -> List[tuple]:
    """All predictions from every rank, one entry per image id, ordered by image id.

    A distributed sampler may pad its last batch by repeating images; those repeats are dropped (first one kept) so
    every image counts once, and ordering by id makes the result independent of the world size.
    """
    merged = [p for rank_preds in all_gather_objects(local) for p in rank_preds]
    unique: Dict[int, tuple] = {}
    for pred in merged:
        unique.setdefault(pred[0], pred)
    return [unique[i] for i in sorted(unique)]
