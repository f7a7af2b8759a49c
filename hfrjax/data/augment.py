"""Image decoding and augmentation on uint8 HWC numpy arrays (host side, per image).

Every random choice takes an explicit ``np.random.Generator`` so the pipeline is
deterministic for a seed. Normalisation to [-1, 1] (InsightFace's ``(x - 127.5) / 127.5``)
is `normalize_images`, usable on numpy arrays on the host or on jax arrays inside a jitted
step (cheaper to ship uint8 to the device).
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image

from hfrjax.data.tfrecord import MODALITIES

try:  # libspng decodes PNG ~1.7x faster than Pillow; Pillow remains the fallback.
    import pyspng
except ImportError:  # pragma: no cover
    pyspng = None

CHANNEL_AUGS = ("none", "red", "random_channel")
ERASE_FILLS = ("noise", "zero")


class ImageDecodeError(ValueError):
    """An image that cannot be decoded; the message names the sample."""


def decode_image(
    data: bytes, *, channels: int = 3, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decodes JPEG/PNG/BMP bytes to uint8 [H, W, channels].

    The format is sniffed from the bytes, not trusted from metadata (CASIA NIR-VIS 2.0's lists
    say .bmp for files that are .jpg and vice versa). Single-band images become 3 identical
    channels when ``channels == 3``; colour images become luminance when ``channels == 1``.
    ``size`` = (height, width) resizes (bilinear) when the stored crop differs.
    """
    img = decode_native(data, channels=channels, size=size)
    return expand_channels(img, channels) if img.shape[2] != channels else img


def decode_native(
    data: bytes, *, channels: int = 3, size: tuple[int, int] | None = None
) -> np.ndarray:
    """`decode_image` except that a single-band image stays [H, W, 1] when ``channels == 3``
    (the training pipeline replicates the band once, after flipping the single plane).

    Returns a C-contiguous uint8 array with ``channels`` or 1 channels.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if data[:2] == b"\xff\xd8":
        colorspace = "GRAY" if channels == 1 else "RGB"
        img = simplejpeg.decode_jpeg(data, colorspace=colorspace)
    elif pyspng is not None and data[:8] == b"\x89PNG\r\n\x1a\n":
        img = pyspng.load(data)
        if img.dtype != np.uint8:  # 16-bit PNG.
            img = (img >> 8).astype(np.uint8)
        if img.ndim == 3 and img.shape[2] in (2, 4):  # Drop alpha.
            img = img[:, :, : img.shape[2] - 1]
        if channels == 1 and img.ndim == 3 and img.shape[2] == 3:
            img = luminance(img)
    else:
        with Image.open(io.BytesIO(data)) as pil:
            img = np.asarray(
                pil.convert("L" if channels == 1 or pil.mode in ("L", "I;16", "I") else "RGB")
            )
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] not in (1, channels):
        img = img[:, :, :channels]
    if size is not None and tuple(img.shape[:2]) != tuple(size):
        img = resize(img, size)  # Per band, so resizing before replicating a band is the same.
    return np.ascontiguousarray(img)


def expand_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """[H, W, 1] -> [H, W, channels] with the band replicated (``np.repeat`` on the last axis).

    One strided write per output channel: numpy copies with a 3-element innermost axis
    (``np.repeat``, or copying a broadcast / flipped view) are several times slower.
    """
    if img.shape[2] == channels:
        return img
    if img.shape[2] != 1:
        raise ValueError(f"cannot expand {img.shape[2]} channels to {channels}")
    out = np.empty((*img.shape[:2], channels), np.uint8)
    plane = img[:, :, 0]
    for c in range(channels):
        out[:, :, c] = plane
    return out


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as Pillow's "L" conversion."""
    y = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of uint8 [H, W, C] to (height, width)."""
    h, w = size
    if img.shape[2] == 1:
        out = Image.fromarray(img[:, :, 0]).resize((w, h), Image.BILINEAR)
        return np.asarray(out)[:, :, None]
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation. Order: flip, channel augmentation, random erasing, occlusion.

    ``channel_aug``:
      "red": with probability ``channel_aug_p`` replace RGB by [R, R, R] (the Rethinking paper's
        red-channel augmentation; its official code uses p = 0.5);
      "random_channel": draw k in {0, 1, 2, 3}, replicate channel k for k < 3, keep for k = 3.
    Random erasing (Zhong et al.) fills a rectangle of area fraction ``erasing_area`` and
    aspect ratio ``erasing_ratio`` (log-uniform) with uniform noise, with probability
    ``erasing_p``.
    Occlusion (the SSN paper's partial-face training) masks one random rectangle, the same
    sampling with ``occlude_area`` / ``occlude_ratio``, filled per ``occlude_fill`` ("zero" or
    "noise"), with probability ``occlude_p``, only on images whose modality is in
    ``occlude_modalities`` (SSN masks the NIR inputs only). With ``occlude_p == 0`` it draws
    nothing from the RNG, so outputs are unchanged.
    """

    hflip: bool = True
    channel_aug: str = "none"
    channel_aug_p: float = 0.5
    erasing_p: float = 0.0
    erasing_area: tuple[float, float] = (0.02, 0.4)
    erasing_ratio: tuple[float, float] = (0.3, 3.3)
    occlude_p: float = 0.0
    occlude_area: tuple[float, float] = (0.1, 0.5)
    occlude_ratio: tuple[float, float] = (0.3, 3.3)
    occlude_fill: str = "zero"
    occlude_modalities: tuple[str, ...] = ("nir",)

    def __post_init__(self):
        if self.channel_aug not in CHANNEL_AUGS:
            raise ValueError(f"channel_aug must be one of {CHANNEL_AUGS}, got {self.channel_aug!r}")
        for name in ("channel_aug_p", "erasing_p", "occlude_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        check_range("occlude_area", self.occlude_area, hi=1.0)
        check_range("occlude_ratio", self.occlude_ratio)
        if self.occlude_fill not in ERASE_FILLS:
            raise ValueError(
                f"occlude_fill must be one of {ERASE_FILLS}, got {self.occlude_fill!r}"
            )
        mods = self.occlude_modalities
        # A bare string would pass `in` checks by substring ("ir" in "nir"), so reject it.
        if isinstance(mods, str) or not isinstance(mods, tuple):
            raise ValueError(f"occlude_modalities must be a tuple of names, got {mods!r}")
        bad = [m for m in mods if m not in MODALITIES]
        if bad:
            raise ValueError(f"occlude_modalities has unknown modality {bad}; known: {MODALITIES}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "AugmentConfig":
        if isinstance(d, cls):
            return d
        d = dict(d.to_dict() if hasattr(d, "to_dict") else (d or {}))
        from hfrjax.config import check_keys

        check_keys(d, {f.name for f in dataclasses.fields(cls)}, "input.augment")
        for k in ("erasing_area", "erasing_ratio", "occlude_area", "occlude_ratio"):
            if k in d:
                d[k] = tuple(d[k])
        if isinstance(d.get("occlude_modalities"), list):
            d["occlude_modalities"] = tuple(d["occlude_modalities"])
        return cls(**d)


def check_range(name: str, v: Any, hi: float | None = None) -> None:
    """A (lo, hi) pair with 0 < lo <= hi (<= ``hi``): the sampler's log/uniform draws need it."""
    ok = isinstance(v, tuple) and len(v) == 2 and 0.0 < v[0] <= v[1] and (hi is None or v[1] <= hi)
    if not ok:
        limit = "" if hi is None else f" <= {hi}"
        raise ValueError(f"{name} must be a pair (lo, hi) with 0 < lo <= hi{limit}, got {v!r}")


def red_channel(img: np.ndarray) -> np.ndarray:
    """x' = [R, R, R]."""
    return np.repeat(img[:, :, :1], img.shape[2], axis=2)


def augment(
    img: np.ndarray,
    cfg: AugmentConfig,
    rng: np.random.Generator,
    *,
    modality: str | None = None,
    channels: int | None = None,
) -> np.ndarray:
    """Applies ``cfg`` to one uint8 [H, W, C] image; returns a new contiguous array.

    ``channels`` (default: C): the output's channels. A single-band input ([H, W, 1], e.g. a
    NIR image from `decode_native`) with ``channels=3`` gives exactly what augmenting its
    3-channel replica would give, the random draws included, with the flip done on one plane.
    Flip and channel selection happen in the one copy of the image; erasing and occlusion then
    write into that copy. ``modality`` (e.g. "nir") selects whether occlusion applies; it is
    required when ``cfg.occlude_p > 0`` so that occlusion is never silently skipped.
    """
    channels = img.shape[2] if channels is None else channels
    if img.shape[2] not in (1, channels):
        raise ValueError(f"augment: cannot make {channels} channels from {img.shape}")
    flip = cfg.hflip and rng.random() < 0.5
    k = channels
    if channels == 3:
        if cfg.channel_aug == "red":
            k = 0 if rng.random() < cfg.channel_aug_p else 3
        elif cfg.channel_aug == "random_channel":
            k = int(rng.integers(4))
    img = _flip_select_copy(img, flip, k, channels)
    if cfg.erasing_p > 0 and rng.random() < cfg.erasing_p:
        erase_in_place(img, rng, cfg.erasing_area, cfg.erasing_ratio)
    if cfg.occlude_p > 0:
        if modality is None:
            raise ValueError(
                f"augment: occlude_p={cfg.occlude_p} needs modality= to pick the images to occlude"
            )
        if modality in cfg.occlude_modalities and rng.random() < cfg.occlude_p:
            erase_in_place(img, rng, cfg.occlude_area, cfg.occlude_ratio, fill=cfg.occlude_fill)
    return img


def _flip_select_copy(img: np.ndarray, flip: bool, k: int, channels: int) -> np.ndarray:
    """A new C-contiguous [H, W, channels] array: ``img`` flipped left-right if ``flip``, with
    every channel set to channel ``k`` if ``k < channels`` (a single band is channel 0 of all).

    Built one output channel at a time (see `expand_channels` for why).
    """
    src = img[:, ::-1] if flip else img
    if img.shape[2] == 1 or k < channels:
        plane = src[:, :, 0 if img.shape[2] == 1 else k]
        if channels == 1:
            return np.array(plane[:, :, None], order="C", copy=True)
        out = np.empty((*img.shape[:2], channels), np.uint8)
        for c in range(channels):
            out[:, :, c] = plane
        return out
    if not flip:
        return np.array(img, order="C", copy=True)
    out = np.empty(img.shape, np.uint8)
    for c in range(channels):
        out[:, :, c] = src[:, :, c]
    return out


def erase_in_place(
    img: np.ndarray,
    rng: np.random.Generator,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 3.3),
    fill: str = "noise",
) -> bool:
    """Fills one random rectangle of ``img`` with uniform noise or zeros (a few shape tries,
    like torchvision's RandomErasing); returns whether it erased.

    ``fill="zero"`` draws no noise, so its RNG stream differs from "noise" after the box.
    """
    if fill not in ERASE_FILLS:
        raise ValueError(f"fill must be one of {ERASE_FILLS}, got {fill!r}")
    h, w, c = img.shape
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    # lo + (hi - lo) * random() is what Generator.uniform(lo, hi) computes, draw for draw
    # (checked bit for bit in the tests), without its per-call array checks.
    for _ in range(10):
        target = (area[0] + (area[1] - area[0]) * rng.random()) * h * w
        aspect = math.exp(log_lo + (log_hi - log_lo) * rng.random())
        eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < eh < h and 0 < ew < w:
            y, x = int(rng.integers(h - eh + 1)), int(rng.integers(w - ew + 1))
            if fill == "zero":
                img[y : y + eh, x : x + ew] = 0
            else:
                img[y : y + eh, x : x + ew] = rng.integers(0, 256, (eh, ew, c), dtype=np.uint8)
            return True
    return False


def random_erase(
    img: np.ndarray,
    rng: np.random.Generator,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 3.3),
    fill: str = "noise",
) -> np.ndarray:
    """A copy of ``img`` with one random rectangle of uniform noise (or zeros)."""
    out = np.array(img, order="C", copy=True)
    erase_in_place(out, rng, area, ratio, fill=fill)
    return out


def normalize_images(images):
    """uint8 [0, 255] -> float32 [-1, 1]; works on numpy and jax arrays."""
    return (images.astype("float32") - 127.5) / 127.5
