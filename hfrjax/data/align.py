"""5-point face alignment: a similarity warp of detector landmarks onto a crop template.

Recognition models are trained and evaluated on crops where the eyes, nose tip and mouth
corners sit at fixed pixels (`hfrjax.data.occlusion.FaceTemplate`: ArcFace's 112x112 points,
or the 128x128 crop InsightFace's ``estimate_norm`` makes by shifting them 8 px right). A crop
is made as InsightFace does: the least-squares similarity transform (Umeyama; rotation, one
scale, translation, no reflection) from the detected landmarks to the template, then a
bilinear warp with black outside the image.

Pixel convention: pixel (row i, column j) has its centre at the continuous point (x=j, y=i),
as in OpenCV's ``warpAffine`` (which InsightFace uses) and as the template points are given.
Output pixel (x, y) samples the source at M^-1 (x, y) with bilinear weights; source pixels
outside the image count as 0 (OpenCV's BORDER_CONSTANT), so a sample near the border blends
with black as OpenCV's does. Values differ from OpenCV's only by its 1/32-pixel fixed-point
weights (at most about one grey level).

Landmark files (`load_landmarks`), points in the order left eye, right eye, nose tip, left
mouth corner, right mouth corner, image-left first (RetinaFace's / InsightFace's order):

* CSV: ``path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5`` per line; a first line without numbers is a
  header; blank lines are skipped.
* JSON: ``{"path": [[x1, y1], ..., [x5, y5]], ...}`` (a flat list of 10 numbers also works).

Paths are relative to the image folder (absolute paths inside it are accepted).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import posixpath
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from hfrjax.data import augment
from hfrjax.data.convert.common import (
    SHOW,
    ConversionError,
    ConversionReport,
    ProgressLine,
    check_on_bad,
    missing_files_error,
)
from hfrjax.data.occlusion import FaceTemplate
from hfrjax.fileio import atomic_output

SIZES = (112, 128)
"""Crop sizes of the standard templates (ArcFace; LightCNN-style 128 as InsightFace makes it)."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_FORMAT_SUFFIXES = {"jpeg": (".jpg", ".jpeg"), "png": (".png",)}
_JPEG_QUALITY = 95


# --------------------------------------------------------------------------------------------
# Geometry.


def similarity_transform(src_pts: np.ndarray, dst_pts: np.ndarray) -> np.ndarray:
    """The 2x3 matrix M of the similarity (rotation, scale, translation; no reflection) that
    maps ``src_pts`` [N, 2] onto ``dst_pts`` [N, 2] in least squares (Umeyama 1991, as
    scikit-image's ``SimilarityTransform.estimate`` that InsightFace calls): dst ~ M @ [x, y, 1].
    """
    src = np.asarray(src_pts, dtype=np.float64)
    dst = np.asarray(dst_pts, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need matching [N >= 2, 2] point arrays, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("points must be finite")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_s, dst - mu_d
    var_s = (src_c**2).sum() / len(src)
    if var_s <= 1e-12 * max(1.0, float(np.abs(src).max()) ** 2):
        raise ValueError("source points all coincide; no similarity transform is defined")
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # Best orthogonal fit reflects: undo it.
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / var_s)
    t = mu_d - scale * rot @ mu_s
    return np.concatenate([scale * rot, t[:, None]], axis=1)


def _template(size: int | tuple[int, int], template: FaceTemplate | None) -> FaceTemplate:
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if template is None:
        return FaceTemplate.for_size(hw)
    if tuple(template.size) != tuple(hw):
        raise ValueError(f"template is for {template.size} crops but size is {hw}")
    return template


def _check_landmarks(landmarks) -> np.ndarray:
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape == (10,):
        pts = pts.reshape(5, 2)
    if pts.shape != (5, 2):
        raise ValueError(f"landmarks must be 5 (x, y) points, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError(f"landmarks must be finite, got {pts.tolist()}")
    return pts


def alignment_matrix(
    landmarks: np.ndarray,
    size: int | tuple[int, int] = 112,
    template: FaceTemplate | None = None,
) -> np.ndarray:
    """The 2x3 matrix taking image pixels to crop pixels (InsightFace's ``estimate_norm``)."""
    tpl = _template(size, template)
    return similarity_transform(_check_landmarks(landmarks), np.asarray(tpl.points))


def warp_affine(
    image: np.ndarray, matrix: np.ndarray, out_size: tuple[int, int], border: float = 0
) -> np.ndarray:
    """``image`` [H, W] or [H, W, C] warped by the 2x3 ``matrix`` (source -> output pixels) to
    ``out_size`` = (height, width), bilinear, OpenCV's pixel-centre convention (module
    docstring). Integer images are rounded back to their dtype."""
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be [H, W] or [H, W, C], got shape {img.shape}")
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"matrix must be 2x3, got shape {m.shape}")
    a = m[:, :2]
    if abs(np.linalg.det(a)) < 1e-12:
        raise ValueError(f"matrix is singular: {m.tolist()}")
    inv = np.linalg.inv(a)
    oh, ow = (int(s) for s in out_size)
    ys, xs = np.mgrid[0:oh, 0:ow].astype(np.float64)
    pts = np.stack([xs.ravel(), ys.ravel()]) - m[:, 2:]
    sx, sy = inv @ pts
    src = img if img.ndim == 3 else img[:, :, None]
    h, w = src.shape[:2]
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = (sx - x0)[:, None], (sy - y0)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    out = np.zeros((len(sx), src.shape[2]), dtype=np.float64)
    srcf = src.astype(np.float64)
    corners = ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy))
    for dy, dx, wt in (*corners, (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        vals = np.full((len(sx), src.shape[2]), float(border))
        vals[inside] = srcf[yi[inside], xi[inside]]
        out += wt * vals
    out = out.reshape(oh, ow, src.shape[2])
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    out = out.astype(img.dtype)
    return out if img.ndim == 3 else out[:, :, 0]


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    size: int | tuple[int, int] = 112,
    template: FaceTemplate | None = None,
) -> np.ndarray:
    """The aligned crop of ``image`` ([H, W] or [H, W, C]) whose 5 ``landmarks`` (x, y) go onto
    ``template`` (default: `FaceTemplate.for_size(size)`, i.e. InsightFace's crop)."""
    tpl = _template(size, template)
    return warp_affine(image, alignment_matrix(landmarks, tpl.size, tpl), tpl.size)


# --------------------------------------------------------------------------------------------
# Landmark files.


def _parse_floats(values: Sequence, where: str) -> np.ndarray:
    if len(values) != 10:
        raise ConversionError(
            f"{where}: expected 10 landmark values (x1,y1,...,x5,y5), got {len(values)}"
        )
    out = []
    for i, v in enumerate(values):
        try:
            if isinstance(v, bool):
                raise ValueError
            f = float(v.strip() if isinstance(v, str) else v)
        except (TypeError, ValueError):
            raise ConversionError(
                f"{where}: value {i + 1} ({'xy'[i % 2]}{i // 2 + 1}) is not a number: {v!r}"
            ) from None
        if not math.isfinite(f):
            raise ConversionError(f"{where}: value {i + 1} is not finite: {v!r}")
        out.append(f)
    return np.asarray(out, dtype=np.float64).reshape(5, 2)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _add(out: dict[str, np.ndarray], key: str, pts: np.ndarray, where: str, first: dict) -> None:
    key = key.strip()
    if not key:
        raise ConversionError(f"{where}: empty image path")
    if key in out:
        raise ConversionError(f"{where}: duplicate image path {key!r} (first at {first[key]})")
    out[key], first[key] = pts, where


def load_landmarks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{image path: float64 [5, 2]} from a CSV or JSON landmark file (module docstring); any
    malformed line or entry is an error naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConversionError(f"landmark file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise ConversionError(f"landmark file {path} is not UTF-8 text: {e}") from None
    out: dict[str, np.ndarray] = {}
    first: dict[str, str] = {}
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConversionError(f"{path}: invalid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise ConversionError(
                f"{path}: expected a JSON object {{path: [[x, y] x 5]}}, got {type(obj).__name__}"
            )
        for key, value in obj.items():
            where = f"{path} key {key!r}"
            if isinstance(value, list) and all(isinstance(p, list) for p in value):
                if len(value) != 5 or any(len(p) != 2 for p in value):
                    shape = [len(p) for p in value]
                    raise ConversionError(
                        f"{where}: expected 5 [x, y] points, got {len(value)} with lengths {shape}"
                    )
                flat = [v for p in value for v in p]
            elif isinstance(value, list):
                flat = value
            else:
                raise ConversionError(
                    f"{where}: expected a list of 5 [x, y] points, got {type(value).__name__}"
                )
            _add(out, key, _parse_floats(flat, where), where, first)
        return out
    first_row = True
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        is_header = first_row and not any(_is_number(v) for v in row[1:])
        first_row = False
        if not is_header:
            where = f"{path} line {lineno}"
            _add(out, row[0], _parse_floats(row[1:], where), where, first)
    if not out:
        raise ConversionError(f"landmark file {path} holds no landmarks")
    return out


# --------------------------------------------------------------------------------------------
# Folders.


def _relative_key(key: str, src_root: Path, where: str) -> str:
    p = Path(key)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(src_root.resolve())
        except ValueError:
            raise ConversionError(
                f"{where}: absolute path {key} is not inside {src_root}"
            ) from None
    rel = posixpath.normpath(p.as_posix())
    if rel.startswith("../") or rel in ("..", "."):
        raise ConversionError(f"{where}: path {key} leaves {src_root}")
    return rel


def _out_name(rel: str, image_format: str) -> str:
    p = Path(rel)
    if p.suffix.lower() in _FORMAT_SUFFIXES[image_format]:
        return rel
    return p.with_suffix(_FORMAT_SUFFIXES[image_format][0]).as_posix()


def _encode(img: np.ndarray, image_format: str) -> bytes:
    # Grey sources (NIR) stay single-channel: decode_image replicated them to 3 channels.
    if (
        img.shape[2] == 3
        and (img[..., 0] == img[..., 1]).all()
        and (img[..., 1] == img[..., 2]).all()
    ):
        pil = Image.fromarray(img[..., 0])
    else:
        pil = Image.fromarray(img)
    buf = io.BytesIO()
    if image_format == "jpeg":
        pil.save(buf, format="JPEG", quality=_JPEG_QUALITY)
    else:
        pil.save(buf, format="PNG")
    return buf.getvalue()


def _list_images(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def align_folder(
    src_root: str | os.PathLike,
    landmarks_file: str | os.PathLike,
    out_root: str | os.PathLike,
    *,
    size: int = 112,
    on_bad: str = "raise",
    image_format: str = "jpeg",
    progress: bool = True,
) -> ConversionReport:
    """Aligns every image of ``landmarks_file`` under ``src_root`` into ``out_root`` at the same
    relative path (suffix changed to ``image_format``'s where it differs).

    Landmark entries whose image is missing, images under ``src_root`` without landmarks,
    undecodable images and degenerate landmarks are errors (``on_bad="raise"``) or skipped and
    counted in the returned report (``on_bad="skip"``). Nothing is written when a missing or
    unlisted image makes the run fail; files are written atomically.
    """
    check_on_bad(on_bad)
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if image_format not in _FORMAT_SUFFIXES:
        raise ValueError(
            f"image_format must be one of {tuple(_FORMAT_SUFFIXES)}, got {image_format!r}"
        )
    src_root, out_root = Path(src_root), Path(out_root)
    if not src_root.is_dir():
        raise ConversionError(f"image folder {src_root} does not exist")
    if out_root.resolve() == src_root.resolve():
        raise ConversionError(f"output folder {out_root} is the image folder; pick another")
    raw = load_landmarks(landmarks_file)
    marks: dict[str, np.ndarray] = {}
    keys: dict[str, str] = {}
    for key, pts in raw.items():
        rel = _relative_key(key, src_root, f"{landmarks_file} entry {key!r}")
        if rel in marks:
            raise ConversionError(
                f"{landmarks_file}: entries {keys[rel]!r} and {key!r} both name image {rel}"
            )
        marks[rel], keys[rel] = pts, key
    report = ConversionReport()
    missing = [rel for rel in marks if not (src_root / rel).is_file()]
    if missing:
        if on_bad == "raise":
            err = missing_files_error(missing, f"{landmarks_file}")
            raise ConversionError(f"{err} (under {src_root}); pass on_bad='skip' to skip them")
        for rel in missing:
            report.skip("image missing", rel)
    unlisted = [rel for rel in _list_images(src_root) if rel not in marks]
    if unlisted:
        if on_bad == "raise":
            shown = ", ".join(unlisted[:SHOW]) + (" ..." if len(unlisted) > SHOW else "")
            raise ConversionError(
                f"{len(unlisted)} image(s) under {src_root} have no landmarks in "
                f"{landmarks_file}: {shown}; pass on_bad='skip' to skip them"
            )
        for rel in unlisted:
            report.skip("no landmarks", rel)
    missing_set = set(missing)
    todo = [rel for rel in marks if rel not in missing_set]
    tpl = FaceTemplate.for_size(size)
    line = ProgressLine(len(todo), "align") if progress else None
    outputs: dict[str, str] = {}
    for i, rel in enumerate(todo):
        src = src_root / rel
        try:
            img = augment.decode_image(src.read_bytes())
        except Exception as e:  # noqa: BLE001 - any decoder failure is the same bad-input case.
            if on_bad == "raise":
                raise ConversionError(
                    f"{src}: cannot decode the image ({e}); pass on_bad='skip' to skip it"
                ) from e
            report.skip("undecodable image", rel)
            continue
        try:
            crop = align_face(img, marks[rel], tpl.size, tpl)
        except ValueError as e:
            if on_bad == "raise":
                raise ConversionError(f"{landmarks_file} entry {rel}: bad landmarks ({e})") from e
            report.skip("bad landmarks", rel)
            continue
        name = _out_name(rel, image_format)
        if name in outputs:
            raise ConversionError(f"{rel} and {outputs[name]} would both be written to {name}")
        outputs[name] = rel
        with atomic_output(out_root / name, "wb") as f:
            f.write(_encode(crop, image_format))
        report.written += 1
        if line is not None:
            line.update(i + 1)
    if line is not None:
        line.update(len(todo), force=True)
    return report


# --------------------------------------------------------------------------------------------
# Command line: ``hfrjax align``.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``hfrjax align`` arguments."""
    parser.add_argument("--src", required=True, help="folder of the original images")
    parser.add_argument(
        "--landmarks", required=True, help="CSV (path,x1,y1,...,x5,y5) or JSON landmark file"
    )
    parser.add_argument("--out", required=True, help="folder for the aligned crops")
    parser.add_argument("--size", type=int, default=112, choices=SIZES, help="crop size")
    parser.add_argument(
        "--on_bad",
        default="raise",
        choices=["raise", "skip"],
        help="missing/unlisted/undecodable images: fail (default) or skip and count",
    )
    parser.add_argument("--format", dest="image_format", default="jpeg", choices=["jpeg", "png"])


def run(args: argparse.Namespace) -> int:
    """Runs ``hfrjax align``; prints the report's summary."""
    try:
        report = align_folder(
            args.src,
            args.landmarks,
            args.out,
            size=args.size,
            on_bad=args.on_bad,
            image_format=args.image_format,
        )
    except ConversionError as e:
        print(f"hfrjax align: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    print(json.dumps(report.to_json()), file=sys.stderr)
    return 0
