"""Digits painted on the textured colour canvases of the digits detection set (``detection/data/digits.py``).

The detection canvases use this texture and ink rule, so a classifier pretrained on ``paint_on_canvas`` digits sees
the same backgrounds and ink polarities as the detector's RoIs; one pretrained on white-on-black digits classifies
canvas crops at chance (docs/DETECTION.md, "ImageNet family on digits").
"""
import numpy as np
from PIL import Image


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour field plus stripes and grain, HxWx3 float in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0.15, 0.85, 3).astype(np.float32)
    field = np.zeros((h, w, 3), np.float32)
    for _ in range(3):
        fy, fx = rng.uniform(-0.15, 0.15, 2)
        phase = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.03, 0.12, 3).astype(np.float32)
        field += np.sin(fy * yy + fx * xx + phase)[..., None] * amp
    coarse = rng.normal(0, 0.08, (h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
    coarse_img = np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((w, h), Image.BILINEAR))
                           for c in range(3)], -1)
    grain = rng.normal(0, 0.025, (h, w, 3)).astype(np.float32)
    return np.clip(base + field + coarse_img + grain, 0, 1)


def ink_colour(rng: np.random.Generator, patch: np.ndarray) -> np.ndarray:
    """Dark ink on a light patch, light ink on a dark one (the detection set's rule)."""
    return rng.uniform(0.0, 0.2, 3) if float(patch.mean()) > 0.5 else rng.uniform(0.8, 1.0, 3)


def paint_on_canvas(alphas: np.ndarray, seed: int) -> np.ndarray:
    """N×S×S ink alphas in [0, 1] → N×S×S×3 float images: each digit painted on its own texture patch."""
    rng = np.random.default_rng(seed)
    n, h, w = alphas.shape
    out = np.empty((n, h, w, 3), np.float32)
    for i in range(n):
        patch = texture(rng, h, w)
        ink = ink_colour(rng, patch).astype(np.float32)
        a = alphas[i][..., None]
        out[i] = patch * (1 - a) + ink * a
    return out


def scaled_alpha(alpha: np.ndarray, width: int, height: int) -> np.ndarray:
    """An ink alpha in [0, 1] resized bilinearly to height×width, as the detection canvases draw digits."""
    return np.clip(np.asarray(Image.fromarray(alpha.astype(np.float32)).resize((width, height), Image.BILINEAR)), 0, 1)


def ink_digit(img: np.ndarray, alpha: np.ndarray, y0: int, x0: int, rng: np.random.Generator) -> None:
    """Paint ``alpha`` into ``img`` (in place) at (y0, x0) with the ink colour the patch under it calls for."""
    h, w = alpha.shape
    patch = img[y0:y0 + h, x0:x0 + w]
    ink = ink_colour(rng, patch).astype(np.float32)
    img[y0:y0 + h, x0:x0 + w] = patch * (1 - alpha[..., None]) + ink * alpha[..., None]


def paint_in_context(alpha: np.ndarray, side: int, heights, rng: np.random.Generator, ease: float = 0.0) -> np.ndarray:
    """One 8×8 ink alpha → side×side×3 float image: the digit drawn as on the detection canvases (height uniform in
    ``heights``, width 0.75-1.0 × height, bilinear, anywhere fully inside) on a fresh texture.

    Pretraining on these makes res4 features of a digit independent of where it sits and of the image border: a
    classifier trained on digits filling a 32×32 image (``paint_on_canvas``) drops from 94 % to chance when the same
    digit is surrounded by 8 px of texture, so its features cannot transfer to RoIs of a detection canvas.

    ``ease`` in [0, 1] makes the drawing easier for a curriculum: the smallest height moves up to the largest and the
    texture fades to black (1: a large digit on black). 0 draws exactly as without it.
    """
    img = texture(rng, side, side)
    if ease:
        img *= 1.0 - ease
    low = int(round(heights[0] + (heights[1] - heights[0]) * ease))
    h = int(rng.integers(low, heights[1] + 1))
    w = max(4, int(round(h * rng.uniform(0.75, 1.0))))
    a = scaled_alpha(alpha, w, h)
    y0, x0 = int(rng.integers(0, side - h + 1)), int(rng.integers(0, side - w + 1))
    ink_digit(img, a, y0, x0, rng)
    return img
