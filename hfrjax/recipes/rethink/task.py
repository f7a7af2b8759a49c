"""Task ``rethink``: fine-tuning as "Rethinking the domain gap in NIR-VIS face recognition" does it.

The classification task (`hfrjax.tasks.classification`) plus the paper's fine-tuning pieces:

* ``head.init = "class_means"`` (MEC, §3.2): each class row is the normalised mean embedding of
  the class's training images (flip-fused), computed once before training with BN in train
  mode as the authors' code does (``head.class_means_bn``), then frozen.
* ``head.init = "pretrained_rows"`` (SSC): the rows of a "+target" pretraining's classifier for
  this fold's identities, found through the pretraining's stored class ranges.
* ``source_reg.weight`` = λ > 0 (§3.3): L = L_cls(target) + λ · L_cls(source) on joint batches
  (a second input, "source"), against the pretrained source classifier (frozen by default).
* ``rct.weight`` = μ > 0: L += μ · ‖θ − θ₀‖² towards the pretrained backbone θ₀ (a frozen copy
  in the state's ``extra``). The paper gives no μ; configs use 1e-2 and say so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hfrjax.config import ConfigError, Section
from hfrjax.data import pipeline
from hfrjax.data.dataset import Dataset
from hfrjax.eval.embedding import MeshEmbedder, embed_records
from hfrjax.losses import class_mean_rows, l2_sp_regularizer
from hfrjax.tasks import register_task
from hfrjax.tasks.classification import (
    ClassificationConfig,
    ClassificationTask,
    HeadConfig,
    MarginSection,
    backbone_embed,
    margin_loss,
)
from hfrjax.train import checkpoint as ckpt_lib
from hfrjax.train import state as state_lib
from hfrjax.train.step import apply_model


@dataclasses.dataclass(frozen=True)
class RethinkHeadConfig(HeadConfig):
    """``init``: random | class_means (MEC) | pretrained_rows (SSC)."""

    class_means_flip: bool = True
    class_means_bn: str = "train"  # train (the authors' code) | eval
    class_means_batch: int = 128


@dataclasses.dataclass(frozen=True)
class SourceRegConfig(Section):
    weight: float = 0.0  # λ; 0: off (no source pipeline is built).
    input: pipeline.InputConfig = pipeline.InputConfig(batch_size=512)
    freeze_head: bool = True  # The pretrained source classifier stays fixed.
    margin: MarginSection = MarginSection(preset="")  # preset "": the main margin.


@dataclasses.dataclass(frozen=True)
class RctConfig(Section):
    weight: float = 0.0  # μ; 0: off.


@dataclasses.dataclass(frozen=True)
class RethinkConfig(ClassificationConfig):
    head: RethinkHeadConfig = RethinkHeadConfig()
    source_reg: SourceRegConfig = SourceRegConfig()
    rct: RctConfig = RctConfig()


def load_pretrained_head(path: str) -> tuple[np.ndarray, list[pipeline.ClassRange]]:
    """Classifier rows [C, D] and their per-dataset class ranges from a training workdir."""
    p = Path(path)
    if not (p / "checkpoints").exists():
        raise FileNotFoundError(
            f"init_from={path!r} has no checkpoints/: classifier rows (SSC, source "
            "regularisation) need a training workdir, not an exported embedder"
        )
    ck = ckpt_lib.Checkpointer(p / "checkpoints", async_save=False)
    try:
        step, raw, meta = ck.restore_untyped(ck.latest_readable_step())
    finally:
        ck.close()
    ranges = meta.get("class_ranges")
    if not ranges:
        raise ValueError(f"checkpoint {p} step {step} records no class_ranges in its metadata")
    return np.asarray(raw["params"]["head"]["weight"]), [
        pipeline.ClassRange.from_json(r) for r in ranges
    ]


def rows_for_input(path: str, inp_cfg: pipeline.InputConfig, train_input) -> np.ndarray:
    """SSC: the rows of ``path``'s classifier for each class of ``train_input``, in order."""
    weight, ranges = load_pretrained_head(path)
    return weight[pipeline.class_rows_for(ranges, inp_cfg.data_dir, train_input.class_labels)]


def class_means(cfg: RethinkConfig, parts: dict, params, batch_stats) -> np.ndarray:
    """MEC rows: per class, the normalised mean embedding of its training images."""
    head = cfg.head
    if head.class_means_bn not in ("eval", "train"):
        raise ConfigError(f"head.class_means_bn must be 'eval' or 'train', got {head.class_means_bn!r}")
    if cfg.input.joint:
        raise ConfigError("head.init='class_means' needs a single-dataset input (no input.joint)")
    dataset = Dataset.open(cfg.input.data_dir)
    records, _ = pipeline.select_records(dataset, cfg.input)
    labels, _ = pipeline.remap_labels(records.label)
    embedder = MeshEmbedder(
        backbone_embed(parts["backbone"]),
        {"backbone": params},
        {"batch_stats": batch_stats},
        parts["mesh"],
        train_bn=head.class_means_bn == "train",
    )
    emb = embed_records(
        embedder,
        dataset,
        list(records.key),
        head.class_means_batch,
        image_size=cfg.input.image_size,
        channels=cfg.input.channels,
        flip=head.class_means_flip,
    )
    return np.asarray(class_mean_rows(jnp.asarray(emb), jnp.asarray(labels), parts["num_classes"]))


@register_task("rethink")
class RethinkTask(ClassificationTask):
    config_class = RethinkConfig

    def initial_rows(self, cfg: RethinkConfig, ctx, parts):
        init = cfg.head.init
        if init == "class_means":
            return class_means(cfg, parts, parts["params"]["backbone"], parts["batch_stats"])
        if init == "pretrained_rows":
            if not cfg.init_from:
                raise ConfigError("head.init='pretrained_rows' (SSC) needs init_from")
            return rows_for_input(cfg.init_from, cfg.input, parts["train_input"])
        if init != "random":
            raise ConfigError(
                "head.init must be 'random', 'class_means' or 'pretrained_rows', got " f"{init!r}"
            )
        return None

    def extra_parts(self, cfg: RethinkConfig, ctx, parts) -> None:
        src, rct = cfg.source_reg, cfg.rct
        if (src.weight or rct.weight) and not cfg.init_from:
            raise ConfigError("source_reg.weight and rct.weight need init_from (the pretrained run)")
        if src.weight:
            source_input = pipeline.make_train_input(src.input, mesh=parts["mesh"])
            parts["inputs"]["source"] = source_input
            # On resume the checkpoint supplies the values; only shapes matter here.
            rows = (
                np.zeros((source_input.num_classes, parts["emb_dim"]), np.float32)
                if ctx.restoring
                else rows_for_input(cfg.init_from, src.input, source_input)
            )
            parts["params"]["source_head"] = state_lib.init_head(
                parts["rng_head"], source_input.num_classes, parts["emb_dim"], rows
            )
            if src.freeze_head:
                parts["frozen"].append("source_head")
        if rct.weight:  # A copy of the starting backbone: θ₀.
            parts["extra"]["anchor"] = jax.tree.map(jnp.array, parts["params"]["backbone"])

    def loss_terms(self, cfg: RethinkConfig, parts, params, model_state, extra, batches, rng, metrics):
        total = 0.0
        if cfg.source_reg.weight:
            src = batches["source"]
            # The source images pass separately: each batch normalises with its own statistics.
            emb, model_state = apply_model(
                parts["backbone"], params["backbone"], model_state, src["image"], True,
                jax.random.fold_in(rng, 1),
            )
            margin = cfg.source_reg.margin.margin() if cfg.source_reg.margin.preset else cfg.margin.margin()
            loss, acc = margin_loss(emb, params["source_head"]["weight"], src["label"], margin)
            total = total + cfg.source_reg.weight * loss
            metrics.update({"loss/source": loss, "source_accuracy": acc})
        if cfg.rct.weight:
            penalty = l2_sp_regularizer(params["backbone"], jax.lax.stop_gradient(extra["anchor"]))
            total = total + cfg.rct.weight * penalty
            metrics["loss/anchor_l2"] = penalty
        return total, model_state
