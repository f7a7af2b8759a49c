"""Rendering one capture: scene radiance from the layers, lit, then through the camera.

VIS: a directional key light and ambient with Lambertian shading from the depth normals and a
weak specular sheen; auto exposure meters the face against a grey card, so it only
half-compensates skin tone. NIR: an on-axis LED ring (flat frontal shading, strong specular
glints on skin, corneas and glasses lenses) whose irradiance falls off radially, with a dark
far background. `render` is a pure function of (identity, sample, modality, sensor, size).
"""

from __future__ import annotations

import math

import numpy as np

from hfrjax.data.synthetic import painters, spectral
from hfrjax.data.synthetic.geometry import (
    clip,
    detail_depth,
    face_coords,
    face_distance,
    pixel_grid,
    sample_texture,
    soft,
    surface_normals,
)
from hfrjax.data.synthetic.identity import IdentityParams
from hfrjax.data.synthetic.sensors import SENSORS, Sensor, camera_response
from hfrjax.data.synthetic.variation import Light, Modality, SampleParams


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
    x, y, pixel = pixel_grid(image_size)
    rng = np.random.default_rng(sample.noise_seed)
    u, v, head_z = face_coords(identity, sample, x, y)
    radiance, meter = _compose(identity, sample, modality, sensor, x, y, u, v, head_z, pixel, rng)
    return camera_response(radiance, meter, sample, sensor, rng)


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
    sel = list(spectral.BAND_INDEX[sensor.band])
    led_k = sensor.led_falloff
    face_d = face_distance(ident, u, v)
    head = soft(face_d - ident.hair_volume - 0.05, pixel)  # Skin + hair region.
    # Shading normals: detailed relief on the face, head shape on the hair, flat elsewhere.
    depth = head_z + detail_depth(ident, s, u, v) * clip(-face_d * 4, 0, 1)
    skin_n = surface_normals(depth * head, pixel)
    flat_n = np.array([0, 0, 1], np.float32)[:, None, None]
    light = s.light
    e_skin = _irradiance(
        light, modality, skin_n, x, y, led_k, specular=0.08 if modality == "nir" else 0.04
    )
    e_flat = _irradiance(light, modality, flat_n, x, y, led_k)
    tex = sample_texture(ident.texture, u, v)
    # Background: far from an NIR camera's LEDs, so dark there.
    bg = painters.background_reflectance(s, sel, x, y, rng)
    radiance = bg * (e_flat if modality == "vis" else e_flat * _NIR_BACKGROUND_FALLOFF)
    canvas = painters.Canvas(radiance, pixel, u=u, v=v, e=e_skin, strands=tex[2])
    painters.paint_body(canvas, ident, s, sel, x, y, e_flat)
    face = soft(face_d, pixel)
    canvas.paint(face, painters.skin_map(ident, s, sel, u, v, tex, pixel))
    for side in (-1.0, 1.0):
        painters.paint_eye(canvas, ident, s, modality, sel, side)
        painters.paint_brow(canvas, ident, s, sel, side)
    painters.paint_nose_and_mouth(canvas, ident, s, sel)
    hair_rho = spectral.hair_spectrum(ident.hair_eumelanin, ident.hair_pheomelanin, ident.hair_grey)
    if ident.beard_style:
        canvas.maps["face"] = face
        painters.paint_beard(canvas, ident, s, hair_rho[sel] * 0.8)
    hair_alpha = painters.hair_coverage(ident, u, v, face_d, pixel)
    canvas.paint(hair_alpha, hair_rho[sel][:, None, None] * np.exp(tex[2]))
    if s.glasses:
        painters.paint_glasses(canvas, ident, s, modality, sel)
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
