"""Image reading with the bad-data policy: safe paths, EXIF orientation, mode conversion, corrupt/truncated files."""
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from .issues import DataError, Issue

_EXIF_ORIENTATION = 0x0112
# EXIF orientation → the transpose that shows the image upright (EXIF 2.3, tag 274).
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def safe_join(root: Path, name: str, where: str) -> Path:
    """``root / name`` for a file name read from an annotation; names that could leave ``root`` are refused.

    Absolute paths and ``..`` components are rejected whatever ``data.on_error`` says: an annotation file must not
    make resdet read files outside the dataset. Symlinks inside the dataset are followed (datasets are often linked).
    """
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{where}: image file name {name!r} is empty or not a string")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
        raise DataError(f"{where}: image file name {name!r} points outside the image folder {root}; "
                        f"absolute paths and '..' are refused")
    return Path(root) / name


def image_size(path: Path) -> Tuple[int, int]:
    """(width, height) as stored, from the header only."""
    with Image.open(path) as img:
        return img.size


def read_image(path: Path, expected_size: Optional[Tuple[int, int]], max_pixels: int,
               issues: List[Issue], on_error: str) -> Optional[np.ndarray]:
    """Decode ``path`` to an HxWx3 uint8 RGB array, or None when it must be skipped.

    Problems are appended to ``issues`` as (kind, file, detail); under ``on_error="raise"`` data-losing ones raise
    ``DataError`` instead. ``expected_size`` (width, height) from the annotation decides the orientation: EXIF
    orientation is applied (as viewers and annotation tools show the image) unless the annotation matches the stored
    pixels instead.
    """
    file = str(path)

    def fail(kind: str, detail: str) -> None:
        if on_error == "raise":
            raise DataError(f"{file}: {detail} [{kind}; set data.on_error=skip to skip such images]")
        issues.append((kind, file, detail))

    if not path.is_file():
        fail("missing_image", "image file not found")
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    fail("too_large_image", f"{w}x{h} = {w * h} pixels exceeds data.max_image_pixels={max_pixels}")
                    return None
                img.load()
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
                mode = img.mode
                rgb = _to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        fail("corrupt_image", f"cannot decode image ({type(e).__name__}: {e})")
        return None
    if mode != "RGB":
        issues.append(("converted_mode", file, f"mode {mode} converted to RGB"))
    raw_size = rgb.size
    oriented = rgb.transpose(_ORIENT[orientation]) if orientation in _ORIENT else rgb
    if expected_size is None or tuple(expected_size) == oriented.size:
        if oriented is not rgb:
            issues.append(("exif_rotated", file, f"EXIF orientation {orientation} applied"))
        return np.array(oriented, dtype=np.uint8)
    if tuple(expected_size) == raw_size:
        return np.array(rgb, dtype=np.uint8)
    fail("size_mismatch", f"decoded size {oriented.size[0]}x{oriented.size[1]} differs from the annotation's "
                          f"{expected_size[0]}x{expected_size[1]} (width x height)")
    return None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white so transparent regions look as they do in a viewer, not as stored garbage colours.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "I;16" or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        peak = max(float(arr.max()), 1.0)
        scaled = (arr / (65535.0 if peak > 255 else 255.0) * 255.0).clip(0, 255).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    return img.convert("RGB")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_paths(items, suffixes=IMAGE_SUFFIXES) -> List[Path]:
    """Files in ``items``; folders are searched (not recursively) for files with one of ``suffixes``."""
    paths = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in suffixes)
        else:
            paths.append(p)
    if not paths:
        raise FileNotFoundError(f"no images found in {list(items)}")
    return paths
