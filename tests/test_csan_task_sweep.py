"""The CSAN synthetic sweep (configs/csan/tables_synthetic.py): its plan, and (slow) Table I's
rows at tiny size through `hfrjax.recipes.csan.run.train_and_test`."""

import json

import pytest

from hfrjax import sweep
from hfrjax.recipes.csan import run


def test_plan_shares_the_lambda_runs_with_table_one(tmp_path):
    config = sweep.load_config("configs/csan/tables_synthetic.py")
    plan = sweep.plan_sweep(config, tmp_path)
    assert len(plan.cells) == 16  # 2 sets x (3 Table I rows + 5 lambdas).
    # One shared VGG pretraining + 12 CSAN runs (lam=0 is t1-*-ptl, lam=1e-3 t1-*-ptl_pcs).
    assert len(plan.runs) == 13
    pre = {plan.stages[(c, 0)]["pretrain"].workdir for c in plan.cells}
    assert len(pre) == 1
    for s in ("nirvis", "thermal"):
        t1 = plan.stages[(f"t1-{s}-ptl_pcs", 0)]["train"]
        assert plan.stages[(f"lam-{s}-0.001", 0)]["train"].workdir == t1.workdir
        assert t1.config.loss.sparsity_weight == 1e-3 and t1.config.loss.kind == "ptl"
        assert t1.config.model.backbone_weights == str(next(iter(pre)))
        ce = plan.stages[(f"t1-{s}-ce", 0)]["train"].config
        assert ce.loss.kind == "ce" and ce.loss.sparsity_weight == 0.0
    assert plan.stages[("t1-thermal-ptl", 0)]["train"].config.input.data_dir.endswith(
        "thermal/thermal_vis"
    )
    with pytest.raises(ValueError, match="scale=tiny"):
        sweep.load_config("configs/csan/tables_synthetic.py:scale=huge")


@pytest.mark.slow
def test_table_one_rows_at_tiny_size(tmp_path):
    data = tmp_path / "data"
    dirs = run.generate_synthetic(str(data), tiny=True, workers=1)
    config = sweep.load_config("configs/csan/tables_synthetic.py:scale=tiny")
    results = sweep.run_sweep(
        config, tmp_path / "out", only=["t1-thermal-*"], data_dir=str(data),
        train_fn=run.train_and_test, say=lambda m: None,
    )
    done = {cell: by_seed for cell, by_seed in results.items() if by_seed}
    # The lambda cells 0 and 1e-3 are the same runs as two Table I rows.
    assert set(done) == {"t1-thermal-ce", "t1-thermal-ptl", "t1-thermal-ptl_pcs",
                         "lam-thermal-0", "lam-thermal-0.001"}
    assert done["lam-thermal-0"] == done["t1-thermal-ptl"]
    for cell, by_seed in done.items():
        r = by_seed["0"]
        assert {"TAR@FAR=1e-2", "TAR@FAR=5e-2", "Rank-1", "EER"} <= set(r["mean"])
        assert 0.0 <= r["mean"]["Rank-1"] <= 1.0
    table = (tmp_path / "out" / "tables.md").read_text()
    assert "t1-thermal-ptl_pcs" in table
    work = next((tmp_path / "out" / "runs").glob("train-*"))
    assert json.loads((work / "test.json").read_text())["probe->gallery"]["folds"][0]["fold"] == 1
    assert (work / "diagnostics.png").exists()
    assert dirs["thermal"].endswith("thermal_vis")
