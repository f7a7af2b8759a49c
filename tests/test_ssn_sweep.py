"""SSN's configs and its Table VII sweep: every shipped config parses, the sweep's plan is the
paper's rows on maskBottom probes, and (slow) the whole sweep runs at a tiny size."""

import json
from pathlib import Path

import pytest
from conftest import write_tiny_dataset

from hfrjax import sweep
from hfrjax.data.protocol import Fold, Protocol
from hfrjax.recipes.ssn import configs as ssn
from hfrjax.tasks import parse_config

REPO = Path(__file__).resolve().parents[1]
ROWS = ["lightcnn", "lightcnn-ft", "si", "si-split", "si-split-ib", "afs"]


@pytest.mark.parametrize(
    "spec, data, evald, mode",
    [
        ("configs/ssn/casia.py", "casia_nir_vis_2.0", "casia_nir_vis_2.0", "afs"),
        (
            "configs/ssn/casia.py:mode=si,fold=7,partial=0",
            "casia_nir_vis_2.0",
            "casia_nir_vis_2.0",
            "si",
        ),
        ("configs/ssn/lamp_hq.py:fold=10", "lamp_hq", "lamp_hq", "afs"),
        ("configs/ssn/cross_dataset.py", "casia_nir_vis_2.0", "buaa_visnir", "afs"),
        (
            "configs/ssn/cross_dataset.py:eval=oulu",
            "casia_nir_vis_2.0",
            "oulu_casia_nir_vis",
            "afs",
        ),
        ("configs/ssn/synthetic.py:mode=si_split_ib,fold=3", "target", "target", "si_split_ib"),
    ],
)
def test_shipped_configs_parse_and_point_at_their_data(spec, data, evald, mode):
    c = sweep.load_config(spec)
    _, _, cfg = parse_config(c)
    assert Path(cfg.input.data_dir).name == data and Path(c.eval.data_dir).name == evald
    assert cfg.mode == mode
    if "synthetic" not in spec:  # The paper's settings (SSN §IV-B).
        assert cfg.input.image_size == (128, 128) and cfg.input.batch_size == 128
        assert cfg.afs.search_epochs == 12 and cfg.num_epochs == 40
        assert cfg.schedule.lr == 1e-4 and cfg.afs.schedule.lr == 1e-3
        assert cfg.ib.weight == 1e-3 and cfg.ib.beta == 1.0
    assert cfg.input.augment.occlude_p == (0.0 if "partial=0" in spec else 1.0)
    assert cfg.input.augment.occlude_modalities == ("nir",)
    if "fold=7" in spec:
        assert cfg.input.fold == 7 and c.eval.folds == (7,)
    if "cross" in spec:
        assert cfg.input.fold == 1 and c.eval.folds == (1,)


def test_config_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown argument"):
        sweep.load_config("configs/ssn/casia.py:folds=2")
    with pytest.raises(ValueError, match="fold must be in 1..10"):
        sweep.load_config("configs/ssn/casia.py:fold=11")
    with pytest.raises(ValueError, match="mode must be one of"):
        sweep.load_config("configs/ssn/synthetic.py:mode=nas")
    with pytest.raises(ValueError, match="needs init_from"):
        sweep.load_config("configs/ssn/table7_casia.py")
    with pytest.raises(ValueError, match="key=value"):
        ssn.parse_arg("mode=afs,fold")


def test_table7_plan_is_the_papers_rows_on_maskbottom_probes(tmp_path):
    cfg = sweep.load_config("configs/ssn/table7_synthetic.py:scale=test,folds=1-2")
    plan = sweep.plan_sweep(cfg, tmp_path / "out", data_dir=str(tmp_path / "data"))
    assert plan.cells == ROWS and plan.table["rows"] == ROWS
    assert len(plan.runs) == 1 + 6 * 2  # One shared pretraining, each cell x 2 folds.
    modes = {}
    for cell in ROWS:
        stages = plan.stages[(cell, 0)]
        assert list(stages) == ["pretrain", "fold1", "fold2"]
        for k in (1, 2):
            c = stages[f"fold{k}"].config
            _, _, task_cfg = parse_config(c)
            assert c.eval.occlusion == "maskBottom" and list(c.eval.folds) == [k]
            assert task_cfg.input.fold == k and c.init_from == str(stages["pretrain"].workdir)
            modes[cell] = (task_cfg.mode, c.total_steps)
    assert modes == {
        "lightcnn": ("baseline", 0),
        "lightcnn-ft": ("baseline", 2),
        "si": ("si", 2),
        "si-split": ("si_split", 2),
        "si-split-ib": ("si_split_ib", 2),
        "afs": ("afs", 2),
    }
    pre = plan.stages[("afs", 0)]["pretrain"].config
    assert pre.mode == "baseline" and pre.input.augment.occlude_p == 0.0
    doc = (REPO / "configs/ssn/table7_synthetic.py").read_text()
    assert "python launch/sweep.py --config=configs/ssn/table7_synthetic.py" in doc


def _keys(ids, mod, n=4):
    return [f"id{i:03d}/{mod}/{j:03d}" for i in ids for j in range(n)]


@pytest.mark.slow
def test_table7_sweep_runs_at_a_tiny_size(tmp_path):
    data = tmp_path / "data"
    write_tiny_dataset(data / "source", num_ids=4, per_modality=4, size=16, seed=1)
    write_tiny_dataset(data / "target", num_ids=8, per_modality=4, size=16, seed=2)
    test = [4, 5, 6, 7]
    train = [0, 1, 2, 3]
    fold = Fold(
        train={"vis": _keys(train, "vis"), "nir": _keys(train, "nir")},
        gallery=[f"id{i:03d}/vis/000" for i in test],
        probe=_keys(test, "nir"),
    )
    Protocol("tiny-1fold", [fold]).save(data / "target")
    cfg = sweep.load_config("configs/ssn/table7_synthetic.py:scale=test,folds=1")
    results = sweep.run_sweep(cfg, tmp_path / "out", data_dir=str(data), say=lambda m: None)
    assert sorted(results) == sorted(ROWS)
    for cell in ROWS:
        r = results[cell]["0"]
        assert [f["fold"] for f in r["folds"]] == [1] and r["folds"][0]["num_probes"] == 16
        assert 0.0 <= r["mean"]["Rank-1"] <= 1.0
    table = (tmp_path / "out" / "tables.md").read_text()
    assert all(f"| {cell} |" in table for cell in ROWS) and "maskBottom" in table
    afs = json.loads((tmp_path / "out" / "plan.json").read_text())["cells"]["afs"]["0"]["fold1"]
    work = tmp_path / "out" / afs["workdir"]
    assert (work / "afs_split" / "s_val.txt").is_file() and (work / "masks" / "masks.png").is_file()
