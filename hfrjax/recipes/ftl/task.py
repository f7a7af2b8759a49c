"""Task ``ftl``: Feature Transfer Learning (Yin et al., "Feature Transfer Learning for Face
Recognition with Under-Represented Data", CVPR 2019) on the core's task interface.

The network is the registered ``ftl`` model (Enc, Dec, R, FC as parameter groups ``enc``,
``dec``, ``filter``, ``fc``). ``mode`` picks what is trained:

* ``"softmax"`` / ``"ml2"``: the baselines of Table 1: all modules with Eq. 4, α_reg = 0
  (sfmx) or ``loss.alpha_reg`` (sfmx + m-L2, Eq. 3), for the whole run.
* ``"ftl"`` (Alg. 1, §3.4): pretraining of all modules with Eq. 4 for
  ``alternation.pretrain_steps``, then stage 1 and stage 2 alternating every
  ``alternation.n_iter`` steps. Stage 1 (Enc, Dec frozen; R and FC trained with Eq. 2 + 3) eats
  three batches: hard regular samples (input ``hard``), a class-balanced UR batch (input
  ``ur``) and the transfer of the hard batch's variation onto the UR batch's classes (Eq. 7,
  no input of its own). Stage 2 (FC frozen; Enc, Dec, R with Eq. 4) eats normal batches
  (input ``train``). The ``update_stats`` hook runs UpdateStats before every stage 1 and keeps
  its results (centres, Q, eigenvalues, energy kept, the hard list, the pretrained classifier
  norms) in the checkpointed extra state, all with fixed shapes.

Every parameter group has its own Adam (``optimizer.pretrain_lr`` for its first
``pretrain_steps`` updates, then ``optimizer.lr``: 2e-4 and 1e-5 in §4), so a frozen group and
its optimizer state stay bit-identical through a stage. Enc's BN runs on running statistics in
stage 1 and in UpdateStats: the rich feature space is fixed while features are transferred.
A class with at most ``stats.ur_max_images`` training images is UR (20 in §4).

The hold-out evaluation (nearest-centre rank-1, verification, the classifier weight-norm plot;
`hfrjax.recipes.ftl.evaluation`) is the task's evaluator ``holdout`` when ``holdout.data_dir``
is set: the loop runs it with its evaluations (``holdout/<metric>`` in ``eval.json``).
After a restore, ``on_restore`` hands the checkpointed hard list back to its input.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hfrjax.config import ConfigError, Section
from hfrjax.data import pipeline
from hfrjax.data.dataset import Dataset
from hfrjax.fileio import write_text_atomic
from hfrjax.losses.reconstruction import ftl_loss
from hfrjax.models.ftl_modules import FTL_GROUPS
from hfrjax.recipes.ftl import evaluation, statistics, update_stats
from hfrjax.recipes.ftl.device import MeshFunction
from hfrjax.recipes.ftl.inputs import ListSampler, RecordImages, pad_rows, unpad_rows
from hfrjax.tasks import register_task
from hfrjax.train import state as state_lib
from hfrjax.train.step import apply_model, model_inputs
from hfrjax.train.task import (
    ExportSpec,
    Hook,
    Optimizer,
    SetupContext,
    Step,
    TaskSetup,
    alternate,
    phases,
    single,
)

MODES = ("ftl", "softmax", "ml2")
STATS_FILE = "ftl_stats.json"
# Seed streams of the stage-1 inputs (`inputs.ListSampler`).
HARD_STREAM, UR_STREAM = 1, 2


@dataclasses.dataclass(frozen=True)
class FTLModelConfig(Section):
    """The ``ftl`` model; ``kwargs`` as its factory (feature_dim, trunk, encoder_widths, ...).
    ``input_size``, ``in_channels`` and ``num_classes`` come from the input."""

    FREE_FORM = ("kwargs",)
    name: str = "ftl"
    kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class LossConfig(Section):
    """Eq. 4: α_sfmx L_sfmx + α_recon L_recon + α_reg L_reg (1, 1, 0.25 in §3.2)."""

    alpha_softmax: float = 1.0
    alpha_recon: float = 1.0
    alpha_reg: float = 0.25
    # Eq. 1 as printed sums over pixels; "mean" divides by the pixels (see reconstruction_loss).
    recon_reduction: str = "mean"


@dataclasses.dataclass(frozen=True)
class AdamConfig(Section):
    """One Adam per parameter group (§4: 2e-4 pretraining, 1e-5 in stages 1 and 2)."""

    pretrain_lr: float = 2e-4
    lr: float = 1e-5
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8


@dataclasses.dataclass(frozen=True)
class StatsConfig(Section):
    """UpdateStats (§3.3, Alg. 1)."""

    ur_max_images: int = 20  # A class with at most this many images is UR (§4).
    num_components: int = 150  # Columns of Q (§3.3: 150 of 320, "95% energy").
    max_abs_yaw: float = 30.0  # |yaw| bound of Eq. 5 in degrees (τ/2; not given); < 0: none.
    flip: bool = True  # Centres from each image and its mirror (Eq. 5).
    batch_size: int = 256
    cache_bytes: int = 1 << 30  # Keep g for the hard list when it fits, else a second pass.


@dataclasses.dataclass(frozen=True)
class AlternationConfig(Section):
    pretrain_steps: int = 0  # > 0 overrides pretrain_epochs.
    pretrain_epochs: float = 0.0
    n_iter: int = 5000  # Steps of each stage before switching (§4: 5K).
    batch_size: int = 0  # Hard-regular and UR batches of stage 1 (0: input.batch_size).


@dataclasses.dataclass(frozen=True)
class HoldoutConfig(Section):
    """The hold-out evaluation (`hfrjax.recipes.ftl.evaluation`)."""

    data_dir: str = ""  # Hold-out set ("" with run.train_and_evaluate: eval.data_dir).
    gallery_dir: str = ""  # Training images of hold-out classes this training set lacks.
    pack: str = ""  # Verification pack ("": <data_dir>/verification.bin when present).
    batch_size: int = 128
    flip: bool = True
    plot: bool = True  # weight_norms.png: classifier row norm against class size.


@dataclasses.dataclass(frozen=True)
class FTLConfig(Section):
    mode: str = "ftl"  # ftl | softmax | ml2
    model: FTLModelConfig = FTLModelConfig()
    compute_dtype: str = "float32"
    input: pipeline.InputConfig = pipeline.InputConfig()
    loss: LossConfig = LossConfig()
    optimizer: AdamConfig = AdamConfig()
    stats: StatsConfig = StatsConfig()
    alternation: AlternationConfig = AlternationConfig()
    holdout: HoldoutConfig = HoldoutConfig()
    num_epochs: float = 1.0
    total_steps: int = 0  # > 0 overrides num_epochs.


# ------------------------------------------------------------------------------------------
# Losses.


def eq4_step_loss(network, loss: LossConfig, alpha_reg: float):
    """Pretraining and stage 2: Eq. 4 on ``batches["train"]`` with BN in training mode."""

    def loss_fn(params, model_state, extra, batches, rng):
        b = batches["train"]
        x = model_inputs(b["image"])
        out, new_ms = apply_model(
            network, params, model_state, b["image"], True, rng, method="forward_all"
        )
        total, terms = ftl_loss(
            out["f"],
            params["fc"]["kernel"].T,
            b["label"],
            reconstructed=out["reconstruction"],
            images=x,
            alpha_softmax=loss.alpha_softmax,
            alpha_recon=loss.alpha_recon,
            alpha_reg=alpha_reg,
            recon_reduction=loss.recon_reduction,
        )
        metrics = {f"loss/{k}": v for k, v in terms.items()}
        metrics["train_accuracy"] = jnp.mean(jnp.argmax(out["logits"], -1) == b["label"])
        return total, (metrics, new_ms, extra)

    return loss_fn


def stage1_loss(network, loss: LossConfig, alpha_reg: float):
    """Stage 1 (Alg. 1): Eq. 2 + 3 on the hard regular batch, the UR batch and the transferred
    batch g̃ = c_u + Q Qᵀ (g_r − c_r) (Eq. 7), summed (one update for the three "Train" lines).
    Enc runs with its running BN statistics and no gradient."""

    def loss_fn(params, model_state, extra, batches, rng):
        hard, ur = batches["hard"], batches["ur"]
        variables = {"params": params, **model_state}

        def encode(images):
            g = network.apply(variables, model_inputs(images), train=False, method="encode")
            return jax.lax.stop_gradient(g)

        g_r, g_u = encode(hard["image"]), encode(ur["image"])
        g_t = statistics.transfer_features(
            g_r, hard["label"], ur["label"], extra["centres"], extra["basis"]
        )
        weight = params["fc"]["kernel"].T
        total, metrics = 0.0, {}
        parts = (("hard", g_r, hard["label"]), ("ur", g_u, ur["label"]), ("transfer", g_t, ur["label"]))
        for name, g, y in parts:
            f = network.apply(variables, g, method="filter_features")
            part, _ = ftl_loss(f, weight, y, alpha_softmax=loss.alpha_softmax, alpha_reg=alpha_reg)
            total = total + part
            metrics[f"loss/{name}"] = part
            metrics[f"accuracy/{name}"] = jnp.mean(jnp.argmax(f @ weight.T, -1) == y)
        return total, (metrics, model_state, extra)

    return loss_fn


def ftl_embed(network):
    """The recognition embedding f = R(Enc(x)) (what evaluation and export use)."""

    def embed(params, model_state, images, modality, train_bn=False):
        rng = jax.random.key(0) if train_bn else None
        f, _ = apply_model(network, params, model_state, images, train_bn, rng)
        return f

    return embed


def encode_function(network):
    """(params, model_state, uint8 images) -> raw rich features g, running BN statistics."""

    def encode(params, model_state, images):
        variables = {"params": params, **model_state}
        return network.apply(variables, model_inputs(images), train=False, method="encode")

    return encode


# ------------------------------------------------------------------------------------------
# Schedules.


def pretrain_steps_of(cfg: FTLConfig, steps_per_epoch: int, total: int) -> int:
    """Steps of pretraining (mode ftl: Alg. 1's pretraining; baselines: steps at pretrain_lr)."""
    alt = cfg.alternation
    p = int(alt.pretrain_steps or round(alt.pretrain_epochs * steps_per_epoch))
    if cfg.mode == "ftl" and not 0 < p < total:
        raise ConfigError(
            f"mode='ftl' needs 0 < alternation.pretrain_steps < total steps ({total}); got "
            f"{p} (pretrain_steps={alt.pretrain_steps}, pretrain_epochs={alt.pretrain_epochs})"
        )
    return min(p, total) if p > 0 else total


def stage_of(step: int, pretrain: int, n_iter: int) -> str:
    """Which step of mode ftl's plan runs at global step ``step`` (0-based)."""
    if step < pretrain:
        return "pretrain"
    return "stage1" if ((step - pretrain) // n_iter) % 2 == 0 else "stage2"


def stats_due(pretrain: int, n_iter: int):
    """UpdateStats boundaries: the start of every stage 1."""
    return lambda s: s >= pretrain and (s - pretrain) % (2 * n_iter) == 0


def adam_for(cfg: AdamConfig, pretrain: int) -> tuple[optax.GradientTransformation, callable]:
    """Adam whose rate is ``pretrain_lr`` for its first ``pretrain`` updates, then ``lr``."""

    def schedule(n):
        return jnp.where(n < pretrain, cfg.pretrain_lr, cfg.lr)

    return optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps), schedule


# ------------------------------------------------------------------------------------------
# The task.


def _check(cfg: FTLConfig) -> None:
    if cfg.mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {cfg.mode!r}")
    if cfg.input.joint:
        raise ConfigError("task ftl trains on one dataset: input.joint must be empty")
    if cfg.input.mode != "random_access":
        raise ConfigError(
            f"task ftl needs input.mode='random_access' (UpdateStats and the stage-1 inputs "
            f"index the records), got {cfg.input.mode!r}"
        )
    if cfg.loss.recon_reduction not in ("sum", "mean"):
        raise ConfigError(
            f"loss.recon_reduction must be 'sum' or 'mean', got {cfg.loss.recon_reduction!r}"
        )
    if cfg.alternation.n_iter < 1:
        raise ConfigError(f"alternation.n_iter must be >= 1, got {cfg.alternation.n_iter}")
    for reserved in ("input_size", "in_channels", "num_classes"):
        if reserved in cfg.model.kwargs:
            raise ConfigError(
                f"model.kwargs.{reserved} is set by the task from the input; remove it"
            )


def model_config(cfg: FTLConfig, dataset: Dataset, num_classes: int) -> dict:
    """{"name", "kwargs"} of the network for this input (square crops)."""
    h, w = cfg.input.image_size or dataset.info.image_size
    if h != w:
        raise ConfigError(f"the FTL network takes square crops; input is {h}x{w}")
    kwargs = {
        **cfg.model.kwargs,
        "input_size": int(h),
        "in_channels": int(cfg.input.channels),
        "num_classes": int(num_classes),
    }
    return {"name": cfg.model.name, "kwargs": kwargs}


@register_task("ftl")
class FTLTask:
    config_class = FTLConfig

    def setup(self, cfg: FTLConfig, ctx: SetupContext) -> TaskSetup:
        _check(cfg)
        mesh = ctx.mesh
        train_input = pipeline.make_train_input(cfg.input, mesh=mesh)
        records, class_ids, _ = pipeline.select_train_records(cfg.input)
        num_classes = train_input.num_classes
        sizes = statistics.class_sizes(class_ids, num_classes)
        ur = statistics.under_represented(sizes, cfg.stats.ur_max_images)
        regular = statistics.regular_classes(sizes, cfg.stats.ur_max_images)
        dataset = Dataset.open(cfg.input.data_dir)
        model_cfg = model_config(cfg, dataset, num_classes)
        network = state_lib.build_backbone(model_cfg, compute_dtype=cfg.compute_dtype)
        steps_per_epoch = train_input.steps_per_epoch
        total = int(cfg.total_steps or round(cfg.num_epochs * steps_per_epoch))
        pretrain = pretrain_steps_of(cfg, steps_per_epoch, total)
        n_iter = cfg.alternation.n_iter
        rng_init, rng_train = jax.random.split(jax.random.key(ctx.seed))
        params, batch_stats = state_lib.init_backbone(network, rng_init)
        if set(params) != set(FTL_GROUPS):
            raise ConfigError(
                f"model {cfg.model.name!r} has parameter groups {sorted(params)}; task ftl "
                f"needs {list(FTL_GROUPS)}"
            )
        feature_dim = int(params["fc"]["kernel"].shape[0])
        optimizers = {}
        for group in FTL_GROUPS:
            tx, schedule = adam_for(cfg.optimizer, pretrain)
            optimizers[group] = Optimizer((group,), tx, schedule)
        alpha_reg = 0.0 if cfg.mode == "softmax" else cfg.loss.alpha_reg
        eq4 = eq4_step_loss(network, cfg.loss, alpha_reg)
        steps = {"pretrain": Step(eq4, ("train",), FTL_GROUPS)}
        inputs = {"train": train_input}
        hooks: list[Hook] = []
        extra: dict = {}
        on_restore = None
        meta = {
            "num_classes": num_classes,
            "class_labels": train_input.class_labels.tolist(),
            "class_ranges": [r.to_json() for r in train_input.class_ranges],
            "data_dir": cfg.input.data_dir,
            "ftl": {
                "mode": cfg.mode,
                "regular_classes": int(regular.sum()),
                "ur_classes": int(ur.sum()),
                "pretrain_steps": pretrain,
                "n_iter": n_iter,
            },
        }
        plan = single("pretrain")
        if cfg.mode == "ftl":
            plan = phases(
                [(pretrain, single("pretrain")),
                 (total - pretrain, alternate([("stage1", n_iter), ("stage2", n_iter)]))]
            )
            steps["stage1"] = Step(
                stage1_loss(network, cfg.loss, alpha_reg), ("hard", "ur"), ("filter", "fc")
            )
            steps["stage2"] = Step(eq4, ("train",), ("enc", "dec", "filter"))
            parts = self._ftl_parts(
                cfg, ctx, network, dataset, records, class_ids, num_classes, regular, ur,
                feature_dim, pretrain, n_iter,
            )
            inputs.update(parts["inputs"])
            hooks, extra, on_restore = parts["hooks"], parts["extra"], parts["on_restore"]
        state = state_lib.create_state(
            params, {"batch_stats": batch_stats}, optimizers, rng_train, extra
        )
        h = model_cfg["kwargs"]["input_size"]
        return TaskSetup(
            inputs=inputs,
            state=state,
            optimizers=optimizers,
            steps=steps,
            plan=plan,
            total_steps=total,
            steps_per_epoch=steps_per_epoch,
            embed=ftl_embed(network),
            export=ExportSpec(
                model=model_cfg,
                variables={"params": ("params",), "batch_stats": ("model_state", "batch_stats")},
                input_size=(h, h),
                channels=cfg.input.channels,
            ),
            hooks=hooks,
            images_per_step=cfg.input.batch_size,
            meta=meta,
            describe=(
                f"FTL mode {cfg.mode}, {num_classes} classes ({int(regular.sum())} regular, "
                f"{int(ur.sum())} UR), pretraining {pretrain} steps"
                + (f", then stages alternating every {n_iter}; " if cfg.mode == "ftl" else "; ")
            ),
            eval_input={"image_size": (h, h), "channels": cfg.input.channels},
            evaluators=holdout_evaluators(cfg, model_cfg),
            on_restore=on_restore,
        )

    def evaluator_names(self, cfg: FTLConfig) -> list[str]:
        """The hold-out evaluator when ``holdout.data_dir`` is set (`holdout_evaluators`)."""
        return [evaluation.EVALUATOR] if cfg.holdout.data_dir else []

    def _ftl_parts(
        self, cfg, ctx, network, dataset, records, class_ids, num_classes, regular, ur,
        feature_dim, pretrain, n_iter,
    ) -> dict:
        """Stage-1 inputs, the UpdateStats hook, the restore fix-up and the extra state."""
        if not ur.any() or not regular.any():
            raise ConfigError(
                f"mode='ftl' needs regular and UR classes (UR: <= stats.ur_max_images = "
                f"{cfg.stats.ur_max_images} images); {cfg.input.data_dir} has "
                f"{int(regular.sum())} regular and {int(ur.sum())} UR classes"
            )
        k = cfg.stats.num_components
        if not 1 <= k <= feature_dim:
            raise ConfigError(
                f"stats.num_components={k} must be in [1, feature dim {feature_dim}]"
            )
        batch = cfg.alternation.batch_size or cfg.input.batch_size
        images = RecordImages(records, class_ids, cfg.input, cfg.input.num_threads)
        kw = dict(seed=cfg.input.seed, mesh=ctx.mesh)
        hard_input = ListSampler("hard", images, batch, mode="rows", stream=HARD_STREAM, **kw)
        ur_input = ListSampler("ur", images, batch, mode="classes", stream=UR_STREAM, **kw)
        ur_input.set_list(0, np.flatnonzero(ur[class_ids]))
        regular_rows = int(regular[class_ids].sum())
        extra = {
            "stats_version": jnp.zeros((), jnp.int32),
            "centres": jnp.zeros((num_classes, feature_dim), jnp.float32),
            "basis": jnp.zeros((feature_dim, k), jnp.float32),
            "eigenvalues": jnp.zeros((feature_dim,), jnp.float32),
            "energy_kept": jnp.zeros((), jnp.float32),
            "fallback_classes": jnp.zeros((), jnp.int32),
            "hard_rows": jnp.full((regular_rows,), -1, jnp.int32),
            "hard_count": jnp.zeros((), jnp.int32),
            "fc_norm_pretrained": jnp.zeros((num_classes,), jnp.float32),
        }
        encode = encode_function(network)
        stats_cfg = cfg.stats
        image_size = cfg.input.image_size
        workdir = Path(ctx.workdir)

        def restore_hard_list(state):
            """After a restore: hand the stored hard list back to its input."""
            version = int(jax.device_get(state.extra["stats_version"]))
            if version > 0 and hard_input.list_version != version:
                rows = unpad_rows(
                    jax.device_get(state.extra["hard_rows"]),
                    jax.device_get(state.extra["hard_count"]),
                )
                hard_input.set_list(version, rows, restart=False)

        def run_update_stats(hctx, state):
            step = int(jax.device_get(state.step))
            params = jax.device_get(state.params)
            model_state = jax.device_get(state.model_state)
            fn = MeshFunction(encode, params, model_state, hctx.mesh)
            stats, report = update_stats.run_update_stats(
                fn, dataset, records, class_ids, num_classes, regular,
                num_components=k,
                max_abs_yaw=stats_cfg.max_abs_yaw if stats_cfg.max_abs_yaw >= 0 else None,
                flip=stats_cfg.flip,
                batch_size=stats_cfg.batch_size,
                image_size=image_size,
                channels=cfg.input.channels,
                cache_bytes=stats_cfg.cache_bytes,
            )
            hard = stats.hard_indices
            if len(hard) == 0:  # Every regular sample at its class's mean distance.
                hard = np.flatnonzero(regular[class_ids])
            version = int(jax.device_get(state.extra["stats_version"])) + 1
            new = dict(state.extra)
            new.update(
                stats_version=jnp.asarray(version, jnp.int32),
                centres=jnp.asarray(stats.centres, jnp.float32),
                basis=jnp.asarray(stats.basis, jnp.float32),
                eigenvalues=jnp.asarray(stats.eigenvalues, jnp.float32),
                energy_kept=jnp.asarray(stats.energy_kept, jnp.float32),
                fallback_classes=jnp.asarray(stats.fallback_classes, jnp.int32),
                hard_rows=jnp.asarray(pad_rows(hard, regular_rows)),
                hard_count=jnp.asarray(len(hard), jnp.int32),
            )
            if version == 1:  # The classifier as pretraining left it (Fig. 1b "before").
                norms = np.linalg.norm(np.asarray(params["fc"]["kernel"]), axis=0)
                new["fc_norm_pretrained"] = jnp.asarray(norms, jnp.float32)
            hard_input.set_list(version, hard)
            hctx.say(
                f"UpdateStats {version} at step {step}: {report.images} images "
                f"({report.encoder_images} encoded, {report.passes} pass(es)) in "
                f"{report.seconds:.1f} s ({report.images_per_second:.0f} images/s); Q keeps "
                f"{100 * report.energy_kept:.1f}% of the energy ({k} of {feature_dim}); "
                f"{report.num_hard} hard samples; {report.fallback_classes} classes without "
                "an inlier (plain mean)"
            )
            if jax.process_index() == 0:
                _record_stats(workdir, version, step, report)
            return state.replace(extra=new)

        hooks = [Hook("update_stats", stats_due(pretrain, n_iter), run_update_stats)]
        return {
            "inputs": {"hard": hard_input, "ur": ur_input},
            "hooks": hooks,
            "extra": extra,
            "on_restore": restore_hard_list,
        }


def holdout_evaluators(cfg: FTLConfig, model_cfg: dict) -> dict:
    """{"holdout": fn} when ``holdout.data_dir`` is set (else none): the hold-out evaluation
    (`evaluation.evaluate_trained`) as a loop evaluator."""
    if not cfg.holdout.data_dir:
        return {}

    def holdout(hctx, state, step):
        params, model_state, extra = jax.device_get((state.params, state.model_state, state.extra))
        return evaluation.evaluate_trained(
            cfg, model_cfg, params, model_state, extra, hctx.mesh, hctx.workdir, step
        )

    return {evaluation.EVALUATOR: holdout}


def _record_stats(workdir: Path, version: int, step: int, report) -> None:
    """``ftl_stats.json``: {version: pass report} (rewritten; a rerun replaces its entry)."""
    path = workdir / STATS_FILE
    try:
        table = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except ValueError:
        table = {}
    table[str(version)] = {"step": step, **report.to_json()}
    write_text_atomic(path, json.dumps(table, indent=1) + "\n")
