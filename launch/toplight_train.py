"""Trains a TOPLight config and, for VI training (``toplight_vi``), adds the re-id evaluation.

  python launch/toplight_train.py --config=configs/toplight/sysu.py \
      --config.init_from=W/toplight/top --workdir=W/toplight/sysu

Same as launch/train.py (resume, SIGTERM, errors last), then
`hfrjax.recipes.toplight.evaluation.train_and_evaluate`'s re-id evaluation when the config
sets ``reid_eval.data_dir``: per search mode and direction, Rank-1/10/20, mAP and mINP,
written to WORKDIR/reid.json and printed.
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


def main(argv):
    from hfrjax.recipes.toplight.evaluation import REID_JSON, train_and_evaluate
    from hfrjax.train.cli_logging import quiet_unless_asked

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    quiet_unless_asked()
    distributed.maybe_initialize()
    try:
        result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except trainer.Preempted as e:
        print(e.msg, file=sys.stderr, flush=True)
        os._exit(143)
    except BaseException as e:  # noqa: BLE001 - reported, then a clean exit.
        if isinstance(e, SystemExit) and e.code in (0, None):
            raise
        traceback.print_exc()
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    reid = (result.eval_results or {}).get("reid")
    for label, r in (reid or {}).items():
        line = ", ".join(f"{k} {100 * v:.2f}" for k, v in r["mean"].items())
        print(f"{label} {r.get('mode') or ''} {r.get('direction')}: {line}", flush=True)
    if reid:
        print(f"re-id results: {os.path.join(_WORKDIR.value, REID_JSON)}", flush=True)


if __name__ == "__main__":
    app.run(main)
