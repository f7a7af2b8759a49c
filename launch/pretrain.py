"""Pretrains a backbone with a margin-softmax classifier (config: configs/*.py).

  python launch/pretrain.py --config=configs/quickstart.py:pretrain --workdir=/tmp/qs/pretrain \
      [--config.num_epochs=2 ...]

Re-running with the same --workdir resumes from its latest checkpoint (model, optimizer and
data-iterator state). SIGTERM saves a checkpoint and exits with status 143.
"""

from absl import app, flags
from ml_collections import config_flags

from hfrjax.train import distributed, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints and logs go here")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    from hfrjax.train.cli_logging import quiet_unless_asked

    quiet_unless_asked()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    distributed.maybe_initialize()
    trainer.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
