"""Config builders for every setting of "Rethinking the domain gap in NIR-VIS face recognition".

What the paper is, in terms of the core (nothing here trains by itself; these functions build
`hfrjax.train.trainer.train` configs for the ``classification`` and ``rethink`` tasks, and
configs/rethink/*.py are thin wrappers):

* Pretraining on VIS data with a margin-softmax classifier (`pretrain_config`), variants:
  ``base``; ``red`` (+ red-channel augmentation: x' = [R, R, R] with p = 0.5,
  `hfrjax.data.augment`); ``target`` (+ the target-train identities in the same classifier:
  ``input.joint``; each dataset's class-id range is stored in the checkpoint metadata).
* Fine-tuning on NIR-VIS data (`finetune_config`), methods:
  ``naive`` (fresh random classifier, all trainable); ``mec`` (classifier rows = normalised
  mean embedding of each target-train identity, frozen: ``head.init = "class_means"``);
  ``ssc`` (rows sliced out of a ``target``-pretrained classifier, frozen:
  ``head.init = "pretrained_rows"``); ``none`` (zero-shot: no fine-tuning stage at all).
  Regularisers: ``rct`` (L2 penalty towards the pretrained backbone: ``rct.weight``) and
  source regularisation L = L_cls(target) + λ L_cls(source) (``source_reg``: joint batches of
  64 target + 512 source images, the pretrained source classifier frozen).

Hyperparameters default to the paper's (``PAPER``); ``scale="synthetic"`` shrinks inputs,
backbones, batches and schedules so the synthetic tables run on 2 CPU cores (``SYNTHETIC``).
"""

from __future__ import annotations

import copy
from typing import Any

import ml_collections

# The paper's settings (section 4.1 and the authors' released code).
PAPER = {
    "image_size": 112,
    "pretrain": {
        "epochs": 24,
        "batch_size": 512,
        "lr": 0.1,
        "boundaries_epochs": [10, 18, 22],
        "weight_decay": 5e-4,
        "warmup_epochs": 0.0,
    },
    "finetune": {
        "epochs": 20,
        "batch_size": 64,
        "source_batch_size": 512,
        "lr": 1e-4,
        "boundaries_epochs": [10, 15],
        "weight_decay": 5e-4,
    },
    "rct_weight": 1e-2,  # Not given in the paper; L2-SP's usual order of magnitude.
}

# Synthetic-data scale: 32x32 crops and narrow backbones so a table fits in an hour on 2 cores.
SYNTHETIC = {
    "image_size": 32,
    "pretrain": {
        "epochs": 8,
        "batch_size": 128,
        "lr": 0.1,
        "boundaries_epochs": [5, 7],
        "weight_decay": 5e-4,
        "warmup_epochs": 0.5,
    },
    "finetune": {
        "epochs": 3,
        "batch_size": 64,
        "source_batch_size": 128,
        "lr": 1e-2,
        "boundaries_epochs": [2],
        "weight_decay": 5e-4,
    },
    "rct_weight": 1e-2,
}
SCALES = {"paper": PAPER, "synthetic": SYNTHETIC}

# Backbones of the paper (112x112 RGB; LightCNN 128x128 grey) and their synthetic stand-ins.
BACKBONES = {
    "paper": {
        "mobilefacenet": {"name": "mobilefacenet", "kwargs": {}},
        "ir18": {"name": "ir18", "kwargs": {}},
        "ir50": {"name": "ir50", "kwargs": {}},
        "ir100": {"name": "ir100", "kwargs": {}},
        "lightcnn29v2": {"name": "lightcnn29v2", "kwargs": {}},
    },
    "synthetic": {
        "mobilefacenet": {
            "name": "mobilefacenet",
            "kwargs": {"width_mult": 0.25, "embedding_dim": 128, "input_size": 32},
        },
        "ir18": {
            "name": "iresnet",
            "kwargs": {
                "layers": [2, 2, 2, 2],
                "base_width": 16,
                "embedding_dim": 128,
                "input_size": 32,
            },
        },
        "small": {
            "name": "iresnet",
            "kwargs": {
                "layers": [1, 1, 1, 1],
                "base_width": 16,
                "embedding_dim": 128,
                "input_size": 32,
            },
        },
    },
}

PRETRAIN_VARIANTS = ("base", "red", "target")
FINETUNE_METHODS = ("naive", "mec", "ssc")
REGULARISERS = ("none", "rct", "source")
# Margins: the paper says ArcFace; the authors' code uses the additive cosine margin.
PRETRAIN_MARGINS = {"code": "rethinking_pretrain", "arcface": "arcface", "cosface": "cosface"}


def parse_arg(arg: str | None) -> dict[str, str]:
    """``"variant=red,backbone=ir18"`` -> {"variant": "red", "backbone": "ir18"}."""
    out = {}
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"config argument {item!r} is not of the form key=value (in {arg!r})")
        out[key.strip()] = value.strip()
    return out


def _choice(value: str, choices, what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {sorted(choices)}, got {value!r}")
    return value


def _backbone(scale: str, backbone: str) -> dict[str, Any]:
    table = BACKBONES[_choice(scale, SCALES, "scale")]
    return copy.deepcopy(table[_choice(backbone, table, f"backbone (scale {scale!r})")])


def _channels(model: dict) -> int:
    return 1 if model["name"].startswith("lightcnn") else 3


def _image_size(scale: str, model: dict) -> int:
    if scale == "paper" and model["name"].startswith("lightcnn"):
        return 128
    return SCALES[scale]["image_size"]


def _common(task: str, seed: int) -> ml_collections.ConfigDict:
    from hfrjax.tasks import default_config

    c = default_config(task)
    c.seed = seed
    c.keep_checkpoints = 2
    c.tensorboard = False
    return c


def _eval(data_dir: str, folds) -> dict:
    return {"data_dir": data_dir, "folds": tuple(folds) if folds else None}


def _set(c: ml_collections.ConfigDict, **sections) -> None:
    from hfrjax.config import merge

    merge(c, sections)


def pretrain_config(
    *,
    variant: str = "base",
    backbone: str = "ir18",
    margin: str = "code",
    scale: str = "paper",
    source_dir: str = "",
    target_dir: str = "",
    target_fold: int = 1,
    eval_dir: str | None = None,
    eval_folds=(1,),
    seed: int = 0,
) -> ml_collections.ConfigDict:
    """Margin-softmax pretraining on the VIS source set (``variant``: base | red | target).

    ``target`` adds the training identities of ``target_dir``'s protocol fold ``target_fold``
    (both modalities) to the classifier; ``eval_dir`` (default ``target_dir``) gives the
    zero-shot evaluation run at the end (``eval_folds``; empty: none).
    """
    _choice(variant, PRETRAIN_VARIANTS, "variant")
    hp = SCALES[_choice(scale, SCALES, "scale")]["pretrain"]
    c = _common("classification", seed)
    model = _backbone(scale, backbone)
    size = _image_size(scale, model)
    augment = {"hflip": True}
    if variant in ("red", "target"):  # "+target" builds on "+red" in the paper's Table 3.
        augment.update(channel_aug="red", channel_aug_p=0.5)
    joint = [{"data_dir": target_dir, "fold": int(target_fold)}] if variant == "target" else []
    evaluate = eval_dir if eval_dir is not None else target_dir
    _set(
        c,
        model=model,
        input={
            "data_dir": source_dir,
            "batch_size": hp["batch_size"],
            "image_size": (size, size),
            "channels": _channels(model),
            "num_threads": 2,
            "seed": seed,
            "augment": augment,
            "joint": joint,
        },
        num_epochs=hp["epochs"],
        margin={"preset": PRETRAIN_MARGINS[_choice(margin, PRETRAIN_MARGINS, "margin")]},
        optimizer={"name": "sgd", "momentum": 0.9, "weight_decay": hp["weight_decay"]},
        schedule={
            "name": "piecewise",
            "lr": hp["lr"],
            "boundaries_epochs": tuple(hp["boundaries_epochs"]),
            "factor": 0.1,
            "warmup_epochs": hp["warmup_epochs"],
        },
        eval=_eval(evaluate if eval_folds else "", eval_folds),
    )
    return c


def finetune_config(
    *,
    method: str = "mec",
    reg: str = "none",
    lam: float = 1.0,
    backbone: str = "ir18",
    scale: str = "paper",
    init_from: str = "",
    target_dir: str = "",
    fold: int = 1,
    source_dir: str = "",
    eval_dir: str | None = None,
    rct_weight: float | None = None,
    class_means_bn: str = "train",
    seed: int = 0,
) -> ml_collections.ConfigDict:
    """Fine-tuning on fold ``fold``'s training split of ``target_dir``.

    ``method``: naive | mec | ssc (see module docstring). ``reg``: none | rct | source (with
    weight ``lam``; ``lam = 0`` builds the same run as ``reg="none"``, without a source
    pipeline). Evaluates fold ``fold`` of ``eval_dir`` (default ``target_dir``; another
    dataset for the cross-dataset table) at the end.
    """
    _choice(method, FINETUNE_METHODS, "method")
    _choice(reg, REGULARISERS, "reg")
    hp = SCALES[_choice(scale, SCALES, "scale")]["finetune"]
    c = _common("rethink", seed)
    model = _backbone(scale, backbone)
    size = _image_size(scale, model)
    preset = "rethinking_finetune_lightcnn" if model["name"].startswith("lightcnn") else None
    head = {
        "naive": {"init": "random", "freeze": False},
        "mec": {"init": "class_means", "freeze": True, "class_means_bn": class_means_bn},
        "ssc": {"init": "pretrained_rows", "freeze": True},
    }[method]
    _set(
        c,
        model=model,
        init_from=init_from,
        input={
            "data_dir": target_dir,
            "fold": int(fold),
            "batch_size": hp["batch_size"],
            "image_size": (size, size),
            "channels": _channels(model),
            "num_threads": 2,
            "seed": seed,
            "augment": {"hflip": True},
        },
        num_epochs=hp["epochs"],
        margin={"preset": preset or "rethinking_finetune"},
        head=head,
        optimizer={"name": "sgd", "momentum": 0.9, "weight_decay": hp["weight_decay"]},
        schedule={
            "name": "piecewise",
            "lr": hp["lr"],
            "boundaries_epochs": tuple(hp["boundaries_epochs"]),
            "factor": 0.1,
        },
        eval=_eval(eval_dir if eval_dir is not None else target_dir, [fold]),
    )
    if reg == "rct":
        c.rct.weight = SCALES[scale]["rct_weight"] if rct_weight is None else float(rct_weight)
    elif reg == "source" and float(lam) > 0:
        _set(
            c,
            source_reg={
                "weight": float(lam),
                "freeze_head": True,
                "input": {
                    "data_dir": source_dir,
                    "batch_size": hp["source_batch_size"],
                    "image_size": (size, size),
                    "channels": _channels(model),
                    "num_threads": 2,
                    "seed": seed + 1,
                    "augment": {"hflip": True},
                },
            },
        )
    return c
