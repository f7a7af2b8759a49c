"""Layer compositing: the canvas and the painters of each face feature.

Every image is a radiance map composited from layers (background, clothing, ears, face skin,
eyes, brows, nostrils, mouth, beard, hair, glasses), each with an anti-aliased coverage mask
and a band reflectance from `spectral`. Small features paint only the pixels of a window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hfrjax.data.synthetic import spectral
from hfrjax.data.synthetic.geometry import (
    clip,
    gauss,
    mouth_geometry,
    pixel_window,
    soft,
)
from hfrjax.data.synthetic.identity import IdentityParams
from hfrjax.data.synthetic.spectral import skin_reflectance
from hfrjax.data.synthetic.variation import Modality, SampleParams


class Canvas:
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

    def window(self, u0: float, u1: float, v0: float, v1: float) -> "Canvas | None":
        win = pixel_window(self.u, self.v, u0, u1, v0, v1)
        if win is None:
            return None
        r, c = win
        return Canvas(
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


def paint_body(
    canvas: Canvas,
    ident: IdentityParams,
    s: SampleParams,
    sel: Sequence[int],
    x: np.ndarray,
    y: np.ndarray,
    e_flat: np.ndarray,
) -> None:
    """Shoulders (clothing), neck and ears: everything behind the face."""
    pixel = canvas.pixel
    rows, shoulders, neck = body_shape(ident, s, x, y, pixel)
    e = np.broadcast_to(e_flat, canvas.radiance.shape)[:, rows]
    body = Canvas(canvas.radiance[:, rows], pixel)
    body.paint(shoulders, np.asarray(s.clothing, np.float32)[sel], e * 0.9)
    skin_base = skin_reflectance(ident.melanin, ident.haemoglobin, sel)
    body.paint(neck, skin_base, e * 0.55)
    for c, ear in ears(canvas, ident):
        c.paint(ear, skin_base * 0.92)


def body_shape(ident: IdentityParams, s: SampleParams, x: np.ndarray, y: np.ndarray, pixel: float):
    """The rows below the chin, and on them the coverage of the shoulders and of the neck."""
    rows = slice(int(np.searchsorted(y[:, 0], 1.0)), None)  # Nothing above the chin.
    x, y = x[rows], y[rows]
    shoulders = soft(2.85 - 0.4 * np.maximum(np.abs(x - s.shift[0]) - 1.0, 0) - y, pixel)
    neck_x = x - 0.6 * s.shift[0] + 0.3 * math.sin(s.yaw)
    neck = soft(np.abs(neck_x) - 0.45 * ident.face_w, pixel) * (1 - shoulders)
    return rows, shoulders, neck


def ears(canvas: Canvas, ident: IdentityParams):
    """(window canvas, coverage) of each ear."""
    for side in (-1.0, 1.0):
        cu = side * ident.face_w * 0.97
        c = canvas.window(cu - 0.35, cu + 0.35, -0.9, 0.4)
        if c is not None:
            ear_d = (np.sqrt(((c.u - cu) / 0.26) ** 2 + ((c.v + 0.25) / 0.55) ** 2) - 1.0) * 0.26
            yield c, soft(ear_d, c.pixel)


def skin_map(
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
    win = pixel_window(u, v, -1.3, 1.3, ident.mouth_v - 0.6, ident.mouth_v + 0.7)
    if win is not None:
        lips[win] = lip_coverage(ident, s, u[win], v[win], pixel)
    au = np.abs(u)
    cheeks = gauss((au - 1.2) ** 2 + (v - 0.55) ** 2, 0.4)
    nose_tip = gauss(u**2 + (v - ident.nose_tip) ** 2, 0.18)
    mel = ident.melanin * np.exp(tex[0]) * (1.0 - 0.35 * lips)
    hb = (
        ident.haemoglobin
        * np.exp(tex[1])
        * (1.0 + ident.lip_redness * lips + ident.cheek_redness * cheeks + 0.4 * nose_tip)
    )
    return skin_reflectance(mel, hb, sel)


def background_reflectance(
    s: SampleParams, sel: Sequence[int], x: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Smooth background reflectance [B, H, W]: base colour, a gradient and one soft blob."""
    r, g, b, nir, angle, grad, blob = s.background
    base = np.array([r, g, b, nir, nir * 0.9], np.float32)[list(sel)]
    t = (math.cos(angle) * x + math.sin(angle) * y) / 3.0
    bx, by = rng.uniform(-3, 3, 2)
    shade = 1.0 + grad * t + blob * gauss((x - bx) ** 2 + (y - by) ** 2, 1.0)
    return clip(base[:, None, None] * shade, 0.01, 1.0)


def lip_coverage(
    ident: IdentityParams, s: SampleParams, u: np.ndarray, v: np.ndarray, pixel: float
) -> np.ndarray:
    """Coverage of the lips (closed or parted)."""
    _, line, gap, shape = mouth_geometry(ident, s, u)
    upper = np.maximum(line - gap - ident.lip_upper * shape - v, v - (line - gap))
    lower = np.maximum(v - (line + gap + ident.lip_lower * shape), (line + gap) - v)
    return np.maximum(soft(upper, pixel), soft(lower, pixel)) * (shape > 0)


def nostrils(canvas: Canvas, ident: IdentityParams):
    """(window canvas, coverage) of each nostril."""
    for side in (-1.0, 1.0):
        cu, cv = side * ident.nose_w * 0.55, ident.nose_tip + 0.1
        c = canvas.window(cu - 0.2, cu + 0.2, cv - 0.15, cv + 0.15)
        if c is not None:
            d = (np.sqrt(((c.u - cu) / 0.1) ** 2 + ((c.v - cv) / 0.05) ** 2) - 1.0) * 0.05
            yield c, soft(d, c.pixel)


def mouth_window(canvas: Canvas, ident: IdentityParams) -> Canvas | None:
    return canvas.window(-1.4, 1.4, ident.mouth_v - 0.5, ident.mouth_v + 0.6)


def mouth_shape(c: Canvas, ident: IdentityParams, s: SampleParams):
    """Lip centre line, half opening, lip profile and the signed distance ``inside`` of the
    mouth opening on a mouth window."""
    _, line, gap, shape = mouth_geometry(ident, s, c.u)
    inside = np.maximum(np.abs(c.v - line) - gap, -shape * 10)
    return line, gap, shape, inside


def paint_nose_and_mouth(
    canvas: Canvas, ident: IdentityParams, s: SampleParams, sel: Sequence[int]
) -> None:
    """Nostrils, the parted mouth (cavity and teeth) and the line between the lips."""
    for c, nostril in nostrils(canvas, ident):
        c.paint(nostril * 0.85, spectral.NOSTRIL[sel])
    c = mouth_window(canvas, ident)
    if c is None:
        return
    line, gap, shape, inside = mouth_shape(c, ident, s)
    c.paint(soft(inside, c.pixel) * (shape > 0), spectral.MOUTH_CAVITY[sel])
    if s.smile > 0.3 or s.mouth_open > 0.2:
        teeth_d = np.maximum(c.v - (line - gap + 0.09), inside)
        c.paint(soft(teeth_d, c.pixel) * (shape > 0.15), spectral.TEETH[sel])
    c.paint(
        soft(np.abs(c.v - line) - 0.018, c.pixel) * (shape > 0.05) * 0.8, spectral.MOUTH_CAVITY[sel]
    )


def eye_window(canvas: Canvas, ident: IdentityParams, side: float) -> Canvas | None:
    cu, cv = side * ident.eye_sep, ident.eye_v
    return canvas.window(cu - ident.eye_w - 0.12, cu + ident.eye_w + 0.12, cv - 0.4, cv + 0.4)


def eye_shape(c: Canvas, ident: IdentityParams, s: SampleParams, side: float):
    """On an eye window: coverage of the open eye (between the lids), eye-aligned offsets
    (du along the lid, dv down), the lid profile (0 at the corners) and the upper lid height."""
    cu, cv = side * ident.eye_sep, ident.eye_v
    openness = max(s.eye_open, 0.0) * (1.0 - 0.25 * s.smile)
    cos_t, sin_t = math.cos(side * ident.eye_tilt), math.sin(side * ident.eye_tilt)
    du0, dv0 = c.u - cu, c.v - cv
    du = cos_t * du0 + sin_t * dv0
    dv = -sin_t * du0 + cos_t * dv0
    prof = np.maximum(1.0 - (du / ident.eye_w) ** 2, 0.0) ** 0.7
    upper = ident.eye_h * 1.1 * openness * prof
    lower = ident.eye_h * (0.6 + 0.4 * openness) * prof * (openness > 0.02)
    eye = soft(np.maximum(-dv - upper, dv - lower), c.pixel) * (prof > 0)
    return eye, du, dv, prof, upper


def paint_eye(
    canvas: Canvas,
    ident: IdentityParams,
    s: SampleParams,
    modality: Modality,
    sel: Sequence[int],
    side: float,
) -> None:
    """Sclera, iris, pupil, corneal reflection and lash line of one eye."""
    c = eye_window(canvas, ident, side)
    if c is None:
        return
    eye, du, dv, prof, upper = eye_shape(c, ident, s, side)
    lid_shadow = 0.75 + 0.25 * clip((dv + upper) * 6, 0, 1)
    c.paint(eye, spectral.SCLERA[sel], c.maps["e"] * lid_shadow)
    gx, gy = s.gaze
    r_iris = np.sqrt((du - gx) ** 2 + (dv - gy) ** 2)
    c.paint(
        soft(r_iris - ident.iris_r, c.pixel) * eye, spectral.iris_spectrum(ident.iris_melanin)[sel]
    )
    c.paint(soft(r_iris - ident.iris_r * 0.42, c.pixel) * eye, spectral.PUPIL[sel])
    lx, ly = s.light.direction[:2]
    glint = gauss(
        (du - gx - 0.25 * ident.iris_r - 0.3 * lx) ** 2 + (dv - gy - 0.3 * ly + 0.03) ** 2, 0.025
    )
    c.radiance += glint * eye * (1.2 if modality == "nir" else 0.6)
    lash_d = np.abs(dv + upper + 0.015) - 0.025 - 0.012 * prof
    c.paint(soft(lash_d, c.pixel) * (prof > 0.02) * 0.9, spectral.LASH[sel])


def paint_brow(
    canvas: Canvas, ident: IdentityParams, s: SampleParams, sel: Sequence[int], side: float
) -> None:
    """One eyebrow: a tapered arc whose height follows the expression."""
    c = brow_window(canvas, ident, s, side)
    if c is None:
        return
    alpha = brow_coverage(c, ident, s, side)
    rho = spectral.hair_spectrum(
        ident.hair_eumelanin + 1.0, ident.hair_pheomelanin, ident.hair_grey * 0.5
    )
    c.paint(alpha, rho[sel])


def brow_window(canvas: Canvas, ident: IdentityParams, s: SampleParams, side: float):
    cu = side * (ident.eye_sep + 0.05)
    cv = ident.eye_v - ident.brow_gap - 0.16 * s.brow_raise
    return canvas.window(cu - ident.brow_len - 0.1, cu + ident.brow_len + 0.1, cv - 0.45, cv + 0.4)


def brow_coverage(c: Canvas, ident: IdentityParams, s: SampleParams, side: float) -> np.ndarray:
    """Coverage of one eyebrow on its window (needs ``c.maps["strands"]``)."""
    cu = side * (ident.eye_sep + 0.05)
    cv = ident.eye_v - ident.brow_gap - 0.16 * s.brow_raise
    du = (c.u - cu) * side  # Positive towards the temple.
    t = clip(du / ident.brow_len, -1, 1)
    frown = 0.08 * min(s.brow_raise, 0.0) * (1 - t)  # Inner ends pulled down in a frown.
    curve = cv - ident.brow_arch * (1 - (t - 0.15) ** 2) + ident.brow_slope * t - frown
    thick = ident.brow_thick * (1.0 - 0.45 * clip(t, 0, 1))
    d = np.maximum(np.abs(c.v - curve) - thick / 2, np.abs(du) - ident.brow_len)
    return soft(d, c.pixel) * ident.brow_density * clip(0.75 + c.maps["strands"], 0, 1)


def paint_beard(canvas: Canvas, ident: IdentityParams, s: SampleParams, rho: np.ndarray) -> None:
    """Facial hair (stubble, full beard or moustache + goatee) on the face, sparing the lips."""
    c = canvas.window(-ident.face_w, ident.face_w, ident.nose_tip, ident.face_chin + 0.1)
    if c is None:
        return
    c.paint(beard_coverage(c, ident, s), rho)


def beard_coverage(c: Canvas, ident: IdentityParams, s: SampleParams) -> np.ndarray:
    """Coverage of facial hair on a window of the lower face (needs ``c.maps["face"]``)."""
    u, v = c.u, c.v
    w, line, gap, shape = mouth_geometry(ident, s, u)
    lip_zone = np.maximum(np.abs(v - line) - gap - 0.12 * shape - 0.02, np.abs(u) - w - 0.03)
    moustache = np.maximum(
        np.maximum(v - (line - gap - 0.08), ident.nose_tip + 0.2 - v), np.abs(u) - w - 0.08
    )
    if ident.beard_style == 3:
        region = np.minimum(moustache, np.maximum(np.abs(u) - 0.5, line + 0.2 - v))
    else:
        region = np.minimum(moustache, ident.nose_tip + 0.75 - v)
    density = ident.beard_density * (0.35 if ident.beard_style == 1 else 1.0)
    cover = soft(region, c.pixel * 3) * (1 - soft(lip_zone, c.pixel)) * c.maps["face"]
    return cover * density * clip(0.8 + c.maps["strands"], 0, 1)


def hair_coverage(
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
    return soft(keep, pixel * 1.5)


def paint_glasses(
    canvas: Canvas, ident: IdentityParams, s: SampleParams, modality: Modality, sel: Sequence[int]
) -> None:
    """Frames, faint lens tint and lens reflections (strong LED glints in NIR)."""
    c = glasses_window(canvas, ident)
    if c is None:
        return
    lenses, frame = glasses_shape(c, ident)
    cv = ident.eye_v + 0.03
    u, v = c.u, c.v
    glint = np.zeros_like(u)
    gu, gv, strength = s.glasses_glint
    for cu, lens in lenses:
        c.paint(lens * 0.08, np.full(len(sel), 0.3, np.float32))
        g2 = ((u - cu - gu - 0.5 * math.sin(s.yaw)) / 1.6) ** 2 + (v - cv - gv) ** 2
        if modality == "nir":
            glint += lens * strength * 3.0 * gauss(g2, 0.05)
        else:
            glint += lens * strength * 0.25 * gauss(g2, 0.2)
    c.paint(frame, np.asarray(ident.glasses_spectrum, np.float32)[sel])
    c.radiance += glint


def glasses_window(canvas: Canvas, ident: IdentityParams) -> Canvas | None:
    cv = ident.eye_v + 0.03
    return canvas.window(
        -ident.face_w - 0.2,
        ident.face_w + 0.2,
        cv - ident.glasses_h - 0.15,
        cv + ident.glasses_h + 0.15,
    )


def glasses_shape(
    c: Canvas, ident: IdentityParams
) -> tuple[list[tuple[float, np.ndarray]], np.ndarray]:
    """On a glasses window: [(centre u, lens coverage)] of both lenses and the coverage of the
    frame (rims, bridge and temples)."""
    cv = ident.eye_v + 0.03
    u, v, t = c.u, c.v, ident.glasses_frame
    frame_d = []
    lenses = []
    for side in (-1.0, 1.0):
        cu = side * (ident.eye_sep + 0.04)
        p = ident.glasses_power
        r = ((np.abs(u - cu) / ident.glasses_w) ** p + (np.abs(v - cv) / ident.glasses_h) ** p) ** (
            1.0 / p
        )
        frame_d.append(np.abs(r - 1.0) * ident.glasses_h - t / 2)
        lenses.append((cu, soft((r - 1.0) * ident.glasses_h, c.pixel)))
    inner = ident.eye_sep + 0.04 - ident.glasses_w
    au = np.abs(u)
    frame_d.append(np.maximum(np.abs(v - cv + 0.08) - t / 2, au - inner - 0.02))  # Bridge.
    frame_d.append(
        np.maximum(
            np.abs(v - cv + 0.1) - t / 3,  # Temples.
            np.maximum(ident.eye_sep + ident.glasses_w - au, au - ident.face_w - 0.1),
        )
    )
    return lenses, soft(np.minimum.reduce(frame_d), c.pixel)
