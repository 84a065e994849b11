"""Evaluation protocols against a straightforward per-image reference built from torchvision's functional ops."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from backbones import build_backbone
from backbones.pretrain import evaluate
from backbones.pretrain.datasets import ImageFolderDataset
from test_pretrain_fixtures import make_image_folder, single_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

MEAN, STD = [0.45, 0.4, 0.35], [0.25, 0.2, 0.3]


def _tiny_net(classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes)).eval()


def _prepared(pil, size):
    tensor = TF.pil_to_tensor(TF.resize(pil, size, antialias=True)).float() / 255
    return TF.normalize(tensor, MEAN, STD)


def _reference_scores(model, dataset, protocol, resize=40, crop=32, scales=(32, 40, 48)):
    rows = []
    with torch.no_grad():
        for pil, _ in dataset:
            if protocol == "1crop":
                views = TF.center_crop(_prepared(pil, resize), [crop]).unsqueeze(0)
            elif protocol == "10crop":
                views = torch.stack(TF.ten_crop(_prepared(pil, resize), [crop]))
            else:
                views = None
            if views is not None:
                rows.append(F.softmax(model(views), 1).mean(0))
                continue
            per_scale = []
            for s in scales:
                x = _prepared(pil, s).unsqueeze(0)
                per_scale.append((F.softmax(model(x), 1) + F.softmax(model(TF.hflip(x)), 1))[0] / 2)
            rows.append(torch.stack(per_scale).mean(0))
    return torch.stack(rows)


@pytest.mark.parametrize("protocol", ["1crop", "10crop", "multiscale"])
def test_protocols_match_reference(tmp_path, protocol):
    root = make_image_folder(tmp_path, per_class=1, val_per_class=3)
    val = ImageFolderDataset(root, "val")
    model = _tiny_net()
    result = evaluate(model, val, protocol, MEAN, STD, resize=40, crop=32, scales=(32, 40, 48), flip=True,
                      batch_size=4, return_scores=True)
    expected = _reference_scores(model, val, protocol)
    assert torch.allclose(result["scores"], expected, atol=1e-6)
    labels = torch.tensor(val.labels)
    top1 = 100 * (1 - (expected.argmax(1) == labels).float().mean().item())
    top2 = 100 * (1 - (expected.topk(3, 1).indices == labels[:, None]).any(1).float().mean().item())
    assert result["top1_err"] == pytest.approx(top1) and result["top5_err"] == pytest.approx(top2)
    assert result["images"] == 9 and result["protocol"] == protocol


def test_multiscale_is_the_fully_convolutional_form():
    """The whole-image score equals the fc applied as a 1×1 conv at every position, averaged over positions."""
    model = build_backbone("resnet20", num_classes=10).eval()
    x = torch.randn(1, 3, 24, 40)
    with torch.no_grad():
        features = model.forward_features(x)
        dense = F.conv2d(features, model.fc.weight[:, :, None, None], model.fc.bias)
        assert dense.shape[-2:] == (6, 10)
        assert torch.allclose(dense.mean((2, 3)), model(x), atol=1e-5)


def test_topk_and_max_images(tmp_path):
    root = make_image_folder(tmp_path, per_class=1, val_per_class=2)
    val = ImageFolderDataset(root, "val")
    result = evaluate(_tiny_net(), val, "1crop", MEAN, STD, resize=40, crop=32, max_images=4)
    assert result["images"] == 4
    assert result["top5_err"] == 0.0  # 3 classes: the true class is always within the top 5
