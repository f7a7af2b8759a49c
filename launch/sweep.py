"""Runs an ablation sweep (cells x seeds of staged trainings) and writes its results table.

  python launch/sweep.py --config=configs/rethink/tables_synthetic.py --out=/tmp/hfrjax_tables

Options: --config=FILE.py:ARG passes ARG to the sweep's get_config; --data_dir=DIR replaces the
sweep's data_dir ("{data}" in stage overrides); --synth=PRESET first generates the synthetic
NIR-VIS sets into data_dir if it has no synth.json; --only='mec*,zero-shot' runs the matching
cells (and the runs they depend on); --seeds=0,1 replaces the sweep's seeds; --dry_run prints
the plan (runs, shared workdirs, what is done) and trains nothing; --keep_going goes on past a
failing stage and exits non-zero at the end.

Writes OUT/runs/<stage>-<hash>/ (one workdir per distinct stage: identical stages of several
cells run once), OUT/results.json ({cell: {seed: eval result}}) and OUT/tables.md (one row per
cell, mean ± std over seeds x folds), both rewritten after every finished stage. A cell's
columns are its evaluated stage's eval.json metrics: the protocol of eval.data_dir and the
task's own evaluators (e.g. TOPLight's reid/Rank-1 ... reid/mINP,
configs/toplight/tables_synthetic.py). Re-running the same command skips finished stages
and resumes an interrupted one from its checkpoints. The sweep-config schema: hfrjax/sweep.py.
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


def _sweep_config(spec: str):
    """The sweep config, its path taken relative to the current directory or the repo root."""
    from hfrjax import sweep

    path, _ = sweep.split_config_spec(spec)
    base = Path.cwd() if (Path.cwd() / path).is_file() else None
    return sweep.load_config(spec, base)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hfrjax import sweep
    from hfrjax.train.cli_logging import quiet_unless_asked

    quiet_unless_asked()
    try:
        seeds = [int(s) for s in _SEEDS.value] or None
    except ValueError:
        raise app.UsageError(f"--seeds must be integers, got {_SEEDS.value}") from None
    out = Path(_OUT.value).expanduser().absolute()
    options = dict(only=_ONLY.value or None, data_dir=_DATA_DIR.value, seeds=seeds)
    try:  # Config problems: one clear line, before anything trains.
        config = _sweep_config(_CONFIG.value)
        plan = sweep.plan_sweep(config, out, **options)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    if not _DRY_RUN.value:
        import jax

        # Cells often share shapes: the persistent cache compiles their steps once.
        jax.config.update("jax_compilation_cache_dir", str(out / "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        if _SYNTH.value:
            from hfrjax.data import synthetic

            if not plan.data_dir:
                raise app.UsageError("--synth needs a data_dir (the sweep's or --data_dir)")
            if not (Path(plan.data_dir) / "synth.json").exists():
                print(
                    f"generating synthetic data ({_SYNTH.value}) into {plan.data_dir}", flush=True
                )
                synthetic.generate(plan.data_dir, preset=_SYNTH.value, seed=0)
    sweep.run_sweep(config, out, dry_run=_DRY_RUN.value, keep_going=_KEEP_GOING.value, **options)


if __name__ == "__main__":
    app.run(main)
