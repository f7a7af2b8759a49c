"""Train an ``ftl`` run (the loop evaluates it on the hold-out set); or a whole Table 1 sweep.

FTL's nearest-centre rank-1 (§4.3) needs each class's *training* images as its gallery, which
no HFR protocol holds, so it is the task's evaluator ``holdout``
(`hfrjax.recipes.ftl.evaluation.evaluate_trained`), run by the loop with its evaluations and
merged into the workdir's ``eval.json`` as ``holdout/<metric>``; the whole result goes to
``ftl_eval.json`` and the classifier norms to ``weight_norms.png``:

  python -m hfrjax.recipes.ftl.run train --config=configs/ftl/synthetic.py:variant=10K30K \\
      --workdir=/tmp/ftl_run
  python -m hfrjax.recipes.ftl.run evaluate --workdir=/tmp/ftl_run
  python -m hfrjax.recipes.ftl.run sweep --config=configs/ftl/table1_synthetic.py \\
      --out=/tmp/ftl_table1 --synth=longtail

`train_and_evaluate(config, workdir)` is the sweep's ``train_fn``: `prepare_config` then
`hfrjax.train.trainer.train` (resuming as the trainer does). A sweep stage must set
``eval.data_dir`` (the sweep's rule for evaluated stages): a directory without ``protocols/``
there is taken as the FTL hold-out set (``holdout.data_dir``) and the loop's protocol
evaluation is skipped.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import sys
from pathlib import Path
from typing import Any

import jax

from hfrjax.fileio import write_text_atomic
from hfrjax.recipes.ftl import evaluation

EVAL_FILE = evaluation.EVAL_FILE


def prepare_config(config: Any):
    """A copy of ``config`` whose FTL hold-out set is ``holdout.data_dir`` (taken from
    ``eval.data_dir`` when that is not a protocol dataset, which is then cleared)."""
    c = copy.deepcopy(config)
    eval_dir = str(c.eval.data_dir or "")
    if eval_dir and not (Path(eval_dir) / "protocols").exists():
        if not c.holdout.data_dir:
            c.holdout.data_dir = eval_dir
        c.eval.data_dir = ""
    return c


def train_and_evaluate(config: Any, workdir: str):
    """`trainer.train` of `prepare_config` (config): the loop runs the task's ``holdout``
    evaluator when a hold-out set is configured; the result's ``eval_results`` are the loop's
    (``holdout/<metric>``)."""
    from hfrjax.train import trainer

    return trainer.train(prepare_config(config), workdir)


def evaluate_workdir(workdir: str | Path) -> dict:
    """The hold-out evaluation of a training workdir's newest checkpoint, merged as the loop
    merges it (``holdout/<metric>``) and written to the workdir's ``eval.json``."""
    import ml_collections

    from hfrjax.tasks import parse_config
    from hfrjax.train import checkpoint as ckpt_lib
    from hfrjax.train import mesh as mesh_lib
    from hfrjax.train.evaluation import merge_results

    workdir = Path(workdir)
    ck = ckpt_lib.Checkpointer(workdir / "checkpoints", async_save=False)
    try:
        step, raw, meta = ck.restore_untyped(ck.latest_readable_step())
    finally:
        ck.close()
    if meta.get("task") != "ftl":
        raise ValueError(f"{workdir} was trained by task {meta.get('task')!r}, not 'ftl'")
    config = prepare_config(ml_collections.ConfigDict(meta["config"]))
    _, _, task_cfg = parse_config(config)
    result = evaluation.evaluate_trained(
        task_cfg, meta["export"]["model"], raw["params"], raw["model_state"], raw.get("extra"),
        mesh_lib.make_mesh(), workdir, step,
    )
    merged = merge_results(None, {evaluation.EVALUATOR: result})
    merged["step"] = int(step)
    if jax.process_index() == 0:
        text = json.dumps(merged, indent=1, default=float) + "\n"
        write_text_atomic(workdir / "eval.json", text)
    return merged


def run_table(sweep_config: Any, out_dir: str, **kwargs) -> dict:
    """`hfrjax.sweep.run_sweep` with `train_and_evaluate` as its trainer."""
    from hfrjax import sweep

    return sweep.run_sweep(sweep_config, out_dir, train_fn=train_and_evaluate, **kwargs)


# ------------------------------------------------------------------------------------------
# Command line.


def _set(config, assignment: str) -> None:
    key, sep, text = assignment.partition("=")
    if not sep:
        raise SystemExit(f"--set expects key=value, got {assignment!r}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    node = config
    *path, last = key.split(".")
    for k in path:
        node = node[k]
    if last not in node:
        raise SystemExit(f"--set {key}: no such config key")
    node[last] = tuple(value) if isinstance(value, list) else value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hfrjax.recipes.ftl.run", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (or resume) one run, then evaluate it")
    t.add_argument("--config", required=True, help="config file path.py[:arg]")
    t.add_argument("--workdir", required=True)
    t.add_argument("--set", action="append", default=[], help="key=value override")
    e = sub.add_parser("evaluate", help="evaluate a workdir's newest checkpoint")
    e.add_argument("--workdir", required=True)
    s = sub.add_parser("sweep", help="run a sweep config with the FTL evaluation")
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--data_dir", default=None)
    s.add_argument("--synth", default=None, help="generate this synthetic preset into data_dir")
    s.add_argument("--image_size", type=int, default=None, help="crop size of --synth")
    s.add_argument("--only", default=None, help="comma-separated cell patterns")
    s.add_argument("--seeds", default=None, help="e.g. 0,1,2")
    s.add_argument("--keep_going", action="store_true")
    s.add_argument("--dry_run", action="store_true")
    args = ap.parse_args(argv)
    from hfrjax import sweep

    if args.command == "train":
        config = sweep.load_config(args.config, Path.cwd() if Path(args.config.split(":")[0]).is_file() else None)
        for a in args.set:
            _set(config, a)
        r = train_and_evaluate(config, args.workdir)
        print(json.dumps((r.eval_results or {}).get("mean"), indent=1, default=float))
    elif args.command == "evaluate":
        print(json.dumps(evaluate_workdir(args.workdir)["mean"], indent=1))
    else:
        config = sweep.load_config(args.config)
        seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
        only = args.only.split(",") if args.only else None
        plan = sweep.plan_sweep(config, args.out, only=only, data_dir=args.data_dir, seeds=seeds)
        if not args.dry_run:  # Cells share shapes: the persistent cache compiles them once.
            jax.config.update("jax_compilation_cache_dir", str(Path(args.out).absolute() / "jax_cache"))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        if args.synth and not args.dry_run and not (Path(plan.data_dir) / "synth.json").exists():
            from hfrjax.data import synthetic

            print(f"generating synthetic data ({args.synth}) into {plan.data_dir}", flush=True)
            synthetic.generate(plan.data_dir, preset=args.synth, seed=0, image_size=args.image_size)
        run_table(
            config, args.out, only=only, data_dir=args.data_dir, seeds=seeds,
            keep_going=args.keep_going, dry_run=args.dry_run,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
