"""Detection data: VOC XML and COCO JSON loaders on fixtures written here, the bad-data policy (skip|raise) for
each fault, safe file names, augmentation, samplers and the digits generator."""
import itertools
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from detection.config import load_det_config
from detection.data import (DataError, DataIssues, DetectionDataset, GroupedInfiniteBatchSampler, TrainAugmentation,
                            train_source)
from detection.data.coco import load_coco_json
from detection.data.digits import generate_digits
from detection.data.voc import load_voc, voc_source


def save_image(path, mode="RGB", size=(40, 30), fmt=None, exif_orientation=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {"RGB": (200, 40, 10), "L": 128, "CMYK": (0, 50, 100, 0), "RGBA": (10, 200, 30, 128), "P": 3}[mode]
    img = Image.new(mode, size, colour)
    kwargs = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    img.save(path, format=fmt, **kwargs)
    return path


# ------------------------------------------------------------------------------------------------------ COCO JSON
def write_coco(tmp_path, images, annotations, categories=({"id": 3, "name": "cat"}, {"id": 8, "name": "dog"})):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(categories)}))
    return ann


def coco_fixture(tmp_path):
    d = tmp_path / "images"
    save_image(d / "rgb.jpg")
    save_image(d / "gray.jpg", "L")
    save_image(d / "cmyk.jpg", "CMYK", fmt="JPEG")
    save_image(d / "rgba.png", "RGBA")
    save_image(d / "exif.jpg", size=(30, 40), exif_orientation=6)  # stored 30x40, shown 40x30
    save_image(d / "empty.jpg")
    good = save_image(d / "whole.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    images = [{"id": i, "file_name": f, "width": 40, "height": 30} for i, f in enumerate(
        ["rgb.jpg", "gray.jpg", "cmyk.jpg", "rgba.png", "exif.jpg", "truncated.jpg", "corrupt.png", "missing.jpg",
         "empty.jpg"], start=1)]
    images.append({"id": 2, "file_name": "rgb.jpg", "width": 40, "height": 30})  # duplicate id
    box = [2.0, 3.0, 10.0, 12.0]
    annotations = [{"id": k, "image_id": i, "category_id": 3, "bbox": box, "iscrowd": 0, "area": 90.0}
                   for k, i in enumerate(range(1, 9), start=1)]
    annotations += [
        {"id": 20, "image_id": 1, "category_id": 8, "bbox": [20, 5, 8, 8], "iscrowd": 1, "area": 64.0},
        {"id": 21, "image_id": 1, "category_id": 8, "bbox": [5, 5, 0, 4], "iscrowd": 0},       # zero area
        {"id": 22, "image_id": 1, "category_id": 8, "bbox": [35, 25, 10, 10], "iscrowd": 0},   # clipped
        {"id": 23, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5], "iscrowd": 0},      # unknown category
        {"id": 24, "image_id": 1, "category_id": 3, "bbox": [50, 40, 5, 5], "iscrowd": 0},     # outside the image
        {"id": 25, "image_id": 1, "category_id": 3, "bbox": [12, 9, -4, 3], "iscrowd": 0},     # inverted
    ]
    return write_coco(tmp_path, images, annotations), d


def test_coco_loader_matches_pycocotools_and_maps_categories(tmp_path):
    from pycocotools.coco import COCO

    ann, images = coco_fixture(tmp_path)
    issues = DataIssues("skip")
    source = load_coco_json(ann, images, issues)
    assert source.categories == [{"id": 3, "name": "cat"}, {"id": 8, "name": "dog"}]
    assert source.label_to_category_id == {1: 3, 2: 8}
    reference = COCO(str(ann))
    record = next(r for r in source.records if r["image_id"] == 3)
    (ref,) = reference.loadAnns(reference.getAnnIds(imgIds=3))
    x, y, w, h = ref["bbox"]
    assert record["boxes"].tolist() == [[x, y, x + w, y + h]] and record["labels"].tolist() == [1]
    first = next(r for r in source.records if r["image_id"] == 1)
    assert first["boxes"].tolist() == [[2, 3, 12, 15], [20, 5, 28, 13], [35, 25, 40, 30]]
    assert first["iscrowd"].tolist() == [0, 1, 0] and first["labels"].tolist() == [1, 2, 2]
    assert issues.counts == {"invalid_box": 3, "unknown_category": 1, "clipped_box": 1, "duplicate_image_id": 1}


def test_coco_bad_images_are_skipped_and_counted(tmp_path):
    ann, images = coco_fixture(tmp_path)
    issues = DataIssues("skip")
    dataset = DetectionDataset(load_coco_json(ann, images, issues), train=True, issues=issues)
    assert issues.counts["empty_image"] == 1  # empty.jpg left out of training
    seen = {}
    for i in range(len(dataset)):
        image, target = dataset[i]
        seen[target["image_id"]] = image
        for problem in target["issues"]:
            issues.record(problem)
    assert sorted(seen) == [1, 2, 3, 4, 5]  # truncated/corrupt/missing images replaced by the next good one
    assert all(img.shape == (3, 30, 40) and img.dtype == torch.float32 for img in seen.values())
    assert issues.counts["corrupt_image"] == 2 and issues.counts["missing_image"] == 1
    assert issues.counts["converted_mode"] == 3 and issues.counts["exif_rotated"] == 1
    # crowd boxes are not training targets
    first = next(dataset[i][1] for i in range(len(dataset)) if dataset[i][1]["image_id"] == 1)
    assert first["labels"].tolist() == [1, 2]
    summary = issues.summary("fixture")
    assert "corrupt_image: 2" in summary and "missing_image: 1" in summary and "invalid_box: 3" in summary


def test_exif_orientation_and_conversions(tmp_path):
    ann, images = coco_fixture(tmp_path)
    source = load_coco_json(ann, images, DataIssues("skip"))
    dataset = DetectionDataset(source, train=False)
    by_id = {r["image_id"]: i for i, r in enumerate(dataset.records)}
    exif_image, _ = dataset[by_id[5]]
    assert exif_image.shape == (3, 30, 40)  # rotated to the annotated (displayed) orientation
    rgba, _ = dataset[by_id[4]]
    expected = (np.array([10, 200, 30]) * 128 + 255 * 127) / 255 / 255  # alpha-composited on white
    assert np.allclose(rgba[:, 0, 0].numpy(), expected, atol=2 / 255)
    gray, _ = dataset[by_id[2]]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


@pytest.mark.parametrize("fault,kind", [
    ({"bbox": [5, 5, 0, 4]}, "invalid_box"), ({"category_id": 99}, "unknown_category"),
    ({"bbox": [12, 9, -4, 3]}, "invalid_box"),
])
def test_coco_box_faults_raise_under_raise(tmp_path, fault, kind):
    save_image(tmp_path / "images" / "a.jpg")
    ann = write_coco(tmp_path, [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
                     [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], **fault}])
    with pytest.raises(DataError, match=kind) as err:
        load_coco_json(ann, tmp_path / "images", DataIssues("raise"))
    assert "annotations[0]" in str(err.value) and str(ann) in str(err.value)


@pytest.mark.parametrize("name,kind", [("truncated.jpg", "corrupt_image"), ("missing.jpg", "missing_image"),
                                       ("corrupt.png", "corrupt_image")])
def test_bad_image_files_raise_under_raise(tmp_path, name, kind):
    ann, images = coco_fixture(tmp_path)
    data = json.loads(ann.read_text())
    data["images"] = [i for i in data["images"] if i["file_name"] == name][:1]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == data["images"][0]["id"]]
    ann.write_text(json.dumps(data))
    dataset = DetectionDataset(load_coco_json(ann, images, DataIssues("raise")), train=False)
    with pytest.raises(DataError, match=kind) as err:
        dataset[0]
    assert name in str(err.value)


def test_duplicate_ids_raise_under_raise(tmp_path):
    ann, images = coco_fixture(tmp_path)
    with pytest.raises(DataError, match="duplicate_image_id"):
        load_coco_json(ann, images, DataIssues("raise"))


@pytest.mark.parametrize("name", ["../outside.jpg", "/etc/passwd", "a/../../b.jpg", "..\\x.jpg", "C:\\x.jpg"])
def test_file_names_cannot_escape_the_image_folder(tmp_path, name):
    ann = write_coco(tmp_path, [{"id": 1, "file_name": name, "width": 4, "height": 4}], [])
    for policy in ("skip", "raise"):
        with pytest.raises(DataError, match="outside the image folder"):
            load_coco_json(ann, tmp_path / "images", DataIssues(policy))


def test_malformed_json_names_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n  {"id": 1,, "file_name": "a.jpg"}]}')
    with pytest.raises(DataError, match=r"bad\.json: line 2 column"):
        load_coco_json(bad, tmp_path, DataIssues("skip"))
    bad.write_text('{"images": {}, "categories": []}')
    with pytest.raises(DataError, match="'images' must be a list"):
        load_coco_json(bad, tmp_path, DataIssues("skip"))


def test_decompression_bomb_limit(tmp_path):
    save_image(tmp_path / "images" / "big.png", size=(300, 200))
    ann = write_coco(tmp_path, [{"id": 1, "file_name": "big.png", "width": 300, "height": 200}],
                     [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}])
    source = load_coco_json(ann, tmp_path / "images", DataIssues("raise"))
    with pytest.raises(DataError, match="too_large_image"):
        DetectionDataset(source, train=False, max_image_pixels=10_000)[0]


# ------------------------------------------------------------------------------------------------------ VOC XML
def voc_xml(width, height, objects, filename="x.jpg"):
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text, ET.SubElement(size, "height").text = str(width), str(height)
    ET.SubElement(size, "depth").text = "3"
    for name, box, difficult in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = str(difficult)
        bnd = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bnd, key).text = str(value)
    return ET.tostring(root, encoding="unicode")


def voc_fixture(tmp_path, year=2007, image_set="trainval"):
    base = tmp_path / "VOCdevkit" / f"VOC{year}"
    (base / "Annotations").mkdir(parents=True)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    names = ["000005", "000007", "000009", "000012", "000016"]
    for n in names:
        save_image(base / "JPEGImages" / f"{n}.jpg", "L" if n == "000007" else "RGB", size=(50, 40))
    xml = {
        "000005": voc_xml(50, 40, [("dog", (1, 1, 20, 30), 0), ("cat", (10, 5, 50, 40), 1),
                                   ("unicorn", (2, 2, 8, 8), 0), ("cat", (30, 10, 20, 20), 0)]),
        "000007": voc_xml(50, 40, [("person", (5, 5, 45, 38), 0)]),
        "000009": "<annotation><size><width>50</width>",  # malformed
        "000016": voc_xml(50, 40, [("cat", (3, 3, 9, 9), 1)]),  # only a difficult object
    }
    for n, text in xml.items():
        (base / "Annotations" / f"{n}.xml").write_text(text)
    (base / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(names) + "\n")  # 000012 has no XML
    return tmp_path


def test_voc_loader_converts_boxes_and_keeps_difficult(tmp_path):
    root = voc_fixture(tmp_path)
    issues = DataIssues("skip")
    records = load_voc(root, 2007, "trainval", issues)
    assert [r["name"] for r in records] == ["000005", "000007", "000016"]
    first = records[0]
    assert first["image_id"] == 5 and (first["width"], first["height"]) == (50, 40)
    assert first["boxes"].tolist() == [[0, 0, 20, 30], [9, 4, 50, 40]]  # (xmin-1, ymin-1, xmax, ymax)
    assert first["labels"].tolist() == [12, 8] and first["difficult"].tolist() == [0, 1]
    assert issues.counts == {"unknown_category": 1, "invalid_box": 1, "malformed_annotation": 2}
    source = voc_source(root, [(2007, "trainval")], DataIssues("skip"))
    train = DetectionDataset(source, train=True, issues=source.issues)
    assert [r["name"] for r in train.records] == ["000005", "000007"]  # only-difficult image left out
    assert train.records[0]["labels"].tolist() == [12]
    image, target = train[1]
    assert image.shape == (3, 40, 50) and target["labels"].tolist() == [15]
    with_difficult = DetectionDataset(source, train=True, use_difficult=True, issues=source.issues)
    assert len(with_difficult) == 3


def test_voc_faults_raise_under_raise(tmp_path):
    root = voc_fixture(tmp_path)
    with pytest.raises(DataError, match=r"unicorn.*unknown_category|unknown_category") as err:
        load_voc(root, 2007, "trainval", DataIssues("raise"))
    assert "000005.xml" in str(err.value)


def test_missing_dataset_shows_expected_layout(tmp_path):
    cfg = load_det_config(overrides=[f"data.root={tmp_path}", "data.dataset=voc0712"])
    with pytest.raises(FileNotFoundError, match="VOCdevkit/VOC2007/Annotations"):
        train_source(cfg, DataIssues())
    cfg = load_det_config(overrides=[f"data.root={tmp_path}", "data.dataset=coco"])
    with pytest.raises(FileNotFoundError, match=r"instances_\{minival,valminusminival\}2014"):
        train_source(cfg, DataIssues())


# --------------------------------------------------------------------------------------- augmentation, samplers
def test_augmentation_is_a_function_of_the_seed_and_flips_boxes_exactly():
    aug = TrainAugmentation([60, 80], 100, hflip_prob=0.5)
    image = np.random.default_rng(0).integers(0, 255, (50, 120, 3), dtype=np.uint8)
    boxes, labels = np.array([[10.0, 5.0, 30.0, 45.0]], np.float32), np.array([1])
    outs = [aug(image, boxes.copy(), labels, seed) for seed in range(12)]
    again = [aug(image, boxes.copy(), labels, seed) for seed in range(12)]
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(outs, again))
    shapes = {o[0].shape[:2] for o in outs}
    assert shapes == {(42, 100)}  # 600-rule: shorter side 60/80 capped by longer side 100
    xs = {tuple(np.round(o[1][0].astype(np.float64), 3)) for o in outs}
    assert xs == {(8.333, 4.2, 25.0, 37.8), (75.0, 4.2, 91.667, 37.8)}  # both flip states occur
    for out_image, out_boxes, _ in outs:
        if out_boxes[0, 0] > 50:
            plain = aug.pipeline.transforms[0]
            resized = plain.apply(image, out_hw=out_image.shape[:2])
            assert np.array_equal(out_image, resized[:, ::-1])


def test_sampler_resumes_exactly_and_shards_disjointly():
    groups = [0, 1, 0, 0, 1, 1, 0, 1, 0]
    full = list(itertools.islice(iter(GroupedInfiniteBatchSampler(groups, 2, seed=3)), 12))
    resumed = list(itertools.islice(iter(GroupedInfiniteBatchSampler(groups, 2, seed=3, start_iter=5)), 7))
    assert resumed == full[5:]
    assert all(len({groups[i] for i, _ in b}) == 1 for b in full)  # aspect-ratio groups never mix
    ranks = [list(itertools.islice(iter(GroupedInfiniteBatchSampler(groups, 1, 3, r, 3)), 3)) for r in range(3)]
    first_epoch = sorted(i for batches in ranks for b in batches for i, _ in b)
    assert first_epoch == list(range(9))
    seeds = [s for b in full for _, s in b]
    assert len(set(seeds)) == len(seeds)


def test_digits_generation_is_deterministic(tmp_path):
    kwargs = dict(seed=5, num_train=6, num_val=3, canvas=(48, 64), digit_size=(12, 24), per_image=(1, 3))
    a, b = generate_digits(tmp_path / "a", **kwargs), generate_digits(tmp_path / "b", **kwargs)
    for rel in ["instances_train.json", "instances_val.json", "train/000000.png", "val/000002.png"]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    data = json.loads((a / "instances_train.json").read_text())
    assert len(data["images"]) == 6 and len(data["categories"]) == 10
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        img = next(i for i in data["images"] if i["id"] == ann["image_id"])
        assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"] and w > 0 and h > 0
    c = generate_digits(tmp_path / "a", **{**kwargs, "seed": 6})
    assert (c / "train/000000.png").read_bytes() != (a / "train/000000.png").read_bytes()
