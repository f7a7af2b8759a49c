"""Import InsightFace model-zoo ONNX recognition models (arcface_torch IResNet) into Flax.

The model zoo's ArcFace files (``w600k_r50.onnx``, ``glintr100.onnx``, ...) and anything
arcface_torch's ``torch2onnx.py`` writes (``torch.onnx.export``, opset 11, input ``data``) are
IResNets (`hfrjax.models.iresnet`); this module walks such a graph in data-flow order, maps
every initializer back to the arcface_torch ``state_dict`` name it came from, and hands that
to the existing converter (``iresnet_params_from_torch_state_dict``). The result is an hfrjax
export directory usable as ``init_from`` for fine-tuning (the Rethinking recipe's first step:
start from a strong VIS model).

What the exporters actually produce, and how it is undone:

* torch folds every Conv -> BatchNorm pair into one Conv with a bias (the legacy TorchScript
  exporter and the dynamo exporter alike). The BN is rebuilt as the identity statistics
  (mean 0, var 1 - eps, scale 1) with the conv bias as its shift, which reproduces the
  folded function exactly. Fine-tuning then starts from those statistics: the original
  per-channel running mean/var are not recoverable from a folded graph. BatchNorms that
  *precede* a conv (each block's ``bn1``, the head's ``bn2``) stay BatchNormalization nodes
  and keep their statistics.
* the final BatchNorm1d (``features``, scale fixed at 1) may be folded into the FC (the
  dynamo exporter does this); it is rebuilt the same way.
* Flatten or Reshape before the FC, Gemm or MatMul (+ Add), and Identity / Dropout / float
  Cast nodes are all accepted.

Any other node (MXNet-style Sub/Mul preprocessing, a depthwise conv of a MobileFaceNet, an L2
normalisation tail, ...) is refused with an `UnsupportedGraphError` naming the first node
that does not fit.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

TORCH_BN_EPS = 1e-5
_PASSTHROUGH = ("Identity", "Dropout")
_SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Constant")


class UnsupportedGraphError(ValueError):
    """An ONNX graph that is not an arcface_torch IResNet; names the first node at fault."""


class _Walker:
    """Data-flow navigation over an ONNX graph with constant lookup."""

    def __init__(self, model, path: Path):
        from onnx import numpy_helper

        self.path = path
        graph = model.graph
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in graph.initializer
        }
        self.nodes = []
        for node in graph.node:
            if node.op_type == "Constant" and len(node.output) == 1:
                self.consts[node.output[0]] = self._constant_value(node)
            else:
                self.nodes.append(node)
        self.index = {id(n): i for i, n in enumerate(graph.node)}
        self.consumers: dict[str, list] = {}
        for node in self.nodes:
            for name in node.input:
                if name and name not in self.consts:
                    self.consumers.setdefault(name, []).append(node)
        self.inputs = [i for i in graph.input if i.name not in self.consts]
        self.outputs = [o.name for o in graph.output]
        self.used: set[int] = set()

    @staticmethod
    def _constant_value(node) -> np.ndarray:
        from onnx import helper, numpy_helper

        for a in node.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
            return np.asarray(helper.get_attribute_value(a))
        raise UnsupportedGraphError(f"Constant node {node.name!r} has no value")

    def describe(self, node) -> str:
        return f"node #{self.index[id(node)]} {node.name!r} ({node.op_type})"

    def fail(self, node, expected: str) -> UnsupportedGraphError:
        return UnsupportedGraphError(
            f"{self.path}: {self.describe(node)} is not part of an arcface_torch IResNet "
            f"(expected {expected}); only IResNet recognition models (InsightFace model zoo, "
            "arcface_torch torch2onnx.py) can be imported"
        )

    def skip_passthrough(self, tensor: str) -> str:
        while True:
            users = self.consumers.get(tensor, [])
            if len(users) != 1 or not self._is_passthrough(users[0]):
                return tensor
            self.used.add(id(users[0]))
            tensor = users[0].output[0]

    def _is_passthrough(self, node) -> bool:
        if node.op_type in _PASSTHROUGH:
            return True
        if node.op_type == "Cast":
            return _attr(node, "to", None) == 1  # to float32
        return False

    def users(self, tensor: str) -> list:
        return self.consumers.get(self.skip_passthrough(tensor), [])

    def mark_shape_subgraphs(self, tensor: str) -> None:
        """Accepts ``Shape(tensor) -> Gather / Unsqueeze / Concat ...`` chains that only compute
        a Reshape's target shape (what some exporters emit for ``flatten`` with a dynamic
        batch) and removes them from ``tensor``'s consumers."""
        tensor = self.skip_passthrough(tensor)
        users = self.consumers.get(tensor, [])
        shape_nodes = [n for n in users if n.op_type == "Shape"]
        if not shape_nodes:
            return
        todo, seen = list(shape_nodes), set()
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type not in _SHAPE_OPS:
                raise self.fail(node, "only shape arithmetic feeding the Reshape before the fc")
            self.used.add(id(node))
            for out in node.output:
                for user in self.consumers.get(out, []):
                    if user.op_type == "Reshape" and user.input[1] == out:
                        continue
                    todo.append(user)
        self.consumers[tensor] = [n for n in users if n.op_type != "Shape"]

    def next(self, tensor: str, op_types: tuple[str, ...], expected: str):
        """The single consumer of ``tensor`` (after pass-through nodes), of one of
        ``op_types``."""
        tensor = self.skip_passthrough(tensor)
        users = self.consumers.get(tensor, [])
        if len(users) != 1:
            if not users:
                raise UnsupportedGraphError(
                    f"{self.path}: tensor {tensor!r} ends the graph early (expected {expected})"
                )
            first = min(users, key=lambda n: self.index[id(n)])
            raise self.fail(first, f"{expected} as the only consumer of {tensor!r}")
        node = users[0]
        if node.op_type not in op_types:
            raise self.fail(node, expected)
        self.used.add(id(node))
        return node

    def const(self, node, position: int) -> np.ndarray:
        name = node.input[position] if position < len(node.input) else ""
        if name not in self.consts:
            raise self.fail(node, f"a constant (initializer) as input {position}")
        return np.asarray(self.consts[name], np.float32)


def _attr(node, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class _IResNetReader:
    """Walks an IResNet graph and fills an arcface_torch ``state_dict`` (numpy)."""

    def __init__(self, walker: _Walker):
        self.w = walker
        self.sd: dict[str, np.ndarray] = {}
        self.folded_bn = 0

    # -- layers ------------------------------------------------------------------------------
    def conv(self, node, kernel: int, stride: int | None, pad: int, what: str) -> int:
        """Checks a plain (group 1, dilation 1) conv; returns its stride."""
        w = self.w.const(node, 1)
        ks = tuple(_attr(node, "kernel_shape", w.shape[2:]))
        strides = tuple(_attr(node, "strides", (1, 1)))
        pads = tuple(_attr(node, "pads", (0, 0, 0, 0)))
        ok = (
            w.ndim == 4
            and ks == (kernel, kernel)
            and _attr(node, "group", 1) == 1
            and tuple(_attr(node, "dilations", (1, 1))) == (1, 1)
            and pads == (pad,) * 4
            and _attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
            and len(set(strides)) == 1
            and (stride is None or strides[0] == stride)
            and strides[0] in (1, 2)
        )
        if not ok:
            raise self.w.fail(
                node,
                f"{what}: a {kernel}x{kernel} conv, stride {stride or '1 or 2'}, padding {pad}, "
                f"group 1 (got kernel {ks}, strides {strides}, pads {pads}, "
                f"group {_attr(node, 'group', 1)})",
            )
        return int(strides[0])

    def batchnorm(self, node, prefix: str) -> None:
        gamma, beta, mean, var = (self.w.const(node, i) for i in (1, 2, 3, 4))
        eps = float(_attr(node, "epsilon", 1e-5))
        self.sd.update(
            {
                f"{prefix}.weight": gamma,
                f"{prefix}.bias": beta,
                f"{prefix}.running_mean": mean,
                # Same sqrt(var + eps) under torch's eps 1e-5, whatever eps the graph used.
                f"{prefix}.running_var": var + np.float32(eps - TORCH_BN_EPS),
            }
        )

    def conv_bn(self, node, conv_name: str, bn_name: str) -> str:
        """A conv followed by a BatchNorm, folded or not; returns the BN output tensor."""
        w = self.w.const(node, 1)
        bias = self.w.const(node, 2) if len(node.input) > 2 and node.input[2] else None
        self.sd[f"{conv_name}.weight"] = w
        out = node.output[0]
        users = self.w.users(out)
        if len(users) == 1 and users[0].op_type == "BatchNormalization":
            bn = self.w.next(out, ("BatchNormalization",), "BatchNormalization")
            self.batchnorm(bn, bn_name)
            if bias is not None:  # BN(conv + b) = BN'(conv) with mean - b.
                self.sd[f"{bn_name}.running_mean"] = self.sd[f"{bn_name}.running_mean"] - bias
            return bn.output[0]
        self.folded_bn += 1
        c = w.shape[0]
        self._identity_bn(bn_name, c, np.zeros(c, np.float32) if bias is None else bias)
        return out

    def _identity_bn(self, prefix: str, c: int, shift: np.ndarray) -> None:
        self.sd.update(
            {
                f"{prefix}.weight": np.ones(c, np.float32),
                f"{prefix}.bias": np.asarray(shift, np.float32),
                f"{prefix}.running_mean": np.zeros(c, np.float32),
                f"{prefix}.running_var": np.full(c, 1.0 - TORCH_BN_EPS, np.float32),
            }
        )

    def prelu(self, tensor: str, name: str, channels: int) -> str:
        node = self.w.next(tensor, ("PRelu",), f"the PReLU {name}")
        slope = self.w.const(node, 1).reshape(-1)
        if slope.size not in (1, channels):
            raise self.w.fail(node, f"a PReLU with 1 or {channels} slopes (got {slope.size})")
        self.sd[f"{name}.weight"] = np.broadcast_to(slope, (channels,)).copy()
        return node.output[0]

    # -- network -----------------------------------------------------------------------------
    def stem(self, tensor: str) -> str:
        node = self.w.next(tensor, ("Conv",), "the stem conv (3x3, stride 1) on the input")
        self.conv(node, 3, 1, 1, "the stem conv")
        out = self.conv_bn(node, "conv1", "bn1")
        return self.prelu(out, "prelu", self.sd["conv1.weight"].shape[0])

    def block(self, x: str, name: str, bn1) -> tuple[str, int]:
        """One IBasicBlock starting at its ``bn1`` node; returns (output, stride)."""
        self.batchnorm(bn1, f"{name}.bn1")
        c1 = self.w.next(bn1.output[0], ("Conv",), f"{name}.conv1 (3x3 conv after bn1)")
        self.conv(c1, 3, 1, 1, f"{name}.conv1")
        out = self.conv_bn(c1, f"{name}.conv1", f"{name}.bn2")
        out = self.prelu(out, f"{name}.prelu", self.sd[f"{name}.conv1.weight"].shape[0])
        c2 = self.w.next(out, ("Conv",), f"{name}.conv2 (3x3 conv after the PReLU)")
        stride = self.conv(c2, 3, None, 1, f"{name}.conv2")
        out = self.conv_bn(c2, f"{name}.conv2", f"{name}.bn3")
        add = self.w.next(out, ("Add",), f"the residual Add of {name}")
        other = [t for t in add.input if t not in (out, self.w.skip_passthrough(out))]
        if len(other) != 1:
            raise self.w.fail(add, f"the residual Add of {name} with two inputs")
        shortcut = other[0]
        x_src = self.w.skip_passthrough(x)
        if shortcut not in (x, x_src):
            ds = self._shortcut_conv(x_src, shortcut, name, stride)
            if ds is None:
                raise self.w.fail(add, f"{name}'s shortcut: identity or a 1x1 conv of its input")
        return add.output[0], stride

    def _shortcut_conv(self, x: str, shortcut: str, name: str, stride: int):
        for node in self.w.consumers.get(x, []):
            if node.op_type != "Conv":
                continue
            out = node.output[0]
            users = self.w.users(out)
            bn_out = users[0].output[0] if len(users) == 1 and users[0].op_type == (
                "BatchNormalization"
            ) else None
            if shortcut in (out, self.w.skip_passthrough(out), bn_out) or (
                bn_out and shortcut == self.w.skip_passthrough(bn_out)
            ):
                self.w.used.add(id(node))
                self.conv(node, 1, stride, 0, f"{name}.downsample.0 (1x1 shortcut conv)")
                self.conv_bn(node, f"{name}.downsample.0", f"{name}.downsample.1")
                return node
        return None

    def head(self, bn2) -> str:
        self.batchnorm(bn2, "bn2")
        self.w.mark_shape_subgraphs(bn2.output[0])
        flat = self.w.next(bn2.output[0], ("Flatten", "Reshape"), "Flatten after bn2")
        if flat.op_type == "Flatten" and _attr(flat, "axis", 1) != 1:
            raise self.w.fail(flat, "Flatten with axis 1")
        fc = self.w.next(flat.output[0], ("Gemm", "MatMul"), "the fc layer (Gemm)")
        if fc.op_type == "Gemm":
            w = self.w.const(fc, 1)
            if _attr(fc, "transA", 0) or _attr(fc, "alpha", 1.0) != 1.0:
                raise self.w.fail(fc, "Gemm with transA 0 and alpha 1")
            if not _attr(fc, "transB", 0):
                w = w.T
            beta = float(_attr(fc, "beta", 1.0))
            b = self.w.const(fc, 2) * beta if len(fc.input) > 2 and fc.input[2] else None
            out = fc.output[0]
        else:
            w = self.w.const(fc, 1).T
            add = self.w.next(fc.output[0], ("Add",), "the fc bias Add")
            mm = (fc.output[0], self.w.skip_passthrough(fc.output[0]))
            other = [t for t in add.input if t not in mm]
            b = np.asarray(self.w.consts[other[0]], np.float32).reshape(-1) if other and (
                other[0] in self.w.consts
            ) else None
            if b is None:
                raise self.w.fail(add, "the fc bias Add with a constant bias")
            out = add.output[0]
        w = np.ascontiguousarray(w, np.float32)
        b = np.zeros(w.shape[0], np.float32) if b is None else np.asarray(b, np.float32)
        users = self.w.users(out)
        if len(users) == 1 and users[0].op_type == "BatchNormalization":
            bn = self.w.next(out, ("BatchNormalization",), "the features BatchNorm1d")
            self.batchnorm(bn, "features")
            gamma = self.sd["features.weight"]
            if np.allclose(gamma, 1.0, rtol=0, atol=1e-6):
                self.sd["features.weight"] = np.ones_like(gamma)
            else:  # Fold into the fc: hfrjax's features BN has no scale (fixed at 1).
                s = gamma / np.sqrt(self.sd["features.running_var"] + TORCH_BN_EPS)
                w = w * s[:, None]
                b = (b - self.sd["features.running_mean"]) * s + self.sd["features.bias"]
                self._identity_bn("features", len(b), np.zeros(len(b), np.float32))
            out = bn.output[0]
        else:
            self.folded_bn += 1
            self._identity_bn("features", len(b), np.zeros(len(b), np.float32))
        self.sd["fc.weight"], self.sd["fc.bias"] = w, b
        return out

    def read(self) -> dict[str, np.ndarray]:
        w = self.w
        if len(w.inputs) != 1:
            raise UnsupportedGraphError(
                f"{w.path}: expected one image input, got {[i.name for i in w.inputs]}"
            )
        x = self.stem(w.inputs[0].name)
        stage, index = 0, 0
        while True:
            users = w.users(x)
            bns = [n for n in users if n.op_type == "BatchNormalization"]
            if len(bns) != 1:
                first = min(users, key=lambda n: w.index[id(n)]) if users else None
                if first is None:
                    raise UnsupportedGraphError(f"{w.path}: the graph ends after {x!r}")
                raise w.fail(first, "a BatchNormalization (a block's bn1 or the head's bn2)")
            bn = bns[0]
            after = [n for n in w.users(bn.output[0]) if n.op_type != "Shape"]
            if len(after) == 1 and after[0].op_type in ("Flatten", "Reshape"):
                w.used.add(id(bn))
                break
            w.used.add(id(bn))
            # The first block of each of the four stages has stride 2.
            probe_stride = self._peek_stride(bn)
            if probe_stride == 2:
                stage, index = stage + 1, 0
            if stage == 0:
                raise w.fail(bn, "a first block with stride 2 (layer1.0)")
            x, _ = self.block(x, f"layer{stage}.{index}", bn)
            index += 1
        if stage != 4:
            raise UnsupportedGraphError(
                f"{w.path}: found {stage} stride-2 stages; an IResNet has 4"
            )
        out = self.head(bn)
        if w.skip_passthrough(out) not in w.outputs and out not in w.outputs:
            extra = w.users(out)
            if extra:
                raise w.fail(extra[0], "the end of the graph after the features BatchNorm")
            raise UnsupportedGraphError(f"{w.path}: {out!r} is not the graph output")
        leftover = [n for n in w.nodes if id(n) not in w.used]
        if leftover:
            first = min(leftover, key=lambda n: w.index[id(n)])
            raise w.fail(first, "nothing besides the IResNet layers")
        return self.sd

    def _peek_stride(self, bn) -> int:
        users = self.w.users(bn.output[0])
        if len(users) != 1 or users[0].op_type != "Conv":
            raise self.w.fail(users[0] if users else bn, "the block's conv1 after bn1")
        c1 = users[0]
        out = c1.output[0]
        u = self.w.users(out)
        if len(u) == 1 and u[0].op_type == "BatchNormalization":
            out = u[0].output[0]
        u = self.w.users(out)
        if len(u) != 1 or u[0].op_type != "PRelu":
            raise self.w.fail(u[0] if u else c1, "the block's PReLU after conv1")
        u = self.w.users(u[0].output[0])
        if len(u) != 1 or u[0].op_type != "Conv":
            raise self.w.fail(u[0] if u else c1, "the block's conv2 after the PReLU")
        return int(tuple(_attr(u[0], "strides", (1, 1)))[0])


def read_iresnet_onnx(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arcface_torch ``state_dict`` as numpy, facts about the graph) of an IResNet ONNX file;
    `UnsupportedGraphError` for any other graph."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise UnsupportedGraphError(f"{path} is not a readable ONNX file: {e}") from None
    reader = _IResNetReader(_Walker(model, path))
    sd = reader.read()
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    facts = {
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opset": opsets.get("ai.onnx"),
        "folded_batchnorms": reader.folded_bn,
        "input_name": reader.w.inputs[0].name,
    }
    return sd, facts


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """``ir50`` / ``ir100`` ... when the layer counts are a published depth, else ``iresnet``."""
    from hfrjax.models import IRESNET_LAYERS

    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    for depth, layers in IRESNET_LAYERS.items():
        if tuple(cfg["layers"]) == tuple(layers):
            kwargs.pop("layers")
            return {"name": f"ir{depth}", "kwargs": kwargs}
    return {"name": "iresnet", "kwargs": kwargs}


def import_onnx(
    onnx_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    check: bool = True,
    tolerance: float = 1e-3,
) -> tuple[Path, dict[str, Any]]:
    """Converts an IResNet ONNX file into an hfrjax export directory (``init_from``-ready).

    ``check`` runs the ONNX file (onnxruntime) and the converted Flax model on the same inputs
    and refuses the import if they differ by more than ``tolerance`` (relative to the
    embedding scale). Returns (the export directory, a report dict also stored in its
    ``model.json`` under ``imported_from``).
    """
    import jax

    from hfrjax.models import (
        iresnet_config_from_torch_state_dict,
        iresnet_params_from_torch_state_dict,
    )
    from hfrjax.train.export import export_embedder

    onnx_path = Path(onnx_path)
    sd, facts = read_iresnet_onnx(onnx_path)
    cfg = iresnet_config_from_torch_state_dict(sd)
    try:
        variables = iresnet_params_from_torch_state_dict(sd)
    except ValueError as e:
        raise UnsupportedGraphError(f"{onnx_path}: the IResNet weights do not fit: {e}") from None
    model_cfg = _model_cfg(cfg)
    report = {
        "onnx": str(onnx_path.absolute()),
        "sha256": _sha256(onnx_path),
        **facts,
        "note": (
            "Conv+BatchNorm pairs folded by the ONNX exporter are stored as BatchNorms with "
            "identity statistics (mean 0, var 1 - eps) and the conv bias as shift: exact at "
            "inference; fine-tuning starts from those statistics."
        ),
    }
    if check:
        report["parity_max_abs"] = _parity(onnx_path, model_cfg, variables, tolerance)
    params = jax.device_get(variables["params"])
    batch_stats = jax.device_get(variables["batch_stats"])
    out = export_embedder(
        out_dir,
        model_cfg=model_cfg,
        params=params,
        batch_stats=batch_stats,
        extra={"imported_from": report},
    )
    return out, report


def _parity(onnx_path: Path, model_cfg: dict, variables: dict, tolerance: float) -> float | None:
    """Max |ONNX - Flax| over random and constant inputs; raises above ``tolerance``."""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover
        return None
    import jax
    import jax.numpy as jnp

    from hfrjax.models import get_model

    model = get_model(model_cfg["name"], **model_cfg["kwargs"])
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    s = model.input_size
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.uniform(-1, 1, (2, 3, s, s)), np.zeros((1, 3, s, s))], axis=0
    ).astype(np.float32)
    # One image per call: exporters may bake batch 1 into a Reshape even when the input's
    # batch dimension is marked symbolic (torch2onnx.py edits only the input's shape).
    want = np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    got = np.asarray(apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1))))
    diff = float(np.abs(got - want).max())
    scale = max(1.0, float(np.abs(want).max()))
    if not diff <= tolerance * scale:
        raise RuntimeError(
            f"{onnx_path}: the imported model differs from the ONNX graph by {diff:.3g} "
            f"(embedding scale {scale:.3g}); refusing to write a wrong import"
        )
    return diff
