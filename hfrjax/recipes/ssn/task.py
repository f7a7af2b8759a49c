"""Task ``ssn``: "Partial NIR-VIS HFR with automatic saliency search" (SSN) on the core loop.

The network is LightCNN-29v2 with a modality-aware Pixel Selection Block after each block
(`hfrjax.models.saliency`, SSN §III-A, Eq. 4). ``mode`` picks a row of the paper's ablation
(Table VII):

  ``baseline``     plain LightCNN (no indicators): "Light CNN (fine-tuned)";
  ``si``           one indicator shared by both modalities: "w/ SI";
  ``si_split``     one indicator per modality: "w/ SI (split)";
  ``si_split_ib``  + the information bottleneck (Eq. 5/12): "w/ SI (split) + IB";
  ``afs``          + the automatic feature search (Alg. 1): "Ours".

Loss (Eq. 14): L = L_id + λ_ib L_ib, with L_id the softmax cross-entropy over the training
identities (Eq. 1; ``id_loss.kind = "margin"`` swaps in a margin softmax) and L_ib on Ŷ_1, Ŷ_4
(β = 1, λ_ib = 0.001) estimated by two Jensen-Shannon critics trained in the same step
(`hfrjax.recipes.ssn.bottleneck`). The logged ``loss`` is what is differentiated:
L_id + λ_ib L_ib + ``ib.critic_weight`` x the critics' loss (which reaches the critics only);
``loss/id``, ``loss/ib``, ``loss/critic`` and the two estimates ``ib/mi_*`` are logged apart.

Parameter groups: ``network`` (LightCNN's parameters, LightCNN's names), ``masks`` (the
indicators, as ``{"masks": {...}}`` so that network + masks is the model's parameter tree),
``head`` (the identity classifier) and ``critic`` (the IB critics; BN statistics in
``model_state["batch_stats"]``).

* ``afs``: three inputs, ``search_train`` / ``search_val`` (the identity-preserving 50/50
  split of the training set, written to ``<workdir>/afs_split/``) and ``train`` (all of it),
  two optimizers, ``mask`` (Adam, lr 1e-3, owns ``masks``) and ``net`` (SGD, lr 1e-4, owns
  network, head, critic). The plan alternates a mask step on S_val and a network step on
  S_train for ``afs.search_epochs`` (12) epochs of S_train, then trains with the masks fixed
  on the whole set for ``num_epochs`` (40) (`hfrjax.recipes.ssn.search`).
* the other modes: one input ``train`` and one optimizer ``net`` over every group. Within it
  the masks follow the mask rule of AFS (Adam, ``joint_mask_rule = "adam"``, default), so
  that "+ AFS" differs from "+ IB" by the bilevel search alone; ``"sgd"`` trains them with
  the network's SGD. Masks are never weight-decayed.

Partial faces: ``input.augment.occlude_p`` masks a random rectangle of NIR training images
(SSN §IV-B). Evaluation: the embedder gates each image with its own modality's indicators;
the loop's ``eval.occlusion`` ("maskTop" / "maskBottom") occludes the probe images of its
evaluation (NIR, for the nir->vis protocols; recorded in eval.json), so a sweep's table can be
the paper's maskBottom table; ``launch/evaluate.py --occlusions=none,maskTop,maskBottom``
evaluates a workdir on all three. Mask pictures go to ``<workdir>/masks/`` (`masks_plot`):
every epoch, at the end of the AFS search, and of the final masks at the end of training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hfrjax.config import ConfigError, Section
from hfrjax.data import pipeline
from hfrjax.data.dataset import Dataset
from hfrjax.models import dummy_input
from hfrjax.models.saliency import MASKS, split_mask_params
from hfrjax.recipes.ssn import search
from hfrjax.recipes.ssn.bottleneck import make_bottleneck
from hfrjax.tasks import register_task
from hfrjax.tasks.classification import MarginSection, margin_loss
from hfrjax.train import checkpoint as ckpt_lib
from hfrjax.train import optim
from hfrjax.train import state as state_lib
from hfrjax.train.step import model_inputs
from hfrjax.train.task import ExportSpec, Hook, Optimizer, Step, TaskSetup, every, single

MODEL_NAME = "lightcnn29v2_psb"


@dataclasses.dataclass(frozen=True)
class Mode:
    saliency: str  # none | shared | split
    ib: bool
    afs: bool


MODES = {
    "baseline": Mode("none", False, False),
    "si": Mode("shared", False, False),
    "si_split": Mode("split", False, False),
    "si_split_ib": Mode("split", True, False),
    "afs": Mode("split", True, True),
}


@dataclasses.dataclass(frozen=True)
class SSNModelConfig(Section):
    """Keyword arguments of ``lightcnn29v2_psb`` (layers, channels, embedding_dim, input_size,
    psb_after_pool); ``saliency`` comes from ``mode`` and ``in_channels`` from the input."""

    FREE_FORM = ("kwargs",)
    kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class IdLossConfig(Section):
    kind: str = "softmax"  # softmax (SSN Eq. 1: linear classifier + cross-entropy) | margin
    margin: MarginSection = MarginSection()  # kind = margin only.


@dataclasses.dataclass(frozen=True)
class IBConfig(Section):
    """The information bottleneck (modes si_split_ib, afs)."""

    weight: float = 1e-3  # λ_ib (Eq. 14).
    beta: float = 1.0  # β (Eq. 5).
    critic_features: tuple[int, ...] = (256,)  # FC + BN widths of each critic branch (Fig. 4).
    critic_head: tuple[int, ...] = (256,)  # Hidden FC layers after the concatenation.
    pool: int = 8  # Critic inputs average-pooled to at most pool x pool (0: full tensors).
    critic_weight: float = 1.0  # Scale of the critics' loss (their learning-rate factor).


@dataclasses.dataclass(frozen=True)
class AFSConfig(Section):
    """The automatic feature search (mode afs; SSN Alg. 1)."""

    search_epochs: float = 12.0  # Epochs of S_train in the search phase.
    search_steps: int = 0  # > 0 overrides search_epochs: (mask, network) step pairs.
    split_seed: int = 0
    val_fraction: float = 0.5
    optimizer: optim.OptimizerConfig = optim.OptimizerConfig(name="adamw", weight_decay=0.0)
    schedule: optim.ScheduleConfig = optim.ScheduleConfig(name="constant", lr=1e-3)


@dataclasses.dataclass(frozen=True)
class SSNConfig(Section):
    mode: str = "afs"
    model: SSNModelConfig = SSNModelConfig()
    compute_dtype: str = "float32"
    input: pipeline.InputConfig = pipeline.InputConfig(
        batch_size=128, channels=1, image_size=(128, 128)
    )
    id_loss: IdLossConfig = IdLossConfig()
    ib: IBConfig = IBConfig()
    afs: AFSConfig = AFSConfig()
    optimizer: optim.OptimizerConfig = optim.OptimizerConfig()  # The network's (SGD).
    schedule: optim.ScheduleConfig = optim.ScheduleConfig(name="constant", lr=1e-4)
    joint_mask_rule: str = "adam"  # Modes without AFS: masks by afs.optimizer ("adam") or SGD.
    init_from: str = ""  # LightCNN weights (export or workdir); indicators start at 1.
    num_epochs: float = 40.0  # Training (after the search, in mode afs).
    total_steps: int = 0  # > 0 overrides num_epochs (the training phase's steps).
    mask_pictures: bool = True  # PNG heat maps in <workdir>/masks/ at epoch ends.


# --------------------------------------------------------------------------------------------
# Model pieces (no data needed: the speed benchmark builds these alone).


def merged_params(params: dict) -> dict:
    """The model's parameter tree: the network group plus the ``masks`` group."""
    return {**params["network"], **params.get(MASKS, {})}


def init_head(rng, kind: str, num_classes: int, dim: int) -> dict:
    if kind == "softmax":  # torch.nn.Linear's default initialisation, as LightCNN's fc2.
        bound = 1.0 / np.sqrt(dim)
        kernel = jax.random.uniform(rng, (dim, num_classes), jnp.float32, -bound, bound)
        return {"kernel": kernel, "bias": jnp.zeros((num_classes,), jnp.float32)}
    if kind == "margin":
        return state_lib.init_head(rng, num_classes, dim)
    raise ConfigError(f"id_loss.kind must be 'softmax' or 'margin', got {kind!r}")


def identity_loss(cfg: IdLossConfig, head: dict, emb, labels):
    """(L_id, accuracy): SSN Eq. 1's softmax cross-entropy, or a margin softmax."""
    if cfg.kind == "margin":
        return margin_loss(emb, head["weight"], labels, cfg.margin.margin())
    logits = emb.astype(jnp.float32) @ head["kernel"] + head["bias"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


@dataclasses.dataclass
class Parts:
    """What the steps are made of: the model, the IB, the config and the initial state."""

    cfg: SSNConfig
    mode: Mode
    model: Any
    model_cfg: dict
    bottleneck: Any
    params: dict
    model_state: dict
    emb_dim: int

    def loss(self, input_name: str, remap, *, train_critics: bool, keep_model_state: bool):
        """The pure loss_fn of a step on ``batches[input_name]`` (Eq. 14)."""
        cfg, model, bottleneck = self.cfg, self.model, self.bottleneck
        remap = None if remap is None else jnp.asarray(remap)

        def loss_fn(params, model_state, extra, batches, rng):
            batch = batches[input_name]
            labels = batch["label"] if remap is None else remap[batch["label"]]
            modality = batch["modality"]
            x = model_inputs(batch["image"])
            emb, blocks = model.apply(
                {"params": merged_params(params)}, x, modality, train=True, return_blocks=True
            )
            l_id, acc = identity_loss(cfg.id_loss, params["head"], emb, labels)
            loss = l_id
            metrics = {"loss/id": l_id, "train_accuracy": acc}
            new_ms = model_state
            if bottleneck is not None:
                l_ib, l_critic, stats, m = bottleneck.terms(
                    params["critic"],
                    model_state["batch_stats"],
                    x,
                    blocks[0],
                    blocks[-1],
                    modality != 0,
                    jax.random.fold_in(rng, 7),
                    train_critics=train_critics,
                )
                loss = loss + cfg.ib.weight * l_ib + cfg.ib.critic_weight * l_critic
                metrics.update(m)
                if not keep_model_state:
                    new_ms = {**model_state, "batch_stats": stats}
            return loss, (metrics, new_ms, extra)

        return loss_fn

    def embed(self):
        """The evaluation embedder: each image gated by its own modality's indicators."""
        model = self.model

        def embed(params, model_state, images, modality, train_bn=False):
            return model.apply(
                {"params": merged_params(params)}, model_inputs(images), modality, train=False
            )

        return embed

    def export(self) -> ExportSpec:
        paths = [("params", "network")] + ([("params", MASKS)] if MASKS in self.params else [])
        size = self.cfg.input.image_size
        return ExportSpec(
            model=self.model_cfg,
            variables={"params": paths if len(paths) > 1 else paths[0]},
            input_size=tuple(size) if size else None,
            channels=self.cfg.input.channels,
        )


def check_mode(cfg: SSNConfig) -> Mode:
    if cfg.mode not in MODES:
        raise ConfigError(f"mode must be one of {list(MODES)}, got {cfg.mode!r}")
    if cfg.joint_mask_rule not in ("adam", "sgd"):
        raise ConfigError(f"joint_mask_rule must be 'adam' or 'sgd', got {cfg.joint_mask_rule!r}")
    return MODES[cfg.mode]


def load_network(path: str, network: dict) -> dict:
    """LightCNN weights from an export or workdir (any indicators in it are dropped)."""
    from hfrjax.train.export import load_weights

    _, variables = load_weights(path)
    _, loaded = split_mask_params(variables.get("params", {}))
    bad = ckpt_lib.shape_problems(network, loaded)
    if bad:
        raise ckpt_lib.CheckpointMismatchError(
            f"init_from={path}: its network does not fit the configured LightCNN "
            f"({len(bad)} problem(s)): " + "; ".join(bad[:8])
        )
    return jax.tree.map(jnp.asarray, loaded)


def _initial(fn, restoring: bool):
    """``fn()`` (jitted), or zeros of its shapes when a checkpoint will overwrite them: a
    resumed run skips compiling the initialisers."""
    if restoring:
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn))
    return jax.jit(fn)()


def build_parts(cfg: SSNConfig, num_classes: int, seed: int, *, restoring: bool = False) -> Parts:
    """Model, IB critics and initial parameters for ``num_classes`` identities."""
    mode = check_mode(cfg)
    kwargs = {**cfg.model.kwargs, "saliency": mode.saliency, "in_channels": cfg.input.channels}
    if cfg.input.image_size:
        h, w = cfg.input.image_size
        if h != w:
            raise ConfigError(
                f"input.image_size must be square for LightCNN, got {cfg.input.image_size}"
            )
        kwargs["input_size"] = int(h)
    model_cfg = {"name": MODEL_NAME, "kwargs": kwargs}
    model = state_lib.build_backbone(model_cfg, compute_dtype=cfg.compute_dtype)
    r_model, r_head, r_critic = jax.random.split(jax.random.key(seed), 3)
    x = dummy_input(model, batch_size=2)
    variables = _initial(lambda: model.init(r_model, x, train=False)["params"], restoring)
    masks, network = split_mask_params(variables)
    if cfg.init_from and not restoring:
        network = load_network(cfg.init_from, network)
    emb, blocks = jax.eval_shape(
        lambda: model.apply({"params": variables}, x, jnp.zeros(2, jnp.int32), return_blocks=True)
    )
    params = {
        "network": network,
        "head": init_head(r_head, cfg.id_loss.kind, num_classes, emb.shape[-1]),
    }
    if masks:
        params[MASKS] = {MASKS: masks}
    model_state, bottleneck = {}, None
    if mode.ib:
        ib = cfg.ib
        bottleneck = make_bottleneck(ib.critic_features, ib.critic_head, ib.pool, ib.beta)
        zeros = [jnp.zeros(t.shape, jnp.float32) for t in (x, blocks[0], blocks[-1])]
        params["critic"], stats = _initial(lambda: bottleneck.init(r_critic, *zeros), restoring)
        model_state = {"batch_stats": stats}
    return Parts(cfg, mode, model, model_cfg, bottleneck, params, model_state, int(emb.shape[-1]))


def _group_labels(params: dict) -> dict:
    return {
        g: jax.tree.map(lambda _: "masks" if g == MASKS else "net", sub)
        for g, sub in params.items()
    }


def make_optimizers(parts: Parts, steps_per_epoch: int, net_updates: int) -> dict[str, Optimizer]:
    """``net`` (and ``mask`` in mode afs); see the module docstring."""
    cfg = parts.cfg
    groups = tuple(parts.params)
    net_sched = optim.make_schedule(cfg.schedule, max(1, steps_per_epoch), max(1, net_updates))
    net_tx = optim.make_optimizer(cfg.optimizer, net_sched)
    mask_sched = optim.make_schedule(cfg.afs.schedule, max(1, steps_per_epoch), max(1, net_updates))
    mask_tx = optim.make_optimizer(cfg.afs.optimizer, mask_sched)
    if MASKS not in groups:
        return {"net": Optimizer(groups, net_tx, net_sched)}
    if parts.mode.afs:
        return {
            "net": Optimizer(tuple(g for g in groups if g != MASKS), net_tx, net_sched),
            "mask": Optimizer((MASKS,), mask_tx, mask_sched),
        }
    if cfg.joint_mask_rule == "sgd":  # The network's rule without weight decay.
        mask_tx = optim.make_optimizer(
            dataclasses.replace(cfg.optimizer, weight_decay=0.0), net_sched
        )
    joint = optax.multi_transform({"net": net_tx, "masks": mask_tx}, _group_labels)
    return {"net": Optimizer(groups, joint, net_sched)}


# --------------------------------------------------------------------------------------------
# The task.


def _mask_hook(parts: Parts):
    from hfrjax.recipes.ssn.masks_plot import write_mask_pictures

    def hook(hctx, state):
        if jax.process_index() == 0:
            masks = jax.device_get(state.params[MASKS][MASKS])
            write_mask_pictures(masks, Path(hctx.workdir) / "masks")
        return state

    return hook


def build_inputs(cfg: SSNConfig, ctx) -> tuple[dict, dict, int, dict]:
    """(inputs, class-id remaps, AFS search steps, metadata). Mode afs: ``train`` plus the
    ``search_train`` / ``search_val`` halves (the split is written to the workdir)."""
    mode = check_mode(cfg)
    if cfg.input.joint:
        raise ConfigError("task ssn trains on one dataset (input.joint must be empty)")
    full = pipeline.make_train_input(cfg.input, mesh=ctx.mesh)
    inputs: dict[str, Any] = {"train": full}
    meta: dict[str, Any] = {"mode": cfg.mode}
    remaps: dict[str, np.ndarray] = {}
    if not mode.afs:
        return inputs, remaps, 0, meta
    records, _ = pipeline.select_records(Dataset.open(cfg.input.data_dir), cfg.input)
    s_train, s_val = search.identity_preserving_split(
        records.key,
        records.label,
        records.modality,
        seed=cfg.afs.split_seed,
        val_fraction=cfg.afs.val_fraction,
    )
    info = {
        "seed": cfg.afs.split_seed,
        "val_fraction": cfg.afs.val_fraction,
        "data_dir": cfg.input.data_dir,
        "fold": cfg.input.fold,
    }
    if jax.process_index() == 0:
        search.write_split(ctx.workdir, s_train, s_val, info)
    for name, keys in (("search_train", s_train), ("search_val", s_val)):
        sub_cfg = dataclasses.replace(cfg.input, keys=tuple(keys), fold=None)
        try:
            inputs[name] = pipeline.make_train_input(sub_cfg, mesh=ctx.mesh)
        except ValueError as e:
            raise ValueError(
                f"AFS {name} ({len(keys)} records of {cfg.input.data_dir}): {e}"
            ) from e
        remaps[name] = search.class_remap(full.class_labels, inputs[name].class_labels, name)
    per_epoch = inputs["search_train"].steps_per_epoch
    search_steps = int(cfg.afs.search_steps or round(cfg.afs.search_epochs * per_epoch))
    meta["afs"] = dict(info, search_steps=search_steps, num_train=len(s_train), num_val=len(s_val))
    return inputs, remaps, search_steps, meta


@register_task("ssn")
class SSNTask:
    config_class = SSNConfig

    def setup(self, cfg: SSNConfig, ctx) -> TaskSetup:
        mode = check_mode(cfg)
        inputs, remaps, search_steps, meta = build_inputs(cfg, ctx)
        full = inputs["train"]
        spe = full.steps_per_epoch
        train_steps = int(cfg.total_steps or round(cfg.num_epochs * spe))
        parts = build_parts(cfg, full.num_classes, ctx.seed, restoring=ctx.restoring)
        optimizers = make_optimizers(parts, spe, search_steps + train_steps)
        train_step = Step(
            parts.loss("train", None, train_critics=True, keep_model_state=False),
            ("train",),
            ("net",),
        )
        if mode.afs:
            steps = {
                "mask": Step(
                    parts.loss(
                        "search_val",
                        remaps["search_val"],
                        train_critics=False,
                        keep_model_state=True,
                    ),
                    ("search_val",),
                    ("mask",),
                ),
                "net": Step(
                    parts.loss(
                        "search_train",
                        remaps["search_train"],
                        train_critics=True,
                        keep_model_state=False,
                    ),
                    ("search_train",),
                    ("net",),
                ),
                "train": train_step,
            }
            plan = search.afs_plan(search_steps, train_steps)
        else:
            steps, plan = {"train": train_step}, single("train")
        total = 2 * search_steps + train_steps
        hooks = []
        if MASKS in parts.params and cfg.mask_pictures:
            due = every(spe)
            if mode.afs:  # The end of the search: the masks are final from here on.
                end, due_epoch = 2 * search_steps, due
                due = lambda s: s == end or due_epoch(s)  # noqa: E731
            hooks.append(Hook("mask_pictures", due, _mask_hook(parts)))
            hooks.append(Hook("final_mask_pictures", None, _mask_hook(parts), final=True))
        state = state_lib.create_state(
            parts.params, parts.model_state, optimizers, jax.random.key(ctx.seed + 1), {}
        )
        meta.update(
            num_classes=full.num_classes,
            class_labels=full.class_labels.tolist(),
            class_ranges=[r.to_json() for r in full.class_ranges],
            data_dir=cfg.input.data_dir,
        )
        describe = f"SSN {cfg.mode} (saliency {mode.saliency}, IB {mode.ib}, AFS {mode.afs}), "
        if mode.afs:
            describe += (
                f"search {search_steps} x (mask, net) steps then {train_steps} train steps, "
            )
        return TaskSetup(
            inputs=inputs,
            state=state,
            optimizers=optimizers,
            steps=steps,
            plan=plan,
            total_steps=total,
            steps_per_epoch=spe,
            embed=parts.embed(),
            export=parts.export(),
            hooks=hooks,
            images_per_step=cfg.input.batch_size,
            meta=meta,
            describe=describe + f"{full.num_classes} classes, batch {cfg.input.batch_size}; ",
            eval_input={"image_size": cfg.input.image_size, "channels": cfg.input.channels},
        )


__all__ = ["MODES", "SSNConfig", "SSNTask", "build_parts", "make_optimizers"]
