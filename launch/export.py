"""Writes an inference checkpoint (backbone weights + model config JSON) from a workdir.

  python launch/export.py --workdir=/tmp/qs/finetune --out=/tmp/qs/export [--step=N]

Load it anywhere with ``hfrjax.load_embedder("/tmp/qs/export")``.
"""

from absl import app, flags

from hfrjax.train import export

_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir")
_OUT = flags.DEFINE_string("out", None, "output directory")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
    from hfrjax.train.cli_logging import quiet_unless_asked

    quiet_unless_asked()
    del argv
    path = export.export_from_workdir(_WORKDIR.value, _OUT.value, step=_STEP.value)
    print(f"exported {path}")


if __name__ == "__main__":
    app.run(main)
