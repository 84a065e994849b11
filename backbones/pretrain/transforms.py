"""Training augmentation and evaluation views, driven by an explicit per-sample ``torch.Generator``.

Taking the generator as an argument (instead of drawing from global state) makes every augmented sample a function of
``(seed, epoch, index)`` only, which is what makes resumed and multi-worker runs bit-identical.

ImageNet recipe (paper §3.4): shorter side random in [256, 480], 224 random crop, horizontal flip, AlexNet PCA colour
lighting, mean subtraction. CIFAR recipe (§4.2): 4-pixel zero padding, 32 random crop, flip.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torchvision.transforms.functional as TF
from PIL import Image

# AlexNet PCA lighting on RGB in [0, 1] (the constants used by fb.resnet.torch and its copies).
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def to_float_tensor(image) -> torch.Tensor:
    """PIL image or uint8/float tensor → float C×H×W in [0, 1]."""
    if isinstance(image, Image.Image):
        image = TF.pil_to_tensor(image)
    if image.dtype == torch.uint8:
        return image.float().div_(255.0)
    return image.float()


def _randint(low: int, high: int, g: torch.Generator) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


def resize_shorter(image, size: int):
    """Resize so the shorter side is ``size`` (bilinear, antialiased), keeping the aspect ratio."""
    return TF.resize(image, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def random_crop(image: torch.Tensor, size: int, g: torch.Generator, pad: int = 0) -> torch.Tensor:
    """``size``×``size`` crop at a uniform position of ``image`` zero-padded by ``pad`` pixels on each side."""
    if pad:
        image = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    h, w = image.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}×{size} from a {h}×{w} image")
    top, left = _randint(0, h - size, g), _randint(0, w - size, g)
    return image[..., top:top + size, left:left + size]


def random_flip(image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return image.flip(-1) if bool(torch.rand(1, generator=g) < 0.5) else image


def pca_lighting(image: torch.Tensor, alphastd: float, g: torch.Generator,
                 eigval: Sequence[float] = IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC) -> torch.Tensor:
    """AlexNet colour augmentation: add ``eigvec · (alpha ∘ eigval)`` to every RGB pixel, alpha ~ N(0, alphastd²)."""
    if alphastd <= 0:
        return image
    alpha = torch.randn(3, generator=g) * alphastd
    rgb = torch.tensor(eigvec, dtype=torch.float32) @ (alpha * torch.tensor(eigval, dtype=torch.float32))
    return image + rgb.view(3, 1, 1)


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - mean_t) / std_t


class TrainTransform:
    """The training augmentation of a recipe; ``__call__(image, generator) -> normalised float tensor``.

    Args:
        scale: (min, max) shorter side for random rescaling, or None to keep the size (CIFAR, digits).
        crop: crop size (None keeps the full image).
        pad: zero padding before cropping (CIFAR's 4 pixels).
        flip: random horizontal flip.
        lighting: PCA-lighting alpha std (0 disables).
        mean, std: per-channel normalisation for inputs in [0, 1].
    """

    def __init__(self, scale: Optional[Tuple[int, int]], crop: Optional[int], pad: int, flip: bool, lighting: float,
                 mean: Sequence[float], std: Sequence[float]):
        self.scale, self.crop, self.pad, self.flip, self.lighting = scale, crop, pad, flip, lighting
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image, g: torch.Generator) -> torch.Tensor:
        if self.scale is not None:
            image = resize_shorter(image, _randint(self.scale[0], self.scale[1], g))
        image = to_float_tensor(image)
        if self.crop is not None:
            image = random_crop(image, self.crop, g, self.pad)
        if self.flip:
            image = random_flip(image, g)
        image = pca_lighting(image, self.lighting, g)
        return normalize(image, self.mean, self.std)


class EvalTransform:
    """Deterministic test views of one image, normalised.

    Protocols:
        "single": the image as is (CIFAR, digits) → C×H×W.
        "1crop": shorter side ``resize``, centre ``crop`` → C×H×W.
        "10crop": shorter side ``resize``, 4 corner + centre ``crop`` crops and their flips → 10×C×H×W.
        "multiscale": the whole image at each shorter side in ``scales`` → list of C×H_s×W_s (flips are added by
            the evaluator, which runs the network fully-convolutionally on each).
    """

    def __init__(self, protocol: str, mean: Sequence[float], std: Sequence[float], resize: int = 256,
                 crop: int = 224, scales: Sequence[int] = (224, 256, 384, 480, 640)):
        self.protocol, self.resize, self.crop, self.scales = protocol, resize, crop, tuple(scales)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image):
        if self.protocol == "multiscale":
            return [normalize(to_float_tensor(resize_shorter(image, s)), self.mean, self.std) for s in self.scales]
        if self.protocol == "single":
            return normalize(to_float_tensor(image), self.mean, self.std)
        image = normalize(to_float_tensor(resize_shorter(image, self.resize)), self.mean, self.std)
        if self.protocol == "1crop":
            return center_crop(image, self.crop)
        if self.protocol == "10crop":
            return ten_crops(image, self.crop)
        raise ValueError(f"unknown evaluation protocol {self.protocol!r}")


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    top, left = _centre_offset(h, size), _centre_offset(w, size)
    return image[..., top:top + size, left:left + size]


def _centre_offset(length: int, size: int) -> int:
    # Same rounding as torchvision's center_crop, so 1-crop numbers are comparable with its reference scripts.
    return int(round((length - size) / 2.0))


def ten_crops(image: torch.Tensor, size: int) -> torch.Tensor:
    """Corners (top-left, top-right, bottom-left, bottom-right) and centre of the image, then of its mirror image
    (the mirror's centre crop can be one pixel off the mirrored centre crop when the margin is odd, as in
    torchvision's ``ten_crop``)."""
    h, w = image.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot take {size}×{size} crops from a {h}×{w} image")
    offsets: List[Tuple[int, int]] = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size),
                                      (_centre_offset(h, size), _centre_offset(w, size))]
    crops = [view[..., t:t + size, l:l + size] for view in (image, image.flip(-1)) for t, l in offsets]
    return torch.stack(crops)
