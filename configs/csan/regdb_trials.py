"""CSAN on RegDB, Table I's three rows over the 10 standard trials, both directions.

  python -m hfrjax.recipes.csan.run sweep --config=configs/csan/regdb_trials.py \
      --out=/tmp/csan_regdb --data_dir=/data/regdb_hfr

One cell per method (ce: cross-entropy on pseudo-labels; ptl; ptl_pcs: λ = 1e-3), each with 10
stages (trial k trains on fold k's training identities and tests fold k); the sweep pools the
trials: OUT/tables.md has mean ± std over trials of "probe->gallery" (thermal->visible, Table
I) and "gallery->probe" (visible->thermal, Table VI) Rank-1/10/20, mAP and mINP. Paper numbers:
configs/csan/regdb.py.
"""

import ml_collections

from hfrjax import sweep

METHODS = {"ce": "loss=ce,lam=0", "ptl": "loss=ptl,lam=0", "ptl_pcs": "loss=ptl,lam=0.001"}


def get_config(arg=None):
    del arg
    cells = []
    for name, spec in METHODS.items():
        stages = [
            sweep.stage(
                f"trial{k}",
                f"configs/csan/regdb.py:trial={k},{spec}",
                {"input.data_dir": "{data}", "eval.data_dir": "{data}", "eval.folds": [k]},
                evaluate=True,
            )
            for k in range(1, 11)
        ]
        cells.append({"name": f"regdb-{name}", "stages": stages})
    c = ml_collections.ConfigDict()
    c.name = "CSAN on RegDB: Table I rows over 10 trials, both directions"
    c.seeds = [0]
    c.data_dir = "/data/regdb_hfr"
    c.cells = cells
    metrics = [f"{d} {m}" for d in ("probe->gallery", "gallery->probe") for m in ("Rank-1", "mAP")]
    c.table = {"metrics": metrics}
    return c
