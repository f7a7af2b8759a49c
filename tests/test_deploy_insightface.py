"""hfrjax's ONNX files as the ``insightface`` package reads them.

The default tests need no insightface: `insightface_reads` below restates, from the source of
insightface 2.1 (``insightface/model_zoo/model_zoo.py``: ``ModelRouter.get_model``;
``insightface/model_zoo/arcface_onnx.py``: ``ArcFaceONNX.__init__`` and ``get_feat``; the same
logic as in 0.7.3), every property of an ONNX file its recognition loader looks at, and
``get_feat``'s preprocessing (``cv2.dnn.blobFromImages`` with ``swapRB=True``) in numpy.
The last test runs ``launch/check_insightface.py`` against the real package when it is
importable here, or in the interpreter named by ``HFRJAX_INSIGHTFACE_PYTHON``.
"""

import functools
import importlib.util
import logging
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from hfrjax.deploy.random_weights import random_export

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")

from hfrjax.deploy import conventions  # noqa: E402
from hfrjax.deploy.onnx_export import _rename_sniffed_nodes, export_onnx  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Published input sizes (what insightface routes), tiny widths.
MODELS = {
    "iresnet": dict(layers=(1, 1, 1, 1), base_width=8, embedding_dim=16, input_size=112),
    "mobilefacenet": dict(blocks=(1, 1, 1, 1), width_mult=0.125, embedding_dim=16, input_size=112),
    "lightcnn29v2": dict(layers=(1, 1, 1, 1), channels=(4, 8, 8, 8, 8), embedding_dim=16),
}


def insightface_reads(path):
    """What insightface's ``model_zoo.get_model(path)`` decides about an ONNX file, restated:

    * class, from the onnxruntime session's interface: >= 5 outputs is a detector; input
      192x192 a landmark model; 96x96 an attribute model; two inputs at 128x128 the face
      swapper; otherwise a square input side >= 112 and divisible by 16 is a recognition
      model (ArcFaceONNX), anything else is not loaded (None);
    * ArcFaceONNX's pixel normalisation, from the ``name`` of the graph's first 8 nodes: if
      one starts with "Sub" or "_minus" and one with "Mul" or "_mul" it is an MXNet model
      that normalises itself (mean 0, std 1), else mean = std = 127.5;
    * input name / shape from the session's first input, input size as (W, H), exactly one
      output whose name is fetched.
    """
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ins, outs = sess.get_inputs(), sess.get_outputs()
    shape = ins[0].shape
    h, w = shape[2], shape[3]
    if len(outs) >= 5:
        cls = "detection"
    elif (h, w) == (192, 192):
        cls = "landmark"
    elif (h, w) == (96, 96):
        cls = "genderage"
    elif len(ins) == 2 and (h, w) == (128, 128):
        cls = "inswapper"
    elif h == w and h >= 112 and h % 16 == 0:
        cls = "recognition"
    else:
        cls = None
    names = [n.name for n in onnx.load(str(path)).graph.node[:8]]
    sub = any(n.startswith("Sub") or n.startswith("_minus") for n in names)
    mul = any(n.startswith("Mul") or n.startswith("_mul") for n in names)
    mean, std = (0.0, 1.0) if sub and mul else (127.5, 127.5)
    return dict(
        cls=cls,
        session=sess,
        input_name=ins[0].name,
        input_shape=shape,
        input_size=(w, h),
        input_type=ins[0].type,
        outputs=[(o.name, o.shape) for o in outs],
        mean=mean,
        std=std,
    )


def get_feat(reads, images):
    """ArcFaceONNX.get_feat on a list of cv2 images (BGR [H, W, 3] or grey [H, W]):
    blobFromImages(imgs, 1/std, size, (mean,)*3, swapRB=True) -> NCHW, RGB for colour."""
    x = np.stack([np.asarray(im, np.float32) for im in images])
    if x.ndim == 3:
        x = x[..., None]
    x = (x[..., ::-1] - np.float32(reads["mean"])) * np.float32(1.0 / reads["std"])
    blob = np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32)
    name = reads["outputs"][0][0]
    return reads["session"].run([name], {reads["input_name"]: blob})[0]


def randomized_export(directory, name, kwargs, seed):
    model, v = random_export(directory, name, kwargs, seed)
    apply = jax.jit(functools.partial(model.apply, train=False))
    return lambda rgb: np.asarray(apply(v, (rgb.astype(np.float32) - 127.5) / 127.5))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface")
    out = {}
    for i, (name, kw) in enumerate(MODELS.items()):
        flax = randomized_export(root / name, name, kw, seed=i)
        export_onnx(root / name, root / f"{name}.onnx")
        out[name] = dict(dir=root / name, onnx=root / f"{name}.onnx", flax=flax)
    return out


def normalized(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("name", ["iresnet", "mobilefacenet"])
def test_insightface_loads_colour_models_as_arcface_with_its_default_normalisation(exported, name):
    e = exported[name]
    reads = insightface_reads(e["onnx"])
    assert reads["cls"] == "recognition"
    assert (reads["mean"], reads["std"]) == (127.5, 127.5)
    assert reads["input_name"] == "input.1" and reads["input_type"] == "tensor(float)"
    assert reads["input_shape"] == ["N", 3, 112, 112] and reads["input_size"] == (112, 112)
    assert reads["outputs"] == [("embedding", ["N", 16])]
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (7, 112, 112, 3), np.uint8)
    rgb[:, :, :56, 0] = 255  # A strongly coloured half: a channel-order slip shows.
    bgr = list(rgb[..., ::-1])
    want = normalized(e["flax"](rgb))
    for batch in (bgr[:1], bgr):  # get_feat(img) and get_feat([imgs]): dynamic batch.
        got = normalized(get_feat(reads, batch))
        assert np.abs(got - want[: len(batch)]).max() <= 1e-4
    # Feeding RGB where insightface expects cv2's BGR gives other embeddings: the check sees
    # the channel order.
    swapped = normalized(get_feat(reads, list(rgb)))
    assert np.abs(swapped - want).max() > 1e-2


def test_lightcnn_needs_insightface_explicit_preprocessing(exported):
    """insightface's default loader gives every 1-channel 128 model mean = std = 127.5; our
    LightCNN files take [0, 1] (mean 0, std 255), which insightface >= 2.0 takes with
    ``get_model(path, model_task="recognition", model_metadata={"preprocessing": ...})``."""
    e = exported["lightcnn29v2"]
    reads = insightface_reads(e["onnx"])
    assert reads["cls"] == "recognition" and reads["input_shape"] == ["N", 1, 128, 128]
    assert (reads["mean"], reads["std"]) == (127.5, 127.5)
    grey = np.random.default_rng(4).integers(0, 256, (3, 128, 128), np.uint8)
    want = normalized(e["flax"](grey[..., None]))
    default = normalized(get_feat(reads, list(grey)))
    assert np.abs(default - want).max() > 1e-2  # The default route is wrong for LightCNN.
    explicit = dict(reads, mean=0.0, std=255.0)
    assert np.abs(normalized(get_feat(explicit, list(grey))) - want).max() <= 1e-4


def test_graph_never_looks_like_an_mxnet_model_to_insightface(exported, tmp_path):
    """LightCNN's graph starts with Mul and Sub ops ([0, 1] -> [-1, 1]); insightface decides
    by node *names*, which the exporter keeps clear of Sub*/Mul*."""
    proto = onnx.load(str(exported["lightcnn29v2"]["onnx"]))
    first = proto.graph.node[:8]
    assert {"Mul", "Sub"} <= {n.op_type for n in first}
    for node in first:  # What a converter naming nodes after their op type would write.
        node.name = f"{node.op_type}_{node.name}"
    path = tmp_path / "named.onnx"
    onnx.save(proto, str(path))
    assert (insightface_reads(path)["mean"], insightface_reads(path)["std"]) == (0.0, 1.0)
    _rename_sniffed_nodes(proto.graph)
    onnx.save(proto, str(path))
    assert (insightface_reads(path)["mean"], insightface_reads(path)["std"]) == (127.5, 127.5)


def test_routing_helper_matches_insightface_and_export_warns(exported, tmp_path, caplog):
    for shape in [
        (1, 1, 112, 112),
        (1, 1, 128, 128),
        (1, 1, 48, 48),
        (1, 1, 32, 32),
        (1, 1, 224, 224),
        (1, 1, 120, 120),
        (1, 1, 96, 96),
        (1, 1, 192, 192),
        (2, 1, 128, 128),
        (1, 5, 112, 112),
        (1, 1, 112, 128),
    ]:
        ni, no, h, w = shape
        # The same interface built as a graph and read back through onnxruntime.
        x = [
            onnx.helper.make_tensor_value_info(f"x{i}", onnx.TensorProto.FLOAT, ["N", 3, h, w])
            for i in range(ni)
        ]
        y = [
            onnx.helper.make_tensor_value_info(f"y{i}", onnx.TensorProto.FLOAT, None)
            for i in range(no)
        ]
        nodes = [onnx.helper.make_node("Identity", ["x0"], [f"y{i}"]) for i in range(no)]
        graph = onnx.helper.make_graph(nodes, "g", x, y)
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
        model.ir_version = 7
        path = tmp_path / "iface.onnx"
        onnx.save(model, str(path))
        assert conventions.insightface_task(ni, no, h, w) == insightface_reads(path)["cls"], shape
    kw = dict(MODELS["mobilefacenet"], input_size=48)
    randomized_export(tmp_path / "mfn48", "mobilefacenet", kw, seed=0)
    with caplog.at_level(logging.WARNING, logger="hfrjax.deploy.onnx_export"):
        export_onnx(tmp_path / "mfn48", tmp_path / "mfn48.onnx")
    assert "would load it as nothing" in caplog.text


def _load_check_script():
    spec = importlib.util.spec_from_file_location(
        "check_insightface", REPO / "launch" / "check_insightface.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


INSIGHTFACE_PYTHON = os.environ.get("HFRJAX_INSIGHTFACE_PYTHON")


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("insightface") is None and not INSIGHTFACE_PYTHON,
    reason="insightface is not installed (or set HFRJAX_INSIGHTFACE_PYTHON to an interpreter "
    "that has it)",
)
def test_real_insightface_runs_our_exports(exported, tmp_path):
    check = _load_check_script()
    models = [(name, e["dir"]) for name, e in exported.items()]
    request = check.prepare(models, tmp_path)
    python = None if importlib.util.find_spec("insightface") else INSIGHTFACE_PYTHON
    report, result = check._run_insightface(tmp_path / "request.json", python)
    checks, ok = check.compare(request, report, result)
    assert ok, checks
    for name in ("iresnet", "mobilefacenet"):
        c = checks[name]
        assert c["get_feat_faces_batch7_maxabs"] <= 1e-4 and c["channel_order_matters"]
        assert report["models"][name]["default_loader"]["input_mean"] == 127.5
    assert report["models"]["lightcnn29v2"]["explicit_loader"]["input_std"] == 255.0
