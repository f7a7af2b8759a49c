"""ONNX and serialized-JAX exports: parity with the Flax model (onnxruntime / a fresh process
without hfrjax), InsightFace's interface conventions, and the export command."""

import functools
import json
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")

from hfrjax import load_embedder  # noqa: E402
from hfrjax.cli import main as cli_main  # noqa: E402
from hfrjax.deploy import conventions  # noqa: E402
from hfrjax.deploy.backends import load_model  # noqa: E402
from hfrjax.deploy.flax_source import FlaxSource  # noqa: E402
from hfrjax.deploy.jax_export import export_jax, sidecar_path  # noqa: E402
from hfrjax.deploy.onnx_export import (  # noqa: E402
    INPUT_NAME,
    OUTPUT_NAME,
    OnnxExportError,
    export_onnx,
)
from hfrjax.models import register_model  # noqa: E402
from hfrjax.train.export import export_embedder  # noqa: E402

# Small widths, published input sizes (so the face renders are real 112 / 128 crops).
MODELS = {
    "iresnet": dict(layers=(1, 2, 1, 1), base_width=8, embedding_dim=16, input_size=112),
    "mobilefacenet": dict(blocks=(1, 2, 2, 1), width_mult=0.125, embedding_dim=16, input_size=48),
    "lightcnn29v2": dict(layers=(1, 1, 1, 1), channels=(4, 8, 8, 8, 8), embedding_dim=16),
}


# Random weights *and* BN statistics far from their init (mean 0 / var 1 would hide a wrong BN
# mapping), drawn with numpy on eval_shape: the library's own, also used by the insightface check.
from hfrjax.deploy.random_weights import random_export as make_export  # noqa: E402
from hfrjax.deploy.random_weights import random_variables as randomized_variables  # noqa: E402


def face_crops(n, size, channels):
    """Rendered synthetic faces (VIS colour / NIR grey), uint8 [n, size, size, channels]."""
    from hfrjax.data.augment import luminance
    from hfrjax.data.synthetic import generation, presets

    spec = presets.preset_config("tiny").target
    out = []
    i = 0
    while len(out) < n:
        _, images = generation.render_identity_images(spec, 0, 1, i, size)
        for _, img in images:
            if img.shape[-1] == 3 and channels == 1:
                img = luminance(img)[..., None]
            elif img.shape[-1] == 1 and channels == 3:
                img = np.repeat(img, 3, axis=-1)
            out.append(img)
        i += 1
    return np.stack(out[:n]).astype(np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each backbone as a Flax export plus its ONNX and serialized-JAX files."""
    root = tmp_path_factory.mktemp("deploy_export")
    out = {}
    for i, (name, kw) in enumerate(MODELS.items()):
        d = root / name
        model, variables = make_export(d, name, kw, seed=i)
        export_onnx(d, root / f"{name}.onnx")
        if name == "iresnet":  # The others are exported by the (slow) all-formats test.
            export_jax(d, root / f"{name}.jaxexport")
        apply = jax.jit(functools.partial(model.apply, train=False))
        out[name] = dict(dir=d, model=model, variables=variables, root=root, apply=apply)
    return out


def flax_raw(entry, images):
    """The Flax backbone's un-normalised embedding of uint8 images, as the library defines
    the model input ((x - 127.5) / 127.5 for every hfrjax backbone)."""
    x = (images.astype(np.float32) - 127.5) / 127.5
    return np.asarray(entry["apply"](entry["variables"], jnp.asarray(x)))


def onnx_input(name, images):
    """The documented ONNX input: NCHW float32; InsightFace (x - 127.5) / 127.5, LightCNN x/255."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2)
    return x / 255.0 if name.startswith("lightcnn") else (x - 127.5) / 127.5


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_matches_flax_on_random_and_face_inputs(exported, name):
    e = exported[name]
    m = e["model"]
    sess = ort.InferenceSession(str(e["root"] / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    faces = face_crops(7, m.input_size, m.in_channels)
    for batch in (1, 7):
        rand = rng.integers(0, 256, (batch, m.input_size, m.input_size, m.in_channels), np.uint8)
        for images in (rand, faces[:batch]):
            want = flax_raw(e, images)
            got = sess.run(None, {INPUT_NAME: onnx_input(name, images)})[0]
            assert got.shape == (batch, 16)
            assert np.abs(got - want).max() <= 1e-4
            assert np.abs(want).max() > 1e-2  # Not a degenerate (all-zero) comparison.


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_interface_follows_insightface_conventions(exported, name):
    e = exported[name]
    m = e["model"]
    proto = onnx.load(str(e["root"] / f"{name}.onnx"))
    (inp,), (out,) = proto.graph.input, proto.graph.output

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    channels = 1 if name.startswith("lightcnn") else 3
    assert inp.name == INPUT_NAME and out.name == OUTPUT_NAME
    assert dims(inp) == ["N", channels, m.input_size, m.input_size]
    assert isinstance(dims(inp)[0], str)  # Dynamic batch.
    assert dims(out) == ["N", 16]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[conventions.METADATA_KEY])
    want_scale = conventions.UNIT if channels == 1 else conventions.INSIGHTFACE
    assert meta["input"] == {
        "layout": "NCHW",
        "channels": channels,
        "size": m.input_size,
        "pixel_scale": want_scale,
        "mean": 0.0 if channels == 1 else 127.5,
        "std": 255.0 if channels == 1 else 127.5,
        "name": INPUT_NAME,
    }
    assert meta["output"] == {"embedding_dim": 16, "normalized": False, "name": OUTPUT_NAME}
    # insightface's ArcFaceONNX feeds raw pixels to graphs whose first 8 nodes are named
    # Sub*/Mul* (MXNet models); ours must not look like one.
    first = [n.name for n in proto.graph.node[:8]]
    assert conventions.infer_convention(channels, m.input_size, first).pixel_scale != "raw"
    ops = {n.op_type for n in proto.graph.node}
    if channels == 3:  # hfrjax's per-channel PReLU lowers to the native op (plugin).
        assert "PRelu" in ops and "Where" not in ops
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version <= 8  # Loadable by onnxruntime releases of the model-zoo era.


def test_lightcnn_onnx_takes_unit_range_grey(exported):
    """[0, 1] in the ONNX graph == the hfrjax model on (x - 127.5) / 127.5 of the same pixels."""
    e = exported["lightcnn29v2"]
    images = face_crops(3, 128, 1)
    sess = ort.InferenceSession(str(e["root"] / "lightcnn29v2.onnx"))
    x01 = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    got = sess.run(None, {INPUT_NAME: x01})[0]
    np.testing.assert_allclose(got, flax_raw(e, images), atol=1e-4)
    # Feeding [-1, 1] instead is a different (wrong) input: the convention matters.
    wrong = sess.run(None, {INPUT_NAME: x01 * 2 - 1})[0]
    assert np.abs(wrong - got).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_all_formats_agree_through_load_model(exported, name):
    e = exported[name]
    m = e["model"]
    if not (e["root"] / f"{name}.jaxexport").exists():
        export_jax(e["dir"], e["root"] / f"{name}.jaxexport")
    images = face_crops(5, m.input_size, m.in_channels)
    ref = load_embedder(e["dir"])(images)  # The library's own Flax embedder.
    for path in (e["dir"], e["root"] / f"{name}.onnx", e["root"] / f"{name}.jaxexport"):
        model = load_model(path)
        assert (model.input_size, model.channels, model.embedding_dim) == (
            m.input_size,
            m.in_channels,
            16,
        )
        np.testing.assert_allclose(model.embed(images), ref, atol=1e-5)


def test_serialized_jax_runs_in_a_fresh_process_without_hfrjax(exported, tmp_path):
    e = exported["iresnet"]
    path = e["root"] / "iresnet.jaxexport"
    x = onnx_input("iresnet", face_crops(7, 112, 3))
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import jax
        exported = jax.export.deserialize(bytearray(open({str(path)!r}, "rb").read()))
        x = np.load({str(tmp_path / "x.npy")!r})
        outs = [np.asarray(exported.call(x[:b])) for b in (1, 7)]
        np.save({str(tmp_path / "y1.npy")!r}, outs[0])
        np.save({str(tmp_path / "y7.npy")!r}, outs[1])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("hfrjax", "flax"))
        print("MODULES", loaded)
        print("SHAPE", exported.in_avals[0].shape)
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "MODULES []" in res.stdout
    assert "SHAPE (N, 3, 112, 112)" in res.stdout  # Symbolic batch dimension.
    want = flax_raw(e, face_crops(7, 112, 3))
    np.testing.assert_allclose(np.load(tmp_path / "y1.npy"), want[:1], atol=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "y7.npy"), want, atol=1e-4)
    side = json.loads(sidecar_path(path).read_text())
    assert side["input"]["pixel_scale"] == "insightface" and side["jax_version"] == jax.__version__
    assert "6 months" in side["compatibility"]


def test_export_command_checks_parity_and_carries_calibration(exported, tmp_path, capsys):
    e = exported["lightcnn29v2"]
    from hfrjax.deploy.backends import load_model as load
    from hfrjax.deploy.calibration import load_threshold, save_calibration

    flax_model = load(e["dir"])
    record = {
        "model_fingerprint": flax_model.fingerprint(),
        "thresholds": [{"far": 1e-3, "threshold": 0.42, "tar": 0.9, "achieved_far": 1e-3}],
    }
    save_calibration(e["dir"], record)
    try:
        out = tmp_path / "m.onnx"
        assert cli_main(["export", str(e["dir"]), "--format", "onnx", "--out", str(out)]) == 0
        text = capsys.readouterr().out
        assert "parity: max |onnx - flax|" in text and "calibration carried over" in text
        assert load_threshold(load(out))[0] == pytest.approx(0.42)
    finally:
        (e["dir"] / "calibration.json").unlink()


def test_flax_source_portable_backbone_uses_plain_grouped_conv(exported):
    src = FlaxSource.from_export(exported["mobilefacenet"]["dir"])
    assert src.backbone(portable=True).grouped_impl == "conv"
    assert src.convention() == conventions.InputConvention(3, 48, "insightface")


class _HardSwishNet(nn.Module):
    """A backbone using an operator jax2onnx emits only at opset >= 14 (HardSwish)."""

    input_size: int = 16
    in_channels: int = 3
    feature_map: bool = False

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.hard_swish(nn.Conv(4, (3, 3))(x))
        return x if self.feature_map else nn.Dense(8)(x.reshape(x.shape[0], -1))


register_model("test_deploy_hardswish")(_HardSwishNet)


def test_opset_rises_to_what_the_graph_needs_and_feature_maps_are_refused(tmp_path):
    model = _HardSwishNet()
    v = randomized_variables(model, 0)
    export_embedder(tmp_path / "hs", model_cfg={"name": "test_deploy_hardswish", "kwargs": {}},
                    params=v["params"], batch_stats={})  # fmt: skip
    path = export_onnx(tmp_path / "hs", tmp_path / "hs.onnx")
    opset = {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""]
    assert opset > 13
    images = face_crops(2, 16, 3)
    want = load_model(tmp_path / "hs").embed_raw(images)
    np.testing.assert_allclose(load_model(path).embed_raw(images), want, atol=1e-5)
    with pytest.raises(OnnxExportError, match="HardSwish with domain_version of 13"):
        export_onnx(tmp_path / "hs", tmp_path / "hs13.onnx", opset=13)
    cfg = {"name": "test_deploy_hardswish", "kwargs": {"feature_map": True}}
    export_embedder(tmp_path / "fm", model_cfg=cfg, params=v["params"], batch_stats={})
    with pytest.raises(ValueError, match=r"not an \[N, D\] embedding"):
        export_onnx(tmp_path / "fm", tmp_path / "fm.onnx")
