"""Train an ``ftl`` run and evaluate it on the hold-out set; or a whole Table 1 sweep.

The loop's own evaluation (``eval.data_dir``) runs HFR protocols; FTL's nearest-centre rank-1
(§4.3) needs each class's *training* images as its gallery, which no protocol holds, so it runs
here, after `hfrjax.train.trainer.train`:

  python -m hfrjax.recipes.ftl.run train --config=configs/ftl/synthetic.py:variant=10K30K \\
      --workdir=/tmp/ftl_run
  python -m hfrjax.recipes.ftl.run evaluate --workdir=/tmp/ftl_run
  python -m hfrjax.recipes.ftl.run sweep --config=configs/ftl/table1_synthetic.py \\
      --out=/tmp/ftl_table1 --synth=longtail

`train_and_evaluate(config, workdir)` is the sweep's ``train_fn``: it trains (resuming as the
trainer does), then writes ``ftl_eval.json`` and ``eval.json`` (a one-"fold" result in the
protocol format, so `hfrjax.sweep` tables it) and ``weight_norms.png``. A sweep stage must set
``eval.data_dir`` (the sweep's rule for evaluated stages): a directory without ``protocols/``
there is taken as the FTL hold-out set (``holdout.data_dir``) and the loop's protocol
evaluation is skipped.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from hfrjax.fileio import write_text_atomic
from hfrjax.recipes.ftl import evaluation, statistics

EVAL_FILE = "ftl_eval.json"


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


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def evaluate_trained(
    cfg, model_cfg: dict, params, model_state, extra, mesh, workdir: str | Path, step: int
) -> dict:
    """The hold-out evaluation of trained variables (``cfg``: the task's `FTLConfig`)."""
    from hfrjax import models
    from hfrjax.data import pipeline
    from hfrjax.recipes.ftl.device import MeshFunction

    h = cfg.holdout
    if not h.data_dir:
        raise ValueError("no hold-out set: set holdout.data_dir (or eval.data_dir in a sweep)")
    network = models.get_model(model_cfg["name"], **model_cfg["kwargs"])
    fn = MeshFunction(evaluation.features_function(network), params, model_state, mesh)
    size = model_cfg["kwargs"]["input_size"]
    r = evaluation.evaluate_holdout(
        fn,
        train_dir=cfg.input.data_dir,
        holdout_dir=h.data_dir,
        gallery_dir=h.gallery_dir,
        pack=h.pack,
        batch_size=h.batch_size,
        image_size=(size, size),
        channels=cfg.input.channels,
        flip=h.flip,
    )
    _, class_ids, _ = pipeline.select_train_records(cfg.input)
    kernel = np.asarray(params["fc"]["kernel"])
    sizes = statistics.class_sizes(class_ids, kernel.shape[1])
    after = np.linalg.norm(kernel, axis=0)
    before = None
    if extra and int(np.asarray(extra.get("stats_version", 0))) > 0:
        before = np.asarray(extra["fc_norm_pretrained"])
    ur_max = cfg.stats.ur_max_images
    norms = {"after": evaluation.weight_norm_summary(after, sizes, ur_max)}
    if before is not None:
        norms["before"] = evaluation.weight_norm_summary(before, sizes, ur_max)
    workdir = Path(workdir)
    if h.plot and jax.process_index() == 0:
        evaluation.plot_weight_norms(
            workdir / evaluation.PLOT_FILE, sizes, after, before, ur_max_images=ur_max,
            title=f"FTL mode {cfg.mode}: classifier weight norm vs class size",
        )
    metrics = r["metrics"]
    result = {
        "protocol": "ftl_holdout",
        "direction": "vis->vis",
        "metrics": list(metrics),
        "folds": [{"fold": 1, "metrics": metrics}],
        "mean": dict(metrics),
        "std": {k: 0.0 for k in metrics},
        "step": int(step),
        "mode": cfg.mode,
        "train_dir": cfg.input.data_dir,
        "holdout_dir": h.data_dir,
        "counts": r["counts"],
        "weight_norms": norms,
        "verification": {
            k: {n: v for n, v in res.items() if n in ("accuracy", "accuracy_std", "threshold")}
            for k, res in r["verification"].items()
        },
    }
    result = _jsonable(result)
    if jax.process_index() == 0:
        text = json.dumps(result, indent=1) + "\n"
        write_text_atomic(workdir / EVAL_FILE, text)
        write_text_atomic(workdir / "eval.json", text)
    return result


def train_and_evaluate(config: Any, workdir: str):
    """`trainer.train` then the hold-out evaluation (when a hold-out set is configured);
    returns the trainer's result with ``eval_results`` set to it (an already evaluated final
    step is read back, not redone)."""
    from hfrjax.tasks import parse_config
    from hfrjax.train import trainer

    config = prepare_config(config)
    _, _, task_cfg = parse_config(config)
    result = trainer.train(config, workdir)
    if not task_cfg.holdout.data_dir:  # No hold-out set (e.g. full MS1M with LFW packs only).
        return result
    step = int(jax.device_get(result.state.step))
    done = Path(workdir) / EVAL_FILE
    if done.exists():
        old = json.loads(done.read_text(encoding="utf-8"))
        if old.get("step") == step:
            return dataclasses.replace(result, eval_results=old)
    state = jax.device_get(result.state)
    ev = evaluate_trained(
        task_cfg, result.setup.export.model, state.params, state.model_state, state.extra,
        result.mesh, workdir, step,
    )
    return dataclasses.replace(result, eval_results=ev)


def evaluate_workdir(workdir: str | Path) -> dict:
    """The hold-out evaluation of a training workdir's newest checkpoint."""
    import ml_collections

    from hfrjax.tasks import parse_config
    from hfrjax.train import checkpoint as ckpt_lib
    from hfrjax.train import mesh as mesh_lib

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
    return evaluate_trained(
        task_cfg, meta["export"]["model"], raw["params"], raw["model_state"], raw.get("extra"),
        mesh_lib.make_mesh(), workdir, step,
    )


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
        print(json.dumps(r.eval_results["mean"], indent=1))
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
