"""Partial-face occlusions: fixed landmark masks for probes, random rectangles for training.

The SSN paper (partial NIR-VIS HFR) evaluates with two probe occlusions defined from facial
landmarks. Our faces are aligned crops, so the landmarks are the alignment template's
(`FaceTemplate`: ArcFace's 5 points, scaled as InsightFace's ``estimate_norm`` does), and a
mask is the same box for every image of a crop size.

Geometry, from the template's points ((x, y) pixels):

  d   = right_eye.x - left_eye.x        eye distance
  y_e = (left_eye.y + right_eye.y) / 2  eye line
  x_c = (left_eye.x + right_eye.x) / 2  face centre
  y_n = nose.y                          nose tip

  both masks span columns [x_c - 1.2 d, x_c + 1.2 d)  (the face width, cheek to cheek)
  "maskTop"    rows [y_e - 0.55 d, y_e + 0.5 (y_n - y_e))   eyebrows and eyes, down to half way
               to the nose tip; holds both eye points, excludes the nose and the mouth corners
  "maskBottom" rows [y_n, H)   nose tip to the bottom of the crop: mouth and chin; holds both
               mouth corners (y_m, their mean y, is about y_n + 0.6 d), excludes both eyes

Pixel centres are at integer coordinates (OpenCV's convention, as the alignment warp uses), so a
pixel is masked when its centre lies in the box: rows [ceil(top), ceil(bottom)), clipped to the
image, likewise for columns. For 112x112 crops this gives maskTop rows [33, 62) x columns
[14, 99) and maskBottom rows [72, 112) x columns [14, 99); 128x128 crops shift the columns by 8.

Training (`random_rectangle`, `augment.AugmentConfig.occlude_*`) masks one rectangle of random
area and aspect ratio instead, so the model sees every part of the face missing.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import numpy as np

from hfrjax.data import augment as augment_lib

OCCLUSIONS = ("maskTop", "maskBottom")
"""Probe occlusions of the SSN paper; "none" is also accepted where a kind is taken."""

ARCFACE_112 = (
    (38.2946, 51.6963),  # Left eye.
    (73.5318, 51.5014),  # Right eye.
    (56.0252, 71.7366),  # Nose tip.
    (41.5493, 92.3655),  # Left mouth corner.
    (70.7299, 92.2041),  # Right mouth corner.
)
"""ArcFace's 5-point alignment template for 112x112 crops, (x, y) pixels."""

_WIDTH = 1.2  # Half face width, in eye distances.
_BROW = 0.55  # Top mask reaches this many eye distances above the eye line.
_TOP_TO_NOSE = 0.5  # Top mask ends this fraction of the way from the eye line to the nose tip.

Box = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class FaceTemplate:
    """Where the 5 landmarks of an aligned crop lie: ``size`` = (H, W), ``points`` = 5 (x, y)
    in the order left eye, right eye, nose tip, left mouth corner, right mouth corner."""

    size: tuple[int, int]
    points: tuple[tuple[float, float], ...]

    def __post_init__(self):
        size = tuple(int(s) for s in np.atleast_1d(self.size))
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"FaceTemplate size must be (H, W) > 0, got {self.size!r}")
        pts = np.asarray(self.points, dtype=np.float64)
        if pts.shape != (5, 2) or not np.isfinite(pts).all():
            raise ValueError(
                f"FaceTemplate points must be 5 finite (x, y) pairs, got shape {pts.shape}"
            )
        # Normalised to plain tuples so templates hash and compare by value.
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "points", tuple((float(x), float(y)) for x, y in pts))

    @classmethod
    def for_size(
        cls,
        size: int | tuple[int, int],
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
    ) -> FaceTemplate:
        """The template of a square crop, as InsightFace's ``estimate_norm`` aligns it.

        Sizes divisible by 112 scale the ArcFace points by size / 112; otherwise sizes divisible
        by 128 scale by r = size / 128 and shift x by 8 r (so 128 is the 112 template moved 8 px
        right). 112 wins when both divide (896), as in InsightFace. Any other size is taken to be
        a resized 112 crop (how the synthetic sets and low-resolution pipelines make them);
        non-square crops need explicit ``points``.
        """
        hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        if len(hw) != 2:
            raise ValueError(f"size must be an int or (H, W), got {size!r}")
        if points is not None:
            return cls(hw, points)
        h, w = (int(s) for s in hw)
        if h != w:
            raise ValueError(f"no standard template for a non-square crop {hw}; pass points=")
        if h > 0 and h % 128 == 0 and h % 112 != 0:
            ratio, shift = h / 128, 8.0 * h / 128
        else:  # Multiples of 112, and any other size as a resized 112 crop (synthetic sets).
            ratio, shift = h / 112, 0.0
        return cls((h, w), [(x * ratio + shift, y * ratio) for x, y in ARCFACE_112])

    @property
    def left_eye(self) -> tuple[float, float]:
        return self.points[0]

    @property
    def right_eye(self) -> tuple[float, float]:
        return self.points[1]

    @property
    def nose(self) -> tuple[float, float]:
        return self.points[2]

    @property
    def mouth(self) -> tuple[tuple[float, float], tuple[float, float]]:
        return self.points[3], self.points[4]


def _check_kind(kind: str, allow_none: bool = True) -> None:
    known = ("none", *OCCLUSIONS) if allow_none else OCCLUSIONS
    if kind not in known:
        raise ValueError(f"unknown occlusion {kind!r}; known: {known}")


def _pixels(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Half-open index range of the pixels whose centres lie in [lo, hi), clipped to [0, n)."""
    a = min(max(math.ceil(lo), 0), n)
    b = min(max(math.ceil(hi), 0), n)
    return a, max(a, b)


def occlusion_box(kind: str, template: FaceTemplate) -> Box:
    """(y0, y1, x0, x1), half-open pixel box of occlusion ``kind`` (see the module docstring)."""
    _check_kind(kind, allow_none=False)
    (lx, ly), (rx, ry) = template.left_eye, template.right_eye
    d = rx - lx
    if d <= 0:
        raise ValueError(f"template's right eye x {rx} must exceed its left eye x {lx}")
    y_e, x_c, y_n = (ly + ry) / 2, (lx + rx) / 2, template.nose[1]
    h, w = template.size
    if kind == "maskTop":
        top, bottom = y_e - _BROW * d, y_e + _TOP_TO_NOSE * (y_n - y_e)
    else:  # maskBottom
        top, bottom = y_n, float(h)
    y0, y1 = _pixels(top, bottom, h)
    x0, x1 = _pixels(x_c - _WIDTH * d, x_c + _WIDTH * d, w)
    return y0, y1, x0, x1


def _check_fill(fill: float, dtype: np.dtype) -> None:
    """A fill the array can hold exactly (numpy would wrap or raise on, e.g., 300 in uint8)."""
    if isinstance(fill, (bool, np.bool_)) or not isinstance(fill, (int, float, np.number)):
        raise ValueError(f"fill must be a number, got {fill!r}")
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if not (float(fill).is_integer() and info.min <= fill <= info.max):
            raise ValueError(f"fill {fill!r} does not fit images of dtype {dtype}")


def apply_occlusion(
    images: np.ndarray,
    kind: str,
    fill: float = 0,
    template: FaceTemplate | None = None,
) -> np.ndarray:
    """A copy of one image [H, W, C] or a batch [N, H, W, C] with the ``kind`` box set to
    ``fill``; ``kind="none"`` returns ``images`` itself. ``template`` defaults to
    `FaceTemplate.for_size` of the image size."""
    _check_kind(kind)
    if kind == "none":
        return images
    arr = np.asarray(images)
    if arr.ndim not in (3, 4):
        raise ValueError(f"images must be [H, W, C] or [N, H, W, C], got shape {arr.shape}")
    _check_fill(fill, arr.dtype)
    hw = tuple(arr.shape[-3:-1])
    if template is None:
        template = FaceTemplate.for_size(hw)
    elif template.size != hw:
        raise ValueError(f"template is for {template.size} crops, images are {hw}")
    y0, y1, x0, x1 = occlusion_box(kind, template)
    out = arr.copy()
    out[..., y0:y1, x0:x1, :] = fill
    return out


def make_probe_occluder(kind: str, fill: float = 0) -> Callable[[np.ndarray], np.ndarray] | None:
    """The ``probe_transform`` for `hfrjax.eval.protocols.evaluate_protocol` that occludes
    probe batches [N, H, W, C] with ``kind``; None for "none" (so probes and gallery share one
    embedding pass). Picklable."""
    _check_kind(kind)
    _check_fill(fill, np.dtype(np.float64))
    if kind == "none":
        return None
    return functools.partial(apply_occlusion, kind=kind, fill=fill)


def random_rectangle(
    img: np.ndarray,
    rng: np.random.Generator,
    area: tuple[float, float] = (0.1, 0.5),
    ratio: tuple[float, float] = (0.3, 3.3),
    fill: str = "zero",
) -> np.ndarray:
    """A copy of ``img`` [H, W, C] with one random rectangle filled with zeros or uniform noise.

    The rectangle covers a fraction of the image drawn uniformly from ``area`` with aspect
    ratio (height / width) log-uniform in ``ratio``, at a uniform position (the SSN training
    occluder; `augment.erase_in_place` does the sampling). If 10 draws all fail to fit, the copy
    is unchanged.
    """
    augment_lib.check_range("area", tuple(area), hi=1.0)
    augment_lib.check_range("ratio", tuple(ratio))
    if fill not in augment_lib.ERASE_FILLS:
        raise ValueError(f"fill must be one of {augment_lib.ERASE_FILLS}, got {fill!r}")
    if np.ndim(img) != 3:
        raise ValueError(f"img must be [H, W, C], got shape {np.shape(img)}")
    return augment_lib.random_erase(img, rng, tuple(area), tuple(ratio), fill=fill)
