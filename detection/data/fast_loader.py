"""A faster training-data path: libjpeg-turbo decoding straight to RGB, uint8 images, one thread per worker.

Same samples as ``DetectionDataset`` (same pixels, boxes, augmentation and bad-data policy), produced with less work:

- plain RGB JPEGs (3 components, baseline/progressive, no EXIF rotation, complete) are decoded by OpenCV's
  libjpeg-turbo straight from the file bytes into the HxWx3 RGB array the augmentation takes, skipping PIL's image
  object and its copies (pixel-identical to PIL: same library, same IDCT; tested). ``torchvision.io.decode_jpeg``
  is as fast but deprecated since torchvision 0.29 and returns CHW. Every other file (PNG, grayscale, CMYK,
  rotated, truncated, corrupt, too large) goes through ``read_image``, so issues are reported exactly as before;
- images stay uint8 [3, H, W] until the model's device: a quarter of the bytes through the worker queue's shared
  memory, and on a GPU the conversion to float costs nothing (``images_to_float``);
- ``worker_init_fn`` turns off OpenCV's and torch's own threads in workers: N workers on N cores already use every
  core, and nested thread pools only add contention.
"""
import struct
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from .dataset import DetectionDataset
from .image_io import read_image
from .issues import Issue

_SOF_PLAIN = (0xC0, 0xC1, 0xC2)  # baseline, extended, progressive Huffman: what libjpeg-turbo always decodes
_EXIF_ORIENTATION = 0x0112


class JpegHeader(NamedTuple):
    width: int
    height: int
    components: int
    sof: int
    orientation: int  # EXIF orientation, 1 when absent


def _exif_orientation(app1: bytes) -> int:
    """Orientation tag of IFD0 in an APP1 Exif payload (after ``Exif\\0\\0``); 1 when absent or unreadable."""
    tiff = app1[6:]
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    endian = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack(endian + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(endian + "H", tiff[ifd:ifd + 2])
    for i in range(count):
        entry = tiff[ifd + 2 + 12 * i: ifd + 14 + 12 * i]
        if len(entry) < 12:
            return 1
        tag, kind = struct.unpack(endian + "HH", entry[:4])
        if tag == _EXIF_ORIENTATION:
            value = struct.unpack(endian + "H", entry[8:10])[0] if kind == 3 else 0
            return value or 1
    return 1


def jpeg_header(data: bytes) -> Optional[JpegHeader]:
    """Size, component count, frame type and EXIF orientation from a JPEG's markers; None if not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, orientation = 2, 1
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        segment = data[pos + 4:pos + 2 + length]
        if marker == 0xE1 and segment[:6] == b"Exif\x00\x00":
            orientation = _exif_orientation(segment)
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if len(segment) < 6:
                return None
            height, width = struct.unpack(">HH", segment[1:5])
            return JpegHeader(width, height, segment[5], marker, orientation)
        elif marker in (0xDA, 0xD9):  # scan data before any frame header: malformed
            return None
        pos += 2 + length
    return None


def decode_rgb_jpeg(data: bytes) -> Optional[np.ndarray]:
    """HxWx3 uint8 RGB from JPEG bytes with OpenCV's libjpeg-turbo; None if OpenCV cannot decode them."""
    import cv2

    buffer = np.frombuffer(data, np.uint8)
    if hasattr(cv2, "IMREAD_COLOR_RGB"):  # OpenCV >= 4.10: no BGR→RGB pass
        return cv2.imdecode(buffer, cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_image_fast(path: Path, expected_size, max_pixels: int, issues: List[Issue], on_error: str):
    """``read_image``'s result for ``path``, decoding plain RGB JPEGs with libjpeg-turbo directly (module doc)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        data = b""
    header = jpeg_header(data) if data else None
    plain = (header is not None and header.components == 3 and header.sof in _SOF_PLAIN
             and header.orientation == 1 and header.width * header.height <= max_pixels
             and data.rstrip(b"\x00")[-2:] == b"\xff\xd9"
             and (expected_size is None or tuple(expected_size) == (header.width, header.height)))
    pixels = decode_rgb_jpeg(data) if plain else None
    if pixels is not None and pixels.shape == (header.height, header.width, 3):
        return pixels
    # Anything unusual: PIL decides what is wrong and reports it under the policy.
    return read_image(Path(path), expected_size, max_pixels, issues, on_error)


class FastDetectionDataset(DetectionDataset):
    """``DetectionDataset`` with the fast decoder and uint8 [3, H, W] images (convert with ``images_to_float``)."""

    def _read(self, record: dict, problems: List[Issue]) -> Optional[np.ndarray]:
        expected = None if record["width"] is None else (record["width"], record["height"])
        return read_image_fast(Path(record["file"]), expected, self.max_image_pixels, problems, self.on_error)

    @staticmethod
    def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)


def worker_init_fn(worker_id: int) -> None:
    """One thread per DataLoader worker for OpenCV and torch (the workers are the parallelism)."""
    import cv2

    cv2.setNumThreads(0)
    torch.set_num_threads(1)


def images_to_float(images: Sequence[torch.Tensor], device) -> List[torch.Tensor]:
    """uint8 [3, H, W] → float [0, 1] on ``device`` (the transfer moves uint8: 4× fewer bytes); floats pass through."""
    out = []
    for image in images:
        image = image.to(device, non_blocking=True)
        out.append(image.float().div_(255.0) if image.dtype == torch.uint8 else image)
    return out
