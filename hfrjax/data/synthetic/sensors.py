"""Cameras: spectral band, auto exposure, vignetting, optics blur, noise and tone curve.

VIS sensors apply a camera tone curve (gamma ~2.2), slight blur and mild noise; NIR sensors
have their own gamma and contrast, shot plus read noise, vignetting, blur and a radial falloff
of the active illumination. ``nir940`` imitates a 940 nm camera: lower contrast, more noise,
stronger vignetting and LED falloff, another gamma (the cross-sensor set).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import numpy as np

from hfrjax.data.synthetic.geometry import clip, pixel_grid
from hfrjax.data.synthetic.variation import SampleParams


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
    x, y, _ = pixel_grid(size)
    return ((x * x + (y + 0.3) ** 2) * (1.0 / (3.2**2 * 2))).astype(np.float32)


def camera_response(
    radiance: np.ndarray, meter: float, s: SampleParams, sensor: Sensor, rng: np.random.Generator
) -> np.ndarray:
    """Auto exposure, vignetting, blur, shot + read noise, tone curve -> uint8 [H, W, C]."""
    size = radiance.shape[-1]
    gain = sensor.target_level / meter * 2.0**s.light.exposure_bias
    signal = radiance * (gain * (1.0 - sensor.vignetting * _radius2(size)))
    signal = gaussian_blur(signal, (sensor.blur + s.blur) * size / 112.0)
    np.maximum(signal, 0.0, out=signal)
    signal += gaussian_noise(rng, signal.shape) * np.sqrt(
        signal * sensor.shot_noise**2 + sensor.read_noise**2
    )
    idx = clip(signal * (_LUT_LEVELS - 1) + 0.5, 0, _LUT_LEVELS - 1).astype(np.intp)
    return _tone_lut(sensor)[np.moveaxis(idx, 0, -1)]  # Gathers straight into [H, W, C].


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
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


def gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    n = math.prod(shape)
    start = int(rng.integers(_NOISE_BANK_SIZE - n))
    return _noise_bank()[start : start + n].reshape(shape)
