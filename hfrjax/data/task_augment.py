"""TOPLight's task-oriented augmentations on uint8 HWC images (host side, per image).

TOPLight (task-oriented pretraining of a lightweight dual-path network), §3.2, Fig. 3 and
Table 2(b): every pretraining image feeds two paths, each with its own augmentation:

* generic, on both paths: random crop and horizontal flip (p = 0.5 each), deformation
  (p = 0.2);
* colour path (Block1-1): one of colour jitter, channel shuffle or RGB shift, picked uniformly
  at random for each sample ("random pick");
* texture path (Block1-2): JPEG compression (p = 0.2), defocus (p = 0.2), then sharpen and
  greyscale (p = 1), to remove colour and imitate poor night-time imaging.

The paper names the operations (albumentations' names) but not their strengths; the defaults
of `TaskAugmentConfig` are albumentations' defaults where they suit 112-pixel faces (colour
jitter 0.2 each, RGB shift +-20, sharpen alpha 0.2-0.5 and lightness 0.5-1, defocus alias blur
0.1-0.5) and otherwise our choices, scaled to 112 px (crop area 80-100 %, defocus radius 2-4 px,
JPEG quality 30-70, a 4 x 4-cell grid deformation of up to 5 % of the side). The paper does not
say whether the generic draw is shared by the two paths; by default each path draws its own
(``share_generic=False``), as two independent augmentation pipelines would.

Two layers: deterministic operations with explicit parameters (``hflip``, ``resized_crop``,
``deform``, ``colour_jitter``, ``channel_shuffle``, ``rgb_shift``, ``jpeg_compress``,
``defocus``, ``sharpen``, ``greyscale``), and ``random_*`` functions of
(image, np.random.Generator, config) that draw the parameters and apply them. Like
`hfrjax.data.augment`, every random choice comes from the Generator passed in, and an
operation with probability 0 draws nothing; `sample_rng` keys a sample's Generator by
(seed, global position) as the input pipeline does, so a resumed run replays the same pairs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import simplejpeg

from hfrjax.data.augment import check_range, luminance

COLOUR_OPS = ("colour_jitter", "channel_shuffle", "rgb_shift")
JITTER_ORDER = ("brightness", "contrast", "saturation", "hue")
_RNG_TAG = 0x7091  # separates these streams from the pipeline's other per-sample RNGs


@dataclasses.dataclass(frozen=True)
class TaskAugmentConfig:
    """Probabilities and strengths of the task-oriented augmentations (see the module doc)."""

    crop_p: float = 0.5
    crop_scale: tuple[float, float] = (0.8, 1.0)  # area fraction of the crop
    crop_ratio: tuple[float, float] = (0.9, 1.0 / 0.9)  # width / height of the crop
    flip_p: float = 0.5
    deform_p: float = 0.2
    deform_cells: int = 4  # control grid of (cells + 1)^2 points
    deform_magnitude: float = 0.05  # largest control-point shift, fraction of the side
    colour_ops: tuple[str, ...] = COLOUR_OPS  # one is picked uniformly per sample
    brightness: float = 0.2  # factor in [1 - b, 1 + b]
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.2  # rotation in [-h, h] turns
    rgb_shift: int = 20  # per-channel shift in [-s, s]
    jpeg_p: float = 0.2
    jpeg_quality: tuple[int, int] = (30, 70)
    defocus_p: float = 0.2
    defocus_radius: tuple[int, int] = (2, 4)
    defocus_alias: tuple[float, float] = (0.1, 0.5)  # Gaussian sigma blurring the disc
    sharpen_grey_p: float = 1.0
    sharpen_alpha: tuple[float, float] = (0.2, 0.5)
    sharpen_lightness: tuple[float, float] = (0.5, 1.0)
    share_generic: bool = False  # one generic draw for both paths

    def __post_init__(self):
        for name in ("crop_p", "flip_p", "deform_p", "jpeg_p", "defocus_p", "sharpen_grey_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"TaskAugmentConfig.{name} must be in [0, 1], got {v}")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"TaskAugmentConfig.{name} must be in [0, 1), got {v}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"TaskAugmentConfig.hue must be in [0, 0.5], got {self.hue}")
        if not 0 <= self.rgb_shift <= 255:
            raise ValueError(
                f"TaskAugmentConfig.rgb_shift must be in [0, 255], got {self.rgb_shift}"
            )
        if self.deform_cells < 1 or not 0.0 <= self.deform_magnitude < 0.5:
            raise ValueError(
                "TaskAugmentConfig needs deform_cells >= 1 and 0 <= deform_magnitude < 0.5, got "
                f"{self.deform_cells} and {self.deform_magnitude}"
            )
        ops = self.colour_ops
        if isinstance(ops, str) or not ops or any(op not in COLOUR_OPS for op in ops):
            raise ValueError(
                f"TaskAugmentConfig.colour_ops must be a non-empty tuple of {COLOUR_OPS}, "
                f"got {ops!r}"
            )
        check_range("TaskAugmentConfig.crop_scale", self.crop_scale, hi=1.0)
        check_range("TaskAugmentConfig.crop_ratio", self.crop_ratio)
        check_range("TaskAugmentConfig.defocus_alias", self.defocus_alias)
        check_range("TaskAugmentConfig.sharpen_lightness", self.sharpen_lightness)
        check_range("TaskAugmentConfig.sharpen_alpha", self.sharpen_alpha, hi=1.0)
        for name, lo in (("jpeg_quality", 1), ("defocus_radius", 1)):
            v = getattr(self, name)
            ok = isinstance(v, tuple) and len(v) == 2 and lo <= v[0] <= v[1]
            if not ok or (name == "jpeg_quality" and v[1] > 100):
                raise ValueError(
                    f"TaskAugmentConfig.{name} must be an integer pair (lo, hi) with "
                    f"{lo} <= lo <= hi{' <= 100' if name == 'jpeg_quality' else ''}, got {v!r}"
                )

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "TaskAugmentConfig":
        d = dict(d or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(fields)
        if unknown:
            raise ValueError(
                f"unknown task augmentation option(s) {sorted(unknown)}; known: {sorted(fields)}"
            )
        for k, v in d.items():
            if isinstance(v, list):  # JSON / YAML give lists for the pairs
                d[k] = tuple(v)
        return cls(**d)


def check_image(img: np.ndarray, *, colour: bool = False, name: str = "image") -> np.ndarray:
    """uint8 [H, W, C] (C = 3 when ``colour``), else a ValueError naming what is wrong."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[0] < 2 or img.shape[1] < 2:
        raise ValueError(
            f"{name} must be uint8 [H, W, C] with H, W >= 2, got {img.dtype} {img.shape}"
        )
    if colour and img.shape[2] != 3:
        raise ValueError(f"{name} must have 3 (RGB) channels, got shape {img.shape}")
    return img


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Geometry: crop, flip, deformation (one bilinear sampler).


def bilinear_sample(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """float32 [h, w, C]: ``img`` at source coordinates (``ys``, ``xs``) [h, w] (pixel centres
    at integers), bilinear, coordinates outside the image clamped to its border."""
    h, w = img.shape[:2]
    ys = np.clip(ys, 0.0, h - 1.0)
    xs = np.clip(xs, 0.0, w - 1.0)
    y0 = np.minimum(np.floor(ys).astype(np.int64), h - 2)  # h, w >= 2
    x0 = np.minimum(np.floor(xs).astype(np.int64), w - 2)
    fy = (ys - y0)[..., None].astype(np.float32)
    fx = (xs - x0)[..., None].astype(np.float32)
    f = img.astype(np.float32)
    top = f[y0, x0] * (1 - fx) + f[y0, x0 + 1] * fx
    bottom = f[y0 + 1, x0] * (1 - fx) + f[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def hflip(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(check_image(img)[:, ::-1])


def resized_crop(img: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The crop ``box`` = (top, left, height, width) in pixels, resized back to the image's
    size (bilinear); the full box is the identity."""
    img = check_image(img)
    h, w = img.shape[:2]
    top, left, ch, cw = box
    ys = top + (np.arange(h) + 0.5) * (ch / h) - 0.5
    xs = left + (np.arange(w) + 0.5) * (cw / w) - 0.5
    return _to_uint8(bilinear_sample(img, *np.meshgrid(ys, xs, indexing="ij")))


def deform(img: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """Grid deformation: ``displacement`` [n + 1, n + 1, 2] is the (dy, dx) shift, in
    pixels, of the source point at each node of an n x n control grid over the image;
    in between it is interpolated bilinearly (a smooth warp; zeros are the identity)."""
    img = check_image(img)
    h, w = img.shape[:2]
    disp = np.asarray(displacement, np.float32)
    if disp.ndim != 3 or disp.shape[0] < 2 or disp.shape[1] < 2 or disp.shape[2] != 2:
        raise ValueError(f"displacement must be [n + 1, m + 1, 2], got shape {disp.shape}")
    gy = np.linspace(0, disp.shape[0] - 1, h, dtype=np.float32)
    gx = np.linspace(0, disp.shape[1] - 1, w, dtype=np.float32)
    field = bilinear_sample(disp, *np.meshgrid(gy, gx, indexing="ij"))  # [h, w, 2]
    ys, xs = np.meshgrid(
        np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij"
    )
    return _to_uint8(bilinear_sample(img, ys + field[..., 0], xs + field[..., 1]))


def random_crop_box(h: int, w: int, rng: np.random.Generator, scale, ratio):
    """(top, left, height, width): area fraction in ``scale``, aspect w/h log-uniform in
    ``ratio``, clipped to the image (torchvision's RandomResizedCrop sampling, one try)."""
    area = rng.uniform(*scale) * h * w
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    ch = min(float(h), math.sqrt(area / aspect))
    cw = min(float(w), math.sqrt(area * aspect))
    return rng.uniform(0.0, h - ch), rng.uniform(0.0, w - cw), ch, cw


def random_generic(
    img: np.ndarray, rng: np.random.Generator, cfg: TaskAugmentConfig = TaskAugmentConfig()
) -> np.ndarray:
    """Generic augmentation (both paths): crop (``crop_p``), flip (``flip_p``), deformation
    (``deform_p``), each decided independently."""
    img = check_image(img)
    h, w = img.shape[:2]
    if cfg.crop_p > 0 and rng.random() < cfg.crop_p:
        img = resized_crop(img, random_crop_box(h, w, rng, cfg.crop_scale, cfg.crop_ratio))
    if cfg.flip_p > 0 and rng.random() < cfg.flip_p:
        img = hflip(img)
    if cfg.deform_p > 0 and rng.random() < cfg.deform_p:
        n = cfg.deform_cells
        scale = np.array([h, w], np.float32) * cfg.deform_magnitude
        img = deform(img, rng.uniform(-1.0, 1.0, (n + 1, n + 1, 2)) * scale)
    return np.ascontiguousarray(img)


# ---------------------------------------------------------------------------------------------
# Colour path.

# RGB <-> YIQ (NTSC); hue is a rotation of the chroma plane (I, Q) about the grey axis Y.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]],
    np.float64,
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def _grey(f: np.ndarray) -> np.ndarray:
    return f @ _RGB_TO_YIQ[0].astype(np.float32)


def colour_jitter(
    img: np.ndarray, factors: dict[str, float], order: tuple[str, ...] = JITTER_ORDER
) -> np.ndarray:
    """Brightness (x * f), contrast (towards the mean grey: m + f (x - m)), saturation
    (towards each pixel's grey: g + f (x - g)) with factors near 1, and hue (rotation by
    ``factors['hue']`` turns about the grey axis in YIQ space), applied in ``order``, clipped to
    [0, 255] after each step as torchvision's ColorJitter does. Missing keys are skipped."""
    f = check_image(img, colour=True).astype(np.float32)
    for op in order:
        if op not in factors:
            continue
        v = float(factors[op])
        if op == "brightness":
            f = f * v
        elif op == "contrast":
            m = float(_grey(f).mean())
            f = m + v * (f - m)
        elif op == "saturation":
            g = _grey(f)[..., None]
            f = g + v * (f - g)
        elif op == "hue":
            c, s = math.cos(2 * math.pi * v), math.sin(2 * math.pi * v)
            rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
            f = f @ (_YIQ_TO_RGB @ rot @ _RGB_TO_YIQ).T.astype(np.float32)
        else:
            raise ValueError(f"unknown colour jitter step {op!r}; known: {JITTER_ORDER}")
        f = np.clip(f, 0.0, 255.0)
    return _to_uint8(f)


def channel_shuffle(img: np.ndarray, perm) -> np.ndarray:
    """Output channel i is input channel ``perm[i]``."""
    img = check_image(img)
    perm = np.asarray(perm)
    if sorted(perm.tolist()) != list(range(img.shape[2])):
        raise ValueError(f"perm must be a permutation of range({img.shape[2]}), got {perm}")
    return np.ascontiguousarray(img[:, :, perm])


def rgb_shift(img: np.ndarray, shifts) -> np.ndarray:
    """Adds ``shifts`` [C] (integers) to the channels, clipped to [0, 255]."""
    img = check_image(img)
    shifts = np.asarray(shifts, np.int16).reshape(-1)
    if shifts.size != img.shape[2]:
        raise ValueError(f"{shifts.size} shifts for an image with {img.shape[2]} channels")
    return np.clip(img.astype(np.int16) + shifts, 0, 255).astype(np.uint8)


def random_colour(
    img: np.ndarray, rng: np.random.Generator, cfg: TaskAugmentConfig = TaskAugmentConfig()
) -> np.ndarray:
    """Colour augmentation: one of ``cfg.colour_ops``, picked uniformly (TOPLight's "random
    pick"), always applied."""
    img = check_image(img, colour=True)
    op = cfg.colour_ops[int(rng.integers(len(cfg.colour_ops)))]
    if op == "channel_shuffle":
        return channel_shuffle(img, rng.permutation(3))
    if op == "rgb_shift":
        return rgb_shift(img, rng.integers(-cfg.rgb_shift, cfg.rgb_shift + 1, 3))
    strength = {k: getattr(cfg, k) for k in JITTER_ORDER}
    factors = {k: rng.uniform(1 - v, 1 + v) for k, v in strength.items() if k != "hue"}
    factors["hue"] = rng.uniform(-cfg.hue, cfg.hue)
    order = tuple(JITTER_ORDER[i] for i in rng.permutation(4))
    return colour_jitter(img, factors, order)


# ---------------------------------------------------------------------------------------------
# Texture path.


def jpeg_compress(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG encode + decode at ``quality`` (1-100; 4:2:0 chroma for colour images)."""
    img = check_image(img)
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
    grey = img.shape[2] == 1
    data = simplejpeg.encode_jpeg(
        np.ascontiguousarray(img),
        quality=int(quality),
        colorspace="GRAY" if grey else "RGB",
        colorsubsampling="Gray" if grey else "420",
    )
    out = simplejpeg.decode_jpeg(data, colorspace="GRAY" if grey else "RGB")
    return out.reshape(img.shape)


def convolve(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """float32 2-D correlation of each channel with ``kernel`` [k, k] (k odd), borders
    mirrored without repeating the edge (OpenCV's default, scipy.ndimage's 'mirror')."""
    k = kernel.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != k or k % 2 == 0:
        raise ValueError(f"kernel must be square with an odd side, got shape {kernel.shape}")
    r = k // 2
    h, w = img.shape[:2]
    if r >= min(h, w):
        raise ValueError(f"kernel of side {k} is too large for a {h}x{w} image")
    padded = np.pad(img.astype(np.float32), ((r, r), (r, r), (0, 0)), mode="reflect")
    out = np.zeros(img.shape, np.float32)
    for dy, dx in zip(*np.nonzero(kernel)):
        out += np.float32(kernel[dy, dx]) * padded[dy : dy + h, dx : dx + w]
    return out


def defocus_kernel(radius: int, alias_sigma: float) -> np.ndarray:
    """A disc of ``radius`` pixels blurred by a Gaussian of ``alias_sigma`` (albumentations'
    Defocus), normalised to sum 1, so defocus keeps the mean intensity."""
    if radius < 1 or alias_sigma < 0:
        raise ValueError(
            f"defocus needs radius >= 1 and alias_sigma >= 0, got {radius}, {alias_sigma}"
        )
    pad = int(math.ceil(3 * alias_sigma))
    r = radius + pad
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (x * x + y * y <= radius * radius).astype(np.float64)
    if alias_sigma > 0:
        g = np.exp(-0.5 * (np.arange(-pad, pad + 1) / alias_sigma) ** 2)
        g /= g.sum()
        disc = np.apply_along_axis(np.convolve, 0, disc, g, mode="same")
        disc = np.apply_along_axis(np.convolve, 1, disc, g, mode="same")
    return disc / disc.sum()


def defocus(img: np.ndarray, radius: int, alias_sigma: float) -> np.ndarray:
    return _to_uint8(convolve(check_image(img), defocus_kernel(radius, alias_sigma)))


def sharpen_kernel(alpha: float, lightness: float) -> np.ndarray:
    """(1 - alpha) * identity + alpha * [[-1, -1, -1], [-1, 8 + lightness, -1], [-1, -1, -1]]
    (albumentations' Sharpen)."""
    k = -np.ones((3, 3))
    k[1, 1] = 8.0 + lightness
    ident = np.zeros((3, 3))
    ident[1, 1] = 1.0
    return (1.0 - alpha) * ident + alpha * k


def sharpen(img: np.ndarray, alpha: float, lightness: float) -> np.ndarray:
    return _to_uint8(convolve(check_image(img), sharpen_kernel(alpha, lightness)))


def greyscale(img: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma in every channel (the channel count is kept)."""
    img = check_image(img)
    if img.shape[2] == 1:
        return img.copy()
    return np.repeat(luminance(img)[:, :, None], img.shape[2], axis=2)


def random_texture(
    img: np.ndarray, rng: np.random.Generator, cfg: TaskAugmentConfig = TaskAugmentConfig()
) -> np.ndarray:
    """Texture augmentation, in order: JPEG (``jpeg_p``), defocus (``defocus_p``), sharpen
    then greyscale (``sharpen_grey_p``)."""
    img = check_image(img)
    if cfg.jpeg_p > 0 and rng.random() < cfg.jpeg_p:
        img = jpeg_compress(img, int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
    if cfg.defocus_p > 0 and rng.random() < cfg.defocus_p:
        radius = int(rng.integers(cfg.defocus_radius[0], cfg.defocus_radius[1] + 1))
        img = defocus(img, radius, rng.uniform(*cfg.defocus_alias))
    if cfg.sharpen_grey_p > 0 and rng.random() < cfg.sharpen_grey_p:
        img = greyscale(
            sharpen(img, rng.uniform(*cfg.sharpen_alpha), rng.uniform(*cfg.sharpen_lightness))
        )
    return np.ascontiguousarray(img)


# ---------------------------------------------------------------------------------------------
# The two paths of one sample.


def sample_rng(seed: int, position: int) -> np.random.Generator:
    """The Generator of the sample at global ``position``: a pure function of (seed,
    position), like the input pipeline's per-image RNGs, so resuming replays the same pairs."""
    return np.random.default_rng([int(seed), _RNG_TAG, int(position)])


def task_augment_pair(
    img: np.ndarray, rng: np.random.Generator, cfg: TaskAugmentConfig = TaskAugmentConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """(colour-path image, texture-path image) of one uint8 RGB image [H, W, 3].

    The two paths draw from independent child streams of ``rng`` (``Generator.spawn``), so
    changing one path's settings leaves the other's output unchanged. With
    ``cfg.share_generic`` the generic augmentation is drawn once and both paths start from it.
    """
    img = check_image(img, colour=True)
    generic_rng, colour_rng, texture_rng = rng.spawn(3)
    if cfg.share_generic:
        base = random_generic(img, generic_rng, cfg)
        return random_colour(base, colour_rng, cfg), random_texture(base, texture_rng, cfg)
    colour = random_colour(random_generic(img, colour_rng, cfg), colour_rng, cfg)
    texture = random_texture(random_generic(img, texture_rng, cfg), texture_rng, cfg)
    return colour, texture
