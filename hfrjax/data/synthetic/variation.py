"""Per-capture nuisance: head pose, expression, illumination, occluders, background.

A `Variation` describes how much one capture session varies (web-like, lab, or the few fixed
conditions of low-diversity sets such as Oulu-CASIA and BUAA-VisNir); `sample_params` draws
the `SampleParams` of one capture of an identity. VIS light is a directional key light of
random direction, intensity and colour temperature plus a tinted ambient term; NIR light is an
active LED ring next to the lens (near-frontal) with a little NIR ambient.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

from hfrjax.data.synthetic.identity import IdentityParams
from hfrjax.data.synthetic.spectral import cct_rgb

Modality = Literal["vis", "nir"]


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
    key = cct_rgb(key_k) * (1.0 - ambient)
    amb = cct_rgb(amb_k) * ambient
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
