"""Config builders for every setting of TOPLight (Yu et al., CVPR 2023) and its synthetic
Table 3; configs/toplight/*.py are thin wrappers.

Stages (Fig. 2):
* ``standard_config`` — the standard single-path pretraining ("SP", ImageNet-1k in the
  paper, Table 2(a) first column): the core ``classification`` task with a MobileNetV3-Large
  and a plain normalised softmax (no margin). Real runs start from torchvision's ImageNet
  weights instead (``init_from=.../mobilenet_v3_large-*.pth`` on the TOP stage).
* ``top_config`` — task-oriented pretraining (``toplight_top``, Table 2(a) second column):
  50 epochs, 36 images x 2 paths, 224 x 224, SGD lr 0.1 cosine, wd 5e-5, no warm-up.
* ``vi_config`` — VI training (``toplight_vi``, third column): 70 epochs, 6 identities x
  (6 visible + 6 infrared), 288 x 144 (faces: 112 x 112), AdamW lr 1e-3 wd 1e-2, 5 warm-up
  epochs, x0.1 at epochs 20 and 40; RE, CE and flips.

Table 3 rows (``TABLE3``): which augmentations and losses the TOP stage uses and which FDR
parts the VI stage has; row 1 has no TOP stage (VI straight from SP).

``scale="synthetic"`` shrinks inputs, widths, batches and schedules so that the synthetic
table runs on 2 CPU cores (``SYNTHETIC``).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import ml_collections

from hfrjax.recipes.rethink.configs import parse_arg  # noqa: F401 - re-exported for configs/

PAPER = {
    "standard": {  # Table 2(a), "On ImageNet-1K"
        "epochs": 150, "batch_size": 512, "image_size": (224, 224), "lr": 0.2,
        "schedule": "cosine", "warmup_epochs": 5.0, "weight_decay": 5e-4,
    },
    "top": {  # "On ImageNet-mini"
        "epochs": 50, "batch_size": 36, "image_size": (224, 224), "lr": 0.1,
        "schedule": "cosine", "warmup_epochs": 0.0, "weight_decay": 5e-5,
    },
    "vi": {  # "VI training"
        "epochs": 70, "p": 6, "k": 6, "image_size": (288, 144), "face_image_size": (112, 112),
        "lr": 1e-3, "warmup_epochs": 5.0, "boundaries_epochs": (20.0, 40.0),
        "weight_decay": 1e-2,
    },
    "network": {"width_mult": 1.0},
    "task_augment": {},  # TaskAugmentConfig's defaults (strengths for 112-224 px).
}

SYNTHETIC = {
    "standard": {
        "epochs": 6, "batch_size": 64, "image_size": (32, 32), "lr": 0.1,
        "schedule": "cosine", "warmup_epochs": 0.5, "weight_decay": 5e-4,
    },
    "top": {
        "epochs": 3, "batch_size": 32, "image_size": (32, 32), "lr": 0.05,
        "schedule": "cosine", "warmup_epochs": 0.0, "weight_decay": 5e-5,
    },
    "vi": {
        "epochs": 16, "p": 4, "k": 4, "image_size": (32, 32), "face_image_size": (32, 32),
        "lr": 1e-3, "warmup_epochs": 1.0, "boundaries_epochs": (10.0, 14.0),
        "weight_decay": 1e-2,
    },
    "network": {"width_mult": 0.35},
    # 32-px crops: defocus and deformation scaled down from the 112-px defaults.
    "task_augment": {"defocus_radius": (1, 2), "deform_magnitude": 0.04},
}
SCALES = {"paper": PAPER, "synthetic": SYNTHETIC}

# Table 3: (G, C+T, L_id, L_idc, L_fd, H_s, V_s, SA); None in G: no TOP stage (row 1).
_TOP_ROWS = {  # (G, C+T, identity loss, L_fd)
    2: (True, False, "id", False),
    3: (True, True, "id", False),
    4: (True, True, "idc", False),
    5: (True, True, "idc", True),
}
_FDR_ROWS = {  # (H_s, V_s, SA) after row 5's TOP
    6: (False, False, True),
    7: (True, False, True),
    8: (False, True, True),
    9: (True, True, True),
}


FDR_PARTS = ("horizontal", "vertical", "attention")


def _table3() -> dict[int, dict]:
    rows = {1: dict(top=None, fdr=None)}
    for row in range(2, 10):
        g, ct, identity, fd = _TOP_ROWS[min(row, 5)]
        parts = _FDR_ROWS.get(row)
        rows[row] = dict(
            top=dict(generic=g, colour_texture=ct, identity=identity, fake_domain=fd),
            fdr=None if parts is None else dict(zip(FDR_PARTS, parts)),
        )
    return rows


TABLE3 = _table3()
FDR_VARIANTS = {
    "none": None,
    "sa": dict(horizontal=False, vertical=False, attention=True),
    "h": dict(horizontal=True, vertical=False, attention=True),
    "v": dict(horizontal=False, vertical=True, attention=True),
    "full": dict(horizontal=True, vertical=True, attention=True),
}

DEFAULT_DATA_ROOT = "/data/hfrjax"
# Short name -> directory under data_root (what the converters write).
DATASETS = {
    "sysu": "sysu_mm01",
    "regdb": "regdb",
    "oulu": "oulu_casia_nir_vis",
    "buaa": "buaa_visnir",
    "imagenet_mini": "imagenet_mini",
    "imagenet": "imagenet",
}


def data_dir(data_root: str, name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return os.path.join(data_root, DATASETS[name])


def _scale(scale: str) -> dict:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    return SCALES[scale]


def _common(task: str, seed: int) -> ml_collections.ConfigDict:
    from hfrjax.tasks import default_config

    c = default_config(task)
    c.seed = seed
    c.keep_checkpoints = 2
    c.tensorboard = False
    return c


def _set(c: ml_collections.ConfigDict, **sections) -> None:
    from hfrjax.config import merge

    merge(c, sections)


def _schedule(hp: dict) -> dict:
    out = {"name": hp.get("schedule", "piecewise"), "lr": hp["lr"],
           "warmup_epochs": hp["warmup_epochs"]}
    if "boundaries_epochs" in hp:
        out.update(boundaries_epochs=tuple(hp["boundaries_epochs"]), factor=0.1)
    return out


def standard_config(
    *, scale: str = "paper", data_dir: str = "", eval_dir: str = "", seed: int = 0
) -> ml_collections.ConfigDict:
    """Standard single-path pretraining (SP) of MobileNetV3-Large: ``classification`` with a
    normalised softmax (s = 16, no margin), standard flips."""
    sc = _scale(scale)
    hp, size = sc["standard"], sc["standard"]["image_size"]
    c = _common("classification", seed)
    _set(
        c,
        model={"name": "mobilenetv3_large",
               "kwargs": {"width_mult": sc["network"]["width_mult"], "input_size": list(size)}},
        input={"data_dir": data_dir, "batch_size": hp["batch_size"], "image_size": size,
               "seed": seed, "augment": {"hflip": True}},
        margin={"preset": "cosface", "s": 16.0, "m3": 0.0},
        optimizer={"name": "sgd", "momentum": 0.9, "weight_decay": hp["weight_decay"]},
        schedule=_schedule(hp),
        num_epochs=hp["epochs"],
        eval={"data_dir": eval_dir, "folds": (1,) if eval_dir else None},
    )
    return c


def top_config(
    *,
    scale: str = "paper",
    data_dir: str = "",
    init_from: str = "",
    generic: bool = True,
    colour_texture: bool = True,
    identity: str = "idc",
    fake_domain: bool = True,
    seed: int = 0,
) -> ml_collections.ConfigDict:
    """Task-oriented pretraining (``toplight_top``); the switches are Table 3's TOP columns."""
    sc = _scale(scale)
    hp = sc["top"]
    c = _common("toplight_top", seed)
    _set(
        c,
        network={"width_mult": sc["network"]["width_mult"]},
        input={"data_dir": data_dir, "batch_size": hp["batch_size"],
               "image_size": hp["image_size"], "seed": seed, "modalities": ("vis",)},
        augment={"generic": bool(generic), "colour_texture": bool(colour_texture),
                 "options": dict(sc["task_augment"])},
        loss={"identity": identity, "fake_domain": bool(fake_domain)},
        optimizer={"name": "sgd", "momentum": 0.9, "weight_decay": hp["weight_decay"]},
        schedule=_schedule(hp),
        num_epochs=hp["epochs"],
        init_from=init_from,
    )
    return c


def vi_config(
    *,
    scale: str = "paper",
    data_dir: str = "",
    fold: int = 1,
    init_from: str = "",
    fdr: str | dict | None = "full",
    face: bool = False,
    eval_dir: str | None = None,
    eval_folds=(1,),
    reid_modes=(),
    reid_directions=("probe->gallery",),
    reid_gallery: str = "protocol",
    seed: int = 0,
) -> ml_collections.ConfigDict:
    """VI training (``toplight_vi``) on fold ``fold``'s training identities of ``data_dir``.

    ``fdr``: a name of ``FDR_VARIANTS`` or a dict of `task.FdrSection` options (None: no
    FDR). ``face``: 112 x 112 face crops and the face protocol's evaluation (``eval``; TAR at
    FAR 1 % and 0.1 %, Rank-1); otherwise 288 x 144 person crops. Re-id evaluation
    (``reid_eval``) runs on ``eval_dir`` when ``reid_modes`` / ``reid_directions`` say so
    (the task's loop evaluators, `evaluation.reid_evaluators`).
    """
    sc = _scale(scale)
    hp = sc["vi"]
    size = hp["face_image_size"] if face else hp["image_size"]
    c = _common("toplight_vi", seed)
    variant = FDR_VARIANTS[fdr] if isinstance(fdr, str) else fdr
    evaluate = data_dir if eval_dir is None else eval_dir
    _set(
        c,
        network={"width_mult": sc["network"]["width_mult"]},
        fdr={"enabled": False} if variant is None else {"enabled": True, **variant},
        input={"data_dir": data_dir, "fold": int(fold), "batch_size": 2 * hp["p"] * hp["k"],
               "p": hp["p"], "k": hp["k"], "image_size": size, "seed": seed},
        optimizer={"name": "adamw", "weight_decay": hp["weight_decay"]},
        schedule=_schedule(hp),
        num_epochs=hp["epochs"],
        init_from=init_from,
        eval={"data_dir": evaluate if face else "", "fars": (1e-2, 1e-3),
              "folds": tuple(eval_folds) if eval_folds else None},
        reid_eval={"data_dir": evaluate if (reid_modes or reid_directions) else "",
                   "modes": tuple(reid_modes), "directions": tuple(reid_directions),
                   "gallery": reid_gallery,
                   "folds": tuple(eval_folds) if eval_folds else None},
    )
    return c


def table3_row(row: int) -> dict[str, Any]:
    """The TOP switches (None: no TOP stage) and the FDR options (None: none) of a row."""
    if row not in TABLE3:
        raise ValueError(f"Table 3 has rows 1..9, got {row}")
    return copy.deepcopy(TABLE3[row])
