"""Procedural NIR-VIS faces: the library's embedded default data.

The real NIR-VIS datasets cannot be downloaded everywhere, so the main training job and the
tests run on faces rendered here with numpy alone (no external assets). Everything is
deterministic from a seed, and built so that the HFR problem keeps its shape: identity lives
in geometry and pigmentation that both spectra see, while colour, illumination and sensor
differ between them. A network pretrained on the VIS source set therefore learns identity
features that partly transfer to NIR; fine-tuning on the NIR-VIS target set and red-channel
augmentation (NIR looks like the red end of the visible spectrum) both shrink the gap.

Image formation
---------------
Every image is a radiance map composited from layers (background, clothing, ears, face skin,
eyes, brows, nostrils, mouth, beard, hair, glasses), each with an anti-aliased coverage mask
and a spectral reflectance given in five bands: R (~610 nm), G (~550 nm), B (~465 nm),
NIR850 and NIR940. A VIS camera sees the first three, an NIR camera one of the last two.

* Geometry. An identity is a set of feature shapes in a face frame (units of half the
  inter-ocular distance, origin near the nose bridge) and a depth map (head ellipsoid, nose
  ridge, eye sockets, brow ridge, cheekbones, lips, chin). A sample's head pose is applied as
  an inverse warp of the pixel grid: roll and alignment jitter are a similarity transform,
  yaw and pitch shift each face point by its depth times sin(angle) (foreshortening), pivoting
  about the eye plane so the five landmarks stay near the ArcFace 112x112 template, as in an
  aligned crop. Expressions (smile, open mouth, raised/lowered brows, eye closure) move the
  feature shapes.
* Skin. Pigmentation is physical: melanin and haemoglobin concentrations (per identity, with
  an identity-seeded texture field of freckles, moles, blotches and low-frequency variation)
  give band reflectance by Beer-Lambert attenuation of a dermal scattering base,
  ``rho_band = base_band * exp(-(c_mel * mu_mel_band + c_hb * mu_hb_band))``. Melanin
  absorption falls as ~lambda^-3.3, haemoglobin absorbs green and blue strongly, red weakly
  and NIR hardly at all. Consequently, at 850 nm skin is bright and nearly independent of
  melanin: the NIR value of a surface is close to a monotone function of its red
  reflectance, colour contrast vanishes, freckles and lips fade, moles stay faintly visible.
  Hair and irises use eumelanin/pheomelanin in the same way, so dark hair and brows stay
  somewhat dark in NIR while brown irises turn light grey. Clothing dyes and glasses frames
  get NIR reflectances drawn independently of their colour, as real dyes do.
* VIS illumination: a directional key light of random direction, intensity and colour
  temperature (Planck's law) plus a tinted ambient term, Lambertian shading from the depth
  normals and a weak specular sheen; auto exposure with a random bias (metering the face
  against a grey card, so it only half-compensates skin tone); camera tone curve
  (gamma ~2.2), slight blur, mild noise; stored as JPEG.
* NIR illumination: an active LED ring next to the lens, so light comes from near the
  viewing direction (flat, frontal shading, strong specular glints on skin, corneas and
  glasses lenses), its irradiance falls off radially from the image centre and the
  background, being farther away, is dark. Ambient light contributes little. The sensor has
  its own gamma and contrast, shot plus read noise, vignetting and blur, and writes one
  channel (H x W x 1), stored losslessly as PNG by default (CASIA ships NIR as BMP).
* The cross-dataset sensor (``nir940``) imitates a 940 nm camera: skin a little darker
  (water absorption), even weaker melanin contrast, lower contrast, more noise, stronger
  vignetting and LED falloff, a different gamma. Its captures are less diverse (a few fixed
  poses, expressions and lighting conditions, like Oulu-CASIA or BUAA-VisNir).

Datasets and protocol
---------------------
`generate` writes three dataset directories (TFRecord shards + ``dataset.json``, see
`hfrjax.data.dataset`) with disjoint identities. As in CASIA NIR-VIS 2.0, the VIS and NIR
images of an identity are separate captures (own pose, expression, light), not pixel pairs.

* ``source/`` (``synth_source``): VIS only, many identities, web-like variation; for
  pretraining. Identities ``src00000``...
* ``target/`` (``synth_nirvis``): VIS and NIR images of other identities (``tgt00000``...),
  with a 10-fold protocol laid out like CASIA NIR-VIS 2.0 View 2: per fold the identities are
  split at random into disjoint train and test halves; the train lists hold all VIS and NIR
  images of the train identities, the gallery exactly one VIS image per test identity (drawn
  at random per fold) and the probes all NIR images of the test identities.
* ``target_cross/`` (``synth_nirvis_cross``): a second NIR-VIS set (``crs00000``...) with the
  940 nm sensor and low diversity, its own 10-fold protocol; the gallery is each test
  identity's neutral frontal VIS image (sample 0), as in BUAA-VisNir.

Sample keys are ``<identity>/<modality>/<nnn>``; labels are contiguous per dataset, in
identity order. VIS is stored as JPEG (quality 92), NIR as greyscale PNG (configurable in
`SynthConfig`; each record carries its format, ``dataset.json`` says ``mixed``). Each
identity is rendered from its own child of ``np.random.SeedSequence(seed)``, so the output
is byte-identical for any number of worker processes, growing a set only appends
identities, and per-sample nuisance parameters need not be stored: `identity_captures`
regenerates them.

Public API
----------
`generate` (datasets on disk), `PRESETS` / `preset_config` / `SynthConfig` / `SetSpec`;
the pure pieces `sample_identity`, `sample_params`, `render`, `landmarks`,
`identity_captures`, `render_identity_images`, `make_protocol`, `skin_reflectance`,
`SENSORS` and the `Variation` presets.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import simplejpeg
from absl import logging
from PIL import Image
from scipy import ndimage

from hfrjax.data import dataset as dataset_lib
from hfrjax.data import occlusion, tfrecord
from hfrjax.data import protocol as protocol_lib

Modality = Literal["vis", "nir"]

# ArcFace 5-point template for 112x112 crops: eyes, nose tip, mouth corners (x, y).
ARCFACE_TEMPLATE_112 = np.array(occlusion.ARCFACE_112, np.float32)

# The face frame: origin at (56, 66) of a 112 crop, one unit = half the template's
# inter-ocular distance, so the template eyes sit at u = -1, +1, v = -0.82.
_ORIGIN_112 = (56.0, 66.0)
_UNIT_112 = 17.6

# ------------------------------------------------------------------------------------------
# Spectral model. Bands: R, G, B, NIR850, NIR940.

BANDS = ("r", "g", "b", "nir850", "nir940")
_BAND_INDEX = {"vis": (0, 1, 2), "nir850": (3,), "nir940": (4,)}
_WAVELENGTH_NM = np.array([610.0, 550.0, 465.0, 850.0, 940.0])

# Melanin absorbance ~ lambda^-3.3, normalised at 465 nm.
_MU_MELANIN = (_WAVELENGTH_NM / 465.0) ** -3.3
# Haemoglobin (oxy/deoxy mix): strong in green (Q bands) and blue, weak in red, ~0 in NIR.
_MU_HAEMOGLOBIN = np.array([0.10, 0.85, 0.75, 0.03, 0.03])
# Dermal scattering base: rises with wavelength; 940 nm loses some to water absorption.
_DERMIS = np.array([0.70, 0.60, 0.52, 0.76, 0.68])
# Hair: eumelanin (brown-black) and pheomelanin (red-yellow) on a keratin base.
_MU_EUMELANIN = (_WAVELENGTH_NM / 465.0) ** -2.6
_MU_PHEOMELANIN = np.array([0.15, 0.55, 1.0, 0.02, 0.02])
_HAIR_BASE = np.array([0.55, 0.55, 0.55, 0.62, 0.60])
# Iris stroma: blue-scattering base, melanin on top.
_IRIS_BASE = np.array([0.25, 0.30, 0.42, 0.45, 0.42])

_SCLERA = np.array([0.72, 0.68, 0.64, 0.78, 0.74])
_PUPIL = np.array([0.03, 0.03, 0.03, 0.06, 0.06])
_TEETH = np.array([0.72, 0.68, 0.56, 0.78, 0.75])
_MOUTH_CAVITY = np.array([0.10, 0.03, 0.03, 0.12, 0.11])
_NOSTRIL = np.array([0.06, 0.03, 0.03, 0.10, 0.09])
_LASH = np.array([0.03, 0.03, 0.03, 0.10, 0.09])


def skin_reflectance(
    melanin: np.ndarray | float, haemoglobin: np.ndarray | float, bands: Sequence[int]
) -> np.ndarray:
    """Band reflectances [len(bands), ...] of skin with the given pigment concentrations."""
    mel = np.asarray(melanin, np.float32)
    hb = np.asarray(haemoglobin, np.float32)
    out = [
        np.float32(_DERMIS[b])
        * np.exp(-(mel * np.float32(_MU_MELANIN[b]) + hb * np.float32(_MU_HAEMOGLOBIN[b])))
        for b in bands
    ]
    return np.stack(out).astype(np.float32)


def _hair_spectrum(eumelanin: float, pheomelanin: float, grey: float) -> np.ndarray:
    rho = _HAIR_BASE * np.exp(-(eumelanin * _MU_EUMELANIN + pheomelanin * _MU_PHEOMELANIN))
    return (1.0 - grey) * rho + grey * np.array([0.60, 0.60, 0.62, 0.62, 0.60])


def _iris_spectrum(melanin: float) -> np.ndarray:
    return _IRIS_BASE * np.exp(-melanin * _MU_MELANIN)


def _cct_rgb(kelvin: float) -> np.ndarray:
    """Relative R, G, B power of a black body at ``kelvin``, white (1, 1, 1) at 6500 K."""

    def planck(t):
        lam = _WAVELENGTH_NM[:3] * 1e-9
        return 1.0 / (lam**5 * (np.exp(1.4388e-2 / (lam * t)) - 1.0))

    rgb = planck(kelvin) / planck(6500.0)
    return rgb / rgb[1]


# ------------------------------------------------------------------------------------------
# Identity model.

# Identity texture grid in face units (u across, v down).
_TEX_U0, _TEX_V0, _TEX_STEP, _TEX_SHAPE = -3.4, -4.2, 0.05, (160, 136)


@dataclasses.dataclass(frozen=True)
class IdentityParams:
    """Everything that is stable for one person. Lengths are in face units."""

    # Face outline: half width, forehead and chin half heights, jaw squareness (superellipse).
    face_w: float
    face_top: float
    face_chin: float
    jaw_power: float
    # Eyes: half spacing, height, half width, half height, canthal tilt (rad), iris radius.
    eye_sep: float
    eye_v: float
    eye_w: float
    eye_h: float
    eye_tilt: float
    iris_r: float
    # Brows: gap above the eye, half length, thickness, arch, slope, density.
    brow_gap: float
    brow_len: float
    brow_thick: float
    brow_arch: float
    brow_slope: float
    brow_density: float
    # Nose: tip height, alar half width, protrusion; mouth: height, half width, lips.
    nose_tip: float
    nose_w: float
    nose_depth: float
    mouth_v: float
    mouth_w: float
    lip_upper: float
    lip_lower: float
    # Hair: hairline height and recession, widow's peak, volume, length, fringe, cover.
    hairline: float
    hair_recede: float
    hair_peak: float
    hair_volume: float
    hair_length: float
    fringe: float  # Fringe bottom (v), or -9 for none.
    hair_cover: float  # How far long hair falls over the cheeks.
    bald: bool
    # Beard: 0 none, 1 stubble, 2 full, 3 moustache+goatee; density.
    beard_style: int
    beard_density: float
    # Pigments.
    melanin: float
    haemoglobin: float
    lip_redness: float
    cheek_redness: float
    hair_eumelanin: float
    hair_pheomelanin: float
    hair_grey: float
    iris_melanin: float
    # Glasses: probability of wearing them in a sample, shape, frame, frame reflectances.
    glasses_prob: float
    glasses_w: float
    glasses_h: float
    glasses_power: float
    glasses_frame: float
    glasses_spectrum: tuple[float, ...]
    # [H, W, 3] float32 fields on the texture grid: log-melanin modulation (freckles, moles,
    # low-frequency albedo), log-haemoglobin modulation (blotches), hair strand modulation.
    texture: np.ndarray = dataclasses.field(repr=False, compare=False)


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def sample_identity(rng: np.random.Generator) -> IdentityParams:
    """Draws one person. Parameters are independent and continuous, so among a few hundred
    identities many are close in most respects (face recognition must be fine-grained)."""
    u = functools.partial(_uniform, rng)
    bald = rng.random() < 0.06
    long_hair = rng.random() < 0.4
    hair_length = u(0.8, 3.2) if long_hair else u(-0.9, -0.1)
    fringe = u(-2.1, -1.6) if rng.random() < 0.25 else -9.0
    beard_style = int(rng.choice(4, p=[0.62, 0.16, 0.12, 0.10]))
    # Melanin: log-uniform from very light to very dark skin; hair tends to follow skin.
    melanin = float(np.exp(rng.uniform(np.log(0.15), np.log(3.0))))
    dark = np.clip((np.log(melanin) - np.log(0.15)) / np.log(20.0), 0.0, 1.0)
    eu = float(np.exp(rng.uniform(np.log(0.3), np.log(6.0)) * (1 - dark) + dark * np.log(5.5)))
    pheo = u(0.0, 1.6) * (1.0 - dark) ** 2
    iris_mel = float(
        np.exp(rng.uniform(np.log(0.08), np.log(4.0)) * (1 - dark) + dark * np.log(3.5))
    )
    glasses_prob = float(rng.choice([0.0, 0.0, 0.0, 0.5, 0.9]))
    frame_vis = rng.uniform(0.02, 0.5) * rng.uniform(0.3, 1.0, 3)
    frame_nir = rng.uniform(0.03, 0.7)
    return IdentityParams(
        face_w=u(1.95, 2.35),
        face_top=u(3.0, 3.4),
        face_chin=u(2.15, 2.6),
        jaw_power=u(1.8, 2.9),
        eye_sep=u(0.93, 1.07),
        eye_v=u(-0.92, -0.72),
        eye_w=u(0.36, 0.48),
        eye_h=u(0.12, 0.19),
        eye_tilt=u(-0.1, 0.16),
        iris_r=u(0.15, 0.19),
        brow_gap=u(0.3, 0.52),
        brow_len=u(0.5, 0.78),
        brow_thick=u(0.06, 0.17),
        brow_arch=u(0.0, 0.2),
        brow_slope=u(-0.12, 0.15),
        brow_density=u(0.45, 1.0),
        nose_tip=u(0.12, 0.48),
        nose_w=u(0.28, 0.46),
        nose_depth=u(0.5, 0.95),
        mouth_v=u(1.32, 1.62),
        mouth_w=u(0.68, 0.98),
        lip_upper=u(0.05, 0.14),
        lip_lower=u(0.08, 0.2),
        hairline=u(-2.95, -2.3),
        hair_recede=u(0.0, 0.6),
        hair_peak=u(0.0, 0.3),
        hair_volume=u(0.05, 0.6),
        hair_length=hair_length,
        fringe=fringe,
        hair_cover=u(0.0, 0.45) if long_hair else 0.0,
        bald=bool(bald),
        beard_style=beard_style,
        beard_density=u(0.35, 0.95),
        melanin=melanin,
        haemoglobin=u(0.18, 0.6),
        lip_redness=u(1.5, 3.5),
        cheek_redness=u(0.0, 1.0),
        hair_eumelanin=eu,
        hair_pheomelanin=pheo,
        hair_grey=u(0.0, 0.8) if rng.random() < 0.15 else 0.0,
        iris_melanin=iris_mel,
        glasses_prob=glasses_prob,
        glasses_w=u(0.48, 0.62),
        glasses_h=u(0.32, 0.46),
        glasses_power=u(2.0, 4.0),
        glasses_frame=u(0.035, 0.09),
        glasses_spectrum=tuple(float(x) for x in (*frame_vis, frame_nir, frame_nir * 0.95)),
        texture=_identity_texture(rng),
    )


def _identity_texture(rng: np.random.Generator) -> np.ndarray:
    """Identity-seeded pigment fields on the texture grid (see IdentityParams.texture)."""
    h, w = _TEX_SHAPE
    v = _TEX_V0 + _TEX_STEP * np.arange(h, dtype=np.float32)[:, None]
    u = _TEX_U0 + _TEX_STEP * np.arange(w, dtype=np.float32)[None, :]
    mel = _smooth_noise(rng, (h, w), 7.0, 0.12)  # Low-frequency albedo variation.
    # Freckles: clustered over nose and cheeks, some identities have none.
    n_freckles = int(rng.choice([0, 0, 60, 120, 200, 300]))
    if n_freckles:
        centre_v = rng.normal(0.0, 0.6, n_freckles)
        centre_u = rng.normal(0.0, 1.1, n_freckles)
        dots = np.zeros((h, w), np.float32)
        iv = np.clip(((centre_v - _TEX_V0) / _TEX_STEP).astype(int), 0, h - 1)
        iu = np.clip(((centre_u - _TEX_U0) / _TEX_STEP).astype(int), 0, w - 1)
        np.add.at(dots, (iv, iu), rng.uniform(0.3, 1.0, n_freckles).astype(np.float32))
        mel += ndimage.gaussian_filter(dots, 0.7) * 2.5
    # Moles: a few strong, slightly larger melanin spots anywhere on the face.
    for _ in range(int(rng.choice([0, 1, 1, 2, 3, 4]))):
        cu, cv = rng.uniform(-1.8, 1.8), rng.uniform(-2.0, 2.2)
        r2 = ((u - cu) ** 2 + (v - cv) ** 2) / rng.uniform(0.035, 0.07) ** 2
        mel += rng.uniform(1.5, 2.8) * np.exp(-r2)
    hb = _smooth_noise(rng, (h, w), 5.0, 0.25)  # Blotches.
    strands = _smooth_noise(rng, (h, w), (4.0, 0.7), 0.18)  # Hair running downwards.
    return np.stack([mel, hb, strands], axis=-1).astype(np.float32)


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, float], std: float
) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to standard deviation ``std``."""
    field = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap"
    )
    return field * (std / (field.std() + 1e-6))


# ------------------------------------------------------------------------------------------
# Per-sample variation.


@dataclasses.dataclass(frozen=True)
class Variation:
    """How much one capture session varies; one per dataset (web-like, lab, low-diversity)."""

    yaw_deg: float = 12.0  # Standard deviations of head pose.
    pitch_deg: float = 7.0
    roll_deg: float = 4.0
    max_yaw_deg: float = 32.0
    align_scale: float = 0.03  # Alignment jitter: relative scale and shift (face units).
    align_shift: float = 0.06
    expression_prob: float = 0.5
    eye_closure_prob: float = 0.05
    light_spread: float = 1.0  # 0: frontal studio light, 1: anything from dim side light on.
    background_spread: float = 1.0
    glasses: bool = True
    blur_max: float = 0.8  # Extra per-sample blur sigma (pixels at 112).
    discrete: bool = False  # Oulu/BUAA-like: a few fixed poses, expressions and lights.


WEB_VARIATION = Variation(
    yaw_deg=14.0,
    pitch_deg=8.0,
    roll_deg=5.0,
    expression_prob=0.6,
    light_spread=1.0,
    background_spread=1.0,
    blur_max=1.0,
)
LAB_VARIATION = Variation(
    yaw_deg=10.0,
    pitch_deg=6.0,
    roll_deg=3.0,
    expression_prob=0.5,
    light_spread=0.6,
    background_spread=0.5,
    blur_max=0.7,
)
LOW_DIVERSITY_VARIATION = Variation(
    yaw_deg=0.0,
    pitch_deg=0.0,
    roll_deg=1.5,
    align_scale=0.015,
    align_shift=0.03,
    expression_prob=1.0,
    eye_closure_prob=0.0,
    light_spread=0.3,
    background_spread=0.1,
    glasses=False,
    blur_max=0.4,
    discrete=True,
)


@dataclasses.dataclass(frozen=True)
class Light:
    """Illumination of one capture. VIS uses key/ambient; NIR uses the LED and NIR ambient."""

    direction: tuple[float, float, float]  # Unit vector towards the light (x right, y down,
    # z towards the camera).
    key_rgb: tuple[float, float, float]  # Key light colour x intensity.
    ambient_rgb: tuple[float, float, float]
    exposure_bias: float  # Stops relative to auto exposure.
    led_centre: tuple[float, float]  # NIR LED beam centre (face units).
    led_falloff: float  # Multiplies the sensor's radial falloff.
    nir_ambient: float


@dataclasses.dataclass(frozen=True)
class SampleParams:
    """One capture of an identity: pose, expression, light, occluders, background, noise."""

    yaw: float  # Radians.
    pitch: float
    roll: float
    scale: float  # Alignment jitter.
    shift: tuple[float, float]
    smile: float  # 0..1.
    mouth_open: float  # 0..1.
    brow_raise: float  # -1 (frown) .. 1.
    eye_open: float  # 0 (closed) .. 1.
    gaze: tuple[float, float]
    light: Light
    glasses: bool
    glasses_glint: tuple[float, float, float]  # Offset u, v and strength of lens reflections.
    background: tuple[float, ...]  # Reflectance R, G, B, NIR; gradient angle and strength;
    # strength of one soft blob.
    clothing: tuple[float, ...]  # R, G, B, NIR850, NIR940 reflectance.
    blur: float  # Extra blur sigma in pixels at 112.
    noise_seed: int


# Discrete conditions of low-diversity sets: (yaw, pitch) in degrees; expressions as
# (smile, mouth_open, brow_raise, eye_open); VIS lights as (azimuth, elevation, exposure).
_DISCRETE_POSES = ((0, 0), (0, 0), (18, 0), (-18, 0), (0, 12), (0, -10))
_DISCRETE_EXPRESSIONS = (
    (0, 0, 0, 1),
    (0.9, 0.15, 0.2, 0.8),
    (0, 0.8, 0.9, 1),
    (0, 0, -0.7, 0.9),
    (0.1, 0.3, -0.9, 0.6),
    (0, 0, 0.5, 0.95),
)
_DISCRETE_LIGHTS = ((0, 20, 0.0), (45, 30, -0.8), (-30, 10, -1.6))


def sample_params(
    rng: np.random.Generator,
    modality: Modality,
    variation: Variation,
    identity: IdentityParams,
    index: int = 0,
) -> SampleParams:
    """Draws the nuisance parameters of capture ``index`` of ``identity`` in ``modality``."""
    if variation.discrete:
        pose = _DISCRETE_POSES[0 if index == 0 else int(rng.integers(len(_DISCRETE_POSES)))]
        expr = _DISCRETE_EXPRESSIONS[
            0 if index == 0 else int(rng.integers(len(_DISCRETE_EXPRESSIONS)))
        ]
        yaw, pitch = (math.radians(a) + rng.normal(0, 0.03) for a in pose)
        smile, mouth_open, brow_raise, eye_open = (float(x) for x in expr)
    else:
        yaw = float(
            np.clip(
                rng.normal(0, math.radians(variation.yaw_deg)),
                -math.radians(variation.max_yaw_deg),
                math.radians(variation.max_yaw_deg),
            )
        )
        pitch = float(np.clip(rng.normal(0, math.radians(variation.pitch_deg)), -0.35, 0.35))
        smile, mouth_open, brow_raise, eye_open = 0.0, 0.0, 0.0, 1.0
        if rng.random() < variation.expression_prob:
            smile = float(rng.uniform(0, 1)) if rng.random() < 0.6 else 0.0
            mouth_open = float(rng.uniform(0, 1)) ** 2 if rng.random() < 0.4 else 0.0
            brow_raise = float(rng.uniform(-0.8, 1.0)) if rng.random() < 0.5 else 0.0
            eye_open = float(rng.uniform(0.55, 1.0))
        if rng.random() < variation.eye_closure_prob:
            eye_open = float(rng.uniform(0.0, 0.2))
    roll = float(rng.normal(0, math.radians(variation.roll_deg)))
    light = _sample_light(rng, modality, variation, index)
    glasses = variation.glasses and rng.random() < identity.glasses_prob
    spread = variation.background_spread
    bg_rgb = np.clip(rng.uniform(0.15, 0.75) * (1 + spread * rng.uniform(-0.5, 0.5, 3)), 0.02, 0.95)
    return SampleParams(
        yaw=float(yaw),
        pitch=float(pitch),
        roll=roll,
        scale=float(1.0 + rng.normal(0, variation.align_scale)),
        shift=(
            float(rng.normal(0, variation.align_shift)),
            float(rng.normal(0, variation.align_shift)),
        ),
        smile=smile,
        mouth_open=mouth_open,
        brow_raise=brow_raise,
        eye_open=eye_open,
        gaze=(float(rng.normal(0, 0.05)) - 0.25 * float(yaw), float(rng.normal(0, 0.03))),
        light=light,
        glasses=bool(glasses),
        glasses_glint=(
            float(rng.normal(0, 0.12)),
            float(rng.normal(-0.08, 0.08)),
            float(rng.uniform(0.5, 1.0)),
        ),
        background=(
            *(float(x) for x in bg_rgb),
            float(rng.uniform(0.08, 0.4)),
            float(rng.uniform(0, 2 * np.pi)),
            float(rng.uniform(0, 0.5) * spread),
            float(rng.uniform(-0.3, 0.3) * spread),
        ),
        clothing=(
            *(float(x) for x in rng.uniform(0.03, 0.8, 3)),
            float(rng.uniform(0.05, 0.8)),
            float(rng.uniform(0.05, 0.8)),
        ),
        blur=float(rng.uniform(0, variation.blur_max)),
        noise_seed=int(rng.integers(2**31)),
    )


def _sample_light(
    rng: np.random.Generator, modality: Modality, variation: Variation, index: int
) -> Light:
    """VIS: random key direction/colour/ambient; NIR: jittered on-axis LED."""
    spread = variation.light_spread
    if variation.discrete:
        az, el, bias = _DISCRETE_LIGHTS[
            0 if index == 0 else int(rng.integers(len(_DISCRETE_LIGHTS)))
        ]
        az, el = math.radians(az + rng.normal(0, 3)), math.radians(el + rng.normal(0, 3))
    else:
        az = rng.uniform(-1, 1) * math.radians(75) * spread
        el = math.radians(rng.uniform(-5, 55) * spread + 20 * (1 - spread))
        bias = float(rng.normal(0, 0.35 * spread))
    direction = (math.sin(az) * math.cos(el), -math.sin(el), math.cos(az) * math.cos(el))
    key_k = rng.uniform(6500 - 3500 * spread, 6500 + 1500 * spread)
    amb_k = rng.uniform(5000, 5000 + 4000 * spread)
    ambient = rng.uniform(0.4 - 0.28 * spread, 0.45 + 0.1 * spread)
    key = _cct_rgb(key_k) * (1.0 - ambient)
    amb = _cct_rgb(amb_k) * ambient
    if modality == "nir":
        # The LED sits next to the lens; daylight adds a little NIR ambient from anywhere.
        led = np.array([rng.normal(0, 0.08), rng.normal(-0.06, 0.06), 1.0])
        direction = tuple(led / np.linalg.norm(led))
        bias = float(rng.normal(0, 0.15))
    return Light(
        direction=tuple(float(x) for x in direction),
        key_rgb=tuple(float(x) for x in key),
        ambient_rgb=tuple(float(x) for x in amb),
        exposure_bias=float(bias),
        led_centre=(float(rng.normal(0, 0.3)), float(rng.normal(-0.2, 0.3))),
        led_falloff=float(rng.uniform(0.7, 1.3)),
        nir_ambient=float(rng.uniform(0.0, 0.08 + 0.1 * spread)),
    )


# ------------------------------------------------------------------------------------------
# Sensors.


@dataclasses.dataclass(frozen=True)
class Sensor:
    """A camera: spectral band, tone curve, noise, optics."""

    name: str
    band: Literal["vis", "nir850", "nir940"]
    gamma: float  # Encoding exponent: value = signal ** (1 / gamma).
    contrast: float  # Around mid grey, after gamma.
    black: float  # Black level offset (0..1).
    shot_noise: float  # Std of shot noise at signal 1 (scales with sqrt(signal)).
    read_noise: float  # Std of signal-independent noise.
    vignetting: float  # Relative irradiance loss at the corners.
    led_falloff: float  # NIR: radial falloff coefficient of the active illumination.
    blur: float  # Optics blur sigma, pixels at 112.
    target_level: float  # Auto-exposure target of the mean face signal (linear).

    @property
    def channels(self) -> int:
        return 3 if self.band == "vis" else 1


SENSORS: dict[str, Sensor] = {
    s.name: s
    for s in (
        Sensor(
            "vis_web",
            "vis",
            gamma=2.2,
            contrast=1.05,
            black=0.0,
            shot_noise=0.012,
            read_noise=0.004,
            vignetting=0.15,
            led_falloff=0.0,
            blur=0.3,
            target_level=0.22,
        ),
        Sensor(
            "vis_lab",
            "vis",
            gamma=2.2,
            contrast=1.0,
            black=0.0,
            shot_noise=0.008,
            read_noise=0.003,
            vignetting=0.1,
            led_falloff=0.0,
            blur=0.35,
            target_level=0.22,
        ),
        Sensor(
            "vis_webcam",
            "vis",
            gamma=2.0,
            contrast=0.95,
            black=0.02,
            shot_noise=0.02,
            read_noise=0.008,
            vignetting=0.25,
            led_falloff=0.0,
            blur=0.6,
            target_level=0.2,
        ),
        Sensor(
            "nir850",
            "nir850",
            gamma=1.6,
            contrast=1.15,
            black=0.0,
            shot_noise=0.025,
            read_noise=0.01,
            vignetting=0.2,
            led_falloff=0.08,
            blur=0.55,
            target_level=0.3,
        ),
        Sensor(
            "nir940",
            "nir940",
            gamma=1.4,
            contrast=0.85,
            black=0.05,
            shot_noise=0.035,
            read_noise=0.02,
            vignetting=0.45,
            led_falloff=0.16,
            blur=0.9,
            target_level=0.3,
        ),
    )
}


# ------------------------------------------------------------------------------------------
# Rendering.


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Face-frame coordinates (x, y) of the pixel centres of a size x size crop, and the
    pixel pitch in face units."""
    scale = 112.0 / size
    c = (np.arange(size, dtype=np.float32) + 0.5) * scale
    x = np.broadcast_to((c[None, :] - _ORIGIN_112[0]) / _UNIT_112, (size, size))
    y = np.broadcast_to((c[:, None] - _ORIGIN_112[1]) / _UNIT_112, (size, size))
    return np.ascontiguousarray(x), np.ascontiguousarray(y), scale / _UNIT_112


def _clip(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """np.clip without its Python-level overhead (it adds up over many small windows)."""
    return np.minimum(np.maximum(x, lo), hi)


def _soft(dist: np.ndarray, pixel: float) -> np.ndarray:
    """Anti-aliased coverage of the region ``dist < 0`` (dist in face units)."""
    return _clip(0.5 - dist / pixel, 0.0, 1.0)


def _gauss(d2: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(d2 * np.float32(-0.5 / sigma**2))


_HEAD_DEPTH, _PIVOT_DEPTH = 1.8, 1.5


def _head_depth(
    ident: IdentityParams,
    u: np.ndarray,
    v: np.ndarray,
    nose_window: tuple[slice, slice] | None = None,
) -> np.ndarray:
    """Coarse head surface (ellipsoid + nose) used for the pose warp. On images the nose is
    only evaluated inside ``nose_window``."""
    a, b = ident.face_w * 1.08, 3.0
    r2 = (u / a) ** 2 + ((v - 0.1) / b) ** 2
    z = _HEAD_DEPTH * np.sqrt(np.maximum(1.0 - r2, 0.0))
    if nose_window is None:
        return z + _nose_ridge(ident, u, v)
    z[nose_window] += _nose_ridge(ident, u[nose_window], v[nose_window])
    return z


def _nose_ridge(ident: IdentityParams, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    top = ident.eye_v + 0.15
    t = _clip((v - top) / (ident.nose_tip - top), 0.0, 1.0)
    width = 0.2 + 0.22 * t
    ridge = ident.nose_depth * (0.35 + 0.65 * t) * np.exp(-((u / width) ** 2))
    return ridge * _clip(1.0 - (v - ident.nose_tip) / 0.22, 0.0, 1.0) * (v > top - 0.3)


def _face_coords(
    ident: IdentityParams, s: SampleParams, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse pose warp: face-frame (u, v) seen at each pixel, and camera-space depth."""
    pivot_v = -0.3
    cr, sr = math.cos(s.roll), math.sin(s.roll)
    xs = (x - s.shift[0]) / s.scale
    ys = (y - s.shift[1]) / s.scale - pivot_v
    xr = cr * xs + sr * ys
    yr = -sr * xs + cr * ys + pivot_v
    sy, cy = math.sin(s.yaw), math.cos(s.yaw)
    sp, cp = math.sin(s.pitch), math.cos(s.pitch)
    # The nose moves by at most ~0.5 units under pose: one generous window serves all steps.
    top = ident.eye_v + 0.15
    nose_win = _window(xr, yr, -1.4, 1.4, top - 0.9, ident.nose_tip + 0.8)
    u, v = xr, yr
    for _ in range(3):  # Fixed point of x = u cos(yaw) + (z(u, v) - pivot) sin(yaw).
        w = _head_depth(ident, u, v, nose_win) - _PIVOT_DEPTH
        u = (xr - w * sy) / cy
        v = (yr + w * sp) / cp
    depth = (-u * sy + w * cy) * cp + v * sp
    return u.astype(np.float32), v.astype(np.float32), depth.astype(np.float32)


def _detail_depth(
    ident: IdentityParams, s: SampleParams, u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """Relief added to the head for shading: sockets, brow ridge, cheekbones, lips, chin."""
    au = np.abs(u)
    d2_eye = (au - ident.eye_sep) ** 2 + (v - ident.eye_v) ** 2
    z = -0.22 * _gauss(d2_eye, 0.32)
    z += 0.12 * _gauss((v - ident.eye_v + ident.brow_gap + 0.05) ** 2 * 4 + (au - 0.9) ** 2, 0.45)
    z += (0.14 + 0.05 * s.smile) * _gauss((au - 1.25) ** 2 + (v - 0.45 + 0.1 * s.smile) ** 2, 0.4)
    z += 0.12 * _gauss(u**2 * 0.5 + (v - ident.mouth_v) ** 2 * 3, 0.35)
    z += 0.15 * _gauss(u**2 + (v - ident.face_chin + 0.35) ** 2, 0.35)
    return z


def _normals(depth: np.ndarray, pixel: float) -> np.ndarray:
    """Unit normals [3, H, W] (x right, y down, z to the camera) of a camera-space depth map."""
    gy, gx = np.gradient(depth, pixel)
    gx = _clip(gx, -6, 6)
    gy = _clip(gy, -6, 6)
    inv = 1.0 / np.sqrt(gx * gx + gy * gy + 1.0)
    return np.stack([-gx * inv, -gy * inv, inv])


def _sample_texture(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Nearest-cell lookup [C, H, W] of the identity texture grid [Ht, Wt, C] at face
    coordinates (the fields are smooth on the scale of a cell, about one pixel at 112)."""
    h, w, c = tex.shape
    iu = _clip((u - _TEX_U0) * (1.0 / _TEX_STEP) + 0.5, 0, w - 1).astype(np.intp)
    iv = _clip((v - _TEX_V0) * (1.0 / _TEX_STEP) + 0.5, 0, h - 1).astype(np.intp)
    return np.take(tex.reshape(-1, c), (iv * w + iu).ravel(), axis=0).T.reshape(c, *u.shape)


_WINDOW_STRIDE = 3


def _window(
    u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float
) -> tuple[slice, slice] | None:
    """Bounding rectangle (rows, cols) of the pixels whose face coordinates lie in a box."""
    step = _WINDOW_STRIDE  # Test a sparse grid, then pad: the maps are smooth.
    us, vs = u[::step, ::step], v[::step, ::step]
    inside = (us > u0) & (us < u1) & (vs > v0) & (vs < v1)
    rows = np.flatnonzero(inside.any(1))
    if not rows.size:
        return None
    cols = np.flatnonzero(inside.any(0))
    return (
        slice(max(rows[0] * step - step, 0), rows[-1] * step + step + 1),
        slice(max(cols[0] * step - step, 0), cols[-1] * step + step + 1),
    )


class _Canvas:
    """Alpha-composites reflectance layers into a radiance map [B, H, W].

    ``maps`` are per-pixel inputs of the painters (face coordinates u, v, skin irradiance e,
    hair strand texture); `window` returns a canvas on a sub-rectangle (views, so painting
    writes through) so that small features only cost their own pixels.
    """

    def __init__(self, radiance: np.ndarray, pixel: float, **maps: np.ndarray):
        self.radiance = radiance
        self.pixel = pixel
        self.maps = maps

    @property
    def u(self) -> np.ndarray:
        return self.maps["u"]

    @property
    def v(self) -> np.ndarray:
        return self.maps["v"]

    def window(self, u0: float, u1: float, v0: float, v1: float) -> "_Canvas | None":
        win = _window(self.u, self.v, u0, u1, v0, v1)
        if win is None:
            return None
        r, c = win
        return _Canvas(
            self.radiance[:, r, c], self.pixel, **{k: m[..., r, c] for k, m in self.maps.items()}
        )

    def paint(
        self,
        alpha: np.ndarray | float,
        reflectance: np.ndarray,
        irradiance: np.ndarray | None = None,
    ) -> None:
        """Covers ``alpha`` of each pixel with a surface of band reflectance ``reflectance``
        ([B] or [B, h, w]) lit by ``irradiance`` (default: the skin irradiance map)."""
        e = self.maps["e"] if irradiance is None else irradiance
        if reflectance.ndim == 1:
            reflectance = reflectance.astype(np.float32)[:, None, None]
        delta = reflectance * e
        delta -= self.radiance
        delta *= alpha
        self.radiance += delta


def render(
    identity: IdentityParams,
    sample: SampleParams,
    modality: Modality,
    sensor: Sensor | str | None = None,
    image_size: int = 112,
) -> np.ndarray:
    """Renders one capture as uint8 [H, W, 3] (VIS) or [H, W, 1] (NIR). Pure function."""
    if sensor is None:
        sensor = "vis_lab" if modality == "vis" else "nir850"
    if isinstance(sensor, str):
        sensor = SENSORS[sensor]
    if (sensor.band == "vis") != (modality == "vis"):
        raise ValueError(
            f"sensor {sensor.name!r} (band {sensor.band}) cannot capture modality {modality!r}"
        )
    x, y, pixel = _pixel_grid(image_size)
    rng = np.random.default_rng(sample.noise_seed)
    u, v, head_z = _face_coords(identity, sample, x, y)
    radiance, meter = _compose(identity, sample, modality, sensor, x, y, u, v, head_z, pixel, rng)
    return _camera(radiance, meter, sample, sensor, rng)


def _irradiance(
    light: Light,
    modality: Modality,
    normals: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    led_falloff: float,
    specular: float = 0.0,
) -> np.ndarray:
    """Irradiance [B, H, W] (plus a specular sheen) on surfaces with the given normals."""
    ld = light.direction
    ndotl = np.maximum(ld[0] * normals[0] + ld[1] * normals[1] + ld[2] * normals[2], 0.0)
    spec = 0.0
    if specular:
        h = np.asarray(ld) + np.array([0.0, 0.0, 1.0])
        h /= np.linalg.norm(h)
        spec = np.maximum(h[0] * normals[0] + h[1] * normals[1] + h[2] * normals[2], 0.0)
        spec = specular * (spec * spec) ** 12
    if modality == "vis":
        key = np.asarray(light.key_rgb, np.float32)[:, None, None]
        amb = np.asarray(light.ambient_rgb, np.float32)[:, None, None]
        # Hemispherical ambient: surfaces facing down get less.
        sky = 0.75 - 0.25 * normals[1]
        return key * (ndotl + spec) + amb * sky
    cx, cy = light.led_centre
    r2 = ((x - cx) ** 2 + (y - cy) ** 2) * (led_falloff * light.led_falloff)
    led = 1.0 / (1.0 + r2)
    e = led * (ndotl + spec) + light.nir_ambient * (0.8 - 0.2 * normals[1])
    return e[None]


# The background is ~1.8x farther from an NIR camera's LEDs than the face: 1/d^2.
_NIR_BACKGROUND_FALLOFF = 0.3


def _compose(
    ident: IdentityParams,
    s: SampleParams,
    modality: Modality,
    sensor: Sensor,
    x: np.ndarray,
    y: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    head_z: np.ndarray,
    pixel: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float]:
    """Scene radiance [B, H, W] before the camera, and the exposure meter reading."""
    sel = list(_BAND_INDEX[sensor.band])
    led_k = sensor.led_falloff
    face_d = _face_distance(ident, u, v)
    head = _soft(face_d - ident.hair_volume - 0.05, pixel)  # Skin + hair region.
    # Shading normals: detailed relief on the face, head shape on the hair, flat elsewhere.
    depth = head_z + _detail_depth(ident, s, u, v) * _clip(-face_d * 4, 0, 1)
    skin_n = _normals(depth * head, pixel)
    flat_n = np.array([0, 0, 1], np.float32)[:, None, None]
    light = s.light
    e_skin = _irradiance(
        light, modality, skin_n, x, y, led_k, specular=0.08 if modality == "nir" else 0.04
    )
    e_flat = _irradiance(light, modality, flat_n, x, y, led_k)
    tex = _sample_texture(ident.texture, u, v)
    # Background: far from an NIR camera's LEDs, so dark there.
    bg = _background(s, sel, x, y, rng)
    radiance = bg * (e_flat if modality == "vis" else e_flat * _NIR_BACKGROUND_FALLOFF)
    canvas = _Canvas(radiance, pixel, u=u, v=v, e=e_skin, strands=tex[2])
    _paint_body(canvas, ident, s, sel, x, y, e_flat)
    face = _soft(face_d, pixel)
    canvas.paint(face, _skin_map(ident, s, sel, u, v, tex, pixel))
    for side in (-1.0, 1.0):
        _paint_eye(canvas, ident, s, modality, sel, side)
        _paint_brow(canvas, ident, s, sel, side)
    _paint_nose_and_mouth(canvas, ident, s, sel)
    hair_rho = _hair_spectrum(ident.hair_eumelanin, ident.hair_pheomelanin, ident.hair_grey)
    if ident.beard_style:
        canvas.maps["face"] = face
        _paint_beard(canvas, ident, s, hair_rho[sel] * 0.8)
    hair_alpha = _hair(ident, u, v, face_d, pixel)
    canvas.paint(hair_alpha, hair_rho[sel][:, None, None] * np.exp(tex[2]))
    if s.glasses:
        _paint_glasses(canvas, ident, s, modality, sel)
    return radiance, _meter(radiance, e_skin, face * (1 - hair_alpha))


_GREY_CARD = 0.4


def _meter(radiance: np.ndarray, irradiance: np.ndarray, skin: np.ndarray) -> float:
    """Exposure meter: geometric mean of the face's radiance and that of a grey card under
    the same light, so auto exposure only half-compensates dark or light skin (as
    centre-weighted metering does)."""
    weight = float(skin.sum())
    if weight < 10:
        return 0.2
    actual = float((radiance.mean(0) * skin).sum()) / weight
    grey = _GREY_CARD * float((irradiance.mean(0) * skin).sum()) / weight
    return math.sqrt(max(actual, 1e-4) * max(grey, 1e-4))


def _paint_body(
    canvas: _Canvas,
    ident: IdentityParams,
    s: SampleParams,
    sel: Sequence[int],
    x: np.ndarray,
    y: np.ndarray,
    e_flat: np.ndarray,
) -> None:
    """Shoulders (clothing), neck and ears: everything behind the face."""
    pixel = canvas.pixel
    rows = slice(int(np.searchsorted(y[:, 0], 1.0)), None)  # Nothing above the chin.
    e = np.broadcast_to(e_flat, canvas.radiance.shape)[:, rows]
    x, y, rad = x[rows], y[rows], canvas.radiance[:, rows]
    body = _Canvas(rad, pixel)
    shoulders = _soft(2.85 - 0.4 * np.maximum(np.abs(x - s.shift[0]) - 1.0, 0) - y, pixel)
    body.paint(shoulders, np.asarray(s.clothing, np.float32)[sel], e * 0.9)
    neck_x = x - 0.6 * s.shift[0] + 0.3 * math.sin(s.yaw)
    neck = _soft(np.abs(neck_x) - 0.45 * ident.face_w, pixel) * (1 - shoulders)
    skin_base = skin_reflectance(ident.melanin, ident.haemoglobin, sel)
    body.paint(neck, skin_base, e * 0.55)
    for side in (-1.0, 1.0):
        cu = side * ident.face_w * 0.97
        c = canvas.window(cu - 0.35, cu + 0.35, -0.9, 0.4)
        if c is not None:
            ear_d = (np.sqrt(((c.u - cu) / 0.26) ** 2 + ((c.v + 0.25) / 0.55) ** 2) - 1.0) * 0.26
            c.paint(_soft(ear_d, pixel), skin_base * 0.92)


def _skin_map(
    ident: IdentityParams,
    s: SampleParams,
    sel: Sequence[int],
    u: np.ndarray,
    v: np.ndarray,
    tex: np.ndarray,
    pixel: float,
) -> np.ndarray:
    """Per-pixel skin reflectance [B, H, W] from the melanin and haemoglobin maps: identity
    texture, lips (more blood, less melanin), cheek and nose-tip redness."""
    lips = np.zeros_like(u)
    win = _window(u, v, -1.3, 1.3, ident.mouth_v - 0.6, ident.mouth_v + 0.7)
    if win is not None:
        lips[win] = _lips(ident, s, u[win], v[win], pixel)
    au = np.abs(u)
    cheeks = _gauss((au - 1.2) ** 2 + (v - 0.55) ** 2, 0.4)
    nose_tip = _gauss(u**2 + (v - ident.nose_tip) ** 2, 0.18)
    mel = ident.melanin * np.exp(tex[0]) * (1.0 - 0.35 * lips)
    hb = (
        ident.haemoglobin
        * np.exp(tex[1])
        * (1.0 + ident.lip_redness * lips + ident.cheek_redness * cheeks + 0.4 * nose_tip)
    )
    return skin_reflectance(mel, hb, sel)


def _face_distance(ident: IdentityParams, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance to the face outline (superellipse jaw, oval top)."""
    lower = v > 0
    b = np.where(lower, ident.face_chin, ident.face_top).astype(np.float32)
    p = np.where(lower, ident.jaw_power, 2.0).astype(np.float32)
    r = ((np.abs(u) / ident.face_w) ** p + (np.abs(v) / b) ** p) ** (1.0 / p)
    return (r - 1.0) * ident.face_w


def _background(
    s: SampleParams, sel: Sequence[int], x: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Smooth background reflectance [B, H, W]: base colour, a gradient and one soft blob."""
    r, g, b, nir, angle, grad, blob = s.background
    base = np.array([r, g, b, nir, nir * 0.9], np.float32)[list(sel)]
    t = (math.cos(angle) * x + math.sin(angle) * y) / 3.0
    bx, by = rng.uniform(-3, 3, 2)
    shade = 1.0 + grad * t + blob * _gauss((x - bx) ** 2 + (y - by) ** 2, 1.0)
    return _clip(base[:, None, None] * shade, 0.01, 1.0)


def _mouth_geometry(ident: IdentityParams, s: SampleParams, u: np.ndarray):
    """Mouth half width, centre line v(u), half opening, lip profile (0 at the corners)."""
    w = ident.mouth_w * (1.0 + 0.14 * s.smile + 0.05 * s.mouth_open)
    t = _clip(np.abs(u) / w, 0, 1)
    line = ident.mouth_v + 0.08 * s.mouth_open - 0.2 * s.smile * t**2 + 0.05 * s.smile
    shape = np.sqrt(np.maximum(1.0 - t**2, 0.0))
    gap = (0.18 * s.mouth_open + 0.035 * s.smile) * shape
    return w, line, gap, shape


def _lips(
    ident: IdentityParams, s: SampleParams, u: np.ndarray, v: np.ndarray, pixel: float
) -> np.ndarray:
    """Coverage of the lips (closed or parted)."""
    _, line, gap, shape = _mouth_geometry(ident, s, u)
    upper = np.maximum(line - gap - ident.lip_upper * shape - v, v - (line - gap))
    lower = np.maximum(v - (line + gap + ident.lip_lower * shape), (line + gap) - v)
    return np.maximum(_soft(upper, pixel), _soft(lower, pixel)) * (shape > 0)


def _paint_nose_and_mouth(
    canvas: _Canvas, ident: IdentityParams, s: SampleParams, sel: Sequence[int]
) -> None:
    """Nostrils, the parted mouth (cavity and teeth) and the line between the lips."""
    for side in (-1.0, 1.0):
        cu, cv = side * ident.nose_w * 0.55, ident.nose_tip + 0.1
        c = canvas.window(cu - 0.2, cu + 0.2, cv - 0.15, cv + 0.15)
        if c is not None:
            d = (np.sqrt(((c.u - cu) / 0.1) ** 2 + ((c.v - cv) / 0.05) ** 2) - 1.0) * 0.05
            c.paint(_soft(d, c.pixel) * 0.85, _NOSTRIL[sel])
    c = canvas.window(-1.4, 1.4, ident.mouth_v - 0.5, ident.mouth_v + 0.6)
    if c is None:
        return
    _, line, gap, shape = _mouth_geometry(ident, s, c.u)
    inside = np.maximum(np.abs(c.v - line) - gap, -shape * 10)
    c.paint(_soft(inside, c.pixel) * (shape > 0), _MOUTH_CAVITY[sel])
    if s.smile > 0.3 or s.mouth_open > 0.2:
        teeth_d = np.maximum(c.v - (line - gap + 0.09), inside)
        c.paint(_soft(teeth_d, c.pixel) * (shape > 0.15), _TEETH[sel])
    c.paint(_soft(np.abs(c.v - line) - 0.018, c.pixel) * (shape > 0.05) * 0.8, _MOUTH_CAVITY[sel])


def _paint_eye(
    canvas: _Canvas,
    ident: IdentityParams,
    s: SampleParams,
    modality: Modality,
    sel: Sequence[int],
    side: float,
) -> None:
    """Sclera, iris, pupil, corneal reflection and lash line of one eye."""
    cu, cv = side * ident.eye_sep, ident.eye_v
    c = canvas.window(cu - ident.eye_w - 0.12, cu + ident.eye_w + 0.12, cv - 0.4, cv + 0.4)
    if c is None:
        return
    openness = max(s.eye_open, 0.0) * (1.0 - 0.25 * s.smile)
    cos_t, sin_t = math.cos(side * ident.eye_tilt), math.sin(side * ident.eye_tilt)
    du0, dv0 = c.u - cu, c.v - cv
    du = cos_t * du0 + sin_t * dv0
    dv = -sin_t * du0 + cos_t * dv0
    prof = np.maximum(1.0 - (du / ident.eye_w) ** 2, 0.0) ** 0.7
    upper = ident.eye_h * 1.1 * openness * prof
    lower = ident.eye_h * (0.6 + 0.4 * openness) * prof * (openness > 0.02)
    eye = _soft(np.maximum(-dv - upper, dv - lower), c.pixel) * (prof > 0)
    lid_shadow = 0.75 + 0.25 * _clip((dv + upper) * 6, 0, 1)
    c.paint(eye, _SCLERA[sel], c.maps["e"] * lid_shadow)
    gx, gy = s.gaze
    r_iris = np.sqrt((du - gx) ** 2 + (dv - gy) ** 2)
    c.paint(_soft(r_iris - ident.iris_r, c.pixel) * eye, _iris_spectrum(ident.iris_melanin)[sel])
    c.paint(_soft(r_iris - ident.iris_r * 0.42, c.pixel) * eye, _PUPIL[sel])
    lx, ly = s.light.direction[:2]
    glint = _gauss(
        (du - gx - 0.25 * ident.iris_r - 0.3 * lx) ** 2 + (dv - gy - 0.3 * ly + 0.03) ** 2, 0.025
    )
    c.radiance += glint * eye * (1.2 if modality == "nir" else 0.6)
    lash_d = np.abs(dv + upper + 0.015) - 0.025 - 0.012 * prof
    c.paint(_soft(lash_d, c.pixel) * (prof > 0.02) * 0.9, _LASH[sel])


def _paint_brow(
    canvas: _Canvas, ident: IdentityParams, s: SampleParams, sel: Sequence[int], side: float
) -> None:
    """One eyebrow: a tapered arc whose height follows the expression."""
    cu = side * (ident.eye_sep + 0.05)
    cv = ident.eye_v - ident.brow_gap - 0.16 * s.brow_raise
    c = canvas.window(cu - ident.brow_len - 0.1, cu + ident.brow_len + 0.1, cv - 0.45, cv + 0.4)
    if c is None:
        return
    du = (c.u - cu) * side  # Positive towards the temple.
    t = _clip(du / ident.brow_len, -1, 1)
    frown = 0.08 * min(s.brow_raise, 0.0) * (1 - t)  # Inner ends pulled down in a frown.
    curve = cv - ident.brow_arch * (1 - (t - 0.15) ** 2) + ident.brow_slope * t - frown
    thick = ident.brow_thick * (1.0 - 0.45 * _clip(t, 0, 1))
    d = np.maximum(np.abs(c.v - curve) - thick / 2, np.abs(du) - ident.brow_len)
    alpha = _soft(d, c.pixel) * ident.brow_density * _clip(0.75 + c.maps["strands"], 0, 1)
    rho = _hair_spectrum(ident.hair_eumelanin + 1.0, ident.hair_pheomelanin, ident.hair_grey * 0.5)
    c.paint(alpha, rho[sel])


def _paint_beard(canvas: _Canvas, ident: IdentityParams, s: SampleParams, rho: np.ndarray) -> None:
    """Facial hair (stubble, full beard or moustache + goatee) on the face, sparing the lips."""
    c = canvas.window(-ident.face_w, ident.face_w, ident.nose_tip, ident.face_chin + 0.1)
    if c is None:
        return
    u, v = c.u, c.v
    w, line, gap, shape = _mouth_geometry(ident, s, u)
    lip_zone = np.maximum(np.abs(v - line) - gap - 0.12 * shape - 0.02, np.abs(u) - w - 0.03)
    moustache = np.maximum(
        np.maximum(v - (line - gap - 0.08), ident.nose_tip + 0.2 - v), np.abs(u) - w - 0.08
    )
    if ident.beard_style == 3:
        region = np.minimum(moustache, np.maximum(np.abs(u) - 0.5, line + 0.2 - v))
    else:
        region = np.minimum(moustache, ident.nose_tip + 0.75 - v)
    density = ident.beard_density * (0.35 if ident.beard_style == 1 else 1.0)
    cover = _soft(region, c.pixel * 3) * (1 - _soft(lip_zone, c.pixel)) * c.maps["face"]
    c.paint(cover * density * _clip(0.8 + c.maps["strands"], 0, 1), rho)


def _hair(
    ident: IdentityParams, u: np.ndarray, v: np.ndarray, face_d: np.ndarray, pixel: float
) -> np.ndarray:
    """Coverage of scalp hair: a shell around the head minus the face below the hairline,
    plus long hair falling down the sides and an optional fringe."""
    if ident.bald:
        return np.zeros_like(u)
    au = np.abs(u)
    vol = ident.hair_volume
    shell = (
        np.sqrt((u / (ident.face_w + vol)) ** 2 + (v / (ident.face_top + vol)) ** 2) - 1.0
    ) * ident.face_w
    length_cut = v - ident.hair_length
    region = np.maximum(np.where(v < 0, shell, au - ident.face_w - vol), length_cut)
    hairline = (
        ident.hairline
        + ident.hair_recede * (au / ident.face_w) ** 2
        - ident.hair_peak * np.exp(-((u / 0.3) ** 2))
        + 0.15 * ident.hair_recede
    )
    # Inside the face: hair above the hairline (or fringe), and long hair over the cheeks.
    limit = np.maximum(hairline, ident.fringe + 0.06 * np.sin(u * 9.0))
    cover = np.maximum(ident.face_w - ident.hair_cover - au, length_cut)
    face_hair = np.minimum(v - limit, cover)
    keep = np.where(face_d < 0, np.maximum(region, face_hair), region)
    return _soft(keep, pixel * 1.5)


def _paint_glasses(
    canvas: _Canvas, ident: IdentityParams, s: SampleParams, modality: Modality, sel: Sequence[int]
) -> None:
    """Frames, faint lens tint and lens reflections (strong LED glints in NIR)."""
    cv = ident.eye_v + 0.03
    c = canvas.window(
        -ident.face_w - 0.2,
        ident.face_w + 0.2,
        cv - ident.glasses_h - 0.15,
        cv + ident.glasses_h + 0.15,
    )
    if c is None:
        return
    u, v, t = c.u, c.v, ident.glasses_frame
    frame_d = []
    glint = np.zeros_like(u)
    gu, gv, strength = s.glasses_glint
    for side in (-1.0, 1.0):
        cu = side * (ident.eye_sep + 0.04)
        p = ident.glasses_power
        r = ((np.abs(u - cu) / ident.glasses_w) ** p + (np.abs(v - cv) / ident.glasses_h) ** p) ** (
            1.0 / p
        )
        frame_d.append(np.abs(r - 1.0) * ident.glasses_h - t / 2)
        lens = _soft((r - 1.0) * ident.glasses_h, c.pixel)
        c.paint(lens * 0.08, np.full(len(sel), 0.3, np.float32))
        g2 = ((u - cu - gu - 0.5 * math.sin(s.yaw)) / 1.6) ** 2 + (v - cv - gv) ** 2
        if modality == "nir":
            glint += lens * strength * 3.0 * _gauss(g2, 0.05)
        else:
            glint += lens * strength * 0.25 * _gauss(g2, 0.2)
    inner = ident.eye_sep + 0.04 - ident.glasses_w
    au = np.abs(u)
    frame_d.append(np.maximum(np.abs(v - cv + 0.08) - t / 2, au - inner - 0.02))  # Bridge.
    frame_d.append(
        np.maximum(
            np.abs(v - cv + 0.1) - t / 3,  # Temples.
            np.maximum(ident.eye_sep + ident.glasses_w - au, au - ident.face_w - 0.1),
        )
    )
    c.paint(
        _soft(np.minimum.reduce(frame_d), c.pixel),
        np.asarray(ident.glasses_spectrum, np.float32)[sel],
    )
    c.radiance += glint


_LUT_LEVELS = 4096


@functools.lru_cache(maxsize=16)
def _tone_lut(sensor: Sensor) -> np.ndarray:
    """Sensor tone curve (gamma, contrast, black level) from linear [0, 1] to uint8."""
    t = np.linspace(0.0, 1.0, _LUT_LEVELS) ** (1.0 / sensor.gamma)
    t = sensor.black + (1.0 - sensor.black) * (0.5 + sensor.contrast * (t - 0.5))
    return np.clip(t * 255.0 + 0.5, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _radius2(size: int) -> np.ndarray:
    """Squared distance from the optical centre, 1 at the crop corners (for vignetting)."""
    x, y, _ = _pixel_grid(size)
    return ((x * x + (y + 0.3) ** 2) * (1.0 / (3.2**2 * 2))).astype(np.float32)


def _camera(
    radiance: np.ndarray, meter: float, s: SampleParams, sensor: Sensor, rng: np.random.Generator
) -> np.ndarray:
    """Auto exposure, vignetting, blur, shot + read noise, tone curve -> uint8 [H, W, C]."""
    size = radiance.shape[-1]
    gain = sensor.target_level / meter * 2.0**s.light.exposure_bias
    signal = radiance * (gain * (1.0 - sensor.vignetting * _radius2(size)))
    signal = _blur(signal, (sensor.blur + s.blur) * size / 112.0)
    np.maximum(signal, 0.0, out=signal)
    signal += _gaussian_noise(rng, signal.shape) * np.sqrt(
        signal * sensor.shot_noise**2 + sensor.read_noise**2
    )
    idx = _clip(signal * (_LUT_LEVELS - 1) + 0.5, 0, _LUT_LEVELS - 1).astype(np.intp)
    return _tone_lut(sensor)[np.moveaxis(idx, 0, -1)]  # Gathers straight into [H, W, C].


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [B, H, W] with edge replication (numpy slicing is faster
    than scipy.ndimage for these small kernels)."""
    radius = int(math.ceil(2.5 * sigma))
    if sigma < 0.05 or radius < 1:
        return image
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    for axis in (1, 2):
        n = image.shape[axis]
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(image, pad, mode="edge")
        shifted = [padded[(slice(None),) * axis + (slice(i, i + n),)] for i in range(len(taps))]
        out = taps[0] * shifted[0]
        for tap, part in zip(taps[1:], shifted[1:]):
            out += tap * part
        image = out
    return image


_NOISE_BANK_SIZE = 1 << 20


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed block of standard normals; images read it at random offsets. Drawing fresh
    normals costs more than the rest of the camera model, and seeded offsets keep renders
    deterministic in any process."""
    rng = np.random.default_rng(np.random.SeedSequence(0x5EED, spawn_key=(99,)))
    return rng.standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)


def _gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    n = math.prod(shape)
    start = int(rng.integers(_NOISE_BANK_SIZE - n))
    return _noise_bank()[start : start + n].reshape(shape)


def landmarks(identity: IdentityParams, sample: SampleParams, image_size: int = 112) -> np.ndarray:
    """Approximate pixel positions [5, 2] of the eyes, nose tip and mouth corners."""
    w, line, _, _ = _mouth_geometry(identity, sample, np.array([identity.mouth_w]))
    pts = np.array(
        [
            [-identity.eye_sep, identity.eye_v],
            [identity.eye_sep, identity.eye_v],
            [0.0, identity.nose_tip],
            [-w * 0.95, line[0]],
            [w * 0.95, line[0]],
        ],
        np.float32,
    )
    u, v = pts[:, 0], pts[:, 1]
    z = _head_depth(identity, u, v) - _PIVOT_DEPTH
    x = u * math.cos(sample.yaw) + z * math.sin(sample.yaw)
    y = v * math.cos(sample.pitch) - z * math.sin(sample.pitch) + 0.3
    cr, sr = math.cos(sample.roll), math.sin(sample.roll)
    xr = cr * x - sr * y
    yr = sr * x + cr * y - 0.3
    xs = xr * sample.scale + sample.shift[0]
    ys = yr * sample.scale + sample.shift[1]
    px = (xs * _UNIT_112 + _ORIGIN_112[0]) * image_size / 112.0
    py = (ys * _UNIT_112 + _ORIGIN_112[1]) * image_size / 112.0
    return np.stack([px, py], 1)


# ------------------------------------------------------------------------------------------
# Dataset generation.


@dataclasses.dataclass(frozen=True)
class SetSpec:
    """One generated dataset: identities, images per identity, cameras, variation, shards."""

    name: str  # Dataset name in dataset.json.
    directory: str  # Sub-directory of the output directory.
    id_prefix: str  # Identity names are f"{id_prefix}{i:05d}".
    num_ids: int
    vis_per_id: int
    nir_per_id: int
    vis_sensor: str
    nir_sensor: str
    variation: Variation
    num_shards: int
    num_folds: int = 10  # 0: no protocol.
    gallery: Literal["random", "first"] = "random"  # Which VIS image of a test identity.
    description: str = ""

    @property
    def num_images(self) -> int:
        return self.num_ids * (self.vis_per_id + self.nir_per_id)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """What `generate` writes: the source, target and cross-sensor sets and the encoding."""

    source: SetSpec
    target: SetSpec
    cross: SetSpec
    image_size: int = 112
    vis_format: Literal["jpeg", "png"] = "jpeg"
    nir_format: Literal["jpeg", "png"] = "png"
    jpeg_quality: int = 92

    @property
    def sets(self) -> tuple[SetSpec, SetSpec, SetSpec]:
        return (self.source, self.target, self.cross)


def _config(
    source: tuple[int, int, int],
    target: tuple[int, int, int, int],
    cross: tuple[int, int, int, int],
) -> SynthConfig:
    """A preset from (ids, VIS per id, shards) for the source and (ids, VIS per id, NIR per
    id, shards) for the two NIR-VIS sets."""
    return SynthConfig(
        source=SetSpec(
            "synth_source",
            "source",
            "src",
            source[0],
            source[1],
            0,
            "vis_web",
            "nir850",
            WEB_VARIATION,
            source[2],
            num_folds=0,
            description="Synthetic VIS faces for pretraining (web-like pose, expression and "
            "lighting).",
        ),
        target=SetSpec(
            "synth_nirvis",
            "target",
            "tgt",
            target[0],
            target[1],
            target[2],
            "vis_lab",
            "nir850",
            LAB_VARIATION,
            target[3],
            description="Synthetic NIR-VIS faces, 850 nm active-illumination NIR camera; "
            "10-fold protocol like CASIA NIR-VIS 2.0 View 2.",
        ),
        cross=SetSpec(
            "synth_nirvis_cross",
            "target_cross",
            "crs",
            cross[0],
            cross[1],
            cross[2],
            "vis_webcam",
            "nir940",
            LOW_DIVERSITY_VARIATION,
            cross[3],
            gallery="first",
            description="Synthetic NIR-VIS faces, 940 nm-like NIR sensor (lower contrast, more "
            "noise, stronger vignetting), few fixed poses/expressions/lights like "
            "Oulu-CASIA/BUAA; 10-fold protocol, neutral frontal VIS gallery.",
        ),
    )


PRESETS: dict[str, SynthConfig] = {
    # For unit tests of code that needs a dataset on disk: a second or two.
    "tiny": _config((12, 4, 2), (10, 2, 2, 2), (6, 2, 2, 1)),
    # The default training job's data: ~6.5k images, ~25 s on 2 otherwise idle cores.
    "quickstart": _config((300, 16, 4), (100, 6, 6, 4), (60, 4, 4, 4)),
    # 3k source identities (~48k images), 360 target identities, a BUAA-sized cross set.
    "small": _config((3000, 16, 16), (360, 6, 10, 8), (150, 9, 9, 4)),
    # 30k source identities (~720k images), a CASIA-sized target (725 identities); for big
    # hosts.
    "large": _config((30000, 24, 256), (725, 8, 12, 16), (150, 9, 9, 4)),
}


def preset_config(preset: str, image_size: int | None = None) -> SynthConfig:
    """The `SynthConfig` of a named preset, optionally at another crop size."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose from {sorted(PRESETS)}")
    config = PRESETS[preset]
    return config if image_size is None else dataclasses.replace(config, image_size=image_size)


def _seed(seed: int, *path: int) -> np.random.SeedSequence:
    """The SeedSequence reached from ``seed`` by spawning along ``path`` (set, kind, id, ...).

    Equivalent to nested ``SeedSequence.spawn`` but addressable, so identity i is the same
    however many identities a set has and whichever process renders it.
    """
    return np.random.SeedSequence(seed, spawn_key=path)


@dataclasses.dataclass(frozen=True)
class _IdentityTask:
    set_index: int
    identity_index: int
    seed: int
    spec: SetSpec
    image_size: int
    vis_format: str
    nir_format: str
    jpeg_quality: int


def encode_image(image: np.ndarray, image_format: str, jpeg_quality: int = 92) -> bytes:
    """Encodes uint8 [H, W, C] (C = 1 or 3) as JPEG (simplejpeg) or PNG (Pillow)."""
    if image_format == "jpeg":
        colorspace = "GRAY" if image.shape[-1] == 1 else "RGB"
        return simplejpeg.encode_jpeg(
            np.ascontiguousarray(image),
            quality=jpeg_quality,
            colorspace=colorspace,
            colorsubsampling="420",
        )
    if image_format == "png":
        buf = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
            buf, format="PNG", compress_level=1
        )
        return buf.getvalue()
    raise ValueError(f"unsupported image format {image_format!r} (jpeg or png)")


def identity_captures(
    spec: SetSpec, seed: int, set_index: int, identity_index: int
) -> tuple[IdentityParams, list[tuple[Modality, SampleParams]]]:
    """The identity and the nuisance parameters of each of its captures, exactly as
    `generate` draws them (VIS captures first, then NIR; capture k of a modality is sample
    key ``.../<modality>/<k>``). Cheap: recovers per-sample pose, expression, light etc.
    without storing them in the dataset."""
    ident = sample_identity(np.random.default_rng(_seed(seed, set_index, 0, identity_index, 0)))
    captures: list[tuple[Modality, SampleParams]] = []
    for kind, (modality, count) in enumerate((("vis", spec.vis_per_id), ("nir", spec.nir_per_id))):
        rng = np.random.default_rng(_seed(seed, set_index, 0, identity_index, 1 + kind))
        captures += [
            (modality, sample_params(rng, modality, spec.variation, ident, i)) for i in range(count)
        ]
    return ident, captures


def render_identity_images(
    spec: SetSpec, seed: int, set_index: int, identity_index: int, image_size: int = 112
) -> tuple[IdentityParams, list[tuple[Modality, np.ndarray]]]:
    """The identity and its (modality, uint8 image) list exactly as `generate` renders them."""
    ident, captures = identity_captures(spec, seed, set_index, identity_index)
    sensors = {"vis": spec.vis_sensor, "nir": spec.nir_sensor}
    return ident, [(m, render(ident, params, m, sensors[m], image_size)) for m, params in captures]


def _render_task(task: _IdentityTask) -> list[tuple[str, bytes]]:
    """Worker: renders and encodes all images of one identity -> [(modality, bytes)]."""
    _, images = render_identity_images(
        task.spec, task.seed, task.set_index, task.identity_index, task.image_size
    )
    fmt = {"vis": task.vis_format, "nir": task.nir_format}
    return [(m, encode_image(img, fmt[m], task.jpeg_quality)) for m, img in images]


def identity_name(spec: SetSpec, index: int) -> str:
    return f"{spec.id_prefix}{index:05d}"


def sample_key(identity: str, modality: str, index: int) -> str:
    return f"{identity}/{modality}/{index:03d}"


def make_protocol(
    name: str,
    identities: Sequence[str],
    vis_keys: dict[str, list[str]],
    nir_keys: dict[str, list[str]],
    num_folds: int,
    rng: np.random.Generator,
    gallery: Literal["random", "first"] = "random",
) -> protocol_lib.Protocol:
    """A CASIA NIR-VIS 2.0 View 2-style k-fold protocol.

    Per fold the identities are split at random into disjoint train and test halves; train
    lists hold every VIS and NIR key of the train identities, the gallery one VIS key per
    test identity (random or the first), the probes every NIR key of the test identities.
    """
    n = len(identities)
    if n < 2:
        raise ValueError(f"a protocol needs at least 2 identities, got {n}")
    folds = []
    for _ in range(num_folds):
        perm = rng.permutation(n)
        train = [identities[i] for i in sorted(perm[: n // 2])]
        test = [identities[i] for i in sorted(perm[n // 2 :])]
        if gallery == "first":
            picks = [0] * len(test)
        else:
            picks = [int(rng.integers(len(vis_keys[t]))) for t in test]
        folds.append(
            protocol_lib.Fold(
                train={
                    "vis": [k for t in train for k in vis_keys[t]],
                    "nir": [k for t in train for k in nir_keys[t]],
                },
                gallery=[vis_keys[t][p] for t, p in zip(test, picks)],
                probe=[k for t in test for k in nir_keys[t]],
            )
        )
    return protocol_lib.Protocol(
        name,
        folds,
        "vis",
        "nir",
        description=f"{num_folds} folds; per fold disjoint random train/test identity halves; "
        f"gallery one VIS image per test identity ({gallery}); probes all NIR images of the "
        "test identities (CASIA NIR-VIS 2.0 View 2 layout)",
    )


class _Progress:
    """Logs images done and images/s at most every few seconds."""

    def __init__(self, what: str, total: int, every_s: float = 5.0):
        self.what, self.total, self.every_s = what, total, every_s
        self.start = self.last = time.perf_counter()
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            logging.info(
                "synth %s: %d/%d images (%.0f images/s)", self.what, self.done, self.total, rate
            )

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def _clear_shards(directory: Path) -> None:
    """Removes shards of an earlier run so the directory only holds what dataset.json lists."""
    for path in directory.glob(f"data-*-of-*{tfrecord.SHARD_SUFFIX}*"):
        path.unlink()


def _write_set(
    out_dir: Path, set_index: int, spec: SetSpec, config: SynthConfig, seed: int, preset: str, imap
) -> dict[str, Any]:
    """Renders one set (identities through ``imap``, in order) and writes its shards,
    dataset.json and protocol; returns its summary."""
    directory = out_dir / spec.directory
    directory.mkdir(parents=True, exist_ok=True)
    _clear_shards(directory)
    formats = {"vis": config.vis_format, "nir": config.nir_format}
    tasks = [
        _IdentityTask(
            set_index,
            i,
            seed,
            spec,
            config.image_size,
            config.vis_format,
            config.nir_format,
            config.jpeg_quality,
        )
        for i in range(spec.num_ids)
    ]
    names = [identity_name(spec, i) for i in range(spec.num_ids)]
    keys: dict[str, dict[str, list[str]]] = {"vis": {}, "nir": {}}
    progress = _Progress(spec.name, spec.num_images)
    with tfrecord.ShardedWriter(directory, "data", spec.num_shards) as writer:
        for label, (name, encoded) in enumerate(zip(names, imap(_render_task, tasks))):
            keys["vis"][name], keys["nir"][name] = [], []
            for modality, data in encoded:
                key = sample_key(name, modality, len(keys[modality][name]))
                keys[modality][name].append(key)
                writer.write(
                    tfrecord.Sample(
                        image=data,
                        label=label,
                        modality=modality,
                        identity=name,
                        key=key,
                        dataset=spec.name,
                        image_format=formats[modality],
                    )
                )
            progress.update(len(encoded))
    counts = {m: sum(map(len, keys[m].values())) for m in ("vis", "nir")}
    modalities = {m: n for m, n in counts.items() if n}
    _dataset_info(
        spec, set_index, config, seed, preset, [p.name for p in writer.paths], names, modalities
    ).save(directory)
    if spec.num_folds and "vis" in modalities and "nir" in modalities:
        rng = np.random.default_rng(_seed(seed, set_index, 1))
        make_protocol(
            f"{spec.name}_{spec.num_folds}fold",
            names,
            keys["vis"],
            keys["nir"],
            spec.num_folds,
            rng,
            spec.gallery,
        ).save(directory)
    return {
        "name": spec.name,
        "directory": spec.directory,
        "identities": spec.num_ids,
        "images": modalities,
        "shards": spec.num_shards,
        "seconds": round(progress.seconds, 3),
    }


def _dataset_info(
    spec: SetSpec,
    set_index: int,
    config: SynthConfig,
    seed: int,
    preset: str,
    shards: list[str],
    names: list[str],
    modalities: dict[str, int],
) -> dataset_lib.DatasetInfo:
    """dataset.json of a generated set: counts, formats, and how it was made (kept small)."""
    formats = {m: config.vis_format if m == "vis" else config.nir_format for m in modalities}
    sensors = {"vis": spec.vis_sensor, "nir": spec.nir_sensor}
    return dataset_lib.DatasetInfo(
        name=spec.name,
        shards=shards,
        num_images=sum(modalities.values()),
        class_names=names,
        modalities=modalities,
        image_size=(config.image_size, config.image_size),
        image_format=next(iter(formats.values())) if len(set(formats.values())) == 1 else "mixed",
        description=spec.description,
        extra={
            "generator": "hfrjax.data.synthetic",
            "preset": preset,
            "seed": seed,
            "identity_prefix": spec.id_prefix,
            "set_index": set_index,
            "nuisance": "not stored; hfrjax.data.synthetic.identity_captures(spec, seed, "
            "set_index, label) regenerates each sample's parameters",
            "images_per_identity": {"vis": spec.vis_per_id, "nir": spec.nir_per_id},
            "image_formats": formats,
            "jpeg_quality": config.jpeg_quality,
            "sensors": {m: dataclasses.asdict(SENSORS[sensors[m]]) for m in modalities},
            "variation": dataclasses.asdict(spec.variation),
        },
    )


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def generate(
    out_dir: str | os.PathLike,
    preset: str = "quickstart",
    seed: int = 0,
    workers: int | None = None,
    *,
    config: SynthConfig | None = None,
    image_size: int | None = None,
) -> dict[str, Any]:
    """Writes ``source/``, ``target/`` and ``target_cross/`` datasets and ``synth.json``.

    ``config`` replaces the preset (``synth.json`` then records preset "custom");
    ``image_size`` overrides the crop size. Identities are rendered in parallel by
    ``workers`` processes (default: all CPUs; spawned, so scripts calling this need an
    ``if __name__ == "__main__"`` guard); the output is byte-identical for any ``workers``.
    Returns the summary also saved as ``synth.json``.
    """
    if config is None:
        config = preset_config(preset)
    else:
        preset = "custom"
    if image_size is not None:
        config = dataclasses.replace(config, image_size=image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = _default_workers() if workers is None else max(1, int(workers))
    total = sum(s.num_images for s in config.sets)
    logging.info(
        "synth: preset %s, seed %d, %d images of %dx%d, %d worker(s) -> %s",
        preset,
        seed,
        total,
        config.image_size,
        config.image_size,
        workers,
        out,
    )
    start = time.perf_counter()
    with _mapper(workers) as imap:
        sets = {
            spec.directory: _write_set(out, k, spec, config, seed, preset, imap)
            for k, spec in enumerate(config.sets)
        }
    seconds = time.perf_counter() - start
    summary = {
        "preset": preset,
        "seed": seed,
        "image_size": config.image_size,
        "workers": workers,
        "images": total,
        "seconds": round(seconds, 3),
        "images_per_second": round(total / max(seconds, 1e-9), 1),
        "sets": sets,
        "config": dataclasses.asdict(config),
    }
    (out / "synth.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    logging.info(
        "synth: wrote %d images in %.1f s (%.0f images/s)",
        total,
        seconds,
        total / max(seconds, 1e-9),
    )
    return summary


class _mapper:
    """Context manager yielding an ordered ``imap(fn, items)``: in-process for one worker,
    else a pool of spawned processes (spawn: safe when the caller already runs JAX threads)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None

    def __enter__(self):
        if self.workers == 1:
            return map
        self.pool = multiprocessing.get_context("spawn").Pool(self.workers)
        return lambda fn, items: self.pool.imap(fn, items, chunksize=2)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.pool is not None:
            if exc_type is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()
