"""The shape of the Rethinking paper's Tables 3, 4, 5 and 7, on the synthetic NIR-VIS data.

  python launch/sweep.py --config=configs/rethink/tables_synthetic.py \
      --out=/tmp/hfrjax_rethink_tables --data_dir=/tmp/hfrjax_rethink_tables/data \
      --synth=quickstart

(``--synth`` generates the data first if absent.) Re-running skips finished runs and resumes an
interrupted one; identical pretraining runs are shared between cells. The table is written to
OUT/tables.md (mean ± std over seeds x folds; here one seed, fold 1).

Cells (backbones: "mobilefacenet" = MobileFaceNet at width 0.25, "ir18" = IResNet-18 layout at
width 16, "small" = IResNet [1, 1, 1, 1] width 16; all 32x32, 128-d, `recipes.rethink`'s
SYNTHETIC scale):
  t3-<backbone>-<base|red|target>        Table 3: zero-shot NIR->VIS after VIS pretraining
                                         (+red: red-channel augmentation; +target: fold-1
                                         target-train identities in the classifier).
  t4-<backbone>-naive                    Table 4: naive fine-tuning (fresh classifier, all
                                         trainable) after +red pretraining.
  t5-<backbone>-<mec|ssc>-<rct|l0|l1>    Table 5: MEC (after +red) or SSC (after +target),
                                         frozen classifier, with the RCT penalty, λ = 0, or
                                         λ = 1 source regularisation.
  t7-small-<zero|mec-l0|mec-l1>          Table 7: trained on the target set, evaluated on the
                                         cross-sensor set (940 nm, other identities).
Expected wall time on 2 CPU cores: see README ("Rethinking: synthetic tables").
"""

import ml_collections

from hfrjax import sweep

BACKBONES = ("mobilefacenet", "ir18", "small")
PRE = "configs/rethink/pretrain.py:variant={v},backbone={b},scale=synthetic"
FT = "configs/rethink/finetune.py:method={m},reg={r},lam={lam},backbone={b},scale=synthetic"
REGS = {"rct": ("rct", 0), "l0": ("source", 0), "l1": ("source", 1)}


def _pretrain(variant: str, backbone: str, eval_dir: str = "{data}/target") -> dict:
    overrides = {
        "input.data_dir": "{data}/source",
        "eval.data_dir": eval_dir,
        "eval.folds": [1],
    }
    if variant == "target":
        overrides["input.joint"] = [{"data_dir": "{data}/target", "fold": 1}]
    return sweep.stage("pretrain", PRE.format(v=variant, b=backbone), overrides)


def _finetune(method, reg, backbone, eval_dir="{data}/target", name="finetune", epochs=None):
    kind, lam = REGS.get(reg, (reg, 0))
    overrides = {
        "init_from": "{stage:pretrain}",
        "input.data_dir": "{data}/target",
        "input.fold": 1,
        "eval.data_dir": eval_dir,
    }
    if kind == "source" and lam:
        overrides["source_reg.input.data_dir"] = "{data}/source"
    if epochs is not None:
        overrides["num_epochs"] = epochs
    spec = FT.format(m=method, r=kind, lam=lam, b=backbone)
    return sweep.stage(name, spec, overrides)


def get_config(arg=None):
    del arg
    cells = []
    for b in BACKBONES:
        for v in ("base", "red", "target"):
            cells.append({"name": f"t3-{b}-{v}", "stages": [_pretrain(v, b)]})
    for b in BACKBONES:
        cells.append(
            {
                "name": f"t4-{b}-naive",
                "stages": [_pretrain("red", b), _finetune("naive", "none", b)],
            }
        )
    for b in BACKBONES:
        for method, variant in (("mec", "red"), ("ssc", "target")):
            for reg in REGS:
                cells.append(
                    {
                        "name": f"t5-{b}-{method}-{reg}",
                        "stages": [_pretrain(variant, b), _finetune(method, reg, b)],
                    }
                )
    cross = "{data}/target_cross"
    cells.append(
        {
            # Zero-shot on the cross set: the +red pretraining, evaluated without training.
            "name": "t7-small-zero",
            "stages": [
                _pretrain("red", "small"),
                _finetune("naive", "none", "small", cross, name="evaluate", epochs=0),
            ],
        }
    )
    for reg in ("l0", "l1"):
        cells.append(
            {
                "name": f"t7-small-mec-{reg}",
                "stages": [_pretrain("red", "small"), _finetune("mec", reg, "small", cross)],
            }
        )
    c = ml_collections.ConfigDict()
    c.name = "Rethinking the domain gap: Tables 3/4/5/7 in shape, synthetic NIR-VIS"
    c.seeds = [0]
    c.data_dir = "/tmp/hfrjax_rethink_tables/data"
    c.cells = cells
    c.table = {"metrics": ["TAR@FAR=1e-3", "TAR@FAR=1e-2", "Rank-1", "EER"]}
    return c
