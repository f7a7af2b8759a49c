"""Runs a TOPLight sweep (configs/toplight/tables_synthetic.py) with face *and* re-id metrics.

  python launch/toplight_tables.py --config=configs/toplight/tables_synthetic.py \
      --out=/tmp/hfrjax_toplight_tables --data_dir=/tmp/hfrjax_toplight_tables/data \
      --synth=quickstart [--seeds=0,1] [--only='no5*,no9*'] [--dry_run] [--keep_going]

launch/sweep.py with one difference: each stage trains through
`hfrjax.recipes.toplight.evaluation.train_and_evaluate`, so VI stages also run their re-id
evaluation and the table gets reid/Rank-k, reid/mAP and reid/mINP columns next to the face
protocol's. Options, outputs and resuming: launch/sweep.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", None, "sweep config file, path.py[:arg]")
_OUT = flags.DEFINE_string("out", None, "sweep directory: runs, results.json, tables.md")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "replaces the sweep's data_dir")
_SYNTH = flags.DEFINE_string("synth", None, "generate this synthetic preset into data_dir first")
_ONLY = flags.DEFINE_list("only", [], "cell name patterns (globs) to run")
_SEEDS = flags.DEFINE_list("seeds", [], "replaces the sweep's seeds, e.g. 0,1,2")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "print the plan, train nothing")
_KEEP_GOING = flags.DEFINE_bool("keep_going", False, "go on past failing stages")
flags.mark_flags_as_required(["config", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hfrjax import sweep
    from hfrjax.recipes.toplight.evaluation import train_and_evaluate
    from hfrjax.train.cli_logging import quiet_unless_asked

    quiet_unless_asked()
    try:
        seeds = [int(s) for s in _SEEDS.value] or None
    except ValueError:
        raise app.UsageError(f"--seeds must be integers, got {_SEEDS.value}") from None
    out = Path(_OUT.value).expanduser().absolute()
    options = dict(only=_ONLY.value or None, data_dir=_DATA_DIR.value, seeds=seeds)
    path, _ = sweep.split_config_spec(_CONFIG.value)
    base = Path.cwd() if (Path.cwd() / path).is_file() else None
    try:
        config = sweep.load_config(_CONFIG.value, base)
        plan = sweep.plan_sweep(config, out, **options)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    if not _DRY_RUN.value:
        import jax

        jax.config.update("jax_compilation_cache_dir", str(out / "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        if _SYNTH.value:
            from hfrjax.data import synthetic

            if not (Path(plan.data_dir) / "synth.json").exists():
                print(f"generating synthetic data ({_SYNTH.value}) into {plan.data_dir}",
                      flush=True)
                synthetic.generate(plan.data_dir, preset=_SYNTH.value, seed=0)
    sweep.run_sweep(
        config, out, dry_run=_DRY_RUN.value, keep_going=_KEEP_GOING.value,
        train_fn=train_and_evaluate, **options,
    )


if __name__ == "__main__":
    app.run(main)
