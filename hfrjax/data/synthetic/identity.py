"""Identity model: everything that is stable for one person.

An identity is a set of feature shapes in the face frame (units of half the inter-ocular
distance, origin near the nose bridge; see `geometry`), pigment concentrations (skin melanin
and haemoglobin, hair eumelanin/pheomelanin, iris melanin) and an identity-seeded texture
field of freckles, moles, blotches and low-frequency albedo variation. Parameters are drawn
independently and continuously, so among a few hundred identities many are close in most
respects and recognising them must be fine-grained.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage

# Identity texture grid in face units (u across, v down).
TEX_U0, TEX_V0, TEX_STEP, TEX_SHAPE = -3.4, -4.2, 0.05, (160, 136)


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
    h, w = TEX_SHAPE
    v = TEX_V0 + TEX_STEP * np.arange(h, dtype=np.float32)[:, None]
    u = TEX_U0 + TEX_STEP * np.arange(w, dtype=np.float32)[None, :]
    mel = smooth_noise(rng, (h, w), 7.0, 0.12)  # Low-frequency albedo variation.
    # Freckles: clustered over nose and cheeks, some identities have none.
    n_freckles = int(rng.choice([0, 0, 60, 120, 200, 300]))
    if n_freckles:
        centre_v = rng.normal(0.0, 0.6, n_freckles)
        centre_u = rng.normal(0.0, 1.1, n_freckles)
        dots = np.zeros((h, w), np.float32)
        iv = np.clip(((centre_v - TEX_V0) / TEX_STEP).astype(int), 0, h - 1)
        iu = np.clip(((centre_u - TEX_U0) / TEX_STEP).astype(int), 0, w - 1)
        np.add.at(dots, (iv, iu), rng.uniform(0.3, 1.0, n_freckles).astype(np.float32))
        mel += ndimage.gaussian_filter(dots, 0.7) * 2.5
    # Moles: a few strong, slightly larger melanin spots anywhere on the face.
    for _ in range(int(rng.choice([0, 1, 1, 2, 3, 4]))):
        cu, cv = rng.uniform(-1.8, 1.8), rng.uniform(-2.0, 2.2)
        r2 = ((u - cu) ** 2 + (v - cv) ** 2) / rng.uniform(0.035, 0.07) ** 2
        mel += rng.uniform(1.5, 2.8) * np.exp(-r2)
    hb = smooth_noise(rng, (h, w), 5.0, 0.25)  # Blotches.
    strands = smooth_noise(rng, (h, w), (4.0, 0.7), 0.18)  # Hair running downwards.
    return np.stack([mel, hb, strands], axis=-1).astype(np.float32)


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, float], std: float
) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to standard deviation ``std``."""
    field = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap"
    )
    return field * (std / (field.std() + 1e-6))
