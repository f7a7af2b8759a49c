"""Fine-tunes a pretrained backbone on target (e.g. NIR-VIS) data.

  python launch/finetune.py --config=configs/quickstart.py:finetune --workdir=/tmp/qs/ft \
      --config.init_from=/tmp/qs/pretrain [--config.input.fold=1]

``init_from`` is a pretraining workdir or an exported embedder. The classifier starts random
(naive fine-tuning) or from class-mean embeddings (``--config.head.init=class_means``), and is
frozen with ``--config.head.freeze=True``. Resumes like pretrain.py.
"""

from absl import app, flags
from ml_collections import config_flags

from hfrjax.train import distributed, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "fine-tuning config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints and logs go here")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    from hfrjax.train.cli_logging import quiet_unless_asked

    quiet_unless_asked()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    distributed.maybe_initialize()
    config = _CONFIG.value
    if not config.get("init_from", ""):
        raise app.UsageError("fine-tuning needs --config.init_from=PRETRAIN_WORKDIR_OR_EXPORT")
    trainer.train(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
