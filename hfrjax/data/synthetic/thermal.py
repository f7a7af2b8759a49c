"""Long-wave infrared ("thermal", 8-14 um) faces: emitted heat rather than reflected light.

A thermal camera sees each surface's temperature through its emissivity, not its reflectance:
skin is a near-black body (emissivity ~0.98) whatever its melanin, so colour, freckles, moles
and lip colour vanish, and so does illumination. What remains is the face's heat map, the
pattern the CSAN paper's ARL-VTF experiments match to visible images (CSAN §IV-A, ARL-VTF):

* warm: the inner eye corners (the warmest spots of the face, over the angular vessels), the
  periorbital region, the forehead, lips and an open mouth, superficial vessels (an identity
  texture of warm curves, strongest at the temples);
* cool: the nose tip (peripheral vasoconstriction; it varies between captures), the lateral
  cheeks, ears and chin, and hair, which insulates (scalp hair and beards sit between skin and
  room temperature);
* glasses: glass is opaque at 8-14 um, so a lens shows its own, nearly room temperature and
  hides the warm eyes behind it (the P_TB+ condition of ARL-VTF);
* at grazing angles skin emissivity falls and the face edge reflects the cooler room, so the
  silhouette darkens.

Radiance is Planck's law at 10 um; the camera integrates it over a few large pixels (low
resolution), adds the microbolometer's fixed-pattern non-uniformity (column and row offsets,
per-pixel offsets, a low-frequency bowl; fixed per camera, read at a random crop position) and
temporal noise (NETD), then maps apparent temperature to 8 bits by plateau histogram equalisation (the
usual automatic gain control of thermal cameras) and is upsampled to the crop size: one channel, H x W x 1.

`render_thermal` is a pure function of (identity, `ThermalTraits`, sample, `ThermalConditions`,
sensor, size); the geometry (pose warp, feature shapes) is the one the VIS and NIR renders use,
so a thermal and a visible render of the same `SampleParams` are a time-synchronised pair.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib

import numpy as np
from PIL import Image

from hfrjax.data.synthetic import painters
from hfrjax.data.synthetic.geometry import (
    clip,
    detail_depth,
    face_coords,
    face_distance,
    gauss,
    pixel_grid,
    pixel_window,
    sample_texture,
    soft,
    surface_normals,
)
from hfrjax.data.synthetic.identity import TEX_SHAPE, IdentityParams, smooth_noise
from hfrjax.data.synthetic.sensors import gaussian_blur, gaussian_noise
from hfrjax.data.synthetic.variation import SampleParams

THERMAL_MODALITY = "thermal"

# Second radiation constant over the wavelength (10 um), in kelvin: Planck's law at 10 um is
# L(T) ~ 1 / (exp(C / T) - 1).
_PLANCK_C_10UM = 14387.77 / 10.0
_KELVIN = 273.15
SKIN_EMISSIVITY = 0.98
GLASS_EMISSIVITY = 0.90  # Glass at 8-14 um: opaque, ~10 % reflection of the room.


def planck_radiance(celsius):
    """Relative spectral radiance at 10 um of a black body at ``celsius``."""
    return 1.0 / np.expm1(_PLANCK_C_10UM / (np.asarray(celsius, np.float32) + _KELVIN))


def apparent_temperature(radiance):
    """Inverse of `planck_radiance`: the black-body temperature (deg C) of a radiance."""
    return _PLANCK_C_10UM / np.log1p(1.0 / np.asarray(radiance, np.float32)) - _KELVIN


@dataclasses.dataclass(frozen=True)
class ThermalTraits:
    """The stable heat signature of one person; temperatures in deg C relative to the skin
    baseline (~34 deg C)."""

    skin_offset: float  # Baseline skin temperature offset (metabolism, circulation).
    forehead: float  # Warmth of the forehead.
    canthus: float  # Inner eye corners, the face's warmest spots.
    nose: float  # Cooling of the nose tip.
    cheeks: float  # Cooling of the lateral cheeks.
    ears: float  # Cooling of the ears.
    hair_insulation: float  # Fraction of the skin-room gap that scalp hair keeps away, 0..1.
    # [Ht, Wt, 1] float32 on the identity texture grid: warm superficial vessels (deg C).
    vessels: np.ndarray = dataclasses.field(repr=False, compare=False)


def sample_thermal_traits(rng: np.random.Generator) -> ThermalTraits:
    """Draws one person's heat signature (independent of `IdentityParams`' draws, so adding a
    thermal modality does not change any existing identity)."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    return ThermalTraits(
        skin_offset=u(-0.8, 0.8),
        forehead=u(0.4, 1.4),
        canthus=u(1.2, 2.4),
        nose=u(1.0, 4.0),
        cheeks=u(0.4, 1.6),
        ears=u(1.5, 4.0),
        hair_insulation=u(0.45, 0.8),
        vessels=_vessel_pattern(rng),
    )


def _vessel_pattern(rng: np.random.Generator) -> np.ndarray:
    """Warm curves (the zero crossings of band-limited noise), stronger towards the temples."""
    h, w = TEX_SHAPE
    field = smooth_noise(rng, (h, w), 6.0, 1.0)
    lines = np.exp(-((field / 0.12) ** 2))
    cols = np.abs(np.linspace(-1.0, 1.0, w, dtype=np.float32))[None, :]
    amplitude = float(rng.uniform(0.3, 0.8)) * (0.5 + cols)
    return (lines * amplitude)[..., None].astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ThermalConditions:
    """What varies between thermal captures of a person besides pose and expression."""

    ambient: float  # Room temperature, deg C.
    nose_cooling: float  # Extra nose-tip cooling of this capture (stress, cold), deg C.
    breath: float  # Nostril air: + exhaling (warm), - inhaling (cool), deg C.
    flush: float  # Whole-face offset of this capture (exertion, time of day), deg C.
    fpn_offset: tuple[int, int]  # Where the crop sits on the sensor's fixed pattern.
    agc_plateau_scale: float  # Multiplies the sensor's AGC plateau.
    noise_seed: int


def sample_thermal_conditions(rng: np.random.Generator) -> ThermalConditions:
    return ThermalConditions(
        ambient=float(rng.uniform(19.0, 26.0)),
        nose_cooling=float(rng.uniform(-0.5, 1.5)),
        breath=float(rng.uniform(-1.5, 1.5)),
        flush=float(rng.normal(0.0, 0.3)),
        fpn_offset=(int(rng.integers(_FPN_MARGIN)), int(rng.integers(_FPN_MARGIN))),
        agc_plateau_scale=float(np.exp(rng.uniform(-0.5, 0.5))),
        noise_seed=int(rng.integers(2**31)),
    )


@dataclasses.dataclass(frozen=True)
class ThermalSensor:
    """An uncooled microbolometer camera with plateau-equalisation automatic gain control."""

    name: str
    resolution: float  # Sensor pixels per crop pixel (< 1: a low-resolution imager).
    netd: float  # Temporal noise, K (noise-equivalent temperature difference).
    fpn_column: float  # Fixed pattern: std of column offsets, K.
    fpn_row: float  # Std of row offsets, K.
    fpn_pixel: float  # Std of per-pixel offsets, K.
    fpn_bowl: float  # Low-frequency non-uniformity, K at the corners.
    blur: float  # Optics blur sigma, sensor pixels.
    agc_bins: int  # Histogram bins of the plateau-equalisation AGC.
    agc_plateau: float  # Cap of a bin, as a fraction of the pixels.

    @property
    def channels(self) -> int:
        return 1


THERMAL_SENSORS: dict[str, ThermalSensor] = {
    s.name: s
    for s in (
        ThermalSensor(
            "lwir",
            resolution=0.4,
            netd=0.05,
            fpn_column=0.08,
            fpn_row=0.05,
            fpn_pixel=0.05,
            fpn_bowl=0.4,
            blur=0.6,
            agc_bins=128,
            agc_plateau=0.015,
        ),
    )
}

_FPN_MARGIN = 16  # Sensor pixels around a crop: the range of its position on the pattern.


@functools.lru_cache(maxsize=8)
def _fixed_pattern(sensor: ThermalSensor, native: int) -> np.ndarray:
    """The sensor's fixed-pattern offsets (K) over a crop plus margins; seeded by the sensor
    name (crc32, not Python's salted hash), so every process sees the same camera."""
    rng = np.random.default_rng(zlib.crc32(sensor.name.encode()))
    n = native + _FPN_MARGIN
    cols = rng.normal(0.0, sensor.fpn_column, (1, n))
    rows = rng.normal(0.0, sensor.fpn_row, (n, 1))
    pixels = rng.normal(0.0, sensor.fpn_pixel, (n, n))
    r = np.linspace(-1.0, 1.0, n)
    bowl = sensor.fpn_bowl * 0.5 * (r[None, :] ** 2 + r[:, None] ** 2)
    return (cols + rows + pixels - bowl).astype(np.float32)


def render_thermal(
    identity: IdentityParams,
    traits: ThermalTraits,
    sample: SampleParams,
    conditions: ThermalConditions,
    sensor: ThermalSensor | str = "lwir",
    image_size: int = 112,
) -> np.ndarray:
    """Renders one thermal capture as uint8 [H, W, 1]. Pure function."""
    if isinstance(sensor, str):
        if sensor not in THERMAL_SENSORS:
            raise ValueError(
                f"unknown thermal sensor {sensor!r}; choose from {sorted(THERMAL_SENSORS)}"
            )
        sensor = THERMAL_SENSORS[sensor]
    x, y, pixel = pixel_grid(image_size)
    u, v, head_z = face_coords(identity, sample, x, y)
    radiance = _compose(identity, traits, sample, conditions, x, y, u, v, head_z, pixel)
    return thermal_camera(radiance, conditions, sensor, image_size)


def skin_temperature(
    ident: IdentityParams,
    traits: ThermalTraits,
    s: SampleParams,
    conditions: ThermalConditions,
    u: np.ndarray,
    v: np.ndarray,
    pixel: float,
) -> np.ndarray:
    """Facial skin temperature (deg C) at face coordinates (u, v)."""
    base = _skin_baseline(traits, conditions)
    au = np.abs(u)
    brow_v = ident.eye_v - ident.brow_gap
    forehead = traits.forehead * clip((brow_v - 0.1 - v) / 0.8, 0.0, 1.0)
    inner_corner = ident.eye_sep - 0.9 * ident.eye_w
    canthi = traits.canthus * gauss((au - inner_corner) ** 2 + (v - ident.eye_v - 0.03) ** 2, 0.1)
    orbit = 0.5 * gauss((au - ident.eye_sep) ** 2 + 2.0 * (v - ident.eye_v) ** 2, 0.35)
    top = ident.eye_v + 0.3
    along = clip((v - top) / max(ident.nose_tip - top, 0.2), 0.0, 1.2) ** 1.5
    below_tip = clip(1.0 - (v - ident.nose_tip) / 0.35, 0.0, 1.0)
    nose = (traits.nose + conditions.nose_cooling) * (
        np.exp(-((u / (ident.nose_w + 0.1)) ** 2)) * along * below_tip
    )
    cheeks = traits.cheeks * gauss((au - 1.45) ** 2 + (v - 0.7) ** 2, 0.45)
    jaw = 0.6 * clip((v - 1.6) / 1.0, 0.0, 1.0)
    lips = np.zeros_like(u)
    win = pixel_window(u, v, -1.3, 1.3, ident.mouth_v - 0.6, ident.mouth_v + 0.7)
    if win is not None:
        lips[win] = painters.lip_coverage(ident, s, u[win], v[win], pixel)
    vessels = sample_texture(traits.vessels, u, v)[0]
    return base + forehead + canthi + orbit - nose - cheeks - jaw + 0.6 * lips + vessels


def _skin_baseline(traits: ThermalTraits, conditions: ThermalConditions) -> float:
    """Skin temperature away from hot and cold spots; follows the room a little."""
    return 34.0 + traits.skin_offset + conditions.flush + 0.2 * (conditions.ambient - 23.0)


def _emitted(celsius, emissivity, ambient: float) -> np.ndarray:
    """Radiance leaving a grey body: its own emission plus the room it reflects, [1, ...]."""
    rad = emissivity * planck_radiance(celsius) + (1.0 - emissivity) * planck_radiance(ambient)
    return np.asarray(rad, np.float32).reshape((1, *np.shape(rad)) if np.ndim(rad) else (1,))


def _paint(c: painters.Canvas, alpha, radiance: np.ndarray) -> None:
    """Covers ``alpha`` of each pixel of ``c`` with a surface of the given radiance."""
    if radiance.ndim == 1:
        radiance = radiance[:, None, None]
    c.radiance += alpha * (radiance - c.radiance)


def _compose(
    ident: IdentityParams,
    traits: ThermalTraits,
    s: SampleParams,
    cond: ThermalConditions,
    x: np.ndarray,
    y: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    head_z: np.ndarray,
    pixel: float,
) -> np.ndarray:
    """Radiance [1, H, W] leaving the scene, layer by layer (as the VIS/NIR compositing)."""
    room = cond.ambient
    skin = _skin_baseline(traits, cond)
    face_d = face_distance(ident, u, v)
    head = soft(face_d - ident.hair_volume - 0.05, pixel)
    depth = head_z + detail_depth(ident, s, u, v) * clip(-face_d * 4, 0, 1)
    facing = surface_normals(depth * head, pixel)[2]  # cos of the viewing angle.
    # Directional emissivity: ~constant to ~60 deg, falling towards grazing angles.
    emissivity = SKIN_EMISSIVITY * (1.0 - (1.0 - facing) ** 4)
    strands = sample_texture(ident.texture, u, v)[2]
    # Background: room-temperature walls with a gentle gradient.
    _, _, _, _, angle, grad, blob = s.background
    t = (math.cos(angle) * x + math.sin(angle) * y) / 3.0
    wall = room - 0.5 + 1.5 * grad * t + 2.0 * blob * gauss(x**2 + (y + 1.0) ** 2, 2.0)
    radiance = _emitted(wall, 0.95, room)
    canvas = painters.Canvas(radiance, pixel, u=u, v=v, strands=strands)  # Paint with e = 1.
    # Clothing (between skin and room), neck, ears (cool).
    rows, shoulders, neck = painters.body_shape(ident, s, x, y, pixel)
    body = painters.Canvas(radiance[:, rows], pixel)
    cloth = room + (0.45 + 0.3 * s.clothing[0]) * (skin - room)
    _paint(body, shoulders, _emitted(cloth, 0.95, room))
    _paint(body, neck, _emitted(skin - 0.3, SKIN_EMISSIVITY, room))
    for c, ear in painters.ears(canvas, ident):
        _paint(c, ear, _emitted(skin - traits.ears, SKIN_EMISSIVITY, room))
    # Face skin.
    face = soft(face_d, pixel)
    skin_t = skin_temperature(ident, traits, s, cond, u, v, pixel)
    _paint(canvas, face, _emitted(skin_t, emissivity, room))
    for side in (-1.0, 1.0):
        c = painters.eye_window(canvas, ident, side)
        if c is not None:  # Cornea and conjunctiva: warm, high emissivity.
            eye = painters.eye_shape(c, ident, s, side)[0]
            _paint(c, eye, _emitted(skin + 0.7, SKIN_EMISSIVITY, room))
        c = painters.brow_window(canvas, ident, s, side)
        if c is not None:  # Brow hair insulates a little.
            _paint(
                c,
                painters.brow_coverage(c, ident, s, side) * 0.6,
                _emitted(skin - 0.8, SKIN_EMISSIVITY, room),
            )
    for c, nostril in painters.nostrils(canvas, ident):
        _paint(c, nostril * 0.85, _emitted(skin - 1.0 + cond.breath, SKIN_EMISSIVITY, room))
    c = painters.mouth_window(canvas, ident)
    if c is not None:  # An open mouth shows the warm oral cavity.
        _, _, shape, inside = painters.mouth_shape(c, ident, s)
        _paint(c, soft(inside, c.pixel) * (shape > 0), _emitted(skin + 1.8, 0.98, room))
    hair_t = room + (1.0 - traits.hair_insulation) * (skin - room)
    if ident.beard_style:  # Facial hair: thinner insulation than scalp hair.
        canvas.maps["face"] = face
        c = canvas.window(-ident.face_w, ident.face_w, ident.nose_tip, ident.face_chin + 0.1)
        if c is not None:
            beard_t = room + 0.7 * (skin - room)
            _paint(c, painters.beard_coverage(c, ident, s), _emitted(beard_t, 0.95, room))
    hair_alpha = painters.hair_coverage(ident, u, v, face_d, pixel)
    _paint(canvas, hair_alpha, _emitted(hair_t + 1.5 * strands, 0.95, room))
    if s.glasses:  # Opaque glass near room temperature hides the eyes.
        c = painters.glasses_window(canvas, ident)
        if c is not None:
            lenses, frame = painters.glasses_shape(c, ident)
            glass_t = room + 0.2 * (skin - room)
            for _, lens in lenses:
                _paint(c, lens, _emitted(glass_t, GLASS_EMISSIVITY, room))
            _paint(c, frame, _emitted(glass_t + 0.5, 0.95, room))
    return radiance


def _plateau_equalise(temp: np.ndarray, bins: int, plateau: float) -> np.ndarray:
    """Plateau histogram equalisation, the usual AGC of thermal cameras: the output level is
    the cumulative histogram of the scene's temperatures with each bin capped at ``plateau`` x
    the pixel count, so the face's few kelvin get more grey levels than a linear map of the
    whole scene would give them, without amplifying empty ranges. Returns levels in [0, 1]."""
    lo, hi = float(temp.min()), float(temp.max())
    hi = max(hi, lo + 0.5)
    counts, edges = np.histogram(temp, bins=bins, range=(lo, hi))
    counts = np.minimum(counts, plateau * temp.size)
    cdf = np.concatenate([[0.0], np.cumsum(counts)]) / counts.sum()
    return np.interp(temp, edges, cdf).astype(np.float32)


def thermal_camera(
    radiance: np.ndarray, cond: ThermalConditions, sensor: ThermalSensor, size: int
) -> np.ndarray:
    """Low-resolution microbolometer: area integration over sensor pixels, optics blur, fixed
    pattern, temporal noise, plateau-equalisation AGC to 8 bits, upsampled to the crop -> uint8 [H, W, 1]."""
    native = max(8, int(round(size * sensor.resolution)))
    sensed = Image.fromarray(radiance[0]).resize((native, native), Image.Resampling.BOX)
    temp = apparent_temperature(np.asarray(sensed, np.float32))
    temp = gaussian_blur(temp[None], sensor.blur)[0]
    oy, ox = cond.fpn_offset
    temp = temp + _fixed_pattern(sensor, native)[oy : oy + native, ox : ox + native]
    rng = np.random.default_rng(cond.noise_seed)
    temp = temp + sensor.netd * gaussian_noise(rng, temp.shape)
    level = _plateau_equalise(temp, sensor.agc_bins, sensor.agc_plateau * cond.agc_plateau_scale)
    image = Image.fromarray(level.astype(np.float32)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    out = clip(np.asarray(image, np.float32) * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    return out[..., None]
