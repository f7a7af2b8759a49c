"""Task ``classification``: a backbone and a normalised classifier trained with a combined-margin
softmax (ArcFace / CosFace family), the face-recognition workhorse (InsightFace's arcface_torch).

The classifier ``params["head"]["weight"]`` [C, D] is dense (replicated), class-sharded over the
mesh's ``model`` axis, or Partial FC (a sampled subset of rows per step), chosen by
``head.classifier``. Recipes extend `ClassificationTask` (the Rethinking recipe writes the
classifier rows and adds regularisers) through its small overridable methods.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hfrjax.config import ConfigError, Section
from hfrjax.data import pipeline
from hfrjax.losses import (
    MarginConfig,
    cosine_logits,
    get_margin_preset,
    margin_softmax_loss_from_cosine,
)
from hfrjax.losses import sharded as sharded_lib
from hfrjax.tasks import register_task
from hfrjax.train import mesh as mesh_lib
from hfrjax.train import optim
from hfrjax.train import state as state_lib
from hfrjax.train.export import load_weights
from hfrjax.train.step import apply_model
from hfrjax.train.task import ExportSpec, Optimizer, SetupContext, Step, TaskSetup, single

ROW_MASK = "_row_mask"  # Aux metric: Partial FC's sampled classifier rows (not logged).


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    FREE_FORM = ("kwargs",)
    name: str = ""  # A registered backbone (hfrjax.models.list_models()).
    kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class MarginSection(Section):
    """A preset (hfrjax.losses.MARGIN_PRESETS) with optional overrides of s, m1, m2, m3."""

    preset: str = "arcface"
    s: float | None = None
    m1: float | None = None
    m2: float | None = None
    m3: float | None = None

    def margin(self) -> MarginConfig:
        base = get_margin_preset(self.preset) if self.preset else MarginConfig()
        over = {k: float(v) for k in ("s", "m1", "m2", "m3") if (v := getattr(self, k)) is not None}
        return dataclasses.replace(base, **over)


@dataclasses.dataclass(frozen=True)
class HeadConfig(Section):
    init: str = "random"  # random (N(0, 0.01) rows); recipes add their own initialisations.
    freeze: bool = False  # Frozen rows get no gradient and no optimizer state.
    classifier: str = "dense"  # dense | sharded (rows over the model axis) | partial_fc
    sample_rate: float = 0.1  # Partial FC
    matmul_dtype: str = ""  # "bfloat16": bf16 cosine matmul with float32 accumulation.
    # Storage of the rows (and so of their SGD momentum and gradient): "bfloat16" halves the
    # classifier's memory (100M identities on 8 x 80 GB with Partial FC); the loss widens the
    # rows it uses to float32, so only the stored values and the update are rounded. Caveat:
    # the update is rounded to nearest, so a step under ~2^-9 of a weight (weight decay
    # lr * wd = 5e-5 of it) is lost.
    rows_dtype: str = "float32"  # float32 | bfloat16


@dataclasses.dataclass(frozen=True)
class ClassificationConfig(Section):
    model: ModelConfig = ModelConfig()
    compute_dtype: str = "float32"  # float32 | bfloat16 (backbone computation)
    input: pipeline.InputConfig = pipeline.InputConfig()
    margin: MarginSection = MarginSection()
    head: HeadConfig = HeadConfig()
    optimizer: optim.OptimizerConfig = optim.OptimizerConfig()
    schedule: optim.ScheduleConfig = optim.ScheduleConfig()
    init_from: str = ""  # An export or a training workdir: backbone weights to start from.
    num_epochs: float = 1.0
    total_steps: int = 0  # > 0 overrides num_epochs.


ROWS_DTYPES = ("float32", "bfloat16")


def margin_loss(emb, weight, labels, margin: MarginConfig, matmul_dtype=None):
    """(loss, accuracy) of the combined-margin softmax on a replicated classifier.

    Rows stored in bfloat16 are widened to float32 here (the gradient returns in bfloat16).
    """
    weight = weight if weight.dtype == jnp.float32 else weight.astype(jnp.float32)
    cos = cosine_logits(emb, weight, matmul_dtype)
    loss = margin_softmax_loss_from_cosine(cos, labels, **margin.as_kwargs())
    return loss, jnp.mean(jnp.argmax(cos, -1) == labels)


@dataclasses.dataclass(frozen=True)
class ShardedHead:
    """A classifier whose rows are sharded over the mesh's ``model`` axis; ``sample_rate`` < 1
    turns on Partial FC (only the sampled rows and their optimizer state change)."""

    mesh: Any
    num_classes: int
    sample_rate: float = 1.0


def sharded_margin_loss(emb, weight, labels, margin, head: ShardedHead, rng, matmul_dtype=None):
    """(loss, accuracy or None, row mask or None) with the class-sharded softmax."""
    kw = dict(num_classes=head.num_classes, matmul_dtype=matmul_dtype, **margin.as_kwargs())
    if head.sample_rate < 1.0:
        loss, mask = sharded_lib.partial_fc_loss(
            emb, weight, labels, head.mesh, sample_rate=head.sample_rate, rng=rng, **kw
        )
        return loss, None, mask
    loss, acc = sharded_lib.sharded_margin_softmax_loss(
        emb, weight, labels, head.mesh, return_accuracy=True, **kw
    )
    return loss, acc, None


def keep_unsampled_rows(old_state, params, opt_states, metrics):
    """Partial FC: undo the optimizer step on the rows this step did not sample."""
    mask = metrics.get(ROW_MASK)
    if mask is None:
        return params, opt_states
    params, opt_states["main"] = sharded_lib.masked_head_update(
        old_state.params, params, old_state.opt_states["main"], opt_states["main"], mask
    )
    return params, opt_states


def classification_step(
    backbone,
    margin: MarginConfig,
    sharded_head: ShardedHead | None = None,
    matmul_dtype=None,
    more_terms=None,
    inputs: tuple[str, ...] = ("train",),
) -> Step:
    """The margin-softmax update on ``batches["train"]`` with the optimizer "main".

    ``more_terms(params, model_state, extra, batches, rng, metrics) -> (loss, model_state)``
    adds a recipe's terms (e.g. the Rethinking paper's source regularisation).
    """

    def loss_fn(params, model_state, extra, batches, rng):
        batch = batches["train"]
        emb, new_ms = apply_model(backbone, params["backbone"], model_state, batch["image"], True, rng)
        weight = params["head"]["weight"]
        if sharded_head is None:
            loss, acc = margin_loss(emb, weight, batch["label"], margin, matmul_dtype)
            metrics = {"loss/cls": loss, "train_accuracy": acc}
        else:
            loss, acc, mask = sharded_margin_loss(
                emb, weight, batch["label"], margin, sharded_head,
                jax.random.fold_in(rng, 2), matmul_dtype,
            )
            metrics = {"loss/cls": loss}
            if acc is not None:
                metrics["train_accuracy"] = acc
            if mask is not None:
                metrics[ROW_MASK] = mask
        if more_terms is not None:
            more, new_ms = more_terms(params, new_ms, extra, batches, rng, metrics)
            loss = loss + more
        return loss, (metrics, new_ms, extra)

    return Step(
        loss_fn,
        inputs=inputs,
        optimizers=("main",),
        post_update=keep_unsampled_rows if sharded_head is not None else None,
    )


@functools.lru_cache(maxsize=16)
def backbone_embed(backbone):
    """The task's embedder: eval-mode (or batch-statistics) BN, one embedding per image.

    One function per backbone configuration (flax modules compare by their fields), so runs in
    one process (the quickstart's ten folds) reuse the compiled embedding (`MeshEmbedder`).
    """

    def embed(params, model_state, images, modality, train_bn=False):
        rng = jax.random.key(0) if train_bn else None
        emb, _ = apply_model(backbone, params["backbone"], model_state, images, train_bn, rng)
        return emb

    return embed


@register_task("classification")
class ClassificationTask:
    config_class = ClassificationConfig

    # -- pieces recipes override -------------------------------------------------------------

    def initial_rows(self, cfg, ctx, parts) -> np.ndarray | None:
        """Initial classifier rows [C, D] (None: random)."""
        if cfg.head.init != "random":
            raise ConfigError(f"head.init={cfg.head.init!r}: task classification only has 'random'")
        return None

    def extra_parts(self, cfg, ctx, parts) -> None:
        """Add inputs, parameter groups, frozen groups or extra state to ``parts``."""

    def loss_terms(self, cfg, parts, params, model_state, extra, batches, rng, metrics):
        """Extra loss terms: returns (added loss, model_state)."""
        return 0.0, model_state

    # -- setup -------------------------------------------------------------------------------

    def setup(self, cfg: ClassificationConfig, ctx: SetupContext) -> TaskSetup:
        mesh = ctx.mesh
        train_input = pipeline.make_train_input(cfg.input, mesh=mesh)
        num_classes = train_input.num_classes
        overrides = {"in_channels": cfg.input.channels} if cfg.input.channels != 3 else {}
        if not cfg.model.name:
            from hfrjax.models import list_models

            raise ConfigError(f"model.name is empty; registered: {', '.join(list_models())}")
        model_cfg = {"name": cfg.model.name, "kwargs": {**cfg.model.kwargs, **overrides}}
        backbone = state_lib.build_backbone(model_cfg, compute_dtype=cfg.compute_dtype)
        steps_per_epoch = train_input.steps_per_epoch
        total = int(cfg.total_steps or round(cfg.num_epochs * steps_per_epoch))
        accumulate = cfg.optimizer.accumulate_steps
        if accumulate < 1 or steps_per_epoch < accumulate:
            raise ConfigError(
                f"optimizer.accumulate_steps={accumulate} must be in [1, steps per epoch = "
                f"{steps_per_epoch}]"
            )
        schedule = optim.make_schedule(
            cfg.schedule, max(1, steps_per_epoch // accumulate), total // accumulate
        )
        if cfg.head.rows_dtype not in ROWS_DTYPES:
            raise ConfigError(
                f"head.rows_dtype must be one of {', '.join(ROWS_DTYPES)}, got "
                f"{cfg.head.rows_dtype!r}"
            )
        if cfg.head.classifier not in ("dense", "sharded", "partial_fc"):
            raise ConfigError(
                f"head.classifier must be 'dense', 'sharded' or 'partial_fc', got "
                f"{cfg.head.classifier!r}"
            )
        sharded_head, head_rows = None, num_classes
        if cfg.head.classifier != "dense":
            rate = cfg.head.sample_rate if cfg.head.classifier == "partial_fc" else 1.0
            sharded_head = ShardedHead(mesh, num_classes, rate)
            head_rows = sharded_lib.padded_num_classes(num_classes, mesh.shape[mesh_lib.MODEL_AXIS])
        rng_init, rng_head, rng_train = jax.random.split(jax.random.key(ctx.seed), 3)
        loading = bool(cfg.init_from) and not ctx.restoring
        params, batch_stats = state_lib.init_backbone(backbone, rng_init, abstract=loading)
        if loading:  # Every leaf comes from init_from (load_backbone checks they all fit).
            params, batch_stats = self.load_backbone(cfg.init_from, params, batch_stats)
        emb_dim = jax.eval_shape(
            lambda: backbone.apply(
                {"params": params, "batch_stats": batch_stats},
                state_lib.models.dummy_input(backbone),
                train=False,
            )
        ).shape[-1]
        parts = dict(
            mesh=mesh,
            backbone=backbone,
            train_input=train_input,
            num_classes=num_classes,
            emb_dim=emb_dim,
            params={"backbone": params},
            batch_stats=batch_stats,
            inputs={"train": train_input},
            frozen=["head"] if cfg.head.freeze else [],
            extra={},
            meta={},
            rng_head=rng_head,
        )
        rows = None if ctx.restoring else self.initial_rows(cfg, ctx, parts)
        if rows is not None and head_rows > num_classes:  # Padding rows of a sharded head.
            rows = np.concatenate([rows, np.zeros((head_rows - num_classes, emb_dim), rows.dtype)])
        parts["params"]["head"] = self.init_rows(
            cfg, mesh, rng_head, head_rows, emb_dim, rows, sharded=sharded_head is not None
        )
        self.extra_parts(cfg, ctx, parts)
        trainable = tuple(g for g in parts["params"] if g not in parts["frozen"])
        sched = (lambda n: schedule(n // accumulate)) if accumulate > 1 else schedule
        tx = optim.make_optimizer(cfg.optimizer, schedule)
        optimizers = {"main": Optimizer(trainable, tx, sched)}
        state = state_lib.create_state(
            parts["params"], {"batch_stats": parts["batch_stats"]}, optimizers, rng_train,
            parts["extra"],
        )
        margin = cfg.margin.margin()
        matmul_dtype = state_lib.DTYPES[cfg.head.matmul_dtype] if cfg.head.matmul_dtype else None
        task = self

        def more_terms(params, model_state, extra, batches, rng, metrics):
            return task.loss_terms(cfg, parts, params, model_state, extra, batches, rng, metrics)

        step = classification_step(
            backbone, margin, sharded_head, matmul_dtype, more_terms, tuple(parts["inputs"])
        )

        def state_sharding(state, mesh):
            return mesh_lib.state_sharding(state, mesh, shard_head=sharded_head is not None)

        meta = {
            "num_classes": num_classes,
            "class_labels": train_input.class_labels.tolist(),
            "class_ranges": [r.to_json() for r in train_input.class_ranges],
            "data_dir": cfg.input.data_dir,
            **parts["meta"],
        }
        return TaskSetup(
            inputs=parts["inputs"],
            state=state,
            optimizers=optimizers,
            steps={"train": step},
            plan=single("train"),
            total_steps=total,
            steps_per_epoch=steps_per_epoch,
            embed=backbone_embed(backbone),
            export=ExportSpec(
                model=model_cfg,
                variables={"params": ("params", "backbone"), "batch_stats": ("model_state", "batch_stats")},
                input_size=tuple(cfg.input.image_size) if cfg.input.image_size else None,
                channels=cfg.input.channels,
            ),
            images_per_step=cfg.input.batch_size,
            state_sharding=state_sharding,
            meta=meta,
            describe=f"{cfg.model.name}, {num_classes} classes, global batch {cfg.input.batch_size}; ",
            eval_input={"image_size": cfg.input.image_size or _hw(backbone.input_size), "channels": cfg.input.channels},
        )

    @staticmethod
    def init_rows(cfg, mesh, rng, head_rows: int, emb_dim: int, rows, *, sharded: bool) -> dict:
        """``{"weight": [head_rows, D]}`` in ``head.rows_dtype`` (optax's momentum then takes
        the same dtype). Random rows of a sharded head are drawn already sharded over the
        model axis (the same draws: partitionable threefry), so no device ever holds all C
        rows (100M x 512 float32 rows alone are 205 GB)."""
        dtype = state_lib.DTYPES[cfg.head.rows_dtype]
        if rows is None and sharded:
            spec = jax.sharding.PartitionSpec(mesh_lib.MODEL_AXIS, None)
            draw = jax.jit(
                lambda r: state_lib.init_head(r, head_rows, emb_dim)["weight"].astype(dtype),
                out_shardings=jax.sharding.NamedSharding(mesh, spec),
            )
            return {"weight": draw(rng)}
        head = state_lib.init_head(rng, head_rows, emb_dim, rows)
        return head if dtype == jnp.float32 else {"weight": head["weight"].astype(dtype)}

    @staticmethod
    def load_backbone(path: str, params, batch_stats):
        return load_backbone_weights(path, params, batch_stats)


def _hw(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def load_backbone_weights(path: str, params, batch_stats):
    """Backbone weights from an export or a workdir, checked against the model's shapes."""
    from hfrjax.train import checkpoint as ckpt_lib

    _, variables = load_weights(path)
    new_p, new_bs = variables.get("params", {}), variables.get("batch_stats", {})
    for want, have, what in ((params, new_p, "params"), (batch_stats, new_bs, "batch stats")):
        bad = ckpt_lib.shape_problems(want, have)
        if bad:
            raise ckpt_lib.CheckpointMismatchError(
                f"backbone {what} of {path} do not fit the configured model "
                f"({len(bad)} problem(s)): " + "; ".join(bad[:8])
            )
    return jax.tree.map(jnp.asarray, new_p), jax.tree.map(jnp.asarray, new_bs)
