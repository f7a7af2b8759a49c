"""Import of InsightFace model-zoo ONNX IResNets (exported with torch as arcface_torch's
torch2onnx.py does) into the Flax IResNet, against the PyTorch model itself."""

import functools

import jax
import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import onnx  # noqa: E402

from hfrjax import load_embedder  # noqa: E402
from hfrjax.cli import main as cli_main  # noqa: E402
from hfrjax.deploy.backends import load_model  # noqa: E402
from hfrjax.deploy.onnx_import import UnsupportedGraphError, import_onnx  # noqa: E402
from hfrjax.models import dummy_input, get_model  # noqa: E402
from hfrjax.models.torch_reference import (  # noqa: E402
    TorchIResNet,
    TorchMobileFaceNet,
    randomize_torch,
)


def torch2onnx(net, path, size, *, opset=11, dynamo=False):
    """What arcface_torch's torch2onnx.py does: export with a fixed batch of 1, input "data",
    opset 11, then mark the batch dimension symbolic ('None')."""
    net.eval()
    x = torch.randn(1, 3, size, size)
    kwargs = dict(input_names=["data"], opset_version=opset, dynamo=dynamo)
    if not dynamo:
        kwargs["keep_initializers_as_inputs"] = False
    with torch.no_grad():
        torch.onnx.export(net, x, str(path), **kwargs)
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "None"
    onnx.save(model, str(path))
    return path


def face_batch(n, size, seed=0):
    """Rendered synthetic faces (uint8 NHWC)."""
    from hfrjax.data.synthetic import generation, presets

    spec = presets.preset_config("tiny").target
    out, i = [], 0
    while len(out) < n:
        _, images = generation.render_identity_images(spec, seed, 1, i, size)
        out += [img if img.shape[-1] == 3 else np.repeat(img, 3, -1) for _, img in images]
        i += 1
    return np.stack(out[:n])


def torch_embed(net, images):
    x = (images.astype(np.float32) - 127.5) / 127.5
    with torch.no_grad():
        return net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.fixture(scope="module")
def small_iresnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy_import")
    net = randomize_torch(TorchIResNet((1, 2, 1, 1), width=8, num_features=16, input_size=112), 3)
    path = torch2onnx(net, root / "r_tiny.onnx", 112)
    out, report = import_onnx(path, root / "imported")
    return net, path, out, report


def test_import_matches_torch_and_onnxruntime(small_iresnet):
    net, path, out, report = small_iresnet
    model = load_model(out)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for b in (1, 7):
        for images in (rng.integers(0, 256, (b, 112, 112, 3), np.uint8), face_batch(b, 112)):
            got = model.embed_raw(images)
            want = torch_embed(net, images)
            assert np.abs(want).max() > 1.0  # Non-trivial embeddings.
            assert np.abs(got - want).max() <= 1e-4
            x = ((images.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
            assert np.abs(got - sess.run(None, {"data": x})[0]).max() <= 1e-4
    # The exporter folded every Conv -> BN pair (stem, 2 per block, downsample convs).
    assert report["folded_batchnorms"] > 0 and report["opset"] == 11
    assert report["input_name"] == "data" and report["parity_max_abs"] <= 1e-4


def test_import_is_a_loadable_init_from_export(small_iresnet):
    """model.json names the architecture; the weights fit the registered model's tree."""
    net, _, out, report = small_iresnet
    emb = load_embedder(out)
    assert emb.meta["model"] == {
        "name": "iresnet",
        "kwargs": {
            "layers": [1, 2, 1, 1],
            "base_width": 8,
            "embedding_dim": 16,
            "input_size": 112,
            "in_channels": 3,
        },
    }
    assert emb.meta["imported_from"]["sha256"] == report["sha256"]
    model = get_model(emb.meta["model"]["name"], **emb.meta["model"]["kwargs"])
    template = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), dummy_input(model)
    )
    got = {"params": emb.params, "batch_stats": emb.batch_stats}
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(dict(template))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(dict(template))):
        assert a.shape == b.shape
    # Un-folded BatchNorms (bn1 of each block, bn2) keep the torch running statistics.
    np.testing.assert_allclose(
        np.asarray(emb.batch_stats["layer2_0"]["bn1"]["var"]),
        net.layer2[0].bn1.running_var.numpy(),
        rtol=1e-6,
    )


@pytest.mark.slow
def test_published_depth_is_named_and_matches(tmp_path):
    net = randomize_torch(TorchIResNet((2, 2, 2, 2), width=4, num_features=8, input_size=16), 1)
    out, _ = import_onnx(torch2onnx(net, tmp_path / "r18.onnx", 16), tmp_path / "ir18")
    meta = load_embedder(out).meta["model"]
    assert meta["name"] == "ir18" and "layers" not in meta["kwargs"]
    images = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), np.uint8)
    np.testing.assert_allclose(
        load_model(out).embed_raw(images), torch_embed(net, images), atol=1e-4
    )


@pytest.mark.slow
def test_dynamo_exporter_graph_imports(tmp_path):
    """torch's newer exporter: BN folded into convs *and* features BN into the Gemm,
    Reshape instead of Flatten, PReLU slopes [1, C, 1, 1]."""
    pytest.importorskip("onnxscript")
    net = randomize_torch(TorchIResNet((1, 1, 2, 1), width=8, num_features=16, input_size=32), 5)
    path = torch2onnx(net, tmp_path / "dyn.onnx", 32, opset=18, dynamo=True)
    out, _ = import_onnx(path, tmp_path / "dyn")
    images = face_batch(4, 32)
    got = load_model(out).embed_raw(images)
    np.testing.assert_allclose(got, torch_embed(net, images), atol=1e-4)


class _MXNetStyle(torch.nn.Module):
    """An IResNet whose graph normalises pixels itself (Sub, Mul), as MXNet-era models do."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x - 127.5) * 0.0078125)


class _Normalized(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.nn.functional.normalize(self.net(x), dim=1)


def _tiny():
    return randomize_torch(TorchIResNet((1, 1, 1, 1), width=4, num_features=8, input_size=16), 2)


@pytest.mark.parametrize(
    "make, op",
    [
        (lambda: TorchMobileFaceNet(num_features=8, blocks=(1, 1, 1, 1)), "Conv"),
        (lambda: _MXNetStyle(_tiny()), "Sub"),
        (lambda: _Normalized(_tiny()), "ReduceL2"),
    ],
    ids=["mobilefacenet", "mxnet_preprocessing", "l2_normalized_output"],
)
def test_other_graphs_are_refused_naming_the_first_unsupported_node(tmp_path, make, op):
    size = 112 if op == "Conv" else 16
    path = torch2onnx(make(), tmp_path / "other.onnx", size)
    model = onnx.load(str(path))
    with pytest.raises(UnsupportedGraphError) as err:
        import_onnx(path, tmp_path / "out")
    msg = str(err.value)
    assert f"({op})" in msg and "is not part of an arcface_torch IResNet" in msg
    names = [n.name for n in model.graph.node]
    named = [n for n in names if f"{n!r} ({op})" in msg]
    assert named, msg
    if op == "Conv":  # MobileFaceNet's stem conv has stride 2 (IResNet's: stride 1).
        first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
        assert named[0] == first_conv and "stride" in msg
    assert not (tmp_path / "out").exists()


def test_import_command_and_its_errors(small_iresnet, tmp_path, capsys):
    _, path, _, _ = small_iresnet
    assert cli_main(["import-onnx", str(path), "--out", str(tmp_path / "d")]) == 0
    assert "use it as init_from" in capsys.readouterr().out
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x00not an onnx file")
    assert cli_main(["import-onnx", str(bad), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "garbage.onnx" in err and "not a readable ONNX file" in err
