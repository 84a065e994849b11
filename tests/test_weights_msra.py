"""MSRA / Detectron caffe2 ``.pkl`` weights: names, affine BN → FrozenBN, the paper's pixel convention."""
import pickle

import numpy as np
import pytest
import torch
from test_weights_fixtures import convert_weights_main, images, randomize_norms
from torchvision.ops import FrozenBatchNorm2d

from backbones import build_backbone, build_c4
from backbones.weights.detectron2_format import UnknownKeysError

EPS = 1e-5


def _caffe2_name(key: str) -> str:
    """resdet name → MSRA blob name, spelled out independently of the loader."""
    parts = key.split(".")
    field = parts[-1]
    if parts[0] == "conv1":
        return "conv1_w"
    if parts[0] == "bn1":
        return {"weight": "res_conv1_bn_s", "bias": "res_conv1_bn_b"}[field]
    if parts[0] == "fc":
        return {"weight": "fc1000_w", "bias": "fc1000_b"}[field]
    stage, block, module = int(parts[0][len("layer"):]) + 1, parts[1], parts[2]
    if module == "downsample":
        branch, is_conv = "branch1", parts[3] == "0"
    else:
        branch, is_conv = "branch2" + "abc"[int(module[-1]) - 1], module.startswith("conv")
    suffix = "w" if is_conv else {"weight": "bn_s", "bias": "bn_b"}[field]
    return f"res{stage}_{block}_{branch}_{suffix}"


def _msra_blobs(reference: torch.nn.Module, conv1_bias: np.ndarray = None):
    """Caffe2 blobs equivalent to ``reference`` (FrozenBN): each BN folded to scale s and shift b."""
    state = reference.state_dict()
    blobs = {}
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")):
            continue
        if key.endswith(".weight") and key[: -len("weight")] + "running_var" in state:  # a BN's weight
            base = key[: -len("weight")]
            scale = value / torch.sqrt(state[base + "running_var"] + EPS)
            shift = state[base + "bias"] - state[base + "running_mean"] * scale
            blobs[_caffe2_name(base + "weight")] = scale.numpy()
            blobs[_caffe2_name(base + "bias")] = shift.numpy()
        elif not (key.endswith(".bias") and key[: -len("bias")] + "running_var" in state):
            blobs[_caffe2_name(key)] = value.numpy()
    if conv1_bias is not None:  # MSRA's caffe conv1 has a bias; the loader must fold it into res_conv1_bn_b
        blobs["conv1_b"] = conv1_bias
        blobs["res_conv1_bn_b"] = blobs["res_conv1_bn_b"] - blobs["res_conv1_bn_s"] * conv1_bias
    return blobs


def _write_pickle(path, obj, legacy=False):
    """``legacy``: protocol 2 with numpy 1.x module names, like the Python 2 files in Detectron's model zoo
    (slow to write and read, so only one test uses it)."""
    data = pickle.dumps(obj, protocol=2).replace(b"numpy._core.", b"numpy.core.") if legacy else pickle.dumps(obj)
    path.write_bytes(data)
    return path


def _reference(arch):
    return randomize_norms(build_backbone(arch, norm="frozen_bn", stride_in_1x1=True)).eval()


def test_msra_weights_match_the_equivalent_frozen_bn_model(tmp_path):
    reference = _reference("resnet50")
    blobs = _msra_blobs(reference, conv1_bias=np.linspace(-0.5, 0.5, 64, dtype=np.float32))
    blobs["res2_0_branch2a_w_momentum"] = np.zeros_like(blobs["res2_0_branch2a_w"])  # solver state, ignored
    path = _write_pickle(tmp_path / "R-50.pkl", blobs)
    model = build_backbone("resnet50", weights=f"msra:{path}").eval()
    assert isinstance(model.bn1, FrozenBatchNorm2d) and isinstance(model.layer4[2].bn3, FrozenBatchNorm2d)
    x = images(64)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    meta = model.weights_meta
    assert (meta.pixel_format, meta.input_scale, meta.std, meta.stride_in_1x1, meta.norm) == (
        "BGR", 255.0, (1.0, 1.0, 1.0), True, "frozen_bn")
    assert meta.mean == pytest.approx((102.9801, 115.9465, 122.7717))
    assert meta.categories is None and meta.num_classes == 1000
    with pytest.raises(ValueError, match="stride_in_1x1=False contradicts"):
        build_backbone("resnet50", weights=f"msra:{path}", stride_in_1x1=False)


def test_frozen_bn_buffers_make_the_affine_exact(tmp_path):
    reference = _reference("resnet18")
    path = _write_pickle(tmp_path / "R-18.pkl", _msra_blobs(reference), legacy=True)
    model = build_backbone("resnet18", weights=f"msra:{path}")
    scale = model.bn1.weight * (model.bn1.running_var + model.bn1.eps).rsqrt()
    assert torch.equal(scale, model.bn1.weight) and torch.equal(model.bn1.running_mean, torch.zeros(64))


def test_detectron_detection_file_keeps_the_backbone_and_drops_heads(tmp_path):
    reference = _reference("resnet18")
    blobs = _msra_blobs(reference)
    del blobs["fc1000_w"], blobs["fc1000_b"]
    blobs["rpn_cls_logits_w"] = np.zeros((15, 256, 1, 1), np.float32)
    blobs["cls_score_w"] = np.zeros((81, 512), np.float32)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs, "cfg": "MODEL: {}"}, f)
    c4 = build_c4("resnet18", weights=f"msra:{path}")
    assert torch.equal(c4.head.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert c4.weights_meta.extra["dropped_detector_keys"] == 2


def test_unknown_blob_in_an_imagenet_file_is_listed(tmp_path):
    blobs = _msra_blobs(_reference("resnet18"))
    blobs["res2_0_branch2a_b"] = np.zeros(64, np.float32)
    path = _write_pickle(tmp_path / "odd.pkl", blobs)
    with pytest.raises(UnknownKeysError, match="res2_0_branch2a_b"):
        build_backbone("resnet18", weights=f"msra:{path}")


def test_msra_to_detectron2_conversion_keeps_outputs_and_convention(tmp_path):
    reference = _reference("resnet18")
    path = _write_pickle(tmp_path / "R-18.pkl", _msra_blobs(reference))
    convert = convert_weights_main()
    assert convert([str(path), str(tmp_path / "d2.pkl"), "--from", "msra", "--to", "detectron2",
                    "--arch", "resnet18"]) == 0
    from_msra = build_backbone("resnet18", weights=f"msra:{path}").eval()
    from_d2 = build_backbone("resnet18", weights=f"detectron2:{tmp_path / 'd2.pkl'}").eval()
    x = images(32)
    with torch.no_grad():
        assert torch.equal(from_d2(x), from_msra(x))
    assert from_d2.weights_meta == from_msra.weights_meta
    assert isinstance(from_d2.bn1, FrozenBatchNorm2d)
