"""Security: weights never run code when loaded, YAML is loaded safely, annotation file names cannot leave the data
folder, and images over a pixel limit are refused before they are decoded (decompression bombs).

The malicious files would create a marker file when unpickled with plain pickle / ``weights_only=False`` (checked
first, so a refusal is not a broken fixture); every entry point must refuse them and leave no marker.
"""
import ast
import json
import pickle
import shutil
import struct
import time
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from fault_helpers import (DET_TINY, REPO, checkpoint_folder, det_args, one_thread, pretrain_args,  # noqa: F401
                           reference_run, run_main, shared_data_root, tool_args, write_malicious_pickle,
                           write_malicious_torch_file)

REFUSALS = ("weights_only", "refused to load global")


def test_malicious_fixtures_would_run_code(tmp_path):
    marker = tmp_path / "marker"
    torch.load(write_malicious_torch_file(tmp_path / "evil.pth", marker), weights_only=False)
    assert marker.exists()
    marker.unlink()
    pickle.loads(write_malicious_pickle(tmp_path / "evil.pkl", marker).read_bytes())
    assert marker.exists()


def _entry_points(tmp_path, data_root, evil_pth, evil_pkl):
    image = tmp_path / "image.png"
    Image.new("RGB", (64, 48), (90, 120, 30)).save(image)
    out = tmp_path / "out"
    return {
        "pretrain_eval_only": ("pretrain.py", pretrain_args(out, flags=["--eval-only", "--weights", evil_pth])),
        "train_det_resdet_weights": ("train_det.py", det_args(out, data_root=data_root, flags=["--weights",
                                                                                               evil_pth])),
        "train_det_detectron2_pkl": ("train_det.py", det_args(out, data_root=data_root, flags=[
            "--weights", f"detectron2:{evil_pkl}"])),
        "train_det_msra_pkl": ("train_det.py", det_args(out, data_root=data_root, flags=["--weights",
                                                                                         f"msra:{evil_pkl}"])),
        "infer": ("infer.py", ["--weights", evil_pth, "--image", image, "-o", out]),
        "eval_det": ("eval_det.py", ["--weights", evil_pth, "-o", out, "--no-report"]),
        "convert_msra_pkl": ("convert_weights.py", [evil_pkl, out / "w.pth", "--from", "msra", "--to", "resdet",
                                                    "--arch", "resnet50"]),
        "convert_resdet_pth": ("convert_weights.py", [evil_pth, out / "w.pkl", "--from", "resdet", "--to",
                                                      "detectron2", "--arch", "resnet20"]),
    }


ENTRY_POINTS = ["pretrain_eval_only", "train_det_resdet_weights", "train_det_detectron2_pkl", "train_det_msra_pkl",
                "infer", "eval_det", "convert_msra_pkl", "convert_resdet_pth"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_malicious_weights_are_refused_by_every_tool(entry, tmp_path, tmp_path_factory, one_thread):
    marker = tmp_path / "marker"
    evil_pth = write_malicious_torch_file(tmp_path / "evil.pth", marker)
    evil_pkl = write_malicious_pickle(tmp_path / "evil.pkl", marker)
    tool, args = _entry_points(tmp_path, shared_data_root(tmp_path_factory), evil_pth, evil_pkl)[entry]
    try:
        code, out = run_main(tool, args)
    except Exception as e:  # a refusal that the tool does not turn into an exit code still refuses
        code, out = 1, f"{type(e).__name__}: {e}"
    assert code != 0
    assert any(r in out for r in REFUSALS), out[-2000:]
    assert not marker.exists()


@pytest.mark.parametrize("tool", ["pretrain.py", "train_det.py"])
def test_malicious_checkpoint_in_run_folder_is_skipped_on_resume(tool, tmp_path, tmp_path_factory, one_thread):
    """A newest checkpoint planted in a run folder is refused; resume falls back to the last real one."""
    marker = tmp_path / "marker"
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run(tool, tmp_path_factory), run_dir)
    folder = checkpoint_folder(tool, run_dir)
    write_malicious_torch_file(folder / "model_0000999.pth", marker)
    (folder / "last_checkpoint").write_text("model_0000999.pth\n")

    code, out = run_main(tool, tool_args(tool, run_dir, data_root=shared_data_root(tmp_path_factory),
                                         flags=["--resume"]))

    assert code == 0, out[-3000:]
    assert "model_0000999.pth cannot be read" in out and "falling back to the previous checkpoint" in out
    assert f"resumed from {folder / 'model_0000012.pth'} at iteration 12" in out
    assert not marker.exists()


YAML_ATTACK = "!!python/object/apply:os.system [\"touch {marker}\"]"


def test_yaml_fixture_would_run_code(tmp_path):
    marker = tmp_path / "marker"
    yaml.unsafe_load(YAML_ATTACK.format(marker=marker))
    assert marker.exists()


@pytest.mark.parametrize("where", ["file", "override"])
@pytest.mark.parametrize("tool", ["pretrain.py", "train_det.py"])
def test_yaml_python_tags_are_refused(tool, where, tmp_path):
    marker = tmp_path / "marker"
    attack = YAML_ATTACK.format(marker=marker)
    args = ["--output-dir", str(tmp_path / "run")]
    if where == "file":
        config = tmp_path / "evil.yaml"
        config.write_text(f"seed: {attack}\n" if tool == "train_det.py" else f"train:\n  seed: {attack}\n")
        args += ["--config", str(config)]
    else:
        args += ["--config", str(REPO / "configs" / "pretrain" / "digits_resnet20.yaml")] if tool == "pretrain.py" \
            else []
        args += [f"solver.base_lr={attack}"]
    code, out = run_main(tool, args)
    assert code == 2 and out.startswith("config error: ") and "python/object/apply" in out, out
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def _coco(tmp_path, file_name):
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (64, 48), (10, 200, 40)).save(images / "ok.jpg")
    secret = tmp_path / "data" / "secret.jpg"  # a real, readable image one level above the image folder
    Image.new("RGB", (64, 48), (200, 10, 40)).save(secret)
    entries = [("ok.jpg", 1), (file_name.replace("SECRET", str(secret)), 2)]
    ann = tmp_path / "data" / "train.json"
    ann.write_text(json.dumps({
        "images": [{"id": i, "file_name": f, "width": 64, "height": 48} for f, i in entries],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [5, 5, 20, 20], "iscrowd": 0}
                        for _, i in entries],
        "categories": [{"id": 1, "name": "thing"}]}))
    return ann, images


@pytest.mark.parametrize("policy", ["skip", "raise"])
@pytest.mark.parametrize("name", ["../secret.jpg", "nested/../../secret.jpg", "SECRET", "..\\secret.jpg"])
def test_annotation_file_names_cannot_leave_the_image_folder(name, policy, tmp_path, one_thread):
    ann, images = _coco(tmp_path, name)
    args = ["--dataset", "coco_json", "--backbone", "resnet20", "--ann", str(ann), "--images", str(images),
            "--output-dir", str(tmp_path / "run"), *DET_TINY, f"data.on_error={policy}"]
    code, out = run_main("train_det.py", args)
    assert code == 1, out[-2000:]
    assert out.startswith(f"error: {ann} images[1]: image file name ") and "points outside the image folder" in out
    assert not list((tmp_path / "run").rglob("*.pth"))


def test_voc_image_list_cannot_leave_the_dataset(tmp_path, one_thread):
    base = tmp_path / "VOCdevkit" / "VOC2007"
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "Annotations").mkdir()
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("../../../../etc/hostname\n")
    args = ["--dataset", "voc07", "--backbone", "resnet20", "--data-root", str(tmp_path), "--output-dir",
            str(tmp_path / "run"), *DET_TINY]
    code, out = run_main("train_det.py", args)
    assert code == 1 and "points outside the image folder" in out, out[-2000:]


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` RGB pixels but carries almost no data (a bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("size", [(12000, 12000), (40000, 40000)], ids=["over_limit", "over_pillow_limit"])
def test_infer_refuses_decompression_bombs_before_decoding(size, tmp_path, tmp_path_factory, one_thread):
    detector = reference_run("train_det.py", tmp_path_factory) / "model_final.pth"
    bomb = png_header(tmp_path / "bomb.png", *size)
    started = time.monotonic()
    code, out = run_main("infer.py", ["--weights", detector, "--image", bomb, "-o", tmp_path / "out"])
    assert code == 1, out[-2000:]
    assert out.startswith(f"error: {bomb}: ") and str(size[0] * size[1]) in out.replace(",", ""), out
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_infer_pixel_limit_is_configurable(tmp_path, tmp_path_factory, one_thread):
    detector = reference_run("train_det.py", tmp_path_factory) / "model_final.pth"
    image = tmp_path / "small.png"
    Image.new("RGB", (64, 48), (30, 60, 90)).save(image)
    code, out = run_main("infer.py", ["--weights", detector, "--image", image, "-o", tmp_path / "ok"])
    assert code == 0, out[-2000:]
    code, out = run_main("infer.py", ["--weights", detector, "--image", image, "-o", tmp_path / "refused",
                                      "--max-pixels", "3000"])
    assert code == 1 and "3072 pixels exceeds" in out and "3000" in out, out[-2000:]
    assert not (tmp_path / "refused").exists() or not list((tmp_path / "refused").iterdir())


# ------------------------------------------------------------------------------------------- source checks
def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else (
                f.id if isinstance(f, ast.Name) else "")
            yield name, node


def test_no_unsafe_loader_in_the_code():
    """Every torch.load passes weights_only=True; no plain pickle, no unsafe YAML, no numpy pickles."""
    problems = []
    files = [p for d in ("backbones", "detection", "tools") for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 30
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(REPO)
        for name, call in _calls(tree):
            keywords = {k.arg: k.value for k in call.keywords}
            if name == "torch.load":
                value = keywords.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
            elif name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "yaml.load", "yaml.unsafe_load",
                          "yaml.full_load", "yaml.load_all", "marshal.loads", "dill.load", "joblib.load"):
                problems.append(f"{where}:{call.lineno}: {name}")
            elif name in ("np.load", "numpy.load") and isinstance(keywords.get("allow_pickle"), ast.Constant) \
                    and keywords["allow_pickle"].value is True:
                problems.append(f"{where}:{call.lineno}: np.load(allow_pickle=True)")
            elif name in ("eval", "exec"):
                problems.append(f"{where}:{call.lineno}: {name}()")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "yaml" \
                    and node.attr in ("Loader", "UnsafeLoader", "FullLoader"):
                problems.append(f"{where}:{node.lineno}: yaml.{node.attr}")
    assert not problems, "\n".join(problems)
