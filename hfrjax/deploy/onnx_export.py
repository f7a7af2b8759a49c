"""ONNX export of an hfrjax embedder with jax2onnx, in InsightFace's conventions.

The converter is `jax2onnx <https://github.com/enpasos/jax2onnx>`_ (a maintained JAX/Flax ->
ONNX converter that maps flax.linen Conv / BatchNorm / Dense / pooling to native ONNX
operators). What this module adds is the contract (`hfrjax.deploy.conventions`): NCHW input
``[N, C, H, W]`` with a symbolic batch, one un-normalised ``[N, D]`` output, metadata, and a
few clean-ups of the converted graph:

* jax2onnx's stored intermediate shapes can name a pre-layout-optimisation NHWC shape for a
  tensor that is NCHW in the final graph (onnxruntime warns "Error merging shape info"); they
  are dropped and re-inferred by ``onnx.shape_inference``;
* the IR version is lowered to the minimum the opset needs, so older runtimes load the file;
* no node among the first eight is named ``Sub*``/``Mul*``: ``insightface``'s
  ``ArcFaceONNX`` takes such a graph for an MXNet model that normalises inside the graph
  and would feed it raw pixels (LightCNN graphs start with a Mul and a Sub: [0, 1] -> [-1, 1]).

A file whose input ``insightface.model_zoo.get_model`` would not route to its recognition
class (`conventions.insightface_task`: e.g. a 32-pixel input) is exported with a warning.

Requires ``pip install jax2onnx onnx onnxruntime`` (the ``onnx`` / ``dev`` extras).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from hfrjax.deploy.conventions import METADATA_KEY, insightface_task
from hfrjax.deploy.flax_source import FlaxSource

OPSETS = (13, 17, 18, 21)
"""Opsets tried in order when none is given: the lowest one the converted graph validates
against wins. 13 (onnxruntime >= 1.7, 2021) keeps IResNet / MobileFaceNet / LightCNN files
loadable by the runtimes InsightFace's tools were written for (arcface_torch itself exports
opset 11); jax2onnx emits some operators only in their newer forms (HardSwish needs 14,
ReduceMean with an axes input 18), so other backbones land on a later opset."""
DEFAULT_OPSET = OPSETS[0]

INPUT_NAME = "input.1"  # As in the model zoo's IResNet files (torch's default input name).
OUTPUT_NAME = "embedding"
BATCH_DIM = "N"
_INSIGHTFACE_SNIFFED_PREFIXES = ("Sub", "_minus", "Mul", "_mul")


class OnnxExportError(RuntimeError):
    """The converter could not produce a valid, equivalent ONNX graph."""


def _require_converter():
    try:
        import jax2onnx  # noqa: F401
        import onnx  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"ONNX export needs jax2onnx and onnx ({e}); install them with "
            "`pip install 'hfrjax[onnx]'`"
        ) from None


@contextlib.contextmanager
def _quiet_converter():
    """Silences jax2onnx's chatter: it imports plugins for every library it supports (Equinox,
    dm-pix, ...) and logs a traceback for each one that is not installed (none is used
    here); some releases also print debug lines to stdout, and onnx_ir warns about the
    untyped shape constants it serialises."""
    names = ("jax2onnx", "onnx_ir")
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    for lg, _ in saved:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


_POOL_PATCHED = False


def _accept_positional_pool_arguments() -> None:
    """jax2onnx's flax.linen ``max_pool`` / ``avg_pool`` replacements take ``window_shape``
    only by keyword, while flax's own functions (and LightCNN's ``nn.max_pool(x, (2, 2),
    strides=(2, 2))``) pass it positionally. Wrap each replacement so both call forms work;
    the converted operators are unchanged (native MaxPool / AveragePool)."""
    global _POOL_PATCHED
    if _POOL_PATCHED:
        return
    try:
        from jax2onnx.plugins.flax.linen import avg_pool, max_pool
    except ImportError:  # A jax2onnx without linen pooling plugins: nothing to adapt.
        _POOL_PATCHED = True
        return

    def adapt(make_value):
        def make(original):
            patched = make_value(original)

            def pool(inputs, window_shape, strides=None, padding="VALID", **kwargs):
                return patched(
                    inputs, window_shape=window_shape, strides=strides, padding=padding, **kwargs
                )

            return pool

        return make

    for plugin in (max_pool.MaxPoolPlugin, avg_pool.AvgPoolPlugin):
        specs = plugin.binding_specs

        def binding_specs(cls, _specs=specs):
            return [dataclasses.replace(s, make_value=adapt(s.make_value)) for s in _specs()]

        plugin.binding_specs = classmethod(binding_specs)
    _POOL_PATCHED = True


_PRELU_REGISTERED = False


def _register_prelu_plugin() -> None:
    """Lowers hfrjax's per-channel `hfrjax.models.layers.PReLU` to ONNX ``PRelu`` through
    jax2onnx's plugin API (its flax ``PReLU`` plugin only knows flax's scalar-slope module).

    Without it the PReLU arrives as GreaterOrEqual / Mul / Where between layout transposes;
    with it onnxruntime optimises the graph to the same kernels as a torch-exported IResNet.
    Best effort: if the plugin API differs, the generic (equivalent, slower) lowering stays.
    """
    global _PRELU_REGISTERED
    if _PRELU_REGISTERED:
        return
    _PRELU_REGISTERED = True
    try:
        import jax.numpy as jnp
        from jax.extend.core import Primitive
        from jax2onnx.plugins._patching import MonkeyPatchSpec
        from jax2onnx.plugins.flax.nnx import prelu as nnx_prelu
        from jax2onnx.plugins.plugin_system import register_primitive

        from hfrjax.models import layers
    except ImportError:  # pragma: no cover - depends on the jax2onnx release
        return

    prim = Primitive("hfrjax.prelu")
    prim.def_impl(lambda x, alpha: jnp.where(x >= 0, x, alpha * x))

    @register_primitive(
        jaxpr_primitive=prim.name,
        onnx=[{"component": "PRelu", "doc": "https://onnx.ai/onnx/operators/onnx__PRelu.html"}],
        since="hfrjax",
        context="primitives.hfrjax",
        component="prelu",
    )
    class HfrjaxPReluPlugin(nnx_prelu.PReluPlugin):
        _PRIM = prim
        _ABSTRACT_EVAL_BOUND = False

        @classmethod
        def binding_specs(cls):
            def patch(original):
                def call(module, x):
                    alpha = module.get_variable("params", "alpha")
                    if alpha is None:
                        return original(module, x)
                    return cls._PRIM.bind(x, jnp.asarray(alpha, x.dtype))

                return call

            return [MonkeyPatchSpec(layers.PReLU, "__call__", patch)]


def _rename_sniffed_nodes(graph) -> None:
    for i, node in enumerate(graph.node):
        if not node.name or node.name.startswith(_INSIGHTFACE_SNIFFED_PREFIXES):
            node.name = f"hfrjax_{node.op_type}_{i}"


def convert(source: FlaxSource, *, opset: int | None = None, info_extra: dict | None = None) -> Any:
    """The ``onnx.ModelProto`` of ``source`` (see the module docstring for the contract), at
    ``opset`` or, when None, at the first of `OPSETS` the graph validates against."""
    if opset is not None:
        return _convert_at(source, opset, info_extra)
    errors = []
    for candidate in OPSETS:
        try:
            return _convert_at(source, candidate, info_extra)
        except OnnxExportError as e:
            errors.append(f"opset {candidate}: {e}")
    raise OnnxExportError("no opset worked:\n  " + "\n  ".join(errors))


def _convert_at(source: FlaxSource, opset: int, info_extra: dict | None) -> Any:
    _require_converter()
    import onnx

    with _quiet_converter():
        from jax2onnx import to_onnx

        _accept_positional_pool_arguments()
        _register_prelu_plugin()
        conv = source.convention()
        info = {**source.artifact_info("onnx"), **(info_extra or {})}
        info["input"]["name"], info["output"]["name"] = INPUT_NAME, OUTPUT_NAME
        info["opset"] = opset
        try:
            proto = to_onnx(
                source.nchw_function(portable=True),
                [(BATCH_DIM, conv.channels, conv.size, conv.size)],
                model_name=f"hfrjax_{source.name}",
                opset=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
            )
        except Exception as e:
            raise OnnxExportError(
                f"jax2onnx could not convert backbone {source.name!r}: {type(e).__name__}: {e}"
            ) from e
    del proto.graph.value_info[:]
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import))
    _rename_sniffed_nodes(proto.graph)
    proto.producer_name = "hfrjax (jax2onnx)"
    proto.doc_string = (
        f"hfrjax {source.name} face embedder. Input {conv.describe()}; output "
        f"[N, {info['output']['embedding_dim']}] un-normalised embedding."
    )
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info, sort_keys=True)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise OnnxExportError(f"the converted graph of {source.name!r} is invalid: {e}") from e
    _check_interface(proto, conv.channels, conv.size, info["output"]["embedding_dim"])
    task = insightface_task(1, 1, conv.size, conv.size)
    if task != "recognition":
        logging.getLogger(__name__).warning(
            "%s takes %dx%d input: insightface's model_zoo.get_model would load it as %s, "
            "not as a recognition model (it wants a square input of at least 112 pixels, a "
            "multiple of 16); onnxruntime and `hfrjax embed` run it as usual",
            source.name,
            conv.size,
            conv.size,
            task or "nothing",
        )
    return proto


def _check_interface(proto, channels: int, size: int, dim: int) -> None:
    """One [N, C, H, W] float input and one [N, D] float output, N symbolic."""
    ins, outs = list(proto.graph.input), list(proto.graph.output)
    if len(ins) != 1 or len(outs) != 1:
        raise OnnxExportError(f"expected 1 input and 1 output, got {len(ins)} and {len(outs)}")

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    if dims(ins[0]) != [BATCH_DIM, channels, size, size] or dims(outs[0]) != [BATCH_DIM, dim]:
        raise OnnxExportError(f"unexpected interface: input {dims(ins[0])}, output {dims(outs[0])}")


def export_onnx(
    source: FlaxSource | str | os.PathLike,
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    info_extra: dict | None = None,
) -> Path:
    """Writes ``source`` (a `FlaxSource` or an hfrjax export directory) as an ONNX file."""
    from hfrjax.fileio import atomic_output

    if not isinstance(source, FlaxSource):
        source = FlaxSource.from_export(source)
    proto = convert(source, opset=opset, info_extra=info_extra)
    path = Path(path)
    with atomic_output(path, "wb") as f:
        f.write(proto.SerializeToString())
    return path
