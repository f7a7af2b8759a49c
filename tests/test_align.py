"""5-point alignment: the similarity fit, the warp's pixel convention, landmark files, folders."""

import argparse
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from hfrjax.data import align
from hfrjax.data.convert.common import ConversionError
from hfrjax.data.occlusion import FaceTemplate


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    r = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return np.concatenate([r, [[tx], [ty]]], axis=1)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    for angle, scale, tx, ty in [(23.0, 1.7, -40.0, 12.5), (-170.0, 0.31, 5.0, 300.0)]:
        m = _similarity(angle, scale, tx, ty)
        est = align.similarity_transform(src, _apply(m, src))
        np.testing.assert_allclose(est, m, atol=1e-6)


def test_similarity_transform_never_reflects():
    src = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0], [3.0, 1.5]])
    mirrored = src * [-1.0, 1.0]
    m = align.similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0
    assert np.allclose(m[0, 0], m[1, 1]) and np.allclose(m[0, 1], -m[1, 0])  # A similarity.


def test_similarity_transform_rejects_degenerate_points():
    with pytest.raises(ValueError, match="coincide"):
        align.similarity_transform(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="matching"):
        align.similarity_transform(np.ones((5, 2)), np.zeros((4, 2)))


@pytest.mark.parametrize("size", [112, 128])
def test_landmarks_map_onto_template(size):
    tpl = np.asarray(FaceTemplate.for_size(size).points)
    m = _similarity(-31.0, 2.6, 150.0, 80.0)
    landmarks = _apply(m, tpl)  # Noise-free: the face in the image is an exact similarity.
    est = align.alignment_matrix(landmarks, size)
    residual = np.linalg.norm(_apply(est, landmarks) - tpl, axis=1)
    assert residual.max() < 0.01


def test_identity_alignment_returns_the_image():
    """Landmarks already on the template: the warp must be the identity, not a half-pixel
    shift (OpenCV's pixel-centre convention)."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    out = align.align_face(img, np.asarray(FaceTemplate.for_size(112).points))
    np.testing.assert_array_equal(out, img)


def test_warp_translation_by_one_pixel_and_black_border():
    img = (np.arange(16).reshape(4, 4) * 10).astype(np.uint8)
    m = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # Source x -> output x + 1.
    out = align.warp_affine(img, m, (4, 4))
    np.testing.assert_array_equal(out[:, 1:], img[:, :3])
    np.testing.assert_array_equal(out[:, 0], 0)
    half = align.warp_affine(img.astype(np.float64), np.array([[1, 0, 0.5], [0, 1, 0]]), (4, 4))
    np.testing.assert_allclose(half[:, 1:], (img[:, :3] / 2.0 + img[:, 1:] / 2.0))
    np.testing.assert_allclose(half[:, 0], img[:, 0] / 2.0)  # Blends with the black outside.


def _dots_image(points: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    img = np.zeros(shape)
    for x, y in points:
        img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return np.clip(np.rint(255 * img), 0, 255).astype(np.uint8)


def _centroid(img: np.ndarray, x: float, y: float, radius: int = 5) -> tuple[float, float]:
    x0, y0 = int(round(x)), int(round(y))
    patch = img[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1].astype(np.float64)
    ys, xs = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    return float((patch * xs).sum() / patch.sum()), float((patch * ys).sum() / patch.sum())


@pytest.mark.parametrize("size", [112, 128])
def test_aligned_dots_land_on_template(size):
    """Bright dots at the landmarks of a rotated, scaled face in a larger image end up at the
    template points of the crop (residual below a pixel, the acceptance criterion)."""
    tpl = np.asarray(FaceTemplate.for_size(size).points)
    m = _similarity(27.0, 1.9, 90.0, 20.0)
    landmarks = _apply(m, tpl)
    gray = _dots_image(landmarks, (320, 300), sigma=2.2)
    img = np.repeat(gray[:, :, None], 3, axis=2)
    crop = align.align_face(img, landmarks, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    for tx, ty in tpl:
        cx, cy = _centroid(crop[:, :, 0], tx, ty)
        assert math.hypot(cx - tx, cy - ty) < 1.0, (size, (tx, ty), (cx, cy))
        assert math.hypot(cx - tx, cy - ty) < 0.1  # In fact much closer.


def test_align_face_rejects_bad_input():
    img = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="5 \\(x, y\\) points"):
        align.align_face(img, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="template is for"):
        align.align_face(img, np.eye(5, 2), 112, FaceTemplate.for_size(128))


# Landmark files.

PTS = [[30.5, 40.0], [60.0, 41.0], [45.0, 55.0], [33.0, 70.0], [58.0, 71.5]]


def _csv_line(path: str, pts=PTS) -> str:
    return ",".join([path] + [str(v) for p in pts for v in p])


def test_load_landmarks_csv_with_header(tmp_path):
    f = tmp_path / "marks.csv"
    header = "path," + ",".join(f"{c}{i}" for i in range(1, 6) for c in "xy")
    f.write_text("\n".join([header, _csv_line("a/1.jpg"), "", _csv_line('"b,2.png"')]) + "\n")
    marks = align.load_landmarks(f)
    assert list(marks) == ["a/1.jpg", "b,2.png"]
    np.testing.assert_array_equal(marks["a/1.jpg"], np.asarray(PTS))
    assert marks["b,2.png"].shape == (5, 2)


def test_load_landmarks_csv_errors(tmp_path):
    f = tmp_path / "marks.csv"
    f.write_text(_csv_line("a.jpg") + "\n" + _csv_line("b.jpg")[:-5] + "\n")
    with pytest.raises(ConversionError, match=r"marks.csv line 2: expected 10 .* got 9"):
        align.load_landmarks(f)
    f.write_text(_csv_line("a.jpg") + "\n" + _csv_line("b.jpg").replace("45.0", "abc") + "\n")
    with pytest.raises(ConversionError, match=r"line 2: value 5 \(x3\) is not a number: 'abc'"):
        align.load_landmarks(f)
    f.write_text(_csv_line("a.jpg") + "\n" + _csv_line("a.jpg") + "\n")
    with pytest.raises(ConversionError, match="line 2: duplicate image path 'a.jpg'"):
        align.load_landmarks(f)
    f.write_text(_csv_line("a.jpg").replace("30.5", "nan") + "\n")
    with pytest.raises(ConversionError, match="line 1: value 1 is not finite"):
        align.load_landmarks(f)
    with pytest.raises(ConversionError, match="does not exist"):
        align.load_landmarks(tmp_path / "nope.csv")


def test_load_landmarks_json(tmp_path):
    f = tmp_path / "marks.json"
    f.write_text(json.dumps({"x/1.jpg": PTS, "x/2.jpg": [v for p in PTS for v in p]}))
    marks = align.load_landmarks(f)
    np.testing.assert_array_equal(marks["x/1.jpg"], marks["x/2.jpg"])
    f.write_text(json.dumps({"x/1.jpg": PTS[:4]}))
    with pytest.raises(ConversionError, match=r"key 'x/1.jpg': expected 5 \[x, y\] points, got 4"):
        align.load_landmarks(f)
    f.write_text(json.dumps({"x/1.jpg": [[1, 2]] * 4 + [[1, "z"]]}))
    with pytest.raises(ConversionError, match=r"key 'x/1.jpg': value 10 \(y5\) is not a number"):
        align.load_landmarks(f)
    f.write_text(json.dumps({"x/1.jpg": "oops"}))
    with pytest.raises(ConversionError, match="key 'x/1.jpg': expected a list"):
        align.load_landmarks(f)
    f.write_text(json.dumps([1, 2]))
    with pytest.raises(ConversionError, match="expected a JSON object"):
        align.load_landmarks(f)
    f.write_text("{bad json")
    with pytest.raises(ConversionError, match="marks.json: invalid JSON"):
        align.load_landmarks(f)


# Folders.


def _write_face(path, size=(90, 80)):
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def _folder(tmp_path):
    src = tmp_path / "src"
    for rel in ("p1/a.png", "p1/b.png", "p2/c.png"):
        _write_face(src / rel)
    marks = tmp_path / "marks.csv"
    rows = [_csv_line(r) for r in ("p1/a.png", "p1/b.png", "p2/c.png", "p2/gone.png")]
    marks.write_text("\n".join(rows) + "\n")
    return src, marks


def test_align_folder_missing_image_raises(tmp_path):
    src, marks = _folder(tmp_path)
    with pytest.raises(ConversionError, match=r"1 file\(s\) listed in .*marks.csv .*p2/gone.png"):
        align.align_folder(src, marks, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_align_folder_missing_image_skipped(tmp_path):
    src, marks = _folder(tmp_path)
    out = tmp_path / "out"
    report = align.align_folder(src, marks, out, size=128, on_bad="skip", progress=False)
    assert report.written == 3
    assert report.skipped == {"image missing": ["p2/gone.png"]}
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["p1/a.jpg", "p1/b.jpg", "p2/c.jpg"]
    with Image.open(out / "p1/a.jpg") as im:
        assert im.size == (128, 128)


def test_align_folder_unlisted_image(tmp_path):
    src, marks = _folder(tmp_path)
    _write_face(src / "p3/d.png")
    marks.write_text("\n".join(_csv_line(r) for r in ("p1/a.png", "p1/b.png", "p2/c.png")))
    with pytest.raises(ConversionError, match="1 image.* have no landmarks .*p3/d.png"):
        align.align_folder(src, marks, tmp_path / "out", progress=False)
    report = align.align_folder(
        src, marks, tmp_path / "out", on_bad="skip", image_format="png", progress=False
    )
    assert report.written == 3 and report.skipped == {"no landmarks": ["p3/d.png"]}
    assert (tmp_path / "out/p1/a.png").is_file()


def test_cli_run(tmp_path, capsys):
    src, marks = _folder(tmp_path)
    parser = argparse.ArgumentParser()
    align.add_arguments(parser)
    args = parser.parse_args(
        ["--src", str(src), "--landmarks", str(marks), "--out", str(tmp_path / "o")]
    )
    assert align.run(args) == 1
    assert "p2/gone.png" in capsys.readouterr().err
    args = parser.parse_args(
        ["--src", str(src), "--landmarks", str(marks), "--out", str(tmp_path / "o"),
         "--size", "128", "--on_bad", "skip"]
    )  # fmt: skip
    assert align.run(args) == 0
    assert "3 image(s) written" in capsys.readouterr().out


def test_align_folder_paths_outside_src_refused(tmp_path):
    src, marks = _folder(tmp_path)
    marks.write_text(_csv_line("p1/../../x.png") + "\n")
    with pytest.raises(ConversionError, match=r"path p1/../../x.png leaves"):
        align.align_folder(src, marks, tmp_path / "out", progress=False)
    marks.write_text(_csv_line(str(src / "p1/a.png")) + "\n")  # Absolute, inside src: fine.
    report = align.align_folder(src, marks, tmp_path / "out", on_bad="skip", progress=False)
    assert report.written == 1 and (tmp_path / "out/p1/a.jpg").is_file()
