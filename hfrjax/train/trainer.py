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
  head       {init: "random" | "class_means" (MEC) | "pretrained_rows" (SSC: this input's
             identities' rows of init_from's classifier), freeze: bool, class_means_flip: bool,
             class_means_bn: "eval" | "train", class_means_batch: int,
             classifier: "dense" | "sharded" (rows over the mesh's model axis) | "partial_fc",
             sample_rate (Partial FC, default 0.1), matmul_dtype ("bfloat16": bf16 classifier
             matmul with float32 accumulation; with compute_dtype bfloat16 for the backbone)},
  init_from  "" | exported embedder dir | training workdir (backbone weights to start from;
             a workdir also provides classifier rows for SSC and source regularisation),
  source_reg {weight: λ (0: off), input: InputConfig fields of the source set, freeze_head,
             margin}: L += λ · L_cls(source) with init_from's source classifier rows,
  rct        {weight: μ (0: off)}: L += μ · ||θ − θ_init_from||² on the backbone,
  optimizer  {name: sgd | adamw, momentum, weight_decay, decay_bn_and_bias, clip_norm,
             accumulate_steps: k (one update per k batches: effective batch k x batch_size)},
  schedule   {name: piecewise | cosine | poly | constant, lr, warmup_epochs, ...},
  eval       {data_dir, folds, every_epochs, batch_size, best_metric, fars, flip,
             verification_packs: [lfw.bin, cfp_fp.bin, ...] (10-fold accuracy, flip-fused)},
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

from hfrjax.data import augment as augment_lib
from hfrjax.data import pipeline, tfrecord
from hfrjax.data.dataset import Dataset
from hfrjax.fileio import write_text_atomic
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


def make_embed_fn(
    backbone, params, batch_stats, mesh, *, train: bool = False
) -> Callable[[np.ndarray], np.ndarray]:
    """Host images (the same full batch on every process) -> embeddings, using all devices.

    ``train=True`` normalises with batch statistics (see `step.make_embed_step`)."""
    embed = step_lib.make_embed_step(backbone, mesh, train=train)
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


def load_pretrained_head(path: str) -> tuple[np.ndarray, list[pipeline.ClassRange]]:
    """Classifier rows [C, D] and their per-dataset class ranges from a training workdir."""
    p = Path(path)
    if not (p / "checkpoints").exists():
        raise FileNotFoundError(
            f"init_from={path!r} has no checkpoints/: classifier rows (SSC, source "
            "regularisation) need a training workdir, not an exported embedder"
        )
    ck = ckpt_lib.Checkpointer(p / "checkpoints", async_save=False)
    step, raw, meta = ck.restore_untyped()
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


class JointBatches:
    """Target batches with a source batch under ``"source"`` (source regularisation).

    Checkpointed as one grain item: its state holds both iterators' states.
    """

    def __init__(self, target, source):
        self.target, self.source = target, source

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = dict(next(self.target))
        batch["source"] = {k: v for k, v in next(self.source).items() if k in ("image", "label")}
        return batch

    def get_state(self) -> bytes:
        return json.dumps(
            {"target": self.target.get_state(), "source": self.source.get_state()}
        ).encode()

    def set_state(self, state: bytes) -> None:
        d = json.loads(state)
        self.target.set_state(d["target"])
        self.source.set_state(d["source"])

    def start_prefetch(self) -> None:
        for it in (self.target, self.source):
            it = getattr(it, "iterator", it)  # A TrainInput's grain iterator.
            if hasattr(it, "start_prefetch"):
                it.start_prefetch()


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
    """The configured evaluations: the target protocol (``eval.data_dir``, written to
    eval.json) and InsightFace verification packs (``eval.verification_packs``, e.g. lfw.bin,
    written to verification.json); their numbers go to the metric logs."""
    ev = config.get("eval", None)
    packs = list((ev.get("verification_packs", None) or []) if ev else [])
    if not ev or not (ev.get("data_dir") or packs):
        return None
    embed_fn = make_embed_fn(backbone, state.params["backbone"], state.batch_stats, mesh)
    image_size = config.input.get("image_size", None) or (backbone.input_size,) * 2
    channels = int(config.input.get("channels", 3))
    t = time.perf_counter()
    flat, results = {}, None
    if ev.get("data_dir"):
        from hfrjax.eval.protocols import evaluate_protocol

        folds = ev.get("folds", None)
        results = evaluate_protocol(
            embed_fn,
            ev["data_dir"],
            folds=list(folds) if folds else None,
            batch_size=int(ev.get("batch_size", 64)),
            fars=tuple(ev.get("fars", (1e-3, 1e-2))),
            image_size=config.input.get("image_size", None),
            channels=channels,
            flip_fuse=bool(ev.get("flip", False)),
        )
        results["step"] = step
        if jax.process_index() == 0:
            write_text_atomic(workdir / "eval.json", json.dumps(results, indent=1) + "\n")
        flat.update({f"eval/{k}": v for k, v in results["mean"].items()})
    if packs:
        from hfrjax.eval.verification import evaluate_pack

        def rgb_embed(images: np.ndarray) -> np.ndarray:  # Packs are RGB; grey models see Y.
            if channels == 1:
                images = augment_lib.luminance(images.astype(np.float32))[..., None]
            return embed_fn(images)

        verification = {"step": step}
        for path in packs:
            name = Path(path).stem
            r = evaluate_pack(
                rgb_embed, path, int(ev.get("batch_size", 64)), tuple(image_size), flip=True
            )
            verification[name] = r
            flat[f"verify/{name}/accuracy"] = r["accuracy"]
        if jax.process_index() == 0:
            write_text_atomic(
                workdir / "verification.json", json.dumps(verification, indent=1, default=float)
            )
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
    accumulate = int((config.get("optimizer", {}) or {}).get("accumulate_steps", 1) or 1)
    if accumulate < 1 or steps_per_epoch < accumulate:
        raise ValueError(
            f"optimizer.accumulate_steps={accumulate} must be in [1, steps per epoch = "
            f"{steps_per_epoch}]"
        )
    # With accumulation the schedule advances once per optimizer update (every k micro-steps).
    schedule = optim.make_schedule(
        dict(config.schedule), max(1, steps_per_epoch // accumulate), total_steps // accumulate
    )
    head_cfg = dict(config.get("head", {}) or {})
    freeze_head = bool(head_cfg.get("freeze", False))
    classifier = str(head_cfg.get("classifier", "dense"))
    if classifier not in ("dense", "sharded", "partial_fc"):
        raise ValueError(
            f"head.classifier must be 'dense', 'sharded' or 'partial_fc', got {classifier!r}"
        )
    sharded_head = None
    head_rows = num_classes
    if classifier != "dense":
        from hfrjax.losses.sharded import padded_num_classes

        rate = float(head_cfg.get("sample_rate", 0.1)) if classifier == "partial_fc" else 1.0
        sharded_head = step_lib.ShardedHead(mesh, num_classes, rate)
        head_rows = padded_num_classes(num_classes, mesh.shape[mesh_lib.MODEL_AXIS])
    margin = margin_from_config(config.get("margin", None))
    src_cfg = dict(config.get("source_reg", {}) or {})
    source_weight = float(src_cfg.get("weight", 0.0))
    rct_weight = float((config.get("rct", {}) or {}).get("weight", 0.0))
    if (source_weight or rct_weight) and not config.get("init_from", ""):
        raise ValueError("source_reg.weight and rct.weight need init_from (the pretrained run)")
    source_input = src_inp_cfg = None
    if source_weight:
        unknown = set(src_cfg) - {"weight", "input", "freeze_head", "margin"}
        if unknown:
            raise ValueError(f"unknown source_reg option(s) {sorted(unknown)}")
        src_inp_cfg = pipeline.InputConfig.from_dict(src_cfg["input"])
        source_input = pipeline.make_train_input(src_inp_cfg, mesh=mesh)
    frozen = ["head"] if freeze_head else []
    if source_weight and src_cfg.get("freeze_head", True):
        frozen.append("source_head")
    if rct_weight:
        frozen.append("anchor")
    tx = optim.make_optimizer(dict(config.optimizer), schedule, frozen)

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
                bn_mode=str(head_cfg.get("class_means_bn", "eval")),
                batch_size=int(head_cfg.get("class_means_batch", 64)),
            )
        elif head_cfg.get("init", "random") == "pretrained_rows":
            if not config.get("init_from", ""):
                raise ValueError("head.init='pretrained_rows' (SSC) needs init_from")
            rows = rows_for_input(config.init_from, inp_cfg, train_input)
        elif head_cfg.get("init", "random") != "random":
            raise ValueError(
                "head.init must be 'random', 'class_means' or 'pretrained_rows', got "
                f"{head_cfg['init']!r}"
            )
    if rows is not None and head_rows > num_classes:  # Padding rows of a sharded classifier.
        rows = np.concatenate([rows, np.zeros((head_rows - num_classes, emb_dim), rows.dtype)])
    head = state_lib.init_head(rng_head, head_rows, emb_dim, rows)
    all_params = {"backbone": params, "head": head}
    if source_weight:  # On resume the checkpoint supplies the values; only shapes matter here.
        src_rows = (
            rows_for_input(config.init_from, src_inp_cfg, source_input)
            if start is None
            else np.zeros((source_input.num_classes, emb_dim), np.float32)
        )
        all_params["source_head"] = state_lib.init_head(
            rng_head, source_input.num_classes, emb_dim, src_rows
        )
    if rct_weight:
        all_params["anchor"] = jax.tree.map(jnp.array, params)  # A copy: never donated twice.
    state = state_lib.create_state(all_params, batch_stats, tx, rng_train)
    state_sharding = mesh_lib.state_sharding(state, mesh, shard_head=sharded_head is not None)
    # A typed PRNG key cannot be device_put onto devices of other processes: move its data.
    impl = jax.random.key_impl(state.rng)
    state = jax.device_put(state.replace(rng=jax.random.key_data(state.rng)), state_sharding)
    state = state.replace(rng=jax.random.wrap_key_data(state.rng, impl=impl))
    model_kwargs = dict(config.model.get("kwargs", {}) or {})
    model_kwargs.update(overrides)
    meta = {
        "num_classes": num_classes,
        "class_labels": train_input.class_labels.tolist(),
        "data_dir": inp_cfg.data_dir,
        "model": {"name": config.model.name, "kwargs": export_lib._jsonable(model_kwargs)},
    }
    meta["class_ranges"] = [r.to_json() for r in train_input.class_ranges]
    ev = config.get("eval", None)
    if ev and ev.get("data_dir"):  # Lets launch/evaluate.py --workdir find the protocol.
        meta["eval"] = {"data_dir": ev.data_dir, "folds": list(ev.get("folds", None) or [])}
    batches = train_input if source_input is None else JointBatches(train_input, source_input)
    data_item = train_input.iterator if source_input is None else batches
    if start is not None:
        state, _ = ckpt.restore(start, state, data_item)

    loss_kw = {}
    if source_weight:
        loss_kw.update(
            source_weight=source_weight,
            source_margin=margin_from_config(src_cfg["margin"]) if src_cfg.get("margin") else None,
            freeze_source_head=bool(src_cfg.get("freeze_head", True)),
        )
    if rct_weight:
        loss_kw["anchor_weight"] = rct_weight
    if sharded_head is not None:
        loss_kw["sharded_head"] = sharded_head
    if head_cfg.get("matmul_dtype"):
        loss_kw["matmul_dtype"] = state_lib.DTYPES[head_cfg["matmul_dtype"]]
    loss_fn = (loss_fn_factory or step_lib.classification_loss)(
        backbone, margin, freeze_head=freeze_head, **loss_kw
    )
    train_step = step_lib.make_train_step(
        loss_fn,
        tx,
        mesh,
        (lambda i: schedule(i // accumulate)) if accumulate > 1 else schedule,
        state_sharding,
    )
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
            batch = next(batches)
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
                ckpt.save(step, state, data_item, meta=meta, force=True)
                ckpt.wait()
                logging.warning("pre-empted: saved step %d to %s", step, ckpt.directory)
                raise SystemExit(143)
            if step % ckpt_every == 0 and step < total_steps:
                ckpt.save(step, state, data_item, meta=meta)
    if pending is not None:
        last = check(*pending)
    if tfrecord.CORRUPTION_STATS.total:
        logging.warning("input: %s", tfrecord.CORRUPTION_STATS.report())
    if start is None or start < total_steps:
        eval_results = _evaluate(config, backbone, state, mesh, step, writer, workdir_p)
        metrics = None
        if eval_results and (config.get("eval", {}) or {}).get("best_metric"):
            metrics = dict(eval_results["mean"])
        ckpt.save(step, state, data_item, meta=meta, metrics=metrics, force=True)
    ckpt.close()
    writer.close()
    return TrainResult(state, backbone, mesh, train_input.class_labels, last, eval_results, start)


def _class_mean_rows(
    backbone,
    params,
    batch_stats,
    mesh,
    inp_cfg,
    train_input,
    *,
    flip: bool,
    bn_mode: str = "eval",
    batch_size: int = 64,
) -> np.ndarray:
    """MEC classifier rows: per class, the normalised mean embedding of its training images.

    One sharded embedding pass over the training records (in dataset order, ``batch_size`` at
    a time); ``flip`` adds the mirrored image's embedding; ``bn_mode`` "train" normalises each
    batch with its own statistics (the official code's way), "eval" with the running ones.
    """
    if bn_mode not in ("eval", "train"):
        raise ValueError(f"head.class_means_bn must be 'eval' or 'train', got {bn_mode!r}")
    if inp_cfg.joint:
        raise ValueError("head.init='class_means' needs a single-dataset input (no input.joint)")
    dataset = Dataset.open(inp_cfg.data_dir)
    records, _ = pipeline.select_records(dataset, inp_cfg)
    labels, _ = pipeline.remap_labels(records.label)
    embed_fn = make_embed_fn(backbone, params, batch_stats, mesh, train=bn_mode == "train")
    emb = embed_records(
        embed_fn,
        dataset,
        list(records.key),
        batch_size,
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
