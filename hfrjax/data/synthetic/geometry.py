"""Face-frame geometry: pixel grid, head depth, the pose warp and landmarks.

The face frame has its origin at (56, 66) of a 112x112 crop and one unit = half the ArcFace
template's inter-ocular distance, so the template eyes sit at u = -1, +1, v = -0.82. A
sample's head pose is an inverse warp of the pixel grid: roll and alignment jitter are a
similarity transform; yaw and pitch shift each face point by its depth times sin(angle)
(foreshortening), pivoting about the eye plane so the five landmarks stay near the ArcFace
template, as in an aligned crop.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from hfrjax.data import occlusion
from hfrjax.data.synthetic.identity import TEX_STEP, TEX_U0, TEX_V0, IdentityParams
from hfrjax.data.synthetic.variation import SampleParams

# ArcFace 5-point template for 112x112 crops: eyes, nose tip, mouth corners (x, y).
ARCFACE_TEMPLATE_112 = np.array(occlusion.ARCFACE_112, np.float32)

# The face frame: origin at (56, 66) of a 112 crop, one unit = half the template's
# inter-ocular distance, so the template eyes sit at u = -1, +1, v = -0.82.
ORIGIN_112 = (56.0, 66.0)
UNIT_112 = 17.6


@functools.lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Face-frame coordinates (x, y) of the pixel centres of a size x size crop, and the
    pixel pitch in face units."""
    scale = 112.0 / size
    c = (np.arange(size, dtype=np.float32) + 0.5) * scale
    x = np.broadcast_to((c[None, :] - ORIGIN_112[0]) / UNIT_112, (size, size))
    y = np.broadcast_to((c[:, None] - ORIGIN_112[1]) / UNIT_112, (size, size))
    return np.ascontiguousarray(x), np.ascontiguousarray(y), scale / UNIT_112


def clip(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """np.clip without its Python-level overhead (it adds up over many small windows)."""
    return np.minimum(np.maximum(x, lo), hi)


def soft(dist: np.ndarray, pixel: float) -> np.ndarray:
    """Anti-aliased coverage of the region ``dist < 0`` (dist in face units)."""
    return clip(0.5 - dist / pixel, 0.0, 1.0)


def gauss(d2: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(d2 * np.float32(-0.5 / sigma**2))


_HEAD_DEPTH, _PIVOT_DEPTH = 1.8, 1.5


def head_depth(
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
    t = clip((v - top) / (ident.nose_tip - top), 0.0, 1.0)
    width = 0.2 + 0.22 * t
    ridge = ident.nose_depth * (0.35 + 0.65 * t) * np.exp(-((u / width) ** 2))
    return ridge * clip(1.0 - (v - ident.nose_tip) / 0.22, 0.0, 1.0) * (v > top - 0.3)


def face_coords(
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
    nose_win = pixel_window(xr, yr, -1.4, 1.4, top - 0.9, ident.nose_tip + 0.8)
    u, v = xr, yr
    for _ in range(3):  # Fixed point of x = u cos(yaw) + (z(u, v) - pivot) sin(yaw).
        w = head_depth(ident, u, v, nose_win) - _PIVOT_DEPTH
        u = (xr - w * sy) / cy
        v = (yr + w * sp) / cp
    depth = (-u * sy + w * cy) * cp + v * sp
    return u.astype(np.float32), v.astype(np.float32), depth.astype(np.float32)


def detail_depth(
    ident: IdentityParams, s: SampleParams, u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """Relief added to the head for shading: sockets, brow ridge, cheekbones, lips, chin."""
    au = np.abs(u)
    d2_eye = (au - ident.eye_sep) ** 2 + (v - ident.eye_v) ** 2
    z = -0.22 * gauss(d2_eye, 0.32)
    z += 0.12 * gauss((v - ident.eye_v + ident.brow_gap + 0.05) ** 2 * 4 + (au - 0.9) ** 2, 0.45)
    z += (0.14 + 0.05 * s.smile) * gauss((au - 1.25) ** 2 + (v - 0.45 + 0.1 * s.smile) ** 2, 0.4)
    z += 0.12 * gauss(u**2 * 0.5 + (v - ident.mouth_v) ** 2 * 3, 0.35)
    z += 0.15 * gauss(u**2 + (v - ident.face_chin + 0.35) ** 2, 0.35)
    return z


def surface_normals(depth: np.ndarray, pixel: float) -> np.ndarray:
    """Unit normals [3, H, W] (x right, y down, z to the camera) of a camera-space depth map."""
    gy, gx = np.gradient(depth, pixel)
    gx = clip(gx, -6, 6)
    gy = clip(gy, -6, 6)
    inv = 1.0 / np.sqrt(gx * gx + gy * gy + 1.0)
    return np.stack([-gx * inv, -gy * inv, inv])


def sample_texture(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Nearest-cell lookup [C, H, W] of the identity texture grid [Ht, Wt, C] at face
    coordinates (the fields are smooth on the scale of a cell, about one pixel at 112)."""
    h, w, c = tex.shape
    iu = clip((u - TEX_U0) * (1.0 / TEX_STEP) + 0.5, 0, w - 1).astype(np.intp)
    iv = clip((v - TEX_V0) * (1.0 / TEX_STEP) + 0.5, 0, h - 1).astype(np.intp)
    return np.take(tex.reshape(-1, c), (iv * w + iu).ravel(), axis=0).T.reshape(c, *u.shape)


_WINDOW_STRIDE = 3


def pixel_window(
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


def face_distance(ident: IdentityParams, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance to the face outline (superellipse jaw, oval top)."""
    lower = v > 0
    b = np.where(lower, ident.face_chin, ident.face_top).astype(np.float32)
    p = np.where(lower, ident.jaw_power, 2.0).astype(np.float32)
    r = ((np.abs(u) / ident.face_w) ** p + (np.abs(v) / b) ** p) ** (1.0 / p)
    return (r - 1.0) * ident.face_w


def mouth_geometry(ident: IdentityParams, s: SampleParams, u: np.ndarray):
    """Mouth half width, centre line v(u), half opening, lip profile (0 at the corners)."""
    w = ident.mouth_w * (1.0 + 0.14 * s.smile + 0.05 * s.mouth_open)
    t = clip(np.abs(u) / w, 0, 1)
    line = ident.mouth_v + 0.08 * s.mouth_open - 0.2 * s.smile * t**2 + 0.05 * s.smile
    shape = np.sqrt(np.maximum(1.0 - t**2, 0.0))
    gap = (0.18 * s.mouth_open + 0.035 * s.smile) * shape
    return w, line, gap, shape


def landmarks(identity: IdentityParams, sample: SampleParams, image_size: int = 112) -> np.ndarray:
    """Approximate pixel positions [5, 2] of the eyes, nose tip and mouth corners."""
    w, line, _, _ = mouth_geometry(identity, sample, np.array([identity.mouth_w]))
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
    z = head_depth(identity, u, v) - _PIVOT_DEPTH
    x = u * math.cos(sample.yaw) + z * math.sin(sample.yaw)
    y = v * math.cos(sample.pitch) - z * math.sin(sample.pitch) + 0.3
    cr, sr = math.cos(sample.roll), math.sin(sample.roll)
    xr = cr * x - sr * y
    yr = sr * x + cr * y - 0.3
    xs = xr * sample.scale + sample.shift[0]
    ys = yr * sample.scale + sample.shift[1]
    px = (xs * UNIT_112 + ORIGIN_112[0]) * image_size / 112.0
    py = (ys * UNIT_112 + ORIGIN_112[1]) * image_size / 112.0
    return np.stack([px, py], 1)
