"""Config builders for FTL (Yin et al., "Feature Transfer Learning for Face Recognition with
Under-Represented Data") at the paper's scale and at synthetic scale, and the Table 1 sweep.

* `ftl_config(mode, scale, data_dir, ...)`: one ``ftl`` task run (modes ``softmax``, ``ml2``,
  ``ftl``: the methods of Table 1).
* `table1_sweep(scale, ...)`: the layout of Table 1: rows are the training sets 10K0K, 10K10K,
  10K30K, 10K50K, 60K0K; methods softmax and softmax + m-L2 on every row, FTL on the rows with
  UR classes; columns verification on the pair list and nearest-centre rank-1 on regular / UR
  hold-out classes, on f and on g. Run it with ``python -m hfrjax.recipes.ftl.run sweep``.

Settings the paper states are in ``PAPER`` (§3.2, §3.3, §4); what it leaves open (batch size,
schedule length, yaw bound) is marked there. ``SYNTHETIC`` shrinks the network, widens the
learning rates for a short schedule and fixes the number of steps per row, so the synthetic
table runs on a CPU; ``QUICK`` halves it again for a loaded machine; ``TINY`` is for tests.
"""

from __future__ import annotations

import copy
from typing import Any

import ml_collections

ROWS = ("10K0K", "10K10K", "10K30K", "10K50K", "60K0K")
METHODS = ("softmax", "ml2", "ftl")
# The task's ``holdout`` evaluator's metrics as the loop's eval.json names them.
TABLE_METRICS = tuple(
    f"holdout/{m}"
    for m in ("verify_f", "rank1_regular_f", "rank1_ur_f", "verify_g", "rank1_regular_g", "rank1_ur_g")
)

PAPER = {
    "image_size": 100,  # x ∈ R^{100x100} (§3.2)
    "model": {"feature_dim": 320, "trunk": "conv"},  # g, f ∈ R^320
    "batch_size": 256,  # not given
    "pretrain_lr": 2e-4,  # §4
    "lr": 1e-5,  # stages 1 and 2 (§4)
    "n_iter": 5000,  # alternation period (§4)
    "pretrain_epochs": 10.0,  # not given ("pre-train all modules")
    "num_epochs": 20.0,  # not given ("until convergence")
    "num_components": 150,  # Q ∈ R^{320x150}, ~95% energy (§3.3)
    "ur_max_images": 20,  # §4, following the range loss paper
    "max_abs_yaw": 30.0,  # τ/2 of Eq. 5: not given
    "alpha": (1.0, 1.0, 0.25),  # Eq. 4
    "steps": None,  # epochs decide
}

SYNTHETIC = {
    "image_size": 32,
    "model": {
        "feature_dim": 64,
        "encoder_widths": (16, 32, 64),
        "filter_side": 4,
        "filter_widths": (32, 16, 16, 32),
    },
    "batch_size": 64,
    "pretrain_lr": 1e-3,
    "lr": 1e-4,
    "n_iter": 100,
    "num_components": 32,
    "ur_max_images": 20,
    "max_abs_yaw": 30.0,
    "alpha": (1.0, 1.0, 0.25),
    # Fixed steps for every row (the sets differ in size): pretraining, then the rest.
    "steps": {"pretrain": 1000, "total": 1600},
}

# The synthetic table within a CPU budget (what the README's numbers used): half the batch and
# 900 steps, stages of 75.
QUICK = {
    **SYNTHETIC,
    "batch_size": 32,
    "n_iter": 75,
    "steps": {"pretrain": 600, "total": 900},
}

# QUICK with the same number of epochs in every row instead of the same number of steps: each
# row's steps (pretraining, stage length, total) are QUICK's scaled by its training-set size
# over 10K10K's, so that every row gets 10K10K's 5.5 + 2.7 epochs (the question "does the gain
# grow with more UR classes" needs equal training per row; README, FTL).
QUICK_EPOCHS = {**QUICK, "equal_epochs_as": "10K10K"}

TINY = {
    "image_size": 16,
    "model": {
        "feature_dim": 8,
        "encoder_widths": (4,),
        "filter_side": 2,
        "filter_widths": (4, 4, 4, 4),
    },
    "batch_size": 8,
    "pretrain_lr": 1e-3,
    "lr": 1e-4,
    "n_iter": 2,
    "num_components": 4,
    "ur_max_images": 5,  # longtail_tiny: 8 images per regular identity, 5 per UR one
    "max_abs_yaw": 30.0,
    "alpha": (1.0, 1.0, 0.25),
    "steps": {"pretrain": 2, "total": 6},
    "stage1_batch_size": 4,
}
SCALES = {
    "paper": PAPER,
    "synthetic": SYNTHETIC,
    "quick": QUICK,
    "quick_epochs": QUICK_EPOCHS,
    "tiny": TINY,
}


def row_images(preset: str = "longtail") -> dict[str, int]:
    """Training images of each Table 1 row of a synthetic long-tailed preset."""
    from hfrjax.data.synthetic import presets

    spec = presets.PRESETS[preset].longtail
    regular = spec.num_regular * spec.images_per_regular
    return {v[0]: regular + v[1] * spec.images_per_ur(v) for v in spec.variants()}


def equal_epoch_steps(scale: str, row: str, preset: str = "longtail") -> dict[str, int]:
    """A row's step overrides under an ``equal_epochs_as`` scale (``QUICK_EPOCHS``): the
    scale's steps times (row images / reference row images), stage length likewise, with the
    same number of alternation stages after pretraining."""
    s = SCALES[scale]
    sizes = row_images(preset)
    factor = sizes[row] / sizes[s["equal_epochs_as"]]
    pretrain = round(s["steps"]["pretrain"] * factor)
    n_iter = max(1, round(s["n_iter"] * factor))
    stages = round((s["steps"]["total"] - s["steps"]["pretrain"]) / s["n_iter"])
    return {
        "alternation.pretrain_steps": pretrain,
        "alternation.n_iter": n_iter,
        "total_steps": pretrain + stages * n_iter,
    }


def parse_arg(arg: str | None) -> dict[str, str]:
    """ "mode=ftl,variant=10K30K" -> {"mode": "ftl", "variant": "10K30K"}."""
    out: dict[str, str] = {}
    for part in (arg or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"config argument {part!r} is not key=value (in {arg!r})")
        out[key.strip()] = value.strip()
    return out


def ftl_config(
    mode: str = "ftl",
    scale: str = "synthetic",
    data_dir: str = "",
    holdout_dir: str = "",
    gallery_dir: str = "",
) -> ml_collections.ConfigDict:
    """The full ``ftl`` task config of one method at one scale (module docstring)."""
    from hfrjax.tasks import default_config

    if mode not in METHODS:
        raise ValueError(f"mode must be one of {METHODS}, got {mode!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    s = copy.deepcopy(SCALES[scale])
    c = default_config("ftl")
    c.mode = mode
    c.model.kwargs = ml_collections.ConfigDict(s["model"])
    c.input.data_dir = data_dir
    c.input.image_size = (s["image_size"], s["image_size"])
    c.input.batch_size = s["batch_size"]
    c.input.augment.hflip = True
    c.loss.alpha_softmax, c.loss.alpha_recon, c.loss.alpha_reg = s["alpha"]
    c.optimizer.pretrain_lr = s["pretrain_lr"]
    c.optimizer.lr = s["lr"]
    c.alternation.n_iter = s["n_iter"]
    c.alternation.batch_size = s.get("stage1_batch_size", 0)
    c.stats.num_components = s["num_components"]
    c.stats.ur_max_images = s["ur_max_images"]
    c.stats.max_abs_yaw = s["max_abs_yaw"]
    if s["steps"]:
        c.alternation.pretrain_steps = s["steps"]["pretrain"]
        c.total_steps = s["steps"]["total"]
    else:
        c.alternation.pretrain_epochs = s["pretrain_epochs"]
        c.num_epochs = s["num_epochs"]
    c.holdout.data_dir = holdout_dir
    c.holdout.gallery_dir = gallery_dir
    c.log_every = 50 if scale != "tiny" else 1
    c.checkpoint_every = 500 if scale != "tiny" else 2
    return c


def table1_sweep(
    scale: str = "synthetic",
    *,
    data_dir: str = "/tmp/hfrjax_ftl_table1/data",
    seeds: tuple[int, ...] = (0,),
    rows: tuple[str, ...] = ROWS,
    extra_overrides: dict[str, Any] | None = None,
    config_file: str = "configs/ftl/synthetic.py",
) -> ml_collections.ConfigDict:
    """The Table 1 sweep over the synthetic long-tailed sets under ``{data}/longtail/``."""
    from hfrjax import sweep

    cells = []
    for row in rows:
        if row not in ROWS:
            raise ValueError(f"unknown Table 1 row {row!r}; rows: {ROWS}")
        has_ur = row not in ("10K0K", "60K0K")
        for method in METHODS:
            if method == "ftl" and not has_ur:
                continue
            scaled = equal_epoch_steps(scale, row) if "equal_epochs_as" in SCALES[scale] else {}
            overrides = {
                **scaled,
                "input.data_dir": "{data}/longtail/train_" + row,
                "eval.data_dir": "{data}/longtail/holdout",
                # The UR hold-out classes absent from 10K0K take their gallery from here.
                "holdout.gallery_dir": "{data}/longtail/train_10K10K",
                **(extra_overrides or {}),
            }
            spec = f"{config_file}:mode={method},scale={scale}"
            cells.append({"name": f"{row}-{method}", "stages": [sweep.stage("train", spec, overrides)]})
    c = ml_collections.ConfigDict()
    c.name = f"FTL Table 1 in shape, synthetic long-tailed VIS ({scale} scale)"
    c.seeds = list(seeds)
    c.data_dir = data_dir
    c.cells = cells
    c.table = {"metrics": list(TABLE_METRICS), "rows": [x["name"] for x in cells]}
    return c
