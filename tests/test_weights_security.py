"""Weight files never run code: ``.pkl`` through the restricted unpickler, torch files with weights_only=True."""
import os
import pickle

import numpy as np
import pytest
import torch

from backbones import build_backbone
from backbones.weights import UnsafePickleError, WeightsFileError, load_pickle


class _CreatesFile:
    """Unpickling this calls ``open(target, "w")`` — a file appears if the loader executes the pickle's code."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return open, (self.target, "w")


class _RunsShell:
    def __init__(self, target):
        self.command = f"touch {target}"

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("payload", [_CreatesFile, _RunsShell])
@pytest.mark.parametrize("kind", ["msra", "detectron2"])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path, payload, kind):
    target = tmp_path / "pwned"
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"conv1_w": np.zeros(3, np.float32), "x": payload(target)}}, f)
    with pytest.raises(UnsafePickleError) as info:
        build_backbone("resnet18", weights=f"{kind}:{path}")
    assert str(path) in str(info.value)
    function = payload(target).__reduce__()[0]
    assert f"refused to load global '{function.__module__}.{function.__name__}'" in str(info.value)
    assert not target.exists()


def test_torch_file_with_code_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "r18.pth"
    torch.save({"fc.weight": torch.zeros(1), "x": _CreatesFile(target)}, path)
    with pytest.raises(WeightsFileError, match="weights_only=True"):
        build_backbone("resnet18", weights=f"torchvision={path}")
    assert not target.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_arrays_and_containers_load_under_every_protocol(tmp_path, protocol):
    from collections import OrderedDict

    arrays = OrderedDict(a=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.float64(2.5), c={1, 2})
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps({"blobs": arrays, "names": ["x", ("y",)]}, protocol=protocol))
    loaded = load_pickle(path)
    np.testing.assert_array_equal(loaded["blobs"]["a"], arrays["a"])
    assert loaded["blobs"]["b"] == 2.5 and loaded["blobs"]["c"] == {1, 2} and loaded["names"] == ["x", ("y",)]


def test_not_a_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.pkl"
    path.write_bytes(b"\x00not a pickle")
    with pytest.raises(pickle.UnpicklingError, match="junk.pkl"):
        load_pickle(path)
