"""detectron2's ``DefaultPredictor`` as a side-by-side baseline, only when detectron2 is importable.

Not a dependency of resdet: ``predictor`` returns None when ``import detectron2`` fails. The C4 model is built from
detectron2's own config (``configs/COCO-Detection/faster_rcnn_R_<depth>_C4_3x.yaml`` found next to the package) with
random weights; each bottleneck's last BN scale is multiplied by 0.1 so that activations stay finite through
ResNet-101 (with unit scales every block doubles their variance and the RPN proposes nothing), and the score threshold
is 1, like resdet's random detectors whose scores never pass 0.05: both then time the test protocol's work (resize to
the test size, trunk, RPN with ``rois`` proposals, res5 head on every RoI).
"""
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

DEPTHS = {"resnet50": 50, "resnet101": 101}


def available() -> bool:
    try:
        import detectron2  # noqa: F401
    except ImportError:
        return False
    return True


def _config_file(depth: int) -> Path:
    import detectron2

    root = Path(detectron2.__file__).resolve().parent
    name = f"COCO-Detection/faster_rcnn_R_{depth}_C4_3x.yaml"
    for candidate in (root / "model_zoo" / "configs" / name, root.parent / "configs" / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"detectron2 config {name} not found near {root}")


def predictor(backbone: str, image_hw, rois: int, device="cpu", counts: Optional[list] = None
              ) -> Optional[Callable[[np.ndarray], dict]]:
    """A ``DefaultPredictor`` (input: HxWx3 uint8 BGR) for ``backbone``'s C4 detector, or None without detectron2
    or for backbones detectron2 has no C4 config for. ``counts`` receives the RoIs per call (res5 head input)."""
    if backbone not in DEPTHS or not available():
        return None
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling.backbone.resnet import BottleneckBlock

    cfg = get_cfg()
    cfg.merge_from_file(str(_config_file(DEPTHS[backbone])))
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = str(device), ""
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = min(image_hw), max(image_hw)
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = rois
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 1.0
    torch.manual_seed(0)
    predict = DefaultPredictor(cfg)
    with torch.no_grad():
        for m in predict.model.modules():
            if isinstance(m, BottleneckBlock):
                m.conv3.norm.weight.mul_(0.1)
    if counts is not None:
        predict.model.roi_heads.res5.register_forward_pre_hook(lambda m, a: counts.append(int(a[0].shape[0])))
    return predict
