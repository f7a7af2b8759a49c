"""Tasks ``toplight_top`` and ``toplight_vi``: TOPLight (Yu et al., CVPR 2023) on the core loop.

``toplight_top`` — task-oriented pretraining (§3.2, Step 1 of §3.1). A dual-path
MobileNetV3-Large (Block1-4 per path, Block5-7 shared) sees every image of a generic labelled
set twice: the colour path (Block*-1) its colour-augmented copy, the texture path (Block*-2)
its texture-augmented copy (`inputs.PairedAugmentInput`). With x_i the Block4-i output and
x^_i the final (Block7, 1280-d pooled) feature of path i:

    L = L_idc + L_fd^1 + L_fd^2                                        (Eq. 4)
    L_idc = CE(W x^_1 + b, y) + CE(W x^_2 + b, y)   one classifier     (Eq. 3)
    L_fd^i = L_d(x_i, d_i) + L_d(GRL(x^_i), d_i),   d_1 = 0, d_2 = 1   (Eq. 1-2)

(`hfrjax.losses.domain_conflict`): one logistic domain classifier on the GAP of the Block4
maps, one on the final features behind the gradient reversal layer; everything trains with
one optimizer, the GRL turning the final classifier's objective around for Block5-7.

Stabilising the GRL (ours, not the paper's; `TopLossConfig`). §3.2 gives the GRL of its
ref. [10] (Ganin & Lempitsky, ICML 2015) but neither its lambda nor any normalisation, and
the literal form diverged on the synthetic set: L_d is a linear logistic classifier, so
behind the reversal the cheapest way for Block5-7 to confuse it is to grow |x^_i|, which
drives the logits and the BCE to inf. Two choices fix it:
  - ``reversal_schedule = "ganin"``: lambda_p = reversal_scale * (2 / (1 + exp(-10 p)) - 1),
    p the training progress in [0, 1] (the ramp of the cited GRL paper), instead of
    lambda = 1 from the first step (``"constant"``, which diverged). The step count lives
    in the state's ``extra["step"]``, so a resumed run continues the ramp exactly.
  - ``normalize_final = True``: the final domain classifier reads x^_i / |x^_i|, so the
    reversed gradient cannot pay off by scaling the features (with raw features the run
    still reached NaN at step 65 even with the ramp). The Block4 classifier (the
    self-domain term, no reversal) reads the raw GAP as in Eq. 1-2.
Setting ``reversal_schedule="constant"`` and ``normalize_final=False`` gives the paper's
literal loss.

Table 3's ablations: ``loss.identity = "id"`` (No. 2-3: an identity loss with a classifier
per path instead of the shared one; our reading of "L_id"), ``loss.fake_domain`` off
(No. 2-4), ``augment.generic`` / ``augment.colour_texture`` (the G and C+T columns).

``toplight_vi`` — VI training (§3.3-3.4, Step 3), started from a TOP run through the uniform
soup (Step 2: `network.initial_network_variables` averages the paths' Block2-4 and keeps
both stems when ``init_from`` is a TOP workdir; a single-path network gets its stem copied).
The visible half of each P x K batch goes through Block1-1, the infrared half through
Block1-2, then the shared Block2-7 with FDR after Block4 (``fdr``: Table 3's H_s / V_s / SA):

    L = L_id + γ L_tri,  γ = 0.5                                       (Eq. 12)

L_id: softmax cross-entropy of a bias-free linear classifier on the BN-neck feature; L_tri:
batch-hard triplet loss (margin 0.3, AGW's) on the feature before the neck (BNNeck, as the
AGW baseline TOPLight follows). Evaluation embeds each image through its modality's stem.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from hfrjax.config import ConfigError, Section
from hfrjax.data import augment as augment_lib
from hfrjax.data import pipeline
from hfrjax.losses import batch_hard_triplet_loss
from hfrjax.losses.domain_conflict import (
    LogisticDomainClassifier,
    fake_domain_loss,
    identity_consistency_loss,
    logistic_domain_loss,
)
from hfrjax.recipes.toplight import evaluation
from hfrjax.recipes.toplight import network as net_lib
from hfrjax.recipes.toplight.inputs import (
    ModalitySplitInput,
    PairedAugmentInput,
    TaskAugmentSection,
)
from hfrjax.tasks import register_task
from hfrjax.train import optim
from hfrjax.train import state as state_lib
from hfrjax.train.step import model_inputs
from hfrjax.train.task import ExportSpec, Optimizer, SetupContext, Step, TaskSetup, single

COLOUR_DOMAIN, TEXTURE_DOMAIN = 0, 1  # d_1, d_2: the fake domains of Eq. 1-2.
IDENTITY_LOSSES = ("idc", "id")
REVERSAL_SCHEDULES = ("ganin", "constant")


def reversal_lambda(loss_cfg, step, total_steps: int):
    """The GRL's lambda at ``step`` of ``total_steps`` (`TopLossConfig.reversal_schedule`)."""
    if loss_cfg.reversal_schedule == "constant":
        return jnp.asarray(loss_cfg.reversal_scale, jnp.float32)
    progress = jnp.asarray(step, jnp.float32) / max(1, int(total_steps))
    return loss_cfg.reversal_scale * (2.0 / (1.0 + jnp.exp(-10.0 * progress)) - 1.0)


# ------------------------------------------------------------------------------------------
# Config sections.


@dataclasses.dataclass(frozen=True)
class NetworkConfig(Section):
    """MobileNetV3-Large options (`hfrjax.models.mobilenetv3`); the input size is
    ``input.image_size``."""

    width_mult: float = 1.0
    embedding_dim: int | None = None  # BN-neck width; None: the 1280-d pre-logits.
    depthwise_impl: str = "auto"


@dataclasses.dataclass(frozen=True)
class FdrSection(Section):
    """FDR after Block4 (`hfrjax.models.fdr`, TOPLight §3.3): Table 3's H_s, V_s, SA."""

    enabled: bool = True
    horizontal: bool = True  # H_s
    vertical: bool = True  # V_s
    attention: bool = True  # SA
    sigma: int = 2
    mu: int = 3
    channel_shuffle: bool = True
    reduction: int = 4
    output: str = "channel"  # "channel" (Eq. 10-11 as written) | "gated" (see models.fdr)
    zero_init: bool = True

    def model_option(self) -> dict | bool:
        if not self.enabled:
            return False
        d = self.to_dict()
        d.pop("enabled")
        return d


@dataclasses.dataclass(frozen=True)
class TopLossConfig(Section):
    identity: str = "idc"  # "idc": one classifier for both paths (Eq. 3); "id": one per path.
    fake_domain: bool = True  # L_fd^1 + L_fd^2 (Eq. 1-2).
    reversal_scale: float = 1.0  # The GRL's largest lambda.
    # "ganin": lambda_p = scale * (2 / (1 + exp(-10 p)) - 1), p = training progress in [0, 1]
    # (Ganin & Lempitsky, ICML 2015, §5, the GRL TOPLight cites); "constant": scale throughout.
    # The paper gives neither; a constant lambda = 1 from the first step diverged on the
    # synthetic set (the reversed gradient inflates the final features until the BCE is inf).
    reversal_schedule: str = "ganin"
    # The final domain classifier reads x^_i / |x^_i|. Our stabilisation, not the paper's:
    # on raw features the reversed gradient of a linear logistic classifier grows |x^_i|
    # without bound (L_d is linear in the feature scale), which diverged on the synthetic set
    # even with the Ganin ramp (NaN at step 65). The Block4 classifier reads the raw GAP.
    normalize_final: bool = True


@dataclasses.dataclass(frozen=True)
class TopConfig(Section):
    network: NetworkConfig = NetworkConfig()
    compute_dtype: str = "float32"
    # The task-oriented augmentations replace the pipeline's: input.augment stays off.
    input: pipeline.InputConfig = pipeline.InputConfig(
        batch_size=36, image_size=(224, 224), augment=augment_lib.AugmentConfig(hflip=False)
    )
    augment: TaskAugmentSection = TaskAugmentSection()
    loss: TopLossConfig = TopLossConfig()
    optimizer: optim.OptimizerConfig = optim.OptimizerConfig(weight_decay=5e-5)  # Table 2(a)
    schedule: optim.ScheduleConfig = optim.ScheduleConfig(name="cosine", lr=0.1)
    init_from: str = ""  # A single-path MobileNetV3 (export, workdir or torchvision .pth).
    num_epochs: float = 50.0
    total_steps: int = 0  # > 0 overrides num_epochs.


@dataclasses.dataclass(frozen=True)
class ViLossConfig(Section):
    triplet_weight: float = 0.5  # γ (Eq. 12)
    triplet_margin: float = 0.3  # AGW's; the paper does not give it.
    cross_modality: bool = False  # Mine triplets across modalities only.
    label_smoothing: float = 0.0


@dataclasses.dataclass(frozen=True)
class ReidEvalConfig(Section):
    """Re-identification evaluation (§4.1): the task's loop evaluators
    (`evaluation.reid_evaluators`), run with the loop's ``eval`` (the face protocol) and
    merged into ``eval.json`` as ``reid/<metric>``."""

    data_dir: str = ""  # A converted re-id benchmark, or any dataset with a protocol.
    modes: tuple[str, ...] = ()  # SYSU-MM01: ("all-search", "indoor-search").
    directions: tuple[str, ...] = ("probe->gallery",)  # RegDB: "visible->thermal", ...
    folds: tuple[int, ...] | None = None
    gallery: str = "protocol"  # "protocol" | "all": every gallery-modality image of the
    # test identities (a multi-shot re-id gallery for face protocols with one per identity).
    batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class ViConfig(Section):
    network: NetworkConfig = NetworkConfig()
    fdr: FdrSection = FdrSection()
    compute_dtype: str = "float32"
    # §4.1: 6 identities x (6 visible + 6 infrared), 288 x 144, random erasing, channel
    # augmentation (CAJ's, TOPLight's ref. [40]) and flips.
    input: pipeline.InputConfig = pipeline.InputConfig(
        batch_size=72,
        sampler="pk",
        p=6,
        k=6,
        image_size=(288, 144),
        augment=augment_lib.AugmentConfig(
            hflip=True, channel_aug="random_channel", erasing_p=0.5
        ),
    )
    loss: ViLossConfig = ViLossConfig()
    optimizer: optim.OptimizerConfig = optim.OptimizerConfig(name="adamw", weight_decay=1e-2)
    schedule: optim.ScheduleConfig = optim.ScheduleConfig(
        name="piecewise", lr=1e-3, warmup_epochs=5.0, boundaries_epochs=(20.0, 40.0)
    )
    init_from: str = ""  # A TOP run (souped here), a souped or a single-path network.
    num_epochs: float = 70.0
    total_steps: int = 0
    reid_eval: ReidEvalConfig = ReidEvalConfig()


# ------------------------------------------------------------------------------------------
# Shared pieces.


def build_network(cfg, private_blocks: int, fdr: dict | bool = False):
    """(model, model config {"name", "kwargs"} for the export) of a stage."""
    if not cfg.input.image_size:
        raise ConfigError("input.image_size must be set (the network's input size)")
    if cfg.input.channels != 3:
        raise ConfigError(f"TOPLight's paths take RGB input: input.channels must be 3, got "
                          f"{cfg.input.channels}")
    if cfg.compute_dtype not in state_lib.DTYPES:
        raise ConfigError(f"compute_dtype must be one of {sorted(state_lib.DTYPES)}")
    kwargs = {
        "private_blocks": private_blocks,
        "fdr": fdr,
        "width_mult": cfg.network.width_mult,
        "embedding_dim": cfg.network.embedding_dim,
        "input_size": list(cfg.input.image_size),
        "depthwise_impl": cfg.network.depthwise_impl,
    }
    model = net_lib.toplight_dual_routed(**kwargs, dtype=state_lib.DTYPES[cfg.compute_dtype])
    return model, {"name": net_lib.ROUTED_MODEL, "kwargs": kwargs}


def starting_variables(cfg, ctx: SetupContext, model, private_blocks: int) -> dict:
    """Fresh variables, or ``cfg.init_from`` through `network.initial_network_variables`."""
    variables = net_lib.init_variables(model, ctx.seed)
    if cfg.init_from and not ctx.restoring:
        from hfrjax.models.mobilenetv3 import mobilenetv3_large

        single = mobilenetv3_large(
            width_mult=cfg.network.width_mult, input_size=tuple(cfg.input.image_size)
        )
        variables = net_lib.initial_network_variables(
            cfg.init_from, variables, private_blocks, single
        )
    return variables


def schedule_and_total(cfg, steps_per_epoch: int):
    total = int(cfg.total_steps or round(cfg.num_epochs * steps_per_epoch))
    if total < 1:
        raise ConfigError(f"the run has {total} steps: set num_epochs or total_steps")
    return optim.make_schedule(cfg.schedule, steps_per_epoch, total), total


def apply_network(model, params, model_state, x, train: bool, rng=None, **kwargs):
    """``model`` on uint8 (or float) images; returns (output, new model state)."""
    variables = {"params": params, **model_state}
    x = jax.tree.map(model_inputs, x) if isinstance(x, tuple) else model_inputs(x)
    if train:
        out, updates = model.apply(
            variables, x, True, mutable=list(model_state), rngs={"dropout": rng}, **kwargs
        )
        return out, {**model_state, **updates}
    return model.apply(variables, x, False, **kwargs), dict(model_state)


def _ce(logits, labels, smoothing: float = 0.0):
    num = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num), smoothing) if smoothing else (
        jax.nn.one_hot(labels, num)
    )
    return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


def _linear(features, head):
    logits = features.astype(jnp.float32) @ head["weight"].T
    return logits + head["bias"] if "bias" in head else logits


def _unit(x):
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def _rows(rng, num_classes: int, dim: int, bias: bool) -> dict:
    head = {"weight": 0.01 * jax.random.normal(rng, (num_classes, dim), jnp.float32)}
    if bias:
        head["bias"] = jnp.zeros((num_classes,), jnp.float32)
    return head


def _main_optimizer(cfg, schedule, groups) -> dict[str, Optimizer]:
    tx = optim.make_optimizer(cfg.optimizer, schedule)
    return {"main": Optimizer(tuple(groups), tx, schedule)}


def _export(model_cfg, cfg) -> ExportSpec:
    return ExportSpec(
        model=model_cfg,
        variables={"params": ("params", "network"), "batch_stats": ("model_state", "batch_stats")},
        input_size=tuple(cfg.input.image_size),
        channels=3,
    )


# ------------------------------------------------------------------------------------------
# TOP: task-oriented pretraining.


def top_loss_terms(model, params, model_state, batch, loss_cfg: TopLossConfig, rng, *,
                   reversal_scale=None):
    """The terms of Eq. 1-4 on a batch {"colour", "texture", "label"}; returns
    (total loss, metrics, new model state). ``reversal_scale`` overrides the GRL's lambda."""
    (_, inter), new_ms = apply_network(
        model, params["network"], model_state, (batch["colour"], batch["texture"]), True, rng,
        return_intermediates=True,
    )
    x1, x2 = inter["block4"]
    f1, f2 = inter["block7"]
    labels = batch["label"]
    heads = params["classifier"]
    if loss_cfg.identity == "idc":
        shared = heads["shared"]
        l_id = identity_consistency_loss(f1, f2, shared["weight"], labels, shared["bias"])
        logits = (_linear(f1, shared), _linear(f2, shared))
    else:
        logits = (_linear(f1, heads["path1"]), _linear(f2, heads["path2"]))
        l_id = _ce(logits[0], labels) + _ce(logits[1], labels)
    metrics = {
        f"loss/{loss_cfg.identity}": l_id,
        "accuracy/colour": jnp.mean(jnp.argmax(logits[0], -1) == labels),
        "accuracy/texture": jnp.mean(jnp.argmax(logits[1], -1) == labels),
    }
    loss = l_id
    if loss_cfg.fake_domain:
        clf = LogisticDomainClassifier()
        mid = lambda x: clf.apply({"params": params["domain"]["mid"]}, x)  # noqa: E731
        final = lambda x: clf.apply({"params": params["domain"]["final"]}, x)  # noqa: E731
        lam = loss_cfg.reversal_scale if reversal_scale is None else reversal_scale
        g1, g2 = (_unit(f1), _unit(f2)) if loss_cfg.normalize_final else (f1, f2)
        for i, (x, f, d) in enumerate(((x1, g1, COLOUR_DOMAIN), (x2, g2, TEXTURE_DOMAIN)), 1):
            fd = fake_domain_loss(mid, final, x, f, d, reversal_scale=lam)
            self_domain = logistic_domain_loss(mid(x), d)
            metrics[f"loss/fd{i}"] = fd
            metrics[f"loss/fd{i}_block4"] = self_domain
            metrics[f"_fd{i}_final"] = fd - self_domain  # L_d(GRL(x^_i), d_i)
            loss = loss + fd
        # How well each classifier tells the fake domains apart (Block4: high; final: ~0.5).
        for name, fn, a, b in (("block4", mid, x1, x2), ("final", final, g1, g2)):
            metrics[f"domain_accuracy/{name}"] = 0.5 * (
                jnp.mean(fn(a) < 0) + jnp.mean(fn(b) > 0)
            )
    return loss, metrics, new_ms


def top_embed(model):
    """Final (Block7) features, each image through its modality's path (vis: colour)."""

    def embed(params, model_state, images, modality, train_bn=False):
        feats = []
        for path in (0, 1):
            (_, inter), _ = apply_network(
                model, params["network"], model_state, images, train_bn, jax.random.key(0),
                path=path, return_intermediates=True,
            )
            feats.append(inter["block7"])
        return jnp.where((modality == net_lib.VIS_CODE)[:, None], feats[0], feats[1])

    return embed


@register_task("toplight_top")
class TopTask:
    config_class = TopConfig

    def setup(self, cfg: TopConfig, ctx: SetupContext) -> TaskSetup:
        if cfg.loss.identity not in IDENTITY_LOSSES:
            raise ConfigError(f"loss.identity must be one of {IDENTITY_LOSSES}, got "
                              f"{cfg.loss.identity!r}")
        if cfg.loss.reversal_schedule not in REVERSAL_SCHEDULES:
            raise ConfigError(f"loss.reversal_schedule must be one of {REVERSAL_SCHEDULES}, "
                              f"got {cfg.loss.reversal_schedule!r}")
        off = augment_lib.AugmentConfig(hflip=False)
        if cfg.input.augment != off:
            raise ConfigError(
                "toplight_top: input.augment must stay off (hflip=False, nothing else); the "
                "task-oriented augmentations are set under augment.*"
            )
        model, model_cfg = build_network(cfg, private_blocks=4)
        inner = pipeline.make_train_input(cfg.input, mesh=None)
        train_input = PairedAugmentInput(
            inner, cfg.augment, seed=cfg.input.seed, global_batch=cfg.input.batch_size,
            mesh=ctx.mesh,
        )
        schedule, total = schedule_and_total(cfg, inner.steps_per_epoch)
        variables = starting_variables(cfg, ctx, model, private_blocks=4)
        params = {"network": variables["params"]}
        rng_cls, rng_dom, rng_train = jax.random.split(jax.random.key(ctx.seed), 3)
        dim = variables["params"]["block7"]["pre_logits"]["kernel"].shape[-1]
        c = inner.num_classes
        if cfg.loss.identity == "idc":
            params["classifier"] = {"shared": _rows(rng_cls, c, dim, bias=True)}
        else:
            k1, k2 = jax.random.split(rng_cls)
            params["classifier"] = {
                "path1": _rows(k1, c, dim, bias=True),
                "path2": _rows(k2, c, dim, bias=True),
            }
        if cfg.loss.fake_domain:
            from hfrjax.models.mobilenetv3 import mobilenetv3_large_blocks

            c4 = mobilenetv3_large_blocks(cfg.network.width_mult)[3].out_channels
            clf = LogisticDomainClassifier()
            k1, k2 = jax.random.split(rng_dom)
            params["domain"] = {
                "mid": clf.init(k1, jnp.zeros((1, c4)))["params"],
                "final": clf.init(k2, jnp.zeros((1, dim)))["params"],
            }
        optimizers = _main_optimizer(cfg, schedule, params)
        model_state = {"batch_stats": variables["batch_stats"]}
        # extra["step"]: the step count the GRL schedule reads (checkpointed with the state).
        extra = {"step": jnp.zeros((), jnp.int32)}
        state = state_lib.create_state(params, model_state, optimizers, rng_train, extra)
        loss_cfg = cfg.loss

        def loss_fn(params, model_state, extra, batches, rng):
            lam = reversal_lambda(loss_cfg, extra["step"], total)
            loss, metrics, new_ms = top_loss_terms(
                model, params, model_state, batches["train"], loss_cfg, rng, reversal_scale=lam
            )
            if loss_cfg.fake_domain:
                metrics["grl_lambda"] = lam
            return loss, (metrics, new_ms, {"step": extra["step"] + 1})

        return TaskSetup(
            inputs={"train": train_input},
            state=state,
            optimizers=optimizers,
            steps={"train": Step(loss_fn, ("train",), ("main",))},
            plan=single("train"),
            total_steps=total,
            steps_per_epoch=inner.steps_per_epoch,
            embed=top_embed(model),
            export=_export(model_cfg, cfg),
            images_per_step=cfg.input.batch_size,
            meta={"num_classes": c, "data_dir": cfg.input.data_dir, "stage": "top"},
            describe=(
                f"TOP (L_{cfg.loss.identity}{' + L_fd' if cfg.loss.fake_domain else ''}; augs "
                f"{'G' if cfg.augment.generic else '-'}"
                f"{'+C+T' if cfg.augment.colour_texture else ''}), {c} classes, batch "
                f"{cfg.input.batch_size} x 2 paths; "
            ),
            eval_input={"image_size": cfg.input.image_size, "channels": 3},
        )


# ------------------------------------------------------------------------------------------
# VI training.


def vi_loss_terms(model, params, model_state, batch, loss_cfg: ViLossConfig, rng):
    """L_id + γ L_tri (Eq. 12) on a batch of `ModalitySplitInput`."""
    (outs, inter), new_ms = apply_network(
        model, params["network"], model_state, (batch["vis_image"], batch["ir_image"]), True,
        rng, return_intermediates=True,
    )
    feats = jnp.concatenate(outs)
    pre_neck = jnp.concatenate(inter["pre_neck"])
    labels = jnp.concatenate([batch["vis_label"], batch["ir_label"]])
    n_vis = batch["vis_label"].shape[0]
    modality = jnp.concatenate(
        [jnp.zeros((n_vis,), jnp.int32), jnp.ones((labels.shape[0] - n_vis,), jnp.int32)]
    )
    logits = _linear(feats, params["classifier"])
    l_id = _ce(logits, labels, loss_cfg.label_smoothing)
    l_tri, anchors = batch_hard_triplet_loss(
        pre_neck, labels, margin=loss_cfg.triplet_margin, modalities=modality,
        cross_modality=loss_cfg.cross_modality, return_num_anchors=True,
    )
    loss = l_id + loss_cfg.triplet_weight * l_tri
    metrics = {
        "loss/id": l_id,
        "loss/triplet": l_tri,
        "triplet_anchors": anchors,
        "train_accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
    }
    return loss, metrics, new_ms


def vi_embed(model):
    """The BN-neck feature, each image through its modality's stem (vis: Block1-1)."""

    def embed(params, model_state, images, modality, train_bn=False):
        out, _ = apply_network(
            model, params["network"], model_state, images, train_bn, jax.random.key(0),
            modality=modality,
        )
        return out

    return embed


@register_task("toplight_vi")
class ViTask:
    config_class = ViConfig

    def setup(self, cfg: ViConfig, ctx: SetupContext) -> TaskSetup:
        if cfg.input.sampler != "pk":
            raise ConfigError(f"toplight_vi needs input.sampler='pk' (P identities x K images "
                              f"per modality), got {cfg.input.sampler!r}")
        evaluators = evaluation.reid_evaluators(cfg.reid_eval, cfg.input.image_size)
        model, model_cfg = build_network(cfg, private_blocks=1, fdr=cfg.fdr.model_option())
        inner = pipeline.make_train_input(cfg.input, mesh=None)
        train_input = ModalitySplitInput(inner, ctx.mesh)
        schedule, total = schedule_and_total(cfg, inner.steps_per_epoch)
        variables = starting_variables(cfg, ctx, model, private_blocks=1)
        rng_cls, rng_train = jax.random.split(jax.random.key(ctx.seed))
        neck = variables["params"]["head"]["neck_bn"]["scale"].shape[-1]
        params = {
            "network": variables["params"],
            "classifier": _rows(rng_cls, inner.num_classes, neck, bias=False),
        }
        optimizers = _main_optimizer(cfg, schedule, params)
        state = state_lib.create_state(
            params, {"batch_stats": variables["batch_stats"]}, optimizers, rng_train, {}
        )
        loss_cfg = cfg.loss

        def loss_fn(params, model_state, extra, batches, rng):
            loss, metrics, new_ms = vi_loss_terms(
                model, params, model_state, batches["train"], loss_cfg, rng
            )
            return loss, (metrics, new_ms, extra)

        fdr = cfg.fdr
        fdr_name = "none" if not fdr.enabled else "+".join(
            n for n, on in (("H_s", fdr.horizontal), ("V_s", fdr.vertical), ("SA", fdr.attention))
            if on
        )
        return TaskSetup(
            inputs={"train": train_input},
            state=state,
            optimizers=optimizers,
            steps={"train": Step(loss_fn, ("train",), ("main",))},
            plan=single("train"),
            total_steps=total,
            steps_per_epoch=inner.steps_per_epoch,
            embed=vi_embed(model),
            export=_export(model_cfg, cfg),
            images_per_step=cfg.input.batch_size,
            meta={
                "num_classes": inner.num_classes,
                "class_labels": inner.class_labels.tolist(),
                "data_dir": cfg.input.data_dir,
                "stage": "vi",
            },
            describe=(
                f"VI training (FDR {fdr_name}), {inner.num_classes} identities, batch "
                f"{cfg.input.batch_size}; "
            ),
            eval_input={"image_size": cfg.input.image_size, "channels": 3},
            evaluators=evaluators,
        )

    def evaluator_names(self, cfg: ViConfig) -> list[str]:
        """The evaluators ``setup`` gives ``cfg`` (re-id per search mode x direction), known
        without building anything: a sweep stage with them needs no ``eval.data_dir``."""
        return list(evaluation.reid_labels(cfg.reid_eval))
