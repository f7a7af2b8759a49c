"""Trains any registered task (``config.task``): the one entry point for every recipe.

  python launch/train.py --config=configs/quickstart.py:pretrain --workdir=/tmp/qs/pretrain \
      --config.input.data_dir=/tmp/qs/data/source [--config.num_epochs=2 ...]

Re-running with the same --workdir resumes from its newest readable checkpoint (state, optimizer
and input positions); a complete run does nothing. SIGTERM saves a checkpoint and exits with
status 143. A second trainer on a busy workdir is refused. Errors end the output: the last line
printed is what went wrong.
"""

import os
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

from hfrjax.train import distributed, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints and logs go here")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str) -> None:
    """Trains; on failure prints the traceback and, last, a one-line summary, then exits
    without the interpreter's shutdown noise (background threads of the input pipeline and
    the checkpointer complaining after the error)."""
    try:
        trainer.train(config, workdir)
    except trainer.Preempted as e:
        print(e.msg, file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(143)
    except BaseException as e:  # noqa: BLE001 - reported, then a clean exit.
        if isinstance(e, SystemExit) and e.code in (0, None):
            raise
        traceback.print_exc()
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)


def main(argv):
    from hfrjax.train.cli_logging import quiet_unless_asked

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    quiet_unless_asked()
    distributed.maybe_initialize()
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
