import os
import pickle

import pytest
import torch
from torch.utils.data import DataLoader

from backbones.pretrain.datasets import (Cifar10Dataset, DatasetError, DatasetNotFoundError, DigitsDataset,
                                         ImageFolderDataset, build_datasets)
from backbones.pretrain.sampler import AugmentedDataset, EpochBatchSampler
from backbones.pretrain.transforms import IMAGENET_EIGVAL, IMAGENET_EIGVEC, TrainTransform, pca_lighting
from test_pretrain_fixtures import make_cifar, make_image_folder, single_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_digits_fixed_stratified_split():
    train, val = DigitsDataset("train", 16), DigitsDataset("val", 16)
    assert (len(train), len(val)) == (1437, 360)
    assert train.images.shape == (1437, 3, 16, 16) and torch.equal(train.images[:, 0], train.images[:, 2])
    assert 0 <= float(train.images.min()) and float(train.images.max()) <= 1
    counts = torch.bincount(torch.tensor(val.labels), minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # stratified
    assert torch.equal(DigitsDataset("val", 16).images, val.images)  # same split every time


@pytest.mark.parametrize("tarball", [False, True])
def test_cifar_official_format(tmp_path, tarball):
    make_cifar(tmp_path, per_batch=12, tarball=tarball)
    train, test = build_datasets("cifar10", str(tmp_path))
    assert (len(train), len(test)) == (60, 12)
    image, label = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and 0 <= label < 10
    held_train = Cifar10Dataset(tmp_path, "train", holdout=10)
    held_val = Cifar10Dataset(tmp_path, "val", holdout=10)
    assert (len(held_train), len(held_val)) == (50, 10)
    all_rows = {bytes(x.numpy()) for x in train.images}
    assert {bytes(x.numpy()) for x in held_train.images} | {bytes(x.numpy()) for x in held_val.images} == all_rows


def test_cifar_missing_and_malicious(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-python.tar.gz.*https://www.cs.toronto.edu/~kriz/cifar"):
        build_datasets("cifar10", str(tmp_path / "nowhere"))
    make_cifar(tmp_path, per_batch=4)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DatasetError, match=r"data_batch_3 .*refused to load global"):
        Cifar10Dataset(tmp_path, "train")


def test_image_folder_modes_missing_and_corrupt(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"train/<wnid>/\*\.JPEG.*image-net.org"):
        build_datasets("imagenet", str(tmp_path / "none"))
    root = make_image_folder(tmp_path / "inet", per_class=4)
    train, val = build_datasets("imagenet", str(root))
    assert train.categories == ["n01", "n02", "n03"] and len(train) == 12 and len(val) == 6
    for i in range(4):  # RGB, grayscale, RGBA and CMYK files all come out RGB
        assert train[i][0].mode == "RGB"
    bad = root / "train" / "n02" / "n02_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated JPEG
    index = [p for p, _ in train.samples].index(str(bad))
    with pytest.raises(DatasetError, match=r"n02_1.JPEG \(record 5 of train\).*on_error=skip"):
        train[index]
    skipping = ImageFolderDataset(root, "train", on_error="skip")
    image, label = skipping[index]
    assert label == 1 and image.size == skipping[index + 1][0].size
    (root / "val" / "n09").mkdir()
    (root / "val" / "n09" / "x.JPEG").write_bytes((root / "val" / "n01" / "n01_0.JPEG").read_bytes())
    with pytest.raises(DatasetError, match=r"class folders differ .*unknown: \['n09'\]"):
        build_datasets("imagenet", str(root))


def test_sampler_shards_resumes_and_is_deterministic():
    one = EpochBatchSampler(50, 8, seed=3)
    it = iter(one)
    batches = [next(it) for _ in range(10)]  # crosses into epoch 1 (6 batches per epoch)
    assert one.batches_per_epoch == 6 and batches[6][0][0] == 1
    assert sorted(i for _, i in sum(batches[:6], [])) == sorted(set(i for _, i in sum(batches[:6], [])))
    ranks = [iter(EpochBatchSampler(50, 8, rank=r, world_size=2, seed=3)) for r in range(2)]
    for b in range(10):
        assert next(ranks[0]) + next(ranks[1]) == batches[b]
    resumed = iter(EpochBatchSampler(50, 8, seed=3, start_epoch=0, start_batch=4))
    assert [next(resumed) for _ in range(6)] == batches[4:10]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        EpochBatchSampler(5, 8)


def test_augmentation_independent_of_workers():
    base = DigitsDataset("train", 16)
    transform = TrainTransform(None, 16, 2, True, 0.1, [0.3] * 3, [0.3] * 3)
    data = AugmentedDataset(base, transform, seed=5)

    def batches(workers):
        loader = DataLoader(data, batch_sampler=EpochBatchSampler(len(base), 32, seed=5), num_workers=workers,
                            generator=torch.Generator().manual_seed(0))
        it = iter(loader)
        return [next(it) for _ in range(3)]

    serial, parallel = batches(0), batches(2)
    for (xa, ya), (xb, yb) in zip(serial, parallel):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # The augmentation is a function of (seed, epoch, index): repeatable, and different in another epoch.
    assert torch.equal(data[(0, 7)][0], data[(0, 7)][0]) and not torch.equal(data[(0, 7)][0], data[(1, 7)][0])


def test_pca_lighting_matches_formula():
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    image = torch.rand(3, 5, 5)
    out = pca_lighting(image, 0.1, g1)
    alpha = torch.randn(3, generator=g2) * 0.1
    eigvec, eigval = torch.tensor(IMAGENET_EIGVEC), torch.tensor(IMAGENET_EIGVAL)
    expected = image + (eigvec @ (alpha * eigval)).view(3, 1, 1)
    assert torch.allclose(out, expected)
    delta = out - image
    assert torch.allclose(delta, delta[:, :1, :1].expand_as(delta))  # one RGB shift for the whole image


def test_imagenet_train_transform_shapes_and_range(tmp_path):
    root = make_image_folder(tmp_path, per_class=2)
    train = ImageFolderDataset(root, "train")
    transform = TrainTransform((36, 44), 32, 0, True, 0.1, [0.5] * 3, [0.25] * 3)
    outs = [transform(train[i][0], torch.Generator().manual_seed(i)) for i in range(len(train))]
    assert all(o.shape == (3, 32, 32) for o in outs)
    again = transform(train[0][0], torch.Generator().manual_seed(0))
    assert torch.equal(again, outs[0])
