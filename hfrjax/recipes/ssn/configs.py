"""Config builders for SSN: the paper's settings, the synthetic scale and the Table VII sweep.

Nothing here trains; these functions build `hfrjax.train.trainer.train` configs for the
``ssn`` task (`hfrjax.recipes.ssn.task`) and the cells of a Table VII sweep
(`hfrjax.sweep`). configs/ssn/*.py are thin wrappers.

Scales:
  ``paper``      SSN §IV-B: 128x128 grey crops, batch 128, LightCNN-29v2, AFS search 12 epochs
                 (masks: Adam lr 1e-3; network + critics: SGD lr 1e-4) then 40 epochs of
                 training with the masks fixed; λ_ib = 0.001, β = 1. Partial-face models see a
                 random rectangle on every NIR training image (``partial``). The paper starts
                 from a pretrained LightCNN (Table VII's "Light CNN" row is it, unchanged):
                 pass a converted LightCNN-29v2 as ``init_from``.
  ``synthetic``  the embedded synthetic NIR-VIS data on 2 CPU cores: 32x32, a narrow
                 LightCNN-29v2 (one res-block per stage), batch 64, short schedules; the
                 pretrained LightCNN is a softmax pretraining on the synthetic VIS source set
                 (`pretrain_config`). The network trains with AdamW (lr 1e-3) instead of SGD:
                 this BN-free LightCNN, trained from a weak start, sits on the initial plateau
                 (loss = log #classes) for hundreds of SGD steps at lr 1e-2 and diverges at
                 5e-2, while AdamW leaves it within tens of steps. The masks' Adam runs at
                 1e-2 (the paper's 1e-3 would move them by at most 0.016 in a 16-step search).
  ``test``       16x16, widths 4-8, two steps: what the test suite runs.
"""

from __future__ import annotations

import copy
from typing import Any

import ml_collections

from hfrjax import sweep
from hfrjax.tasks import default_config

MODES = ("baseline", "si", "si_split", "si_split_ib", "afs")

PAPER = {
    "image_size": 128,
    "batch_size": 128,
    "model": {},  # lightcnn29v2_psb defaults: LightCNN-29v2, 256-d.
    "search_epochs": 12,
    "epochs": 40,
    "net_lr": 1e-4,
    "optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4},  # Momentum, decay: ours.
    "mask_lr": 1e-3,
    "ib_weight": 1e-3,
    "beta": 1.0,
    "ib_pool": 8,
    "critic": (256,),
    "occlude_p": 1.0,
    "log_every": 50,
    "pretrain": None,  # The paper fine-tunes a released LightCNN (init_from).
}

SYNTHETIC = {
    "image_size": 32,
    "batch_size": 64,
    "model": {"layers": (1, 1, 1, 1), "channels": (16, 32, 48, 32, 32), "embedding_dim": 128},
    "search_epochs": 4,
    "epochs": 12,
    "net_lr": 1e-3,
    "optimizer": {"name": "adamw", "weight_decay": 1e-4},
    "mask_lr": 1e-2,
    "ib_weight": 1e-3,
    "beta": 1.0,
    "ib_pool": 4,
    "critic": (64,),
    "occlude_p": 1.0,
    "log_every": 20,
    "pretrain": {"epochs": 15, "batch_size": 128, "lr": 1e-3, "boundaries_epochs": (12,)},
}

TEST = {
    "image_size": 16,
    "batch_size": 8,
    "model": {"layers": (1, 1, 1, 1), "channels": (4, 6, 8, 4, 4), "embedding_dim": 8},
    "search_epochs": 1,
    "epochs": 1,
    "net_lr": 1e-3,
    "optimizer": {"name": "adamw", "weight_decay": 1e-4},
    "mask_lr": 1e-2,
    "ib_weight": 1e-3,
    "beta": 1.0,
    "ib_pool": 4,
    "critic": (8,),
    "occlude_p": 1.0,
    "log_every": 1,
    "pretrain": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "boundaries_epochs": ()},
    "steps": 2,  # Every phase is cut to this many steps.
}

SCALES = {"paper": PAPER, "synthetic": SYNTHETIC, "test": TEST}


def scale_settings(scale: str) -> dict:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    return copy.deepcopy(SCALES[scale])


def parse_arg(arg: str | None) -> dict[str, str]:
    """ "mode=afs,fold=2" -> {"mode": "afs", "fold": "2"}."""
    out: dict[str, str] = {}
    for part in (arg or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ValueError(f"config argument {part!r} is not key=value (in {arg!r})")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def ssn_config(
    mode: str = "afs",
    *,
    scale: str = "paper",
    data_dir: str = "",
    fold: int | None = None,
    eval_dir: str = "",
    eval_folds: list[int] | None = None,
    init_from: str = "",
    partial: bool = True,
    eval_occlusion: str = "none",
    seed: int = 0,
) -> ml_collections.ConfigDict:
    """An ``ssn`` training config: one of Table VII's rows (``mode``) at ``scale``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    s = scale_settings(scale)
    size = s["image_size"]
    c = default_config(
        "ssn",
        mode=mode,
        seed=seed,
        log_every=s["log_every"],
        checkpoint_every=1000,
        keep_checkpoints=2,
        model={"kwargs": dict(s["model"])},
        input={
            "data_dir": data_dir,
            "fold": fold,
            "batch_size": s["batch_size"],
            "channels": 1,
            "image_size": (size, size),
            "seed": seed,
            "augment": {"hflip": True, "occlude_p": s["occlude_p"] if partial else 0.0},
        },
        ib={
            "weight": s["ib_weight"],
            "beta": s["beta"],
            "pool": s["ib_pool"],
            "critic_features": s["critic"],
            "critic_head": s["critic"],
        },
        afs={
            "search_epochs": float(s["search_epochs"]),
            "schedule": {"name": "constant", "lr": s["mask_lr"]},
        },
        schedule={"name": "constant", "lr": s["net_lr"]},
        optimizer=dict(s["optimizer"]),
        num_epochs=float(s["epochs"]),
        init_from=init_from,
        eval={"occlusion": eval_occlusion},
    )
    if "steps" in s:
        c.total_steps = s["steps"]
        c.afs.search_steps = s["steps"]
        c.num_epochs = 0.0
    c.eval.data_dir = eval_dir
    c.eval.folds = tuple(eval_folds) if eval_folds else None
    c.eval.batch_size = max(8, s["batch_size"])
    c.eval.fars = (1e-3, 1e-2)
    return c


def pretrain_config(
    *, scale: str = "synthetic", data_dir: str = "", eval_dir: str = "", seed: int = 0
) -> ml_collections.ConfigDict:
    """The plain LightCNN that Table VII's rows start from, at a scale without a released one:
    softmax classification of the VIS source identities (mode baseline, no occlusion)."""
    s = scale_settings(scale)
    p = s["pretrain"]
    if p is None:
        raise ValueError(
            f"scale {scale!r} fine-tunes a released LightCNN-29v2 (init_from); it has no "
            "pretraining config"
        )
    c = ssn_config("baseline", scale=scale, data_dir=data_dir, partial=False, seed=seed)
    c.input.batch_size = p["batch_size"]
    c.num_epochs = float(p["epochs"])
    c.schedule = ml_collections.ConfigDict(
        dict(
            c.schedule.to_dict(),
            name="piecewise",
            lr=p["lr"],
            boundaries_epochs=tuple(p["boundaries_epochs"]),
        )
    )
    c.eval.data_dir = eval_dir
    return c


# --------------------------------------------------------------------------------------------
# Table VII (SSN's ablation, maskBottom probes) as a sweep.

TABLE7_ROWS = (  # (cell name, mode or None for the un-fine-tuned LightCNN, the paper's label)
    ("lightcnn", None, "Light CNN"),
    ("lightcnn-ft", "baseline", "Light CNN Finetune"),
    ("si", "si", "w/ SI"),
    ("si-split", "si_split", "w/ SI (split)"),
    ("si-split-ib", "si_split_ib", "w/ SI (split) + IB"),
    ("afs", "afs", "Ours (+ AFS)"),
)

# The paper's Table VII (CASIA NIR-VIS 2.0, maskBottom probes, %, mean ± std over 10 folds):
# AUC, EER, TPR@FPR=1%, TPR@FPR=0.1%, Rank-1.
TABLE7_PAPER = {
    "lightcnn": "97.7±0.1, 7.9±0.3, 72.3±1.1, 44.7±2.3, 57.7±2.2",
    "lightcnn-ft": "98.8±0.2, 5.4±0.3, 79.6±3.8, 47.6±7.1, 65.7±3.3",
    "si": "99.6±0.1, 3.0±0.5, 93.3±2.1, 79.9±4.4, 86.6±1.6",
    "si-split": "99.6±0.1, 2.9±0.5, 93.5±1.0, 81.0±2.1, 86.9±1.2",
    "si-split-ib": "99.6±0.1, 2.8±0.3, 94.1±0.9, 81.4±1.4, 87.5±1.1",
    "afs": "99.8±0.0, 2.1±0.3, 96.6±0.6, 86.5±0.7, 90.8±1.0",
}


def table7_sweep(
    *,
    stage_config: str,
    folds: list[int],
    train_dir: str,
    pretrain_config: str = "",
    pretrain_dir: str = "",
    init_from: str = "",
    name: str,
    data_dir: str,
) -> ml_collections.ConfigDict:
    """Table VII's rows x ``folds``: each fold a stage of every cell (folds pooled per cell),
    evaluated on ``train_dir``'s protocol with maskBottom NIR probes.

    ``stage_config`` is a config spec with a "{mode}" field (e.g.
    "configs/ssn/synthetic.py:scale=synthetic,mode={mode}"). ``init_from`` (a LightCNN export
    or workdir) starts every row; without it a ``pretrain`` stage (``pretrain_config`` on
    ``pretrain_dir``) is shared by all cells.
    """
    if "{mode}" not in stage_config:
        raise ValueError(f"stage_config {stage_config!r} has no {{mode}} field")
    start: list[dict[str, Any]] = []
    init = init_from
    if not init_from:
        if not (pretrain_config and pretrain_dir):
            raise ValueError("table7_sweep needs init_from (a LightCNN) or a pretraining")
        start = [
            sweep.stage(
                "pretrain", pretrain_config, {"input.data_dir": pretrain_dir}, evaluate=False
            )
        ]
        init = "{stage:pretrain}"
    cells = []
    for cell, mode, _ in TABLE7_ROWS:
        stages = list(start)
        for k in folds:
            overrides = {
                "input.data_dir": train_dir,
                "input.fold": k,
                "init_from": init,
                "eval.data_dir": train_dir,
                "eval.folds": [k],
                "eval.occlusion": "maskBottom",
            }
            if mode is None:  # The starting LightCNN, evaluated as it is.
                overrides.update({"num_epochs": 0.0, "total_steps": 0})
            stages.append(
                sweep.stage(
                    f"fold{k}",
                    stage_config.format(mode=mode or "baseline"),
                    overrides,
                    evaluate=True,
                )
            )
        cells.append({"name": cell, "stages": stages})
    c = ml_collections.ConfigDict()
    c.name = name
    c.seeds = [0]
    c.data_dir = data_dir
    c.cells = cells
    c.table = {
        "metrics": ["AUC", "EER", "TAR@FAR=1e-2", "TAR@FAR=1e-3", "Rank-1"],
        "rows": [cell for cell, _, _ in TABLE7_ROWS],
        "title": name,
    }
    return c


# --------------------------------------------------------------------------------------------
# Real data (configs/ssn/{casia,lamp_hq,cross_dataset}.py).

REAL_KEYS = {"mode", "fold", "partial", "init_from", "data_root", "eval_occlusion", "eval", "seed"}


def real_config(
    train: str, arg: str | None, default_eval: str | None = None
) -> ml_collections.ConfigDict:
    """A paper-scale config training on ``train``'s fold and evaluating on ``eval`` (default:
    the same dataset and fold; another dataset is evaluated on its fold 1, as the paper's
    cross-dataset use of the CASIA fold-1 model)."""
    from hfrjax.data.benchmarks import DEFAULT_DATA_ROOT, NUM_FOLDS, data_dir

    a = parse_arg(arg)
    unknown = set(a) - REAL_KEYS
    if unknown:
        raise ValueError(f"unknown argument(s) {sorted(unknown)}; known: {sorted(REAL_KEYS)}")
    root = a.get("data_root", DEFAULT_DATA_ROOT)
    fold = int(a.get("fold", 1))
    if not 1 <= fold <= NUM_FOLDS[train]:
        raise ValueError(f"fold must be in 1..{NUM_FOLDS[train]} for {train}, got {fold}")
    target = a.get("eval", default_eval or train)
    if target not in NUM_FOLDS:
        raise ValueError(f"eval must be one of {sorted(NUM_FOLDS)}, got {target!r}")
    return ssn_config(
        a.get("mode", "afs"),
        scale="paper",
        data_dir=data_dir(root, train),
        fold=fold,
        eval_dir=data_dir(root, target),
        eval_folds=[fold if target == train else 1],
        init_from=a.get("init_from", ""),
        partial=a.get("partial", "1") != "0",
        eval_occlusion=a.get("eval_occlusion", "none"),
        seed=int(a.get("seed", 0)),
    )
