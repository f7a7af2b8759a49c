"""Task ``csan``: unsupervised RGB-IR training as "Cross-Spectral Attention for Unsupervised
RGB-IR Face Verification and Person Re-identification" (Nikhal et al.) does it, Alg. 1.

No identity label reaches training: the input (`inputs.CsanBatches`) carries each sample's
index, and the losses look the pseudo-labels up in ``state.extra``, which the task's hook
(`hooks.PseudoLabelHook`) fills on the host:

1. intra-domain agglomerative clustering per modality (§III-B): every image its own cluster;
   ``clustering.bank_epochs`` epochs of cross-entropy against a memory bank of cluster centres
   (the reference method's training between merges; step "bank") before each merge stage of
   ``int(n · merge_fraction)`` closest-pair merges, down to the target count;
2. filtering of tiny / huge clusters and of clusters with silhouette ≤ χ = 0.6 (Eq. 7);
3. every epoch, cross-spectral voting (Alg. 1 lines 20-31), then an epoch of step "train":
   ``loss.kind="ptl"``: L = L_PTL + λ · L_PCS (Eq. 4-6); ``"ce"``: cross-entropy on the linked
   pseudo-labels + λ · L_PCS (Table I's "CSAN" row, the memory-bank softmax over linked pairs).

Optimizer: the core's RMSProp (`hfrjax.train.optim`, PyTorch's: decay 0.99, eps outside the
square root), constant lr 1e-4, batch 32 (§IV-C). Early stopping (§III-F "until a drop in
validation performance"): with ``early_stop.holdout_fraction`` > 0 a seeded share of the
training identities is held out, and their IR→RGB retrieval (labels used for this only) is
measured at every epoch boundary; after ``patience`` epochs without improvement the hook ends
training there (``HookContext.stop``). The task's final hook (run once where training ends)
measures the last epoch when training ran to the end and puts the best parameters back.

``state.extra`` (fixed shapes; N = N_rgb + N_ir training samples, RGB rows first):
cluster [N] int32 (filtered, -1 = out), raw_cluster [N] int32 (before filtering), link [N_rgb]
int32 (IR cluster of each RGB cluster, -1 = sits out this epoch), ir_to_rgb [N_ir] int32,
neighbour [N_rgb] int32 (nearest linked RGB cluster), bank [N, D] float32 (memory bank; [1, 1]
when unused), diag [8] float32 (logged as ``pl/*`` metrics), val [E + 1] float32, best,
best_epoch, stopped (early stopping ended training), and best_params (copies of the trainable
groups) with validation.

Per-epoch diagnostics: ``diagnostics.jsonl`` and ``diagnostics.png`` in the workdir (counts,
and purity / link accuracy / NMI / ARI against the identities, which are only monitored);
``clustering.jsonl`` has one record per merge stage.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hfrjax.config import ConfigError, Section
from hfrjax.data.dataset import Dataset
from hfrjax.data.pipeline import InputConfig, select_records
from hfrjax.losses import l2_normalize, pixel_channel_sparsity, pseudo_triplet_loss
from hfrjax.models import get_model
from hfrjax.recipes.csan import hooks as hooks_lib
from hfrjax.recipes.csan import network, pretrain
from hfrjax.recipes.csan import pseudo_labels as pl
from hfrjax.recipes.csan.inputs import CsanBatches, SampleStore
from hfrjax.tasks import register_task
from hfrjax.train import optim
from hfrjax.train import state as state_lib
from hfrjax.train.task import ExportSpec, Hook, Optimizer, Step, TaskSetup, phases, single

LOSS_KINDS = ("ptl", "ce")


@dataclasses.dataclass(frozen=True)
class CsanModelConfig(Section):
    dim: int = 128  # Subspace channels (§IV-C).
    backbone_widths: tuple[int, ...] = (64, 128, 256)  # VGG16 blocks 1-3.
    backbone_pool: bool = True  # Block 3's max-pool: the /8 map of Table V.
    freeze_backbone: bool = True  # "a fixed network" (§III-C).
    # A torchvision VGG16 state_dict file (ImageNet in the paper), or an hfrjax export /
    # workdir holding a VGG (e.g. the synthetic tables' `pretrain` stage).
    backbone_weights: str = ""
    cache_backbone: bool = True  # Frozen backbone: compute its features once (network.py).


@dataclasses.dataclass(frozen=True)
class CsanInputConfig(Section):
    data_dir: str = ""
    fold: int | None = None  # Train on this protocol fold's training keys (1-based).
    keys: tuple[str, ...] | None = None
    rgb_modality: str = "vis"
    ir_modality: str = ""  # "": the dataset's other modality (nir, ir or thermal).
    image_size: tuple[int, int] | None = None  # (H, W); RegDB 128x64, ARL-VTF 224x224.
    batch_size: int = 32
    k: int = 4  # Triplet phase: samples per cluster and modality.
    hard_negatives: bool = True  # Batch each anchor cluster with its nearest linked cluster.
    max_identities: int = 0  # > 0: keep only the first n training identities (small runs).
    embed_batch: int = 64
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ClusteringConfig(Section):
    target_clusters: int = 0  # > 0: clusters per modality; else target_fraction · images.
    target_fraction: float = 0.1
    merge_fraction: float = 0.05  # BUC's mp: int(n · mp) merges per stage.
    bank_epochs: int = 1  # Memory-bank epochs before each merge; 0: cluster the initial features.
    temperature: float = 0.1  # Memory-bank softmax (BUC's t = 10).
    neighbours: int = 16  # Listed nearest samples per image for the merge steps.
    block_entries: int = 1 << 25  # Largest distance block (one block: RegDB's 4,120²).
    dtype: str = "float32"  # float32 | float64 distances of the merge steps.


@dataclasses.dataclass(frozen=True)
class FilterConfig(Section):
    min_size: int = 2
    max_size_factor: float = 4.0  # Drop clusters over this x the mean size (0: no bound).
    silhouette: float = 0.6  # χ.


@dataclasses.dataclass(frozen=True)
class CsanLossConfig(Section):
    kind: str = "ptl"  # ptl | ce
    margin: float = 0.3  # β (the paper gives none).
    sparsity_weight: float = 1e-3  # λ: 1e-3 (1e-5 for ARL-VTF).
    normalize: bool = False  # Triplet distances on L2-normalised embeddings.
    temperature: float = 0.1  # kind=ce


@dataclasses.dataclass(frozen=True)
class EarlyStopConfig(Section):
    holdout_fraction: float = 0.0  # Share of training identities held out; 0: no validation.
    metric: str = "Rank-1"  # Rank-1 | Rank-10 | Rank-20 | mAP | mINP
    direction: str = "ir->rgb"
    patience: int = 3


@dataclasses.dataclass(frozen=True)
class TestConfig(Section):
    """Read by `hfrjax.recipes.csan.run` after training (not by the loop)."""

    data_dir: str = ""  # "": eval.data_dir.
    kind: str = "protocol"  # protocol (face verification / identification) | reid
    directions: tuple[str, ...] = ("probe->gallery",)
    folds: tuple[int, ...] | None = None  # None: eval.folds.
    mode: str = ""  # SYSU-MM01 search mode.
    fars: tuple[float, ...] = (0.01, 0.05)  # CSAN reports TAR at FAR 1 % and 5 %.
    batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class CsanConfig(Section):
    model: CsanModelConfig = CsanModelConfig()
    input: CsanInputConfig = CsanInputConfig()
    clustering: ClusteringConfig = ClusteringConfig()
    filter: FilterConfig = FilterConfig()
    loss: CsanLossConfig = CsanLossConfig()
    # RMSProp as PyTorch's (alpha 0.99, eps 1e-8 outside the root), lr 1e-4 (§IV-C).
    optimizer: optim.OptimizerConfig = optim.OptimizerConfig(name="rmsprop", weight_decay=0.0)
    schedule: optim.ScheduleConfig = optim.ScheduleConfig(name="constant", lr=1e-4)
    early_stop: EarlyStopConfig = EarlyStopConfig()
    test: TestConfig = TestConfig()
    epochs: int = 20  # Triplet-phase epochs (Alg. 1 line 19).


# ------------------------------------------------------------------------------------------
# Data.


def training_records(cfg: CsanInputConfig):
    """(records, IR modality name) of the training set: the fold's / keys' RGB and IR images."""
    if not cfg.data_dir:
        raise ConfigError("input.data_dir is empty: CSAN needs an RGB-IR dataset directory")
    if cfg.rgb_modality != "vis":
        raise ConfigError(
            f"input.rgb_modality must be 'vis' (modality code 0), got {cfg.rgb_modality!r}"
        )
    dataset = Dataset.open(cfg.data_dir)
    records, _ = select_records(dataset, InputConfig(cfg.data_dir, keys=cfg.keys, fold=cfg.fold))
    ir = cfg.ir_modality
    if not ir:
        others = sorted(set(records.modality) - {"vis"})
        if len(others) != 1:
            raise ConfigError(
                f"{cfg.data_dir}: cannot tell the IR modality among {others}; set input.ir_modality"
            )
        ir = others[0]
    records = records.subset(np.isin(records.modality, ["vis", ir]))
    if cfg.max_identities > 0:
        ids = np.unique(records.label)[: cfg.max_identities]
        records = records.subset(np.isin(records.label, ids))
    return records, ir


# ------------------------------------------------------------------------------------------
# Losses (pure; the pseudo-labels come from ``extra`` through the batch's sample indices).


def _bank_cross_entropy(feats, rows, labelled, bank, allowed, temperature):
    """Memory-bank softmax cross-entropy (BUC's exclusive loss) and the updated bank.

    ``rows`` [B] bank row of each sample's cluster; ``allowed`` [B, M] which rows its softmax
    runs over. The bank moves each used row to normalise(row + mean of its batch features).
    """
    logits = feats @ bank.T / temperature
    logits = jnp.where(allowed, logits, -jnp.inf)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(rows, 0)[:, None], axis=1)[:, 0]
    w = labelled.astype(jnp.float32)
    ce = jnp.sum(jnp.where(labelled, nll, 0.0)) / jnp.maximum(jnp.sum(w), 1.0)
    f = jax.lax.stop_gradient(feats) * w[:, None]
    sums = jnp.zeros_like(bank).at[jnp.maximum(rows, 0)].add(f)
    counts = jnp.zeros(bank.shape[0]).at[jnp.maximum(rows, 0)].add(w)
    moved = bank + sums / jnp.maximum(counts, 1.0)[:, None]
    moved = moved / jnp.maximum(jnp.linalg.norm(moved, axis=1, keepdims=True), 1e-12)
    return ce, jnp.where(counts[:, None] > 0, moved, bank)


def _l2(x):
    return l2_normalize(x, axis=1)


def make_losses(cfg: CsanConfig, model, num_rgb: int, cached: bool):
    """(bank_loss, train_loss): the clustering-phase and triplet-phase loss functions."""
    loss_cfg = cfg.loss
    lam = float(loss_cfg.sparsity_weight)

    def common(params, extra, batch, rng):
        emb, out = network.forward(
            model, params, batch["x"], batch["modality"], cached=cached, rng=rng
        )
        cluster = jnp.take(extra["cluster"], batch["index"])
        return emb, out, cluster

    def bank_loss(params, model_state, extra, batches, rng):
        b = batches["train"]
        emb, _, cluster = common(params, extra, b, rng)
        is_ir = b["modality"] != 0
        rows = cluster + jnp.where(is_ir, num_rgb, 0)
        n = extra["bank"].shape[0]
        allowed = (jnp.arange(n)[None, :] >= num_rgb) == is_ir[:, None]
        labelled = b["valid"] & (cluster >= 0)
        ce, bank = _bank_cross_entropy(
            _l2(emb), rows, labelled, extra["bank"], allowed, cfg.clustering.temperature
        )
        extra = dict(extra, bank=bank)
        return ce, ({"loss/bank_ce": ce, **_diag_metrics(extra)}, model_state, extra)

    def train_loss(params, model_state, extra, batches, rng):
        b = batches["train"]
        emb, out, cluster = common(params, extra, b, rng)
        half = emb.shape[0] // 2
        valid = b["valid"]
        pcs = pixel_channel_sparsity(out, mask=valid)
        metrics = {"loss/pcs": pcs}
        if loss_cfg.kind == "ptl":
            e = _l2(emb) if loss_cfg.normalize else emb
            main, anchors = pseudo_triplet_loss(
                e[:half],
                cluster[:half],
                e[half:],
                cluster[half:],
                extra["link"],
                margin=loss_cfg.margin,
                rgb_mask=valid[:half],
                ir_mask=valid[half:],
                return_num_anchors=True,
            )
            metrics.update({"loss/ptl": main, "anchors": anchors})
        else:
            link, ir_to_rgb = extra["link"], extra["ir_to_rgb"]
            rgb_c, ir_c = cluster[:half], cluster[half:]
            rgb_linked = (rgb_c >= 0) & (jnp.take(link, jnp.maximum(rgb_c, 0)) >= 0)
            rgb_label = jnp.where(rgb_linked, rgb_c, -1)
            ir_label = jnp.where(ir_c >= 0, jnp.take(ir_to_rgb, jnp.maximum(ir_c, 0)), -1)
            label = jnp.concatenate([rgb_label, ir_label])
            n = extra["bank"].shape[0]
            row_linked = jnp.zeros(n, bool).at[: link.shape[0]].set(link >= 0)
            allowed = jnp.broadcast_to(row_linked[None, :], (emb.shape[0], n))
            main, bank = _bank_cross_entropy(
                _l2(emb), label, valid & (label >= 0), extra["bank"], allowed, loss_cfg.temperature
            )
            extra = dict(extra, bank=bank)
            metrics["loss/ce"] = main
        loss = main + lam * pcs
        return loss, ({**metrics, **_diag_metrics(extra)}, model_state, extra)

    return bank_loss, train_loss


def _diag_metrics(extra) -> dict:
    return {f"pl/{k}": extra["diag"][i] for i, k in enumerate(hooks_lib.DIAG_KEYS)}


def _never(step: int) -> bool:
    return False


# ------------------------------------------------------------------------------------------
# The task.


@register_task("csan")
class CsanTask:
    config_class = CsanConfig

    def setup(self, cfg: CsanConfig, ctx) -> TaskSetup:
        if cfg.loss.kind not in LOSS_KINDS:
            raise ConfigError(f"loss.kind must be one of {LOSS_KINDS}, got {cfg.loss.kind!r}")
        if cfg.clustering.dtype not in ("float32", "float64"):
            raise ConfigError(
                f"clustering.dtype must be float32 or float64, got {cfg.clustering.dtype!r}"
            )
        if cfg.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {cfg.epochs}")
        m = cfg.model
        if m.cache_backbone and not m.freeze_backbone:
            raise ConfigError("model.cache_backbone needs model.freeze_backbone (a fixed backbone)")
        inp = cfg.input
        records, ir_modality = training_records(inp)
        held = pl.holdout_split(records.label, cfg.early_stop.holdout_fraction, inp.seed)
        store = SampleStore(records.subset(~held), "vis", ir_modality, inp.image_size)
        val_store = (
            SampleStore(records.subset(held), "vis", ir_modality, inp.image_size)
            if held.any()
            else None
        )
        size = inp.image_size or Dataset.open(inp.data_dir).info.image_size
        model_cfg = {
            "name": "csan",
            "kwargs": {
                "dim": m.dim,
                "backbone_widths": tuple(m.backbone_widths),
                "backbone_pool": m.backbone_pool,
                "freeze_backbone": m.freeze_backbone,
                "input_size": int(size[0]),
            },
        }
        model = get_model("csan", **model_cfg["kwargs"])
        rng_init, rng_train = jax.random.split(jax.random.key(ctx.seed))
        dummy = jnp.zeros((2, int(size[0]), int(size[1]), 3), jnp.uint8)
        params = jax.jit(lambda r: model.init(r, dummy.astype(jnp.float32)))(rng_init)["params"]
        if m.backbone_weights:
            if Path(m.backbone_weights).is_dir():  # An hfrjax export or workdir.
                params = pretrain.backbone_from_workdir(m.backbone_weights, params)
            else:  # A torchvision VGG16 state_dict file.
                params = network.load_torch_backbone(m.backbone_weights, params)
        if m.cache_backbone:
            fn = network.make_backbone_fn(model)
            for s in (store, val_store):
                if s is not None:
                    s.cache_features(fn, params["backbone"], inp.embed_batch)
        emb_dim = int(jax.eval_shape(lambda p: model.apply({"params": p}, dummy), params).shape[-1])

        half = inp.batch_size // 2
        spe = -(-max(store.num_rgb, store.num_ir) // half)
        c = cfg.clustering
        targets = tuple(
            pl.target_count(n, c.target_clusters, c.target_fraction)
            for n in (store.num_rgb, store.num_ir)
        )
        counts = pl.merge_counts(
            (store.num_rgb, store.num_ir), targets, cfg.clustering.merge_fraction
        )
        schedule = hooks_lib.Schedule(spe, cfg.clustering.bank_epochs, counts, cfg.epochs)
        batches = CsanBatches(
            store,
            batch_size=inp.batch_size,
            k=inp.k,
            hard_negatives=inp.hard_negatives,
            seed=inp.seed,
            steps_per_epoch=spe,
            cluster_steps=schedule.cluster_steps,
            mesh=ctx.mesh,
        )
        trainable = network.trainable_groups(m.freeze_backbone)
        lr = optim.make_schedule(cfg.schedule, spe, schedule.total_steps)
        optimizers = {"net": Optimizer(trainable, optim.make_optimizer(cfg.optimizer, lr), lr)}
        n = len(store)
        uses_bank = schedule.stages > 0 or cfg.loss.kind == "ce"
        extra = {
            "cluster": jnp.full((n,), -1, jnp.int32),
            "raw_cluster": jnp.full((n,), -1, jnp.int32),
            "link": jnp.full((store.num_rgb,), -1, jnp.int32),
            "ir_to_rgb": jnp.full((store.num_ir,), -1, jnp.int32),
            "neighbour": jnp.full((store.num_rgb,), -1, jnp.int32),
            "bank": jnp.zeros((n, emb_dim) if uses_bank else (1, 1), jnp.float32),
            "diag": jnp.full((len(hooks_lib.DIAG_KEYS),), -1.0, jnp.float32),
            "val": jnp.full((cfg.epochs + 1,), jnp.nan, jnp.float32),
            "best": jnp.asarray(-jnp.inf, jnp.float32),
            "best_epoch": jnp.zeros((), jnp.int32),
            "stopped": jnp.zeros((), jnp.int32),
        }
        if val_store is not None:
            extra["best_params"] = {g: jax.tree.map(jnp.array, params[g]) for g in trainable}
        state = state_lib.create_state(params, {}, optimizers, rng_train, extra)
        bank_loss, train_loss = make_losses(cfg, model, store.num_rgb, m.cache_backbone)
        steps = {
            "bank": Step(bank_loss, ("train",), ("net",)),
            "train": Step(train_loss, ("train",), ("net",)),
        }
        parts = [(schedule.cluster_steps, single("bank"))] if schedule.cluster_steps else []
        parts += [(schedule.epochs * spe, single("train"))]
        hook = hooks_lib.PseudoLabelHook(cfg, schedule, store, val_store, batches, m.dim, trainable)
        what = "PTL" if cfg.loss.kind == "ptl" else "CE on pseudo-labels"
        return TaskSetup(
            inputs={"train": batches},
            state=state,
            optimizers=optimizers,
            steps=steps,
            plan=phases(parts),
            total_steps=schedule.total_steps,
            steps_per_epoch=spe,
            embed=network.model_embed(model),
            export=ExportSpec(
                model=model_cfg,
                variables={"params": ("params",)},
                input_size=(int(size[0]), int(size[1])),
                channels=3,
            ),
            hooks=[
                Hook("csan_pseudo_labels", hook.due, hook),
                Hook("csan_best_parameters", _never, hook.finish, final=True),
            ],
            on_restore=hook.on_restore,
            images_per_step=inp.batch_size,
            meta={
                "num_rgb": store.num_rgb,
                "num_ir": store.num_ir,
                "ir_modality": ir_modality,
                "merge_stages": schedule.stages,
                "cluster_steps": schedule.cluster_steps,
            },
            describe=(
                f"CSAN {what} + {cfg.loss.sparsity_weight:g}·PCS, {store.num_rgb} RGB / "
                f"{store.num_ir} {ir_modality} images, {schedule.stages} merge stages, "
                f"{network.param_count({g: params[g] for g in trainable}):,} trainable; "
            ),
            eval_input={"image_size": tuple(size), "channels": 3},
        )
