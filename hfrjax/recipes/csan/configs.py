"""Run configs of the CSAN recipe (the files in ``configs/csan/`` call these).

Scales:
  regdb      RegDB (CSAN §IV-C): 128x64 crops, batch 32, RMSProp 1e-4, λ = 1e-3; trial k
             trains on fold k's training identities and tests fold k, both directions.
  arlvtf     ARL-VTF: 224x224, λ = 1e-5; thermal probes against the visible galleries.
  synthetic  the library's synthetic NIR-VIS or thermal-visible set (module
             `hfrjax.recipes.csan.run`) at 48x48 with a half-width VGG (32/64/128) pretrained
             on the synthetic VIS source set (`pretrain_config`, ImageNet's stand-in), 20
             epochs with early stopping.
  tiny       16x16, a few steps: for tests.

Methods (Table I): ``loss=ce`` (CSAN with cross-entropy on the linked pseudo-labels),
``loss=ptl`` (the pseudo-triplet loss); ``lam`` is the PCS weight λ (Eq. 6; 0 = no PCS).
"""

from __future__ import annotations

import ml_collections

from hfrjax.tasks import default_config

SCALES = ("regdb", "arlvtf", "synthetic", "tiny")
SYNTHETIC_SETS = ("nirvis", "thermal")
# Synthetic scale, sized for CPUs: 48x48 crops, VGG16 blocks 1-3 at half width.
SYNTHETIC_IMAGE = (48, 48)
SYNTHETIC_WIDTHS = (32, 64, 128)


def parse_arg(arg: str | None) -> dict[str, str]:
    """"a=1,b=x" -> {"a": "1", "b": "x"}."""
    out: dict[str, str] = {}
    for item in (arg or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"config argument {item!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def csan_config(
    scale: str,
    *,
    loss: str = "ptl",
    lam: float | None = None,
    trial: int = 1,
    synthetic_set: str = "nirvis",
    data_dir: str = "",
    seed: int = 0,
) -> ml_collections.ConfigDict:
    """The complete config of one CSAN run at ``scale`` (module docstring)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    c = default_config("csan")
    c.seed = seed
    c.input.seed = seed
    c.loss.kind = loss
    c.log_every = 20
    c.checkpoint_every = 500
    c.tensorboard = False
    if scale == "regdb":
        c.input.image_size = (128, 64)
        c.input.fold = trial
        c.clustering.target_fraction = 0.1  # 10 images per identity and modality.
        c.early_stop.holdout_fraction = 0.1
        c.loss.sparsity_weight = 1e-3 if lam is None else lam
        c.test.kind = "reid"
        c.test.directions = ("probe->gallery", "gallery->probe")  # thermal->visible, and back.
        c.test.folds = (trial,)
        c.eval.folds = (trial,)
    elif scale == "arlvtf":
        c.input.image_size = (224, 224)
        c.input.fold = 1  # Every ARL-VTF fold trains on the same training subjects.
        c.clustering.bank_epochs = 0  # A 100,352-d bank per image would not fit; see docs.
        c.clustering.target_fraction = 0.05
        c.early_stop.holdout_fraction = 0.05
        c.loss.sparsity_weight = 1e-5 if lam is None else lam
        c.test.kind = "protocol"
        c.test.directions = ("probe->gallery",)  # Thermal probes, visible gallery.
    elif scale == "synthetic":
        if synthetic_set not in SYNTHETIC_SETS:
            raise ValueError(f"set must be one of {SYNTHETIC_SETS}, got {synthetic_set!r}")
        c.input.image_size = SYNTHETIC_IMAGE
        c.model.backbone_widths = SYNTHETIC_WIDTHS
        c.input.fold = 1
        # Measured on the synthetic sets with the pretrained stand-in VGG: single linkage down
        # to ~one cluster per identity chains the IR side into a few giant clusters (purity
        # 0.2), and cluster silhouettes have medians of 0.2-0.4, so χ = 0.6 keeps none. Stop
        # at 0.4 clusters per image (RGB purity ~0.9, IR ~0.5) and filter at χ = 0.1.
        c.clustering.target_fraction = 0.4
        c.filter.silhouette = 0.1
        c.early_stop.holdout_fraction = 0.1
        c.early_stop.patience = 3
        c.loss.sparsity_weight = 1e-3 if lam is None else lam
        c.test.kind = "protocol"
        c.test.directions = ("probe->gallery",)
        c.eval.folds = (1,)
        c.log_every = 50
    else:  # tiny
        c.input.image_size = (16, 16)
        c.input.fold = 1
        c.input.batch_size = 8
        c.input.k = 2
        c.input.embed_batch = 16
        c.model.dim = 8
        c.model.backbone_widths = (4, 8, 8)
        c.clustering.target_fraction = 0.5
        c.clustering.merge_fraction = 0.25
        c.filter.silhouette = -1.0
        c.filter.max_size_factor = 0.0
        c.epochs = 2
        c.loss.sparsity_weight = 1e-3 if lam is None else lam
        c.test.kind = "protocol"
        c.test.directions = ("probe->gallery",)
        c.test.batch_size = 16
        c.eval.folds = (1,)
        c.log_every = 1
    c.input.data_dir = data_dir
    c.eval.data_dir = data_dir
    return c


def pretrain_config(data_dir: str = "", epochs: float = 4.0) -> ml_collections.ConfigDict:
    """The synthetic scale's backbone pretraining (`hfrjax.recipes.csan.pretrain`): the
    truncated VGG with a pooled, batch-normalised 128-d embedding, CosFace on the VIS-only
    source set."""
    from hfrjax.recipes.csan import pretrain  # noqa: F401 - registers vgg16_conv3_gap.

    size = SYNTHETIC_IMAGE
    return default_config(
        "classification",
        model=dict(
            name="vgg16_conv3_gap",
            kwargs=dict(widths=SYNTHETIC_WIDTHS, embedding_dim=128, input_size=size[0]),
        ),
        log_every=20,
        checkpoint_every=200,
        keep_checkpoints=2,
        tensorboard=False,
        num_epochs=epochs,
        input=dict(data_dir=data_dir, batch_size=64, image_size=size, augment=dict(hflip=True)),
        # From scratch without BN in the VGG: AdamW and a softer CosFace (s = 30, m = 0.2)
        # learn where SGD with s = 64, m = 0.4 did not move in 4 epochs.
        margin=dict(preset="cosface", s=30.0, m3=0.2),
        optimizer=dict(name="adamw", weight_decay=5e-4),
        schedule=dict(name="cosine", lr=1e-3, warmup_epochs=0.25),
    )


def config_from_arg(scale: str, arg: str | None, where: str) -> ml_collections.ConfigDict:
    """`csan_config` from a config file's argument string (keys: loss, lam, trial, set, data,
    seed)."""
    a = parse_arg(arg)
    lam = a.pop("lam", None)
    config = csan_config(
        scale,
        loss=a.pop("loss", "ptl"),
        lam=None if lam is None else float(lam),
        trial=int(a.pop("trial", 1)),
        synthetic_set=a.pop("set", "nirvis"),
        data_dir=a.pop("data", ""),
        seed=int(a.pop("seed", 0)),
    )
    if a:
        raise ValueError(f"unknown argument(s) {sorted(a)} for {where}")
    return config
