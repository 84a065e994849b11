"""Bad detection data through the real training CLI: ``data.on_error=skip`` finishes with counted warnings and a
final summary; ``data.on_error=raise`` stops with one error naming the file and the record, before any checkpoint.

(tests/test_det_data.py checks each loader function; here every fault goes through tools/train_det.py.)
"""
import json
import re

import numpy as np
import pytest
from PIL import Image

from fault_helpers import DET_TINY, one_thread, run_main  # noqa: F401

W, H = 64, 48
GOOD_BOX = [6.0, 5.0, 20.0, 18.0]  # x, y, w, h
CATEGORIES = [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]


def _pixels(seed, size=(W, H)):
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _jpeg(path, seed, mode="RGB", size=(W, H), orientation=None):
    img = Image.fromarray(_pixels(seed, size)).convert(mode)
    extra = {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        extra["exif"] = exif.tobytes()
    img.save(path, format="JPEG", **extra)


def _png(path, seed, mode="RGB"):
    Image.fromarray(_pixels(seed)).convert(mode).save(path, format="PNG")


def _cut_in_half(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# Each fault: how its file is written (None: no file), how its images/annotations entries deviate, and the data-issue
# kind it produces. "error" kinds lose data (raise under on_error=raise); "repair" kinds only get counted.
FAULTS = {
    "corrupt_jpeg": dict(kind="corrupt_image", error=True, write=lambda p, s: p.write_bytes(b"\xff\xd8\xff" + bytes(
        np.random.default_rng(s).integers(0, 256, 500, dtype=np.uint8)))),
    "truncated_jpeg": dict(kind="corrupt_image", error=True, write=lambda p, s: (_jpeg(p, s), _cut_in_half(p))),
    "truncated_png": dict(kind="corrupt_image", error=True, file="png",
                          write=lambda p, s: (_png(p, s), _cut_in_half(p))),
    "missing_file": dict(kind="missing_image", error=True, write=None),
    "size_mismatch": dict(kind="size_mismatch", error=True, write=lambda p, s: _jpeg(p, s, size=(W + 8, H))),
    "zero_area_box": dict(kind="invalid_box", error=True, bbox=[10, 10, 0, 5]),
    "inverted_box": dict(kind="invalid_box", error=True, bbox=[30, 20, -8, 5]),
    "outside_box": dict(kind="invalid_box", error=True, bbox=[W + 5, 2, 10, 10]),
    "malformed_bbox": dict(kind="invalid_box", error=True, bbox=[1, 2, 3]),
    "unknown_category": dict(kind="unknown_category", error=True, category=99),
    "duplicate_image_id": dict(kind="duplicate_image_id", error=True, duplicate=True),
    "image_entry_without_file_name": dict(kind="malformed_annotation", error=True, no_file_name=True),
    "annotation_of_unknown_image": dict(kind="malformed_annotation", error=True, orphan=True),
    "cmyk": dict(kind="converted_mode", error=False, write=lambda p, s: _jpeg(p, s, "CMYK")),
    "grayscale": dict(kind="converted_mode", error=False, file="png", write=lambda p, s: _png(p, s, "L")),
    "alpha": dict(kind="converted_mode", error=False, file="png", write=lambda p, s: _png(p, s, "RGBA")),
    "exif_rotated": dict(kind="exif_rotated", error=False, write=lambda p, s: _jpeg(p, s, size=(H, W), orientation=6)),
    "partly_outside_box": dict(kind="clipped_box", error=False, bbox=[W - 10, H - 10, 20, 20]),
    "no_objects": dict(kind="empty_image", error=False, no_objects=True),
}


def write_dataset(root, faults):
    """A COCO-format set: two clean images, then one image (or entry) per fault. Returns (ann, image_dir, records)
    where ``records[fault]`` is the text an error about that fault must name."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    images, annotations, records = [], [], {}

    def add_image(name, writer, seed):
        if writer is not None:
            writer(images_dir / name, seed)
        images.append({"id": 100 + len(images), "file_name": name, "width": W, "height": H})
        return images[-1]

    def annotate(image_id, bbox=GOOD_BOX, category=3):
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                            "bbox": bbox, "iscrowd": 0})

    for i in range(2):
        annotate(add_image(f"clean{i}.jpg", _jpeg, i)["id"])
    for n, fault in enumerate(faults, start=10):
        spec = FAULTS[fault]
        name = f"{fault}.{spec.get('file', 'jpg')}"
        entry = add_image(name, spec.get("write", _jpeg), n)
        at_image = f"images[{len(images) - 1}]"
        if spec.get("duplicate"):
            entry["id"] = images[0]["id"]
            records[fault] = at_image
            continue
        if spec.get("no_file_name"):
            del entry["file_name"]
            records[fault] = at_image
            continue
        if spec.get("no_objects"):
            records[fault] = name
            continue
        annotate(entry["id"])  # every faulty image also holds a good object
        if "bbox" in spec or "category" in spec or spec.get("orphan"):
            annotate(12345 if spec.get("orphan") else entry["id"], spec.get("bbox", GOOD_BOX), spec.get("category", 3))
            records[fault] = f"annotations[{len(annotations) - 1}]"
        else:
            records[fault] = str(images_dir / name)
    ann = root / "train.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return ann, images_dir, records


def coco_args(run_dir, ann, images_dir, *overrides):
    return ["--dataset", "coco_json", "--backbone", "resnet20", "--ann", str(ann), "--images", str(images_dir),
            "--output-dir", str(run_dir), *DET_TINY, *overrides]


def test_skip_policy_trains_through_every_fault_and_summarises(tmp_path, one_thread):
    ann, images_dir, _ = write_dataset(tmp_path, sorted(FAULTS))
    run_dir = tmp_path / "run"
    code, out = run_main("train_det.py", coco_args(run_dir, ann, images_dir, "data.on_error=skip",
                                                   "solver.max_iter=24", "solver.steps=[20]"))
    assert code == 0, out[-3000:]
    issues = json.loads((run_dir / "final.json").read_text())["data_issues"]
    expected = {}
    for spec in FAULTS.values():
        expected[spec["kind"]] = expected.get(spec["kind"], 0) + 1
    # Each distinct problem counts once, however often its image is drawn (24 iterations over 18 images).
    assert issues == expected
    # The counted warnings while loading, and the final summary with one line per kind.
    assert "[resdet] warning: " in out and "(image skipped (file not found))" in out
    summary = out[out.index("data issues (on_error=skip):"):]
    for kind in expected:
        assert re.search(rf"^  {kind}: {expected[kind]}( \(\d+ times\))? — ", summary, re.M), (kind, summary)
    assert (run_dir / "model_final.pth").is_file()


ERROR_FAULTS = sorted(f for f, spec in FAULTS.items() if spec["error"])


@pytest.mark.parametrize("fault", ERROR_FAULTS)
def test_raise_policy_stops_with_one_error_naming_file_and_record(fault, tmp_path, one_thread):
    ann, images_dir, records = write_dataset(tmp_path, [fault])
    run_dir = tmp_path / "run"
    code, out = run_main("train_det.py", coco_args(run_dir, ann, images_dir, "data.on_error=raise"))
    assert code == 1, out[-3000:]
    # (the progress bar may share the error's line, hence no ^ anchor)
    errors = re.findall(r"error: (.*)", out)
    assert len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert f"[{FAULTS[fault]['kind']};" in errors[0] and records[fault] in errors[0], errors[0]
    if records[fault].startswith(("images[", "annotations[")):
        assert str(ann) in errors[0]
    assert not list(run_dir.rglob("*.pth"))


@pytest.mark.parametrize("fault", sorted(f for f, spec in FAULTS.items() if not spec["error"]))
def test_repairs_never_stop_a_run(fault, tmp_path, one_thread):
    ann, images_dir, _ = write_dataset(tmp_path, [fault])
    code, out = run_main("train_det.py", coco_args(tmp_path / "run", ann, images_dir, "data.on_error=raise",
                                                   "solver.max_iter=4", "solver.steps=[2]"))
    assert code == 0, out[-3000:]
    issues = json.loads((tmp_path / "run" / "final.json").read_text())["data_issues"]
    assert issues.get(FAULTS[fault]["kind"], 0) >= 1, issues


@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_malformed_json_is_one_error_with_line_and_column(policy, tmp_path):
    ann = tmp_path / "train.json"
    ann.write_text('{"images": [\n  {"id": 1, "file_name": "a.jpg",}\n], "annotations": [], "categories": []}\n')
    (tmp_path / "images").mkdir()
    code, out = run_main("train_det.py", coco_args(tmp_path / "run", ann, tmp_path / "images",
                                                   f"data.on_error={policy}"))
    assert code == 1
    assert out.strip() == f"error: {ann}: line 2 column 34: malformed JSON (Expecting property name enclosed in " \
                          "double quotes)", out


VOC_GOOD = ("<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            "<object><name>dog</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>30</xmax>"
            "<ymax>28</ymax></bndbox></object></annotation>")
VOC_FAULTS = {
    "not_well_formed": ("<annotation><size><width>64</width>", "malformed_annotation", "not well-formed XML"),
    "no_size": ("<annotation><object><name>dog</name></object></annotation>", "malformed_annotation",
                "missing <size/width>"),
    "unknown_class": (VOC_GOOD.replace("<name>dog</name>", "<name>unicorn</name>"), "unknown_category",
                      "class 'unicorn'"),
    "box_without_coordinates": (VOC_GOOD.replace("<xmin>5</xmin>", ""), "invalid_box", "no usable <bndbox>"),
}


def write_voc(root, fault):
    base = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    names = ["000001", "000002", "000003"]
    for i, name in enumerate(names):
        _jpeg(base / "JPEGImages" / f"{name}.jpg", i)
        (base / "Annotations" / f"{name}.xml").write_text(VOC_GOOD.format(w=W, h=H))
    (base / "Annotations" / "000002.xml").write_text(VOC_FAULTS[fault][0].format(w=W, h=H))
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(names) + "\n")
    return base / "Annotations" / "000002.xml"


@pytest.mark.parametrize("fault", sorted(VOC_FAULTS))
def test_voc_xml_faults_skip_or_raise(fault, tmp_path, one_thread):
    bad_xml = write_voc(tmp_path, fault)
    _, kind, detail = VOC_FAULTS[fault]

    def args(policy):
        return ["--dataset", "voc07", "--backbone", "resnet20", "--data-root", str(tmp_path), "--output-dir",
                str(tmp_path / policy), *DET_TINY, "solver.max_iter=4", "solver.steps=[2]", f"data.on_error={policy}"]

    code, out = run_main("train_det.py", args("raise"))
    assert code == 1 and out.startswith(f"error: {bad_xml}: ") and detail in out and f"[{kind};" in out, out[-2000:]

    code, out = run_main("train_det.py", args("skip"))
    assert code == 0, out[-3000:]
    assert json.loads((tmp_path / "skip" / "final.json").read_text())["data_issues"].get(kind) == 1
    assert f"[resdet] warning: {bad_xml}: " in out and f"  {kind}: 1 — " in out
