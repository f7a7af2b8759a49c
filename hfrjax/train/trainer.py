"""The trainer: one readable loop shared by pretraining and fine-tuning recipes.

``train(config, workdir)`` builds the mesh, the input pipeline, the backbone and classifier
head, restores ``workdir/checkpoints`` if present (state *and* data iterator), trains with
progress lines, logs ``metrics.jsonl`` and TensorBoard events, evaluates the target protocol
when configured, and saves on schedule, on SIGTERM and at the end.

Config fields (ml_collections; see configs/ for complete examples):
  seed, num_epochs (or total_steps), compute_dtype ("float32" | "bfloat16"),
  input      InputConfig fields (hfrjax/data/pipeline.py), e.g. data_dir, batch_size, fold,
  model      {name, kwargs} for hfrjax.models.get_model,
  margin     {s, m1, m2, m3} or {preset: "arcface" | "cosface" | ...},
  head       {init: "random" | "class_means", freeze: bool, class_means_flip: bool},
  init_from  "" | exported embedder dir | training workdir (backbone weights to start from),
  optimizer  {name: sgd | adamw, momentum, weight_decay, decay_bn_and_bias, clip_norm},
  schedule   {name: piecewise | cosine | poly | constant, lr, warmup_epochs, ...},
  eval       {data_dir, folds, every_epochs, batch_size, best_metric, fars},
  mesh       {data, model}, log_every, checkpoint_every, keep_checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from hfrjax.data import pipeline, tfrecord
from hfrjax.data.dataset import Dataset
from hfrjax.losses import MarginConfig, class_mean_rows, get_margin_preset
from hfrjax.train import checkpoint as ckpt_lib
from hfrjax.train import export as export_lib
from hfrjax.train import mesh as mesh_lib
from hfrjax.train import optim, reporting
from hfrjax.train import state as state_lib
from hfrjax.train import step as step_lib


def say(msg: str) -> None:
    """A progress line on stdout (process 0 only); absl logging stays for details."""
    if jax.process_index() == 0:
        print(msg, flush=True)


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/inf; the message names the step."""


def margin_from_config(cfg: Any) -> MarginConfig:
    cfg = dict(cfg or {})
    preset = cfg.pop("preset", "")
    base = get_margin_preset(preset) if preset else MarginConfig()
    unknown = set(cfg) - {"s", "m1", "m2", "m3"}
    if unknown:
        raise ValueError(f"unknown margin option(s) {sorted(unknown)}; use preset, s, m1, m2, m3")
    return dataclasses.replace(base, **{k: float(v) for k, v in cfg.items()})


# --------------------------------------------------------------------------------------------
# Embedding with a (possibly multi-device) mesh.


def make_embed_fn(backbone, params, batch_stats, mesh) -> Callable[[np.ndarray], np.ndarray]:
    """Host images (the same full batch on every process) -> embeddings, using all devices."""
    embed = step_lib.make_embed_step(backbone, mesh)
    sharding = mesh_lib.batch_sharding(mesh)
    n_data = mesh.shape[mesh_lib.DATA_AXIS]

    def embed_fn(images: np.ndarray) -> np.ndarray:
        n = len(images)
        pad = (-n) % n_data
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
        x = jax.make_array_from_callback(images.shape, sharding, lambda idx: images[idx])
        out = embed(params, batch_stats, x)
        return np.asarray(out.addressable_data(0))[:n]

    return embed_fn


def embed_records(
    embed_fn,
    dataset: Dataset,
    keys,
    batch_size: int,
    *,
    image_size=None,
    channels: int = 3,
    flip: bool = False,
) -> np.ndarray:
    """Embeddings [N, D] of ``keys`` (flip: sum with the mirrored image's, then normalise)."""
    out = []
    for batch in pipeline.iter_eval_batches(
        dataset, keys, batch_size, image_size=image_size, channels=channels
    ):
        x = batch["image"]
        e = embed_fn(x)
        if flip:
            e = e + embed_fn(np.ascontiguousarray(x[:, :, ::-1]))
        out.append(e[batch["valid"]])
    e = np.concatenate(out)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------------------------
# Starting points.


def load_backbone_weights(path: str, params: Any, batch_stats: Any) -> tuple[Any, Any]:
    """Backbone (params, batch_stats) from an export dir or a training workdir's checkpoint."""
    p = Path(path)
    if (p / export_lib.MODEL_JSON).exists():
        emb = export_lib.load_embedder(p)
        new_p, new_bs = emb.params, emb.batch_stats
    elif (p / "checkpoints").exists():
        ck = ckpt_lib.Checkpointer(p / "checkpoints", async_save=False)
        _, raw, _ = ck.restore_untyped()
        ck.close()
        new_p, new_bs = raw["params"]["backbone"], raw["batch_stats"]
    else:
        raise FileNotFoundError(
            f"init_from={path!r} is neither an exported embedder (model.json) "
            "nor a training workdir (checkpoints/)"
        )
    _check_same_shapes(params, new_p, f"backbone params of {path}")
    _check_same_shapes(batch_stats, new_bs, f"batch stats of {path}")
    return (jax.tree.map(jnp.asarray, new_p), jax.tree.map(jnp.asarray, new_bs))


def _check_same_shapes(want: Any, have: Any, what: str) -> None:
    bad = ckpt_lib.shape_problems(want, have)
    if bad:
        raise ckpt_lib.CheckpointMismatchError(
            f"{what} do not fit the configured model ({len(bad)} problem(s)): " + "; ".join(bad[:8])
        )


# --------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class TrainResult:
    state: state_lib.TrainState
    backbone: Any
    mesh: Any
    class_labels: np.ndarray
    final_metrics: dict
    eval_results: dict | None
    resumed_from: int | None


def _evaluate(config, backbone, state, mesh, step: int, writer, workdir: Path) -> dict | None:
    ev = config.get("eval", None)
    if not ev or not ev.get("data_dir"):
        return None
    from hfrjax.eval.protocols import evaluate_protocol

    embed_fn = make_embed_fn(backbone, state.params["backbone"], state.batch_stats, mesh)
    t = time.perf_counter()
    folds = ev.get("folds", None)
    results = evaluate_protocol(
        embed_fn,
        ev["data_dir"],
        folds=list(folds) if folds else None,
        batch_size=int(ev.get("batch_size", 64)),
        fars=tuple(ev.get("fars", (1e-3, 1e-2))),
        image_size=config.input.get("image_size", None),
        channels=int(config.input.get("channels", 3)),
        flip_fuse=bool(ev.get("flip", False)),
    )
    results["step"] = step
    if jax.process_index() == 0:
        tmp = workdir / "eval.json.tmp"
        tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        tmp.replace(workdir / "eval.json")
    flat = {f"eval/{k}": v for k, v in results["mean"].items()}
    writer.write(step, flat)
    say(
        f"eval at step {step} ({time.perf_counter() - t:.1f} s): "
        + ", ".join(f"{k} {v:.4f}" for k, v in flat.items())
    )
    return results


def train(
    config: Any, workdir: str, *, loss_fn_factory: Callable[..., step_lib.LossFn] | None = None
) -> TrainResult:
    """Trains (or resumes) the run described by ``config`` in ``workdir``."""
    workdir_p = Path(workdir)
    workdir_p.mkdir(parents=True, exist_ok=True)
    mesh = mesh_lib.make_mesh(**dict(config.get("mesh", {}) or {}))
    inp_cfg = pipeline.InputConfig.from_dict(config.input)
    train_input = pipeline.make_train_input(inp_cfg, mesh=mesh)
    num_classes = train_input.num_classes
    overrides = {}
    if inp_cfg.channels != 3:
        overrides["in_channels"] = inp_cfg.channels
    backbone = state_lib.build_backbone(
        config.model, compute_dtype=config.get("compute_dtype", "float32"), **overrides
    )
    steps_per_epoch = train_input.steps_per_epoch
    total_steps = int(config.get("total_steps", 0) or config.num_epochs * steps_per_epoch)
    schedule = optim.make_schedule(dict(config.schedule), steps_per_epoch, total_steps)
    head_cfg = dict(config.get("head", {}) or {})
    freeze_head = bool(head_cfg.get("freeze", False))
    tx = optim.make_optimizer(dict(config.optimizer), schedule, ["head"] if freeze_head else ())
    margin = margin_from_config(config.get("margin", None))

    rng = jax.random.key(int(config.get("seed", 0)))
    rng_init, rng_head, rng_train = jax.random.split(rng, 3)
    params, batch_stats = state_lib.init_backbone(backbone, rng_init)
    emb_dim = jax.eval_shape(
        lambda: backbone.apply(
            {"params": params, "batch_stats": batch_stats},
            state_lib.models.dummy_input(backbone),
            train=False,
        )
    ).shape[-1]
    ckpt = ckpt_lib.Checkpointer(
        workdir_p / "checkpoints",
        keep=int(config.get("keep_checkpoints", 3)),
        best_metric=(config.get("eval", {}) or {}).get("best_metric"),
    )
    start = ckpt.latest_step()
    rows = None
    if start is None:
        if config.get("init_from", ""):
            params, batch_stats = load_backbone_weights(config.init_from, params, batch_stats)
            logging.info("initialised backbone from %s", config.init_from)
        if head_cfg.get("init", "random") == "class_means":
            rows = _class_mean_rows(
                backbone,
                params,
                batch_stats,
                mesh,
                inp_cfg,
                train_input,
                flip=bool(head_cfg.get("class_means_flip", True)),
            )
        elif head_cfg.get("init", "random") != "random":
            raise ValueError(
                f"head.init must be 'random' or 'class_means', got {head_cfg['init']!r}"
            )
    head = state_lib.init_head(rng_head, num_classes, emb_dim, rows)
    state = state_lib.create_state({"backbone": params, "head": head}, batch_stats, tx, rng_train)
    state = jax.device_put(state, mesh_lib.replicated(mesh))
    model_kwargs = dict(config.model.get("kwargs", {}) or {})
    model_kwargs.update(overrides)
    meta = {
        "num_classes": num_classes,
        "class_labels": train_input.class_labels.tolist(),
        "data_dir": inp_cfg.data_dir,
        "model": {"name": config.model.name, "kwargs": export_lib._jsonable(model_kwargs)},
    }
    ev = config.get("eval", None)
    if ev and ev.get("data_dir"):  # Lets launch/evaluate.py --workdir find the protocol.
        meta["eval"] = {"data_dir": ev.data_dir, "folds": list(ev.get("folds", None) or [])}
    if start is not None:
        state, _ = ckpt.restore(start, state, train_input.iterator)

    loss_fn = (loss_fn_factory or step_lib.classification_loss)(
        backbone, margin, freeze_head=freeze_head
    )
    train_step = step_lib.make_train_step(loss_fn, tx, mesh, schedule)
    writer = reporting.MetricWriter(workdir_p, tensorboard=bool(config.get("tensorboard", True)))
    step = int(jax.device_get(state.step))
    log_every = int(config.get("log_every", 50))
    ckpt_every = int(config.get("checkpoint_every", 1000))
    eval_every = int(
        round(float((config.get("eval", {}) or {}).get("every_epochs", 0)) * steps_per_epoch)
    )
    progress = reporting.Progress(total_steps, inp_cfg.batch_size, step)
    say(
        f"training {config.model.name}: {state_lib.count_params(state.params['backbone']):,} "
        f"backbone params, {num_classes} classes, {total_steps} steps ({steps_per_epoch} per "
        f"epoch), global batch {inp_cfg.batch_size}, mesh {dict(mesh.shape)}"
        + (f", resumed at step {start}" if start is not None else "")
    )
    pending = None  # Metrics of the previous step, fetched one step late to keep the pipeline full.
    last = {}
    eval_results = None

    def check(m: dict, at: int) -> dict:
        m = jax.device_get(m)
        if not bool(m["finite"]):
            ckpt.wait()
            raise NonFiniteLossError(
                f"non-finite loss ({float(m['loss'])}) or gradient at step {at}; the state was kept "
                f"at step {at - 1}; last checkpoint: {ckpt.latest_step()} in {ckpt.directory}. "
                "Lower the learning rate, check the data, or enable optimizer.clip_norm."
            )
        return {k: float(v) for k, v in m.items() if k != "finite"}

    with ckpt_lib.PreemptionGuard() as guard:
        while step < total_steps:
            batch = next(train_input)
            state, metrics = train_step(state, batch)
            step += 1
            if pending is not None:
                last = check(*pending)
            pending = (metrics, step)
            if step % log_every == 0 or step == total_steps:
                last = check(*pending)
                pending = None
                writer.write(step, last)
                say(progress.line(step, last))
            if eval_every and step % eval_every == 0 and step < total_steps:
                eval_results = _evaluate(config, backbone, state, mesh, step, writer, workdir_p)
            if guard.should_stop(step):
                ckpt.save(step, state, train_input.iterator, meta=meta, force=True)
                ckpt.wait()
                logging.warning("pre-empted: saved step %d to %s", step, ckpt.directory)
                raise SystemExit(143)
            if step % ckpt_every == 0 and step < total_steps:
                ckpt.save(step, state, train_input.iterator, meta=meta)
    if pending is not None:
        last = check(*pending)
    if tfrecord.CORRUPTION_STATS.total:
        logging.warning("input: %s", tfrecord.CORRUPTION_STATS.report())
    if start is None or start < total_steps:
        eval_results = _evaluate(config, backbone, state, mesh, step, writer, workdir_p)
        metrics = None
        if eval_results and (config.get("eval", {}) or {}).get("best_metric"):
            metrics = dict(eval_results["mean"])
        ckpt.save(step, state, train_input.iterator, meta=meta, metrics=metrics, force=True)
    ckpt.close()
    writer.close()
    return TrainResult(state, backbone, mesh, train_input.class_labels, last, eval_results, start)


def _class_mean_rows(
    backbone, params, batch_stats, mesh, inp_cfg, train_input, *, flip: bool
) -> np.ndarray:
    """MEC classifier rows: per class, the normalised mean embedding of its training images."""
    dataset = Dataset.open(inp_cfg.data_dir)
    records, _ = pipeline.select_records(dataset, inp_cfg)
    labels, _ = pipeline.remap_labels(records.label)
    embed_fn = make_embed_fn(backbone, params, batch_stats, mesh)
    emb = embed_records(
        embed_fn,
        dataset,
        list(records.key),
        64,
        image_size=inp_cfg.image_size,
        channels=inp_cfg.channels,
        flip=flip,
    )
    rows = class_mean_rows(jnp.asarray(emb), jnp.asarray(labels), train_input.num_classes)
    return np.asarray(rows)


def export_from_workdir(workdir: str, out_dir: str, *, step: int | None = None) -> Path:
    """Writes an inference checkpoint of the backbone of ``workdir``'s latest (or given) step."""
    ck = ckpt_lib.Checkpointer(Path(workdir) / "checkpoints", async_save=False)
    step, state, meta = ck.restore_untyped(step)
    ck.close()
    model_cfg = meta.get("model")
    if not model_cfg:
        raise ValueError(f"checkpoint {workdir} step {step} has no model config in its metadata")
    return export_lib.export_embedder(
        out_dir,
        model_cfg=model_cfg,
        params=state["params"]["backbone"],
        batch_stats=state["batch_stats"],
        extra={
            "source": str(Path(workdir).absolute()),
            "step": int(step),
            "data_dir": meta.get("data_dir", ""),
            "eval": meta.get("eval", {}),
        },
    )
