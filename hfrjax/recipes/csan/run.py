"""Train CSAN, then test it the way the paper reports: re-id in both directions (RegDB),
verification per probe/gallery set (ARL-VTF), and sweeps of such runs.

  python -m hfrjax.recipes.csan.run train --config=configs/csan/regdb.py:trial=1 \
      --workdir=/tmp/csan/regdb1 --set input.data_dir=/data/regdb
  python -m hfrjax.recipes.csan.run sweep --config=configs/csan/tables_synthetic.py \
      --out=/tmp/csan_tables --synth
  python -m hfrjax.recipes.csan.run synth --out=/tmp/csan_tables/data

Why not only ``launch/train.py``: the loop's end-of-training evaluation runs a protocol in its
NIR->VIS direction; CSAN's benchmarks need thermal->visible and visible->thermal, re-id
metrics (CMC, mAP, mINP) and TAR at FAR 1 % / 5 %. `train_and_test` therefore runs the loop
without its evaluation and then the config's ``test`` section (data: ``test.data_dir`` or
``eval.data_dir``; folds: ``test.folds`` or ``eval.folds``); several directions are merged into
one result whose metric names carry the direction. It writes ``test.json`` (every direction)
and ``eval.json`` (the merged result, what sweeps tabulate) in the workdir.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import json
import sys
import types
from pathlib import Path
from typing import Any

from hfrjax.fileio import write_text_atomic
from hfrjax.recipes.csan import pretrain  # noqa: F401 - registers vgg16_conv3_gap.

# The synthetic scale of the CSAN tables: the NIR-VIS "quickstart" sets (its VIS source set
# pretrains the VGG, its target set is CSAN's) and a thermal-visible set of 60 training and 40
# test identities (3 baseline, 2 expression captures per condition).
SYNTH_NIRVIS = "nirvis"
SYNTH_THERMAL = "thermal"
SYNTH_IMAGE_SIZE = 64


def evaluate(embed_fn, test_cfg, data_dir: str, folds, image_size) -> dict[str, Any]:
    """{direction: result} of `evaluate_reid` / `evaluate_protocol` for ``test_cfg``."""
    out = {}
    for direction in test_cfg.directions:
        if test_cfg.kind == "reid":
            from hfrjax.eval.reid import evaluate_reid

            out[direction] = evaluate_reid(
                embed_fn, data_dir, mode=test_cfg.mode or None, direction=direction,
                folds=folds, batch_size=test_cfg.batch_size, image_size=image_size,
            )
        elif test_cfg.kind == "protocol":
            from hfrjax.eval.protocols import evaluate_protocol

            out[direction] = evaluate_protocol(
                embed_fn, data_dir, folds=folds, direction=direction,
                batch_size=test_cfg.batch_size, fars=tuple(test_cfg.fars),
                image_size=image_size, ranks=(1, 10, 20),
            )
        else:
            raise ValueError(f"test.kind must be 'reid' or 'protocol', got {test_cfg.kind!r}")
    return out


def merge_directions(results: dict[str, dict]) -> dict[str, Any]:
    """One result from several directions: per fold, metrics named "<direction> <metric>"."""
    from hfrjax.eval import metrics

    if len(results) == 1:
        return next(iter(results.values()))
    first = next(iter(results.values()))
    folds = []
    for i, f in enumerate(first["folds"]):
        merged = {}
        for d, r in results.items():
            merged.update({f"{d} {n}": v for n, v in r["folds"][i]["metrics"].items()})
        folds.append({"fold": f["fold"], "name": f.get("name", str(f["fold"])), "metrics": merged})
    mean, std = metrics.aggregate([f["metrics"] for f in folds])
    return {
        "protocol": first.get("protocol"),
        "dataset": first.get("dataset"),
        "directions": list(results),
        "metrics": list(folds[0]["metrics"]),
        "folds": folds,
        "mean": mean,
        "std": std,
    }


def train_and_test(config, workdir: str):
    """The loop (without its own evaluation), then the ``test`` section; returns an object
    with ``state`` and ``eval_results`` (the merged result), as sweeps expect."""
    from hfrjax.tasks import parse_config
    from hfrjax.train import trainer

    task, loop_cfg, task_cfg = parse_config(config)
    if task.name != "csan":  # E.g. the synthetic tables' backbone pretraining.
        return trainer.train(config, workdir)
    test = task_cfg.test
    data_dir = test.data_dir or loop_cfg.eval.data_dir
    folds = list(test.folds or loop_cfg.eval.folds or []) or None
    run_config = copy.deepcopy(config)
    run_config.eval.data_dir = ""  # The loop's NIR->VIS evaluation is replaced below.
    result = trainer.train(run_config, workdir)
    merged = None
    if data_dir:
        size = result.setup.eval_input.get("image_size")
        per_direction = evaluate(result.embedder, test, data_dir, folds, size)
        merged = merge_directions(per_direction)
        write_text_atomic(
            Path(workdir) / "test.json", json.dumps(per_direction, indent=1, default=float) + "\n"
        )
        write_text_atomic(
            Path(workdir) / "eval.json", json.dumps(merged, indent=1, default=float) + "\n"
        )
        from hfrjax.eval import report

        for d, r in per_direction.items():
            table = report.paper_table({Path(workdir).name: r}, note=False)
            print(f"test {d}:\n{table}", flush=True)
    return types.SimpleNamespace(state=result.state, eval_results=merged, setup=result.setup)


def generate_synthetic(
    out: str, *, tiny: bool = False, workers: int | None = None
) -> dict[str, str]:
    """The synthetic data of the CSAN tables (module constants) under ``out``; skipped where
    already present. ``tiny``: the "tiny" and "thermal_tiny" presets at 32x32 (tests).
    Returns {name: dataset directory}."""
    from hfrjax.data import synthetic
    from hfrjax.data.synthetic.thermal_vis import thermal_vis_config

    root = Path(out)
    size = 32 if tiny else SYNTH_IMAGE_SIZE
    if not (root / SYNTH_NIRVIS / "synth.json").exists():
        # The target set trains CSAN, the VIS source set pretrains its VGG; the cross-sensor
        # set is not used and kept minimal (each set is seeded on its own).
        config = synthetic.preset_config("tiny" if tiny else "quickstart")
        config = dataclasses.replace(
            config, cross=dataclasses.replace(config.cross, num_ids=4, num_shards=1)
        )
        synthetic.generate(root / SYNTH_NIRVIS, config=config, image_size=size, workers=workers)
    if not (root / SYNTH_THERMAL / "synth.json").exists():
        config = (
            synthetic.preset_config("thermal_tiny") if tiny else thermal_vis_config(60, 40, 3, 2, 2)
        )
        synthetic.generate(root / SYNTH_THERMAL, config=config, image_size=size, workers=workers)
    return {
        SYNTH_NIRVIS: str(root / SYNTH_NIRVIS / "target"),
        SYNTH_THERMAL: str(root / SYNTH_THERMAL / "thermal_vis"),
    }


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hfrjax.recipes.csan.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train one config, then test it")
    p_train.add_argument("--config", required=True, help="config file, path.py[:arg]")
    p_train.add_argument("--workdir", required=True)
    p_train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config key (repeatable)")
    p_sweep = sub.add_parser("sweep", help="run a sweep config with train_and_test")
    p_sweep.add_argument("--config", required=True)
    p_sweep.add_argument("--out", required=True)
    p_sweep.add_argument("--data_dir", default=None)
    p_sweep.add_argument("--only", default=None, help="comma-separated cell globs")
    p_sweep.add_argument("--synth", action="store_true", help="generate the synthetic data first")
    p_sweep.add_argument("--dry_run", action="store_true")
    p_sweep.add_argument("--keep_going", action="store_true")
    p_synth = sub.add_parser("synth", help="generate the synthetic NIR-VIS and thermal sets")
    p_synth.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from hfrjax import sweep

    if args.command == "synth":
        print(json.dumps(generate_synthetic(args.out), indent=1))
        return 0
    if args.command == "train":
        config = sweep.load_config(args.config)
        for item in args.set:
            key, _, value = item.partition("=")
            config.update_from_flattened_dict({key: _parse_value(value)})
        train_and_test(config, args.workdir)
        return 0
    config = sweep.load_config(args.config)
    only = args.only.split(",") if args.only else None
    plan = sweep.plan_sweep(config, args.out, only=only, data_dir=args.data_dir)
    if args.synth and not args.dry_run:
        generate_synthetic(plan.data_dir)
    if not args.dry_run:
        import jax

        jax.config.update("jax_compilation_cache_dir", str(Path(args.out) / "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    sweep.run_sweep(
        config, args.out, only=only, data_dir=args.data_dir, dry_run=args.dry_run,
        keep_going=args.keep_going, train_fn=train_and_test,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
