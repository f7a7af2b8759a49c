"""CSAN's Table I ablation and λ study (Fig. 5c/d) in shape, on the synthetic NIR-VIS and
thermal-visible sets (48x48, configs/csan/synthetic.py).

  python -m hfrjax.recipes.csan.run sweep --config=configs/csan/tables_synthetic.py \
      --out=/tmp/hfrjax_csan --synth

(``--synth`` generates the data into the sweep's data_dir first: the NIR-VIS quickstart sets
and a 60 + 40 identity thermal-visible set.) Every cell first pretrains the half-width VGG on
the VIS source set (configs/csan/pretrain_synthetic.py, ImageNet's stand-in; one run shared by
all cells), then trains CSAN on the RGB-IR set with that VGG frozen and no labels. Cells, for
each set S in {nirvis, thermal}:
  t1-S-ce        CSAN with cross-entropy on the linked pseudo-labels (Table I "CSAN")
  t1-S-ptl       + PTL (Table I "CSAN+PTL")
  t1-S-ptl_pcs   + PTL + PCS, λ = 1e-3 (Table I "CSAN+PTL+PCS")
  lam-S-<λ>      PTL + λ·PCS for λ in 0, 1e-5, 1e-4, 1e-3, 1e-2 (Fig. 5c/d); λ = 0 and 1e-3
                 are the t1 runs (identical stages share one workdir)
Tested on fold 1 (NIR-VIS: NIR probes vs one VIS image per identity; thermal: the P_TB0 probes
vs the G_VB0- gallery), TAR at FAR 1 % / 5 %, Rank-1, EER. Each run writes
diagnostics.jsonl / diagnostics.png (clusters, kept, linked, purity, link accuracy per epoch)
and clustering.jsonl (per merge stage, with the clustering and training seconds).
Argument ``scale=tiny`` builds the same table at test size (tests/test_csan_task.py).
"""

import ml_collections

from hfrjax import sweep

SETS = {"nirvis": "{data}/nirvis/target", "thermal": "{data}/thermal/thermal_vis"}
TABLE_I = {"ce": ("ce", 0.0), "ptl": ("ptl", 0.0), "ptl_pcs": ("ptl", 1e-3)}
LAMBDAS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)


def _stages(scale: str, data_set: str, loss: str, lam: float) -> list[dict]:
    data = SETS[data_set]
    overrides = {"input.data_dir": data, "eval.data_dir": data, "eval.folds": [1]}
    if scale == "tiny":  # Random frozen VGG: the mechanics only.
        spec = f"configs/csan/tiny.py:loss={loss},lam={lam!r}"
        return [sweep.stage("train", spec, overrides)]
    spec = f"configs/csan/synthetic.py:set={data_set},loss={loss},lam={lam!r}"
    pre = sweep.stage(
        "pretrain", "configs/csan/pretrain_synthetic.py", {"input.data_dir": "{data}/nirvis/source"}
    )
    overrides["model.backbone_weights"] = "{stage:pretrain}"
    return [pre, sweep.stage("train", spec, overrides)]


def get_config(arg=None):
    scale = "tiny" if arg == "scale=tiny" else "synthetic"
    if arg not in (None, "", "scale=tiny"):
        raise ValueError(
            f"configs/csan/tables_synthetic.py takes no argument or scale=tiny, got {arg!r}"
        )
    cells = []
    for data_set in SETS:
        for name, (loss, lam) in TABLE_I.items():
            stages = _stages(scale, data_set, loss, lam)
            cells.append({"name": f"t1-{data_set}-{name}", "stages": stages})
        for lam in LAMBDAS:
            stages = _stages(scale, data_set, "ptl", lam)
            cells.append({"name": f"lam-{data_set}-{lam:g}", "stages": stages})
    c = ml_collections.ConfigDict()
    c.name = "CSAN Table I ablation and λ study, synthetic NIR-VIS and thermal-visible"
    c.seeds = [0]
    c.data_dir = "/tmp/hfrjax_csan/data"
    c.cells = cells
    c.table = {"metrics": ["TAR@FAR=1e-2", "TAR@FAR=5e-2", "Rank-1", "EER"]}
    return c
