"""Helpers shared by the pretraining tests (imported by them; the tests here check the helpers themselves)."""
import importlib.util
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backbones.pretrain import PRETRAIN_DEFAULTS
from backbones.utils.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def single_thread():
    """One intra-op thread while a test runs: the CI box has 2 shared cores, and oversubscribed OpenMP threads make
    small convolutions many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pretrain_tool():
    """tools/pretrain.py as a module (tools/ is not a package), to run its CLI in-process."""
    spec = importlib.util.spec_from_file_location("pretrain_tool", REPO / "tools" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*argv) -> int:
    tool = pretrain_tool()
    return tool.main(tool.get_args_parser().parse_args([str(a) for a in argv]))


def tiny_digits_config(*overrides):
    """digits + resnet20 with a tiny schedule: 16-image batches, no progress bar, CPU."""
    base = ["model.arch=resnet20", "data.dataset=digits", "data.num_workers=0", "solver.batch_size=16",
            "solver.reference_batch=16", "solver.max_iter=6", "solver.steps=[4]", "train.log_period=1",
            "train.checkpoint_period=3", "train.progress=false", "train.device=cpu", "eval.protocol=single",
            "eval.max_images=64", "eval.batch_size=64"]
    return load_config(PRETRAIN_DEFAULTS, str(REPO / "configs/pretrain/digits_base.yaml"), base + list(overrides))


def make_image_folder(root: Path, classes=("n01", "n02", "n03"), per_class=4, val_per_class=2, seed=0) -> Path:
    """ImageNet-layout tree ROOT/{train,val}/<wnid>/*.JPEG of small images of varied size and colour mode."""
    rng = np.random.RandomState(seed)
    modes = ["RGB", "L", "RGBA", "CMYK"]
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c, wnid in enumerate(classes):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = rng.randint(36, 56), rng.randint(36, 56)
                pixels = (rng.rand(h, w, 3) * 80 + 60 * c).clip(0, 255).astype(np.uint8)
                image = Image.fromarray(pixels).convert(modes[i % len(modes)])
                suffix = ".png" if image.mode == "RGBA" else ".JPEG"
                image.save(folder / f"{wnid}_{i}{suffix}")
    return root


def _batch_bytes(n: int, rng: np.random.RandomState, bytes_keys: bool) -> bytes:
    labels = [int(v) for v in rng.randint(0, 10, n)]
    data = rng.randint(0, 256, (n, 3072)).astype(np.uint8)
    batch = {"batch_label": "fixture", "labels": labels, "data": data, "filenames": [f"{i}.png" for i in range(n)]}
    if bytes_keys:  # what the official (Python 2) pickles look like when read by Python 3
        batch = {k.encode(): v for k, v in batch.items()}
    return pickle.dumps(batch, protocol=2)


def make_cifar(root: Path, per_batch: int = 12, tarball: bool = False, seed: int = 0) -> Path:
    """CIFAR-10 "python version" with ``per_batch`` images per batch, as the tarball or its extracted folder."""
    rng = np.random.RandomState(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    files = {name: _batch_bytes(per_batch, rng, bytes_keys=i % 2 == 0) for i, name in enumerate(names)}
    root.mkdir(parents=True, exist_ok=True)
    if tarball:
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        (root / "cifar-10-batches-py").mkdir(exist_ok=True)
        for name, data in files.items():
            (root / "cifar-10-batches-py" / name).write_bytes(data)
    return root


def test_image_folder_fixture_has_mixed_modes(tmp_path):
    root = make_image_folder(tmp_path, per_class=4)
    files = sorted((root / "train" / "n01").iterdir())
    assert len(files) == 4
    assert {Image.open(f).mode for f in files} == {"RGB", "L", "RGBA", "CMYK"}


def test_cifar_fixture_round_trips(tmp_path):
    make_cifar(tmp_path / "a", per_batch=5, tarball=True)
    with tarfile.open(tmp_path / "a" / "cifar-10-python.tar.gz") as tar:
        assert len(tar.getnames()) == 6
