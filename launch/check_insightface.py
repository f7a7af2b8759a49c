"""Checks that hfrjax's ONNX exports run unchanged in the real ``insightface`` package.

  python launch/check_insightface.py                       # insightface installed here
  python launch/check_insightface.py --insightface_python=/path/to/venv/bin/python
  python launch/check_insightface.py --export=EXPORT_DIR   # a trained hfrjax export instead

What it does, per model (by default small random IResNet, MobileFaceNet and LightCNN; or the
hfrjax export directories given with ``--export``):

1. writes the model as ONNX with hfrjax's exporter (``hfrjax.deploy.onnx_export``);
2. embeds aligned faces (rendered synthetic faces and random pixels) with the Flax model
   (``hfrjax.deploy.backends.load_model``), and five-point-aligns an unaligned scene with
   hfrjax's alignment (``hfrjax.data.align``);
3. loads the ONNX file with ``insightface.model_zoo.get_model(path)`` and records what its
   loader read (class, task, input name / shape / size, ``input_mean`` / ``input_std``,
   output shape), then runs ``get_feat`` on BGR images (as ``cv2.imread`` returns them) one
   by one and as one list (dynamic batch), ``get(img, face)`` on the scene with the
   landmarks (the call ``FaceAnalysis.get`` makes for each detected face), and
   ``FaceAnalysis.get`` itself with a stand-in detector returning those landmarks (the
   package's real detectors are downloads);
4. compares the L2-normalised embeddings: max |insightface - hfrjax| <= 1e-4 passes.

insightface's ``ArcFaceONNX`` reads mean/std 127.5 for every graph whose first eight nodes
are not named ``Sub*``/``_minus*`` *and* ``Mul*``/``_mul*``. That is right for
IResNet/MobileFaceNet exports. LightCNN exports take grey pixels in [0, 1] (mean 0, std 255):
its default loader gets them wrong (reported, not failed), and insightface >= 2.0 gives the
right values with ``get_model(path, model_task="recognition",
model_metadata={"preprocessing": {"mean": 0.0, "std": 255.0}})``, which is what is compared.

The insightface half runs in a separate interpreter when ``--insightface_python`` is given
(the request and result travel as files; that half imports only numpy, OpenCV and
insightface), so hfrjax and insightface need not share an environment. Prints a verdict;
exits 0 when every comparison passes, 1 otherwise. ``--json`` writes the full report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TOLERANCE = 1e-4
"""Max abs difference of L2-normalised embeddings for a pass (issue 17's ONNX parity bound)."""

SMALL_MODELS = {
    # Small widths at the published input sizes (insightface routes a square input of at
    # least 112 pixels, a multiple of 16, to ArcFaceONNX; a 48-pixel MobileFaceNet would be
    # routed to nothing).
    "iresnet": dict(layers=(1, 2, 1, 1), base_width=8, embedding_dim=64, input_size=112),
    "mobilefacenet": dict(blocks=(1, 2, 2, 1), width_mult=0.125, embedding_dim=64, input_size=112),
    "lightcnn29v2": dict(layers=(1, 1, 1, 1), channels=(4, 8, 8, 8, 8), embedding_dim=64),
}
LIGHTCNN_PREPROCESSING = {"mean": 0.0, "std": 255.0}
NUM_IMAGES = 7


# ---------------------------------------------------------------------------------------------
# hfrjax side.


def _random_export(directory: Path, name: str, kwargs: dict, seed: int) -> None:
    """An hfrjax export with random weights and BatchNorm statistics far from their init."""
    from hfrjax.deploy.random_weights import random_export

    random_export(directory, name, kwargs, seed)


def _faces(n: int, size: int, channels: int) -> np.ndarray:
    """Rendered synthetic faces, aligned crops, uint8 [n, size, size, channels] (RGB / grey)."""
    from hfrjax.data.augment import luminance
    from hfrjax.data.synthetic import generation, presets

    spec = presets.preset_config("tiny").target
    out, i = [], 0
    while len(out) < n:
        _, images = generation.render_identity_images(spec, 0, 1, i, size)
        for _, img in images:
            if img.shape[-1] == 3 and channels == 1:
                img = luminance(img)[..., None]
            elif img.shape[-1] == 1 and channels == 3:
                img = np.repeat(img, 3, axis=-1)
            out.append(np.asarray(img, np.uint8))
        i += 1
    return np.stack(out[:n])


def _scene(face: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An unaligned image holding ``face`` (an aligned crop) scaled, rotated and shifted,
    and its five landmarks: the crop template's points under the same transform."""
    from hfrjax.data.align import warp_affine
    from hfrjax.data.occlusion import FaceTemplate

    size = face.shape[0]
    rng = np.random.default_rng(seed)
    angle, scale = np.deg2rad(12.0), 1.4
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = np.concatenate([rot, np.array([[40.0], [25.0]])], axis=1)
    canvas = int(round(size * 1.9))
    background = rng.integers(0, 256, (canvas, canvas, face.shape[-1]), np.uint8)
    warped = warp_affine(face, matrix, (canvas, canvas))
    mask = warp_affine(np.ones(face.shape[:2], np.float64), matrix, (canvas, canvas)) > 0.999
    scene = np.where(mask[..., None], warped, background).astype(np.uint8)
    points = np.asarray(FaceTemplate.for_size(size).points, np.float64)
    landmarks = points @ rot.T + matrix[:, 2]
    return scene, landmarks.astype(np.float32)


def _to_bgr(images: np.ndarray) -> np.ndarray:
    """What ``cv2.imread`` returns: BGR for colour, [H, W] for grey."""
    if images.shape[-1] == 1:
        return np.ascontiguousarray(images[..., 0])
    return np.ascontiguousarray(images[..., ::-1])


def prepare(models: list[tuple[str, Path]], workdir: Path) -> dict:
    """Exports each model to ONNX, embeds the test images with hfrjax and writes the request
    for the insightface side. ``models``: (label, hfrjax export directory)."""
    import jax

    import hfrjax
    from hfrjax.data.align import align_face
    from hfrjax.deploy.backends import load_model
    from hfrjax.deploy.onnx_export import export_onnx

    entries = []
    arrays = {}
    for i, (label, export_dir) in enumerate(models):
        onnx_path = workdir / f"{label}.onnx"
        export_onnx(export_dir, onnx_path)
        model = load_model(export_dir)
        size, channels = model.input_size, model.channels
        rng = np.random.default_rng(100 + i)
        faces = _faces(NUM_IMAGES, size, channels)
        noise = rng.integers(0, 256, faces.shape, np.uint8)
        scene, landmarks = _scene(faces[0], seed=i)
        hfrjax_crop = align_face(scene, landmarks, size)
        key = f"m{i}"
        arrays.update(
            {
                f"{key}_faces_bgr": _to_bgr(faces),
                f"{key}_noise_bgr": _to_bgr(noise),
                f"{key}_scene_bgr": _to_bgr(scene[None])[0],
                f"{key}_landmarks": landmarks,
                f"{key}_hfrjax_faces": model.embed(faces),
                f"{key}_hfrjax_noise": model.embed(noise),
                f"{key}_hfrjax_crop": hfrjax_crop,
                f"{key}_hfrjax_scene": model.embed(hfrjax_crop[None]),
            }
        )
        entries.append(
            {
                "label": label,
                "key": key,
                "onnx": str(onnx_path),
                "export": str(export_dir),
                "channels": channels,
                "size": size,
                "convention": model.convention.to_json(),
            }
        )
    request = {
        "models": entries,
        "arrays": str(workdir / "request.npz"),
        "lightcnn_preprocessing": LIGHTCNN_PREPROCESSING,
        "hfrjax": {"version": hfrjax.__version__, "jax": jax.__version__},
    }
    try:
        from importlib.metadata import version

        request["hfrjax"]["jax2onnx"] = version("jax2onnx")
    except Exception:  # pragma: no cover - metadata missing
        pass
    np.savez(workdir / "request.npz", **arrays)
    (workdir / "request.json").write_text(json.dumps(request, indent=1))
    return request


# ---------------------------------------------------------------------------------------------
# insightface side: imports numpy, OpenCV and insightface only.


def _loader_view(model) -> dict:
    """What insightface's loader decided about the file."""
    if model is None:
        return {"class": None}
    return {
        "class": type(model).__name__,
        "taskname": getattr(model, "taskname", None),
        "input_name": getattr(model, "input_name", None),
        "input_shape": [d if isinstance(d, int) else str(d) for d in model.input_shape],
        "input_size": list(model.input_size),
        "input_mean": float(model.input_mean),
        "input_std": float(model.input_std),
        "output_names": list(getattr(model, "output_names", [])),
        "output_shape": [d if isinstance(d, int) else str(d) for d in model.output_shape],
    }


def _face_analysis_embedding(recognition, image, landmarks):
    """``FaceAnalysis.get`` with the recognition model and a stand-in detector that returns
    the known landmarks (the package's detectors are downloads). Built without its
    ``__init__``, which insists on a detection model file; None if this insightface's
    ``FaceAnalysis`` keeps different state."""
    from insightface.app import FaceAnalysis

    class KnownFace:
        def detect(self, img, max_num=0, metric="default"):
            h, w = img.shape[:2]
            return np.array([[0, 0, w, h, 1.0]], np.float32), landmarks[None]

    app = object.__new__(FaceAnalysis)
    app.__dict__.update(
        models={"detection": KnownFace(), "recognition": recognition},
        det_model=KnownFace(),
        addons={},
        liveness_mode="normal",
    )
    try:
        faces = app.get(image)
    except (AttributeError, TypeError) as e:
        return None, f"{type(e).__name__}: {e}"
    return np.asarray(faces[0].embedding, np.float32)[None], None


def insightface_side(request: dict) -> tuple[dict, dict]:
    """Loads each ONNX file with insightface and runs it; returns (report, arrays)."""
    import cv2
    import insightface
    import onnxruntime
    from insightface.app.common import Face
    from insightface.model_zoo import get_model
    from insightface.utils import face_align

    data = np.load(request["arrays"])
    report = {
        "versions": {
            "insightface": insightface.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opencv": cv2.__version__,
        },
        "models": {},
    }
    out = {}
    for entry in request["models"]:
        key, path = entry["key"], entry["onnx"]
        rep = report["models"][entry["label"]] = {}
        default = get_model(path)
        rep["default_loader"] = _loader_view(default)
        model = default
        if entry["channels"] == 1:
            try:
                model = get_model(
                    path,
                    model_task="recognition",
                    model_metadata={"preprocessing": request["lightcnn_preprocessing"]},
                )
                rep["explicit_loader"] = _loader_view(model)
            except (TypeError, ValueError) as e:  # insightface < 2.0: no explicit route.
                rep["explicit_loader"] = {"error": f"{type(e).__name__}: {e}"}
                model = None
        if model is None or default is None:
            continue
        model.prepare(ctx_id=-1)
        for which in ("faces", "noise"):
            images = list(data[f"{key}_{which}_bgr"])
            out[f"{key}_{which}_batch"] = model.get_feat(images)
            out[f"{key}_{which}_single"] = np.concatenate([model.get_feat(im) for im in images])
            if which == "faces" and model is not default:
                out[f"{key}_{which}_default"] = default.get_feat(images)
            if which == "faces" and entry["channels"] == 3:  # RGB fed where BGR is due.
                out[f"{key}_{which}_swapped"] = model.get_feat([im[..., ::-1] for im in images])
        scene, landmarks = data[f"{key}_scene_bgr"], data[f"{key}_landmarks"]
        crop = face_align.norm_crop(scene, landmark=landmarks, image_size=model.input_size[0])
        out[f"{key}_insightface_crop"] = crop
        face = Face(bbox=np.array([0, 0, 1, 1], np.float32), kps=landmarks, det_score=1.0)
        out[f"{key}_get"] = np.asarray(model.get(scene, face), np.float32)[None]
        emb, error = _face_analysis_embedding(model, scene, landmarks)
        if emb is not None:
            out[f"{key}_face_analysis"] = emb
        rep["face_analysis_error"] = error
    return report, out


# ---------------------------------------------------------------------------------------------
# Comparison.


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(_normalized(a) - _normalized(b)).max())


def compare(request: dict, report: dict, result: dict) -> tuple[dict, bool]:
    """Per-model checks; returns (checks, all passed)."""
    from hfrjax.deploy.backends import load_model

    data = np.load(request["arrays"])
    checks, ok = {}, True
    for entry in request["models"]:
        key, label = entry["key"], entry["label"]
        conv = entry["convention"]
        rep = report["models"][label]
        c = checks[label] = {}
        loader = rep.get("explicit_loader", rep["default_loader"])
        default = rep["default_loader"]
        c["routed_to_arcface"] = default["class"] == "ArcFaceONNX" and (
            default["taskname"] == "recognition"
        )
        c["input_name"] = loader.get("input_name") == "input.1"
        c["input_shape"] = loader.get("input_shape") == [
            "N",
            entry["channels"],
            entry["size"],
            entry["size"],
        ]
        c["output_shape"] = loader.get("output_shape", [None, None])[1] == (
            data[f"{key}_hfrjax_faces"].shape[1]
        ) and isinstance(loader.get("output_shape", [0])[0], str)
        c["mean_std"] = (loader.get("input_mean"), loader.get("input_std")) == (
            conv["mean"],
            conv["std"],
        )
        if entry["channels"] == 1:
            c["default_loader_mean_std_(known_mismatch)"] = (
                default["input_mean"],
                default["input_std"],
            )
        if f"{key}_faces_batch" not in result:
            c["ran"] = False
            ok = False
            continue
        for which in ("faces", "noise"):
            want = data[f"{key}_hfrjax_{which}"]
            c[f"get_feat_{which}_batch{NUM_IMAGES}_maxabs"] = _diff(
                result[f"{key}_{which}_batch"], want
            )
            c[f"get_feat_{which}_batch1_maxabs"] = _diff(result[f"{key}_{which}_single"], want)
        if f"{key}_faces_swapped" in result:  # The comparison sees the channel order.
            c["channel_order_matters"] = (
                _diff(result[f"{key}_faces_swapped"], data[f"{key}_hfrjax_faces"]) > 100 * TOLERANCE
            )
        if f"{key}_faces_default" in result:
            c["default_loader_faces_maxabs_(known_mismatch)"] = _diff(
                result[f"{key}_faces_default"], data[f"{key}_hfrjax_faces"]
            )
        # get(img, face) / FaceAnalysis: insightface's own crop, embedded by hfrjax.
        crop = np.asarray(result[f"{key}_insightface_crop"])
        crop = crop[..., None] if crop.ndim == 2 else crop[..., ::-1]  # BGR -> RGB
        flax = load_model(entry["export"]).embed(np.ascontiguousarray(crop)[None])
        c["get_face_maxabs"] = _diff(result[f"{key}_get"], flax)
        if f"{key}_face_analysis" in result:
            c["face_analysis_maxabs"] = _diff(result[f"{key}_face_analysis"], flax)
        else:
            c["face_analysis_maxabs"] = None
            c["face_analysis_error"] = rep.get("face_analysis_error")
        # Alignment: hfrjax's 5-point crop vs insightface's norm_crop (informational).
        ours = data[f"{key}_hfrjax_crop"].astype(np.int64)
        c["alignment_max_grey_levels_(info)"] = int(np.abs(ours - crop.astype(np.int64)).max())
        c["alignment_embedding_1-cosine_(info)"] = float(
            1.0 - (_normalized(data[f"{key}_hfrjax_scene"]) * _normalized(flax)).sum()
        )
        passed = all(v for k, v in c.items() if isinstance(v, bool)) and all(
            v is None or v <= TOLERANCE for k, v in c.items() if k.endswith("_maxabs")
        )
        c["passed"] = passed
        ok = ok and passed
    return checks, ok


def _run_insightface(request_path: Path, python: str | None) -> tuple[dict, dict]:
    if python is None:
        return insightface_side(json.loads(request_path.read_text()))
    result_path = request_path.with_name("result.json")
    subprocess.run(
        [
            python,
            str(Path(__file__).absolute()),
            "--insightface_side",
            str(request_path),
            "--result",
            str(result_path),
        ],
        check=True,
    )
    report = json.loads(result_path.read_text())
    arrays = dict(np.load(result_path.with_suffix(".npz")))
    return report, arrays


def _print_verdict(request: dict, report: dict, checks: dict, ok: bool) -> None:
    v = report["versions"]
    print(
        f"insightface {v['insightface']} (onnxruntime {v['onnxruntime']}, OpenCV {v['opencv']})"
        f" vs hfrjax {request['hfrjax']['version']} (jax {request['hfrjax']['jax']}, jax2onnx "
        f"{request['hfrjax'].get('jax2onnx', '?')})"
    )
    for label, c in checks.items():
        loader = (
            report["models"][label].get("explicit_loader")
            or report["models"][label]["default_loader"]
        )
        print(f"\n{label}: {'PASS' if c.get('passed') else 'FAIL'}")
        print(
            f"  loader: {loader.get('class')} input {loader.get('input_name')!r} "
            f"{loader.get('input_shape')} mean {loader.get('input_mean')} std "
            f"{loader.get('input_std')} output {loader.get('output_shape')}"
        )
        for k, val in c.items():
            if k != "passed":
                print(f"  {k}: {val:.3g}" if isinstance(val, float) else f"  {k}: {val}")
    print(
        f"\nVERDICT: {'PASS' if ok else 'FAIL'} (max |diff| of L2-normalised embeddings "
        f"<= {TOLERANCE:g})"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", action="append", default=[], help="hfrjax export directory")
    p.add_argument("--models", default=",".join(SMALL_MODELS), help="small random models to check")
    p.add_argument("--insightface_python", default=None, help="interpreter with insightface")
    p.add_argument("--workdir", default=None, help="where the files go (default: a temp dir)")
    p.add_argument("--json", default=None, help="write the full report here")
    p.add_argument("--insightface_side", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.insightface_side:  # The half that runs in insightface's environment.
        report, arrays = insightface_side(json.loads(Path(args.insightface_side).read_text()))
        result = Path(args.result)
        np.savez(result.with_suffix(".npz"), **arrays)
        result.write_text(json.dumps(report, indent=1))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        models = [(Path(d).name or f"export{i}", Path(d)) for i, d in enumerate(args.export)]
        if not args.export:
            for i, name in enumerate(n for n in args.models.split(",") if n):
                if name not in SMALL_MODELS:
                    p.error(f"--models: {name!r} is not one of {sorted(SMALL_MODELS)}")
                _random_export(workdir / name, name, SMALL_MODELS[name], seed=i)
                models.append((name, workdir / name))
        request = prepare(models, workdir)
        report, result = _run_insightface(workdir / "request.json", args.insightface_python)
        checks, ok = compare(request, report, result)
        _print_verdict(request, report, checks, ok)
        if args.json:
            Path(args.json).write_text(
                json.dumps({"request": request, "insightface": report, "checks": checks}, indent=1)
            )
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    sys.exit(main())
