"""Writes an inference export from a workdir, and optionally an ONNX or serialized-JAX copy.

  python launch/export.py --workdir=/tmp/qs/finetune --out=/tmp/qs/export [--step=N]
  python launch/export.py --workdir=/tmp/qs/finetune --out=/tmp/qs/export --format=onnx
  python launch/export.py --out=/tmp/qs/export --format=jax     # from an existing export

``--out`` is always the hfrjax export directory (Flax weights + model.json; load it anywhere
with ``hfrjax.load_embedder("/tmp/qs/export")``). ``--format=onnx`` also writes
``--artifact`` (default ``/tmp/qs/export.onnx``) in InsightFace's recognition conventions,
``--format=jax`` a ``jax.export`` artifact (default ``/tmp/qs/export.jaxexport``); both are
checked against the Flax model before the command succeeds (see ``hfrjax export --help``).
"""

from pathlib import Path

from absl import app, flags

from hfrjax.train import export

_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir (omit to convert --out)")
_OUT = flags.DEFINE_string("out", None, "hfrjax export directory (written from --workdir)")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
_FORMAT = flags.DEFINE_enum("format", "flax", ["flax", "onnx", "jax"], "extra artifact")
_ARTIFACT = flags.DEFINE_string("artifact", None, "ONNX / .jaxexport path (default: next to --out)")
_OPSET = flags.DEFINE_integer("opset", None, "ONNX opset (default: lowest that validates)")
flags.mark_flags_as_required(["out"])

_SUFFIX = {"onnx": ".onnx", "jax": ".jaxexport"}


def main(argv):
    from hfrjax.train.cli_logging import quiet_unless_asked

    quiet_unless_asked()
    del argv
    if _WORKDIR.value:
        path = export.export_from_workdir(_WORKDIR.value, _OUT.value, step=_STEP.value)
        print(f"exported {path}")
    elif _FORMAT.value == "flax":
        raise app.UsageError("give --workdir (or --format=onnx|jax to convert --out)")
    if _FORMAT.value == "flax":
        return
    from hfrjax.deploy.exporting import export_artifact

    out = Path(_OUT.value)
    artifact = _ARTIFACT.value or str(out.with_name(out.name + _SUFFIX[_FORMAT.value]))
    report = export_artifact(out, artifact, fmt=_FORMAT.value, opset=_OPSET.value)
    print(f"exported {report['path']}")
    for line in report["lines"]:
        print(f"  {line}")


if __name__ == "__main__":
    app.run(main)
