"""Ablation sweeps with a fake trainer: sharing, placeholders, resume, tables, errors, CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hfrjax import sweep

REPO = Path(__file__).resolve().parents[1]

STAGE_CONFIG = """
import ml_collections

def get_config(arg="pretrain"):
    c = ml_collections.ConfigDict()
    c.kind = arg
    c.seed = 0
    c.lr = 0.1
    c.init_from = ""
    c.input = dict(data_dir="", seed=0)
    c.eval = dict(data_dir="", folds=[1, 2])
    return c
"""

# 2 pretrainings x 2 fine-tunings: each pretraining is shared by two cells.
SWEEP_CONFIG = """
import ml_collections
from hfrjax.sweep import grid, stage

STAGE = {stage!r}

def get_config(arg=None):
    def stages(p):
        return [
            stage("pretrain", STAGE + ":pretrain",
                  {{"input.data_dir": "{{data}}/source", **p.overrides("pre")}}, evaluate=False),
            stage("finetune", STAGE + ":finetune",
                  {{"init_from": "{{stage:pretrain}}", "input.data_dir": "{{data}}/target",
                   "eval.data_dir": "{{data}}/target", **p.overrides("ft")}}),
        ]

    cells = grid(
        {{"pre": [("preA", {{"lr": 0.1}}), ("preB", {{"lr": 0.2}})],
         "ft": [("ftX", {{"lr": 0.01}}), ("ftY", {{"lr": 0.03}})]}},
        stages,
    )
    return ml_collections.ConfigDict(dict(
        name="toy", cells=cells, seeds=[0, 1], data_dir={data!r},
        table=dict(metrics=["TAR@FAR=1e-3", "Rank-1"]),
    ))
"""

CELLS = ["preA-ftX", "preA-ftY", "preB-ftX", "preB-ftY"]


def fold_metrics(lr: float, seed: int, fold: int) -> dict:
    """What the fake trainer reports: TAR depends on lr, seed and fold; Rank-1 on lr only."""
    return {"TAR@FAR=1e-3": lr * (1 + seed) + 0.001 * fold, "Rank-1": 0.5 + lr}


class FakeTrainer:
    """Records calls; writes a checkpoint marker, then (unless interrupted) an eval.json."""

    def __init__(self, interrupt_at=None, fail_lr=None):
        self.calls, self.resumed = [], []
        self.interrupt_at, self.fail_lr = interrupt_at, fail_lr

    def __call__(self, config, workdir):
        wd = Path(workdir)
        self.calls.append((wd, config))
        self.resumed.append((wd / "ckpt").exists())
        (wd / "ckpt").write_text("step 5")
        if config.init_from:  # A dependency ran (and finished) before.
            assert (Path(config.init_from) / sweep.DONE_JSON).is_file()
        if self.interrupt_at == len(self.calls):
            raise KeyboardInterrupt
        if self.fail_lr is not None and config.lr == self.fail_lr:
            raise FloatingPointError("loss is nan")
        if config.kind == "pretrain" or not config.eval.data_dir:
            return SimpleNamespace(eval_results=None, state=SimpleNamespace(step=7))
        folds = [
            {"fold": k, "metrics": fold_metrics(config.lr, config.seed, k)}
            for k in config.eval.folds
        ]
        names = list(folds[0]["metrics"])
        ev = {
            "direction": "nir->vis",
            "metrics": names,
            "folds": folds,
            "mean": {n: float(np.mean([f["metrics"][n] for f in folds])) for n in names},
            "std": {n: float(np.std([f["metrics"][n] for f in folds])) for n in names},
        }
        (wd / "eval.json").write_text(json.dumps(ev))
        return SimpleNamespace(eval_results=ev, state=SimpleNamespace(step=10))


@pytest.fixture
def toy(tmp_path):
    stage_path = tmp_path / "stage_cfg.py"
    stage_path.write_text(STAGE_CONFIG)
    sweep_path = tmp_path / "toy_sweep.py"
    data = str(tmp_path / "data")
    sweep_path.write_text(SWEEP_CONFIG.format(stage=str(stage_path), data=data))
    return SimpleNamespace(
        sweep_path=sweep_path,
        stage_path=stage_path,
        data=data,
        cfg=sweep.load_config(str(sweep_path)),
        out=tmp_path / "out",
    )


def _run(toy, trainer, **kw):
    lines = []
    sweep.run_sweep(toy.cfg, toy.out, train_fn=trainer, say=lines.append, **kw)
    return lines


def _cfg(cells, **extra):
    return dict(cells=cells, data_dir="/data", **extra)


def _stage(stage_path, name="s", arg="finetune", **overrides):
    overrides.setdefault("eval.data_dir", "/data/t")
    return sweep.stage(name, f"{stage_path}:{arg}", overrides)


# --------------------------------------------------------------------------------------------


def test_grid_names_order_and_overrides():
    seen = []

    def make(p):
        seen.append(p)
        return [sweep.stage("s", "c.py", p.overrides())]

    cells = sweep.grid(
        {"m": [("arc", {"a": 1}), ("cos", {"a": 2})], "h": [("mec", {"b": 1}), ("rnd", {})]},
        make,
    )
    assert [c["name"] for c in cells] == ["arc-mec", "arc-rnd", "cos-mec", "cos-rnd"]
    assert cells[0]["stages"][0]["overrides"] == {"a": 1, "b": 1}
    assert cells[3]["stages"][0]["overrides"] == {"a": 2}
    assert seen[2].labels == {"m": "cos", "h": "mec"}
    assert seen[2].overrides("h") == {"b": 1}
    clash = sweep.grid({"x": [("p", {"k": 1})], "y": [("q", {"k": 2})]}, lambda p: [])[0]
    assert clash["name"] == "p-q"
    with pytest.raises(ValueError, match="'k'"):
        sweep.grid({"x": [("p", {"k": 1})], "y": [("q", {"k": 2})]}, lambda p: [p.overrides()])
    with pytest.raises(ValueError, match="axis 'x'"):
        sweep.grid({"x": ["just-a-label"]}, lambda p: [])


def test_shared_stages_run_once_and_placeholders_resolve(toy):
    trainer = FakeTrainer()
    _run(toy, trainer)
    # Per seed: 2 distinct pretrainings (each shared by 2 cells) + 4 fine-tunings.
    assert len(trainer.calls) == 12
    dirs = [wd for wd, _ in trainer.calls]
    assert len(set(dirs)) == 12
    pre = [(wd, c) for wd, c in trainer.calls if c.kind == "pretrain"]
    ft = [(wd, c) for wd, c in trainer.calls if c.kind == "finetune"]
    assert len(pre) == 4 and len(ft) == 8
    assert all(wd.parent == toy.out / "runs" and wd.name.startswith("pretrain-") for wd, _ in pre)
    pre_dir = {(c.lr, c.seed): wd for wd, c in pre}
    for wd, c in trainer.calls:
        assert c.seed == c.input.seed  # The sweep's seed, set on both.
        want = "source" if c.kind == "pretrain" else "target"
        assert c.input.data_dir == f"{toy.data}/{want}"
    plan = json.loads((toy.out / sweep.PLAN_JSON).read_text())
    for seed in (0, 1):
        cells = plan["cells"]
        assert (
            cells["preA-ftX"][str(seed)]["pretrain"]["workdir"]
            == cells["preA-ftY"][str(seed)]["pretrain"]["workdir"]
            != cells["preB-ftX"][str(seed)]["pretrain"]["workdir"]
        )
        for cell in CELLS:
            pre_lr = 0.1 if cell.startswith("preA") else 0.2
            ft_lr = 0.01 if cell.endswith("ftX") else 0.03
            ft_dir = toy.out / cells[cell][str(seed)]["finetune"]["workdir"]
            ft_cfg = next(c for wd, c in ft if wd == ft_dir)
            assert ft_cfg.init_from == str(pre_dir[(pre_lr, seed)])
            assert ft_cfg.lr == ft_lr and ft_cfg.seed == seed
    done = json.loads((dirs[0] / sweep.DONE_JSON).read_text())
    assert done["step"] == 7 and done["wall_seconds"] >= 0


def test_rerun_skips_done_stages(toy):
    _run(toy, FakeTrainer())
    again = FakeTrainer()
    lines = _run(toy, again)
    assert again.calls == []
    assert sum("(skipped: done)" in line for line in lines) == 12
    assert lines[0].startswith("[1/12] cell=preA-ftX seed=0 stage=pretrain")


def test_interrupted_stage_resumes_and_the_rest_finishes(toy):
    first = FakeTrainer(interrupt_at=3)  # pretrain A, fine-tune A-X, fine-tune A-Y.
    with pytest.raises(KeyboardInterrupt):
        _run(toy, first)
    interrupted = first.calls[2][0]
    assert (interrupted / "ckpt").exists() and not (interrupted / sweep.DONE_JSON).exists()
    partial = (toy.out / sweep.TABLES_MD).read_text()
    assert (
        "| preA-ftX | 1.15 ± 0.05 | 51.00 ± 0.00 | seed 0; fold 1, 2 (seed 1 pending) |" in partial
    )
    assert "| preB-ftY | – | – | pending |" in partial
    assert json.loads((toy.out / sweep.RESULTS_JSON).read_text())["preB-ftX"] == {}

    second = FakeTrainer()
    lines = _run(toy, second)
    assert len(second.calls) == 12 - 2
    assert second.calls[0][0] == interrupted and second.resumed[0]  # Resumed from its ckpt.
    assert not any(second.resumed[1:])
    assert "(skipped: done)" in lines[0] and "(running)" in lines[2]
    assert "ETA" in lines[2]
    assert (toy.out / sweep.TABLES_MD).read_text().count("pending") == 0


def test_table_mean_std_over_seeds_and_folds(toy):
    results = sweep.run_sweep(toy.cfg, toy.out, train_fn=FakeTrainer(), say=lambda m: None)
    assert json.loads((toy.out / sweep.RESULTS_JSON).read_text()) == results
    assert sorted(results) == sorted(CELLS) and all(
        sorted(v) == ["0", "1"] for v in results.values()
    )
    text = (toy.out / sweep.TABLES_MD).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| pre")]
    assert [r.split(" | ")[0][2:] for r in rows] == CELLS
    for row, cell in zip(rows, CELLS):
        lr = 0.01 if cell.endswith("ftX") else 0.03
        tar = [lr * (1 + s) + 0.001 * k for s in (0, 1) for k in (1, 2)]  # By hand.
        want = f"{100 * np.mean(tar):.2f} ± {100 * np.std(tar):.2f}"
        assert row == f"| {cell} | {want} | {100 * (0.5 + lr):.2f} ± 0.00 | seed 0, 1; fold 1, 2 |"
    assert "| preA-ftY | 4.65 ± 1.50 | 53.00 ± 0.00 | seed 0, 1; fold 1, 2 |" in text
    assert text.startswith("# toy") and "seeds 0, 1" in text


def test_dry_run_trains_and_writes_nothing(toy):
    trainer = FakeTrainer()
    lines = _run(toy, trainer, dry_run=True)
    assert trainer.calls == [] and not toy.out.exists()
    text = "\n".join(lines)
    assert "16 stage uses -> 12 distinct runs (0 done, 12 to train)" in text
    assert "shared workdirs: 4" in text
    assert "cell=preB-ftY seed=1 stage=finetune" in text


def test_only_runs_the_selected_cells(toy):
    trainer = FakeTrainer()
    _run(toy, trainer, only="preB-*", seeds=[3])
    assert len(trainer.calls) == 3 and {c.seed for _, c in trainer.calls} == {3}
    with pytest.raises(ValueError, match="'nope'"):
        _run(toy, trainer, only="nope")


def test_cell_references_fold_stages_and_seed_shared_stages(tmp_path):
    stage_path = tmp_path / "stage_cfg.py"
    stage_path.write_text(STAGE_CONFIG)
    spec = f"{stage_path}:finetune"
    base = sweep.stage("pre", f"{stage_path}:pretrain", {"seed": 0, "input.seed": 0})
    cells = [
        {"name": "base", "stages": [base, _stage(stage_path, "zero", lr=0.02)]},
        {
            "name": "perfold",
            "stages": [
                sweep.stage(
                    f"ft{k}",
                    spec,
                    {
                        "init_from": "{cell:base/pre}",
                        "eval.data_dir": "{data}",
                        "eval.folds": [k],
                        "+note": "{workdir}",
                    },
                    evaluate=True,
                )
                for k in (1, 2)
            ],
        },
    ]
    trainer = FakeTrainer()
    out = tmp_path / "out"
    results = sweep.run_sweep(_cfg(cells, seeds=[0, 1]), out, train_fn=trainer, say=lambda m: None)
    pres = [wd for wd, c in trainer.calls if c.kind == "pretrain"]
    assert len(pres) == 1  # Its seeds are fixed by the stage: one run serves both seeds.
    ft = [c for _, c in trainer.calls if c.kind == "finetune" and c.init_from]
    assert len(ft) == 4 and {c.init_from for c in ft} == {str(pres[0])}
    assert {c.note for c in ft} == {str(out / "cells" / "perfold" / f"seed_{s}") for s in (0, 1)}
    pooled = results["perfold"]["1"]
    assert [f["fold"] for f in pooled["folds"]] == [1, 2]
    tar = [fold_metrics(0.1, 1, k)["TAR@FAR=1e-3"] for k in (1, 2)]
    assert pooled["mean"]["TAR@FAR=1e-3"] == pytest.approx(np.mean(tar))
    assert pooled["std"]["TAR@FAR=1e-3"] == pytest.approx(np.std(tar))
    # Overlapping folds across evaluated stages cannot be pooled.
    cells[1]["stages"][1]["overrides"]["eval.folds"] = [1]
    with pytest.raises(ValueError, match="both evaluate fold 1"):
        sweep.plan_sweep(_cfg(cells), out)


def test_keep_going_skips_dependents_and_reports_failures(toy):
    trainer = FakeTrainer(fail_lr=0.2)  # Pretraining B fails: its two cells cannot run.
    with pytest.raises(RuntimeError, match="FloatingPointError: loss is nan"):
        _run(toy, trainer, keep_going=True, seeds=[0])
    assert len(trainer.calls) == 4
    text = (toy.out / sweep.TABLES_MD).read_text()
    assert "| preB-ftX | – | – | failed |" in text and "| preA-ftY | 3.15" in text


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c, p: c.append({"name": "a", "stages": [_stage(p)]}), "duplicate cell name 'a'"),
        (lambda c, p: c[0]["stages"].append(_stage(p, "t", x="{oops}")), r"placeholder \{oops\}"),
        (lambda c, p: c[0]["stages"].append(_stage(p, "t", x="{stage:t}")), r"\{stage:t\}"),
        (lambda c, p: c[0]["stages"].append(_stage(p, "t", x="{cell:zz/s}")), "unknown cell 'zz'"),
        (lambda c, p: c[0]["stages"].append(_stage(p, "t", x="{cell:a/q}")), "no stage 'q'"),
        (lambda c, p: c[0]["stages"].append(_stage(p, "t", lrr=1.0)), "'lrr' names no field"),
        (lambda c, p: c[0]["stages"].append(_stage(p, "t", lr="fast")), "lr='fast'"),
        (lambda c, p: c[0]["stages"].append(sweep.stage("t", "configs/nope.py:x")), "nope.py"),
        (lambda c, p: c[0]["stages"].append(sweep.stage("t", f"{p}:finetune")), "eval.data_dir"),
        (lambda c, p: c.append({"name": "b/c", "stages": [_stage(p)]}), "'b/c'"),
    ],
)
def test_bad_sweeps_raise_naming_the_problem(tmp_path, mutate, match):
    stage_path = tmp_path / "stage_cfg.py"
    stage_path.write_text(STAGE_CONFIG)
    cells = [{"name": "a", "stages": [_stage(stage_path)]}]
    sweep.plan_sweep(_cfg(cells), tmp_path / "out")  # Valid as it is.
    mutate(cells, stage_path)
    with pytest.raises(ValueError, match=match):
        sweep.plan_sweep(_cfg(cells), tmp_path / "out")


def test_missing_data_dir_and_unknown_sweep_keys(tmp_path):
    stage_path = tmp_path / "stage_cfg.py"
    stage_path.write_text(STAGE_CONFIG)
    cells = [{"name": "a", "stages": [_stage(stage_path, x="{data}/t")]}]
    with pytest.raises(ValueError, match="no data_dir"):
        sweep.plan_sweep({"cells": cells}, tmp_path)
    with pytest.raises(ValueError, match="'seed'"):
        sweep.plan_sweep({"cells": cells, "seed": [0]}, tmp_path)


def test_launch_dry_run_subprocess(toy):
    cmd = [
        sys.executable,
        str(REPO / "launch" / "sweep.py"),
        f"--config={toy.sweep_path}",
        f"--out={toy.out}",
        "--data_dir=/elsewhere",
        "--only=preA-*",
        "--dry_run",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 of 4 cells x 2 seed(s) [0, 1]" in out.stdout
    assert "data_dir: /elsewhere" in out.stdout
    assert "cell=preA-ftY seed=1 stage=finetune" in out.stdout
    assert "preB" not in out.stdout and not toy.out.exists()
    bad = subprocess.run(
        cmd[:-2] + ["--only=nothing", "--dry_run"], env=env, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "'nothing' matches no cell" in bad.stderr


def test_docstring_names_the_command():
    doc = (REPO / "launch" / "sweep.py").read_text()
    assert "python launch/sweep.py --config=configs/rethink/tables_synthetic.py" in doc


# A task that evaluates by itself (`TaskSetup.evaluators`) when its config names a hold-out set.
EVALUATING_TASK_CONFIG = """
from hfrjax.tasks import default_config

def get_config(arg=None):
    return default_config("sweep_toy_evaluating")
"""


def _evaluating_task(monkeypatch):
    import dataclasses

    from hfrjax import tasks

    @dataclasses.dataclass(frozen=True)
    class ToyConfig(tasks.Section):
        holdout_dir: str = ""

    class ToyTask:
        name = "sweep_toy_evaluating"
        config_class = ToyConfig

        def evaluator_names(self, cfg):
            return ["holdout"] if cfg.holdout_dir else []

        def setup(self, cfg, ctx):  # The sweep must not build the task.
            raise AssertionError("setup called while planning")

    monkeypatch.setitem(tasks._REGISTRY, ToyTask.name, ToyTask)


def test_evaluated_stage_without_eval_data_dir_needs_task_evaluators(tmp_path, monkeypatch):
    _evaluating_task(monkeypatch)
    path = tmp_path / "evaluating_cfg.py"
    path.write_text(EVALUATING_TASK_CONFIG)
    with_holdout = [{"name": "a", "stages": [sweep.stage("s", str(path), {"holdout_dir": "/h"})]}]
    plan = sweep.plan_sweep(_cfg(with_holdout), tmp_path / "out")
    assert plan.runs[0].evaluate and plan.runs[0].config.eval.data_dir == ""
    # The same task without a hold-out declares no evaluator: the clear error stays.
    bare = [{"name": "a", "stages": [sweep.stage("s", str(path))]}]
    with pytest.raises(ValueError, match="sets no eval.data_dir and its task declares no eval"):
        sweep.plan_sweep(_cfg(bare), tmp_path / "out")
    # A bad value of the task's section is named with the stage at fault.
    typo = [{"name": "a", "stages": [sweep.stage("s", str(path), {"+holdout_dri": "/h"})]}]
    with pytest.raises(ValueError, match=r"cell 'a'.*'holdout_dri'"):
        sweep.plan_sweep(_cfg(typo), tmp_path / "out")
    # Run with a trainer whose result is the task evaluator's alone: it makes the table.
    ev = {
        "metrics": ["holdout/acc"],
        "folds": [{"fold": None, "metrics": {"holdout/acc": 0.25}}],
        "mean": {"holdout/acc": 0.25},
        "std": {"holdout/acc": 0.0},
    }
    results = sweep.run_sweep(
        _cfg(with_holdout, table={"metrics": ["holdout/acc"]}),
        tmp_path / "out",
        train_fn=lambda c, w: SimpleNamespace(eval_results=ev, state=SimpleNamespace(step=1)),
        say=lambda m: None,
    )
    assert results["a"]
    assert "| a | 25.00" in (tmp_path / "out" / sweep.TABLES_MD).read_text()
