"""Training throughput: images/s per backbone and batch size, JAX vs PyTorch on one machine.

  python launch/benchmark_train.py --models=ir18,ir50 --batch_sizes=32 [--dtype=bfloat16]
      [--steps=2] [--rounds=3] [--xla_flags="--xla_cpu_use_onednn=true"] [--json=out.json]

Each JAX step is the library's real train step (hfrjax.train.step.make_train_step: backbone,
normalised classifier with a CosFace margin over --num_classes classes, SGD with momentum and
weight decay). When torch is importable the same architecture (hfrjax.models.torch_reference)
runs the same computation in PyTorch in the same process: cosine classifier, margin
cross-entropy, SGD; on a GPU with --dtype=bfloat16 it uses AMP and channels-last. The figure of
merit is the step-time ratio JAX / PyTorch (issue target: <= 1.2 on CPU).

Both models are built first; then, after warm-up, JAX and PyTorch are timed in alternating
rounds of --steps steps each (block_until_ready / synchronize), so that a machine whose load
changes during the run slows both sides alike. ``--in_turn`` times JAX first and frees it
before building PyTorch, for sizes where the two do not fit in memory together (use it on an
idle machine: the rounds no longer alternate). Each side's best round gives its step time; the
median round is reported too. ``--xla_flags`` is appended to XLA_FLAGS before jax is imported,
to compare XLA:CPU options in the same conditions (e.g. ``--xla_cpu_use_onednn=true``).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

from absl import app, flags

_MODELS = flags.DEFINE_list(
    "models",
    ["ir18", "ir50"],
    "backbones (registry names, or "
    "'small' = iresnet [1,1,1,1] width 16 at 32x32 as in the quickstart)",
)
_BATCH = flags.DEFINE_list("batch_sizes", ["32"], "batch sizes")
_STEPS = flags.DEFINE_integer("steps", 2, "timed steps per round")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "alternating JAX / PyTorch rounds (best is reported)")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed steps after compilation")
_CLASSES = flags.DEFINE_integer("num_classes", 1000, "classifier size")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype")
_TORCH = flags.DEFINE_bool("torch", True, "also run PyTorch when importable")
_JSON = flags.DEFINE_string("json", "", "write results here")
_IN_TURN = flags.DEFINE_bool(
    "in_turn",
    False,
    "time JAX first and free it before building PyTorch (same process), for sizes where both "
    "do not fit in memory together (IR50 at batch 128 in 24 GiB); rounds no longer alternate",
)
_XLA_FLAGS = flags.DEFINE_string(
    "xla_flags", "", "appended to XLA_FLAGS before jax is imported (XLA:CPU option attempts)"
)

SMALL = dict(
    name="iresnet",
    kwargs=dict(layers=[1, 1, 1, 1], base_width=16, embedding_dim=128, input_size=32),
)


def _cores() -> int:
    """Cores this process may run on (``taskset -c 0`` gives 1): XLA:CPU sizes its thread pool
    by them, and PyTorch gets as many threads."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _model_cfg(name: str) -> dict:
    return SMALL if name == "small" else dict(name=name, kwargs={})


def _peak_rss_gib() -> float:
    """The process's peak resident memory so far (Linux: ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _time_rounds(
    sides: dict, steps: int, rounds: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per step of each round, per side, as wall time and as the process's CPU time;
    sides = {name: (step_once, sync)}, run in alternating rounds after ``warmup`` untimed steps
    each. CPU time counts all threads (spinning ones too) but not time spent descheduled, so
    it is the steadier of the two on a loaded machine."""
    for step_once, sync in sides.values():
        for _ in range(warmup):
            sync(step_once())
    wall: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, (step_once, sync) in sides.items():
            t, c = time.perf_counter(), time.process_time()
            for _ in range(steps):
                sync(step_once())
            wall[name].append((time.perf_counter() - t) / steps)
            cpu[name].append((time.process_time() - c) / steps)
    return wall, cpu


def build_jax(model_name: str, batch: int) -> tuple[dict, tuple]:
    """The library's compiled train step on a fixed batch: (info, (step_once, sync))."""
    import jax
    import numpy as np
    import optax

    from hfrjax.losses import MarginConfig
    from hfrjax.train import mesh as mesh_lib
    from hfrjax.train import state as state_lib
    from hfrjax.train import step as step_lib

    mesh = mesh_lib.make_mesh()
    backbone = state_lib.build_backbone(_model_cfg(model_name), compute_dtype=_DTYPE.value)
    params, bs = state_lib.init_backbone(backbone, jax.random.key(0))
    dim = jax.eval_shape(
        lambda: backbone.apply(
            {"params": params, "batch_stats": bs}, state_lib.models.dummy_input(backbone)
        )
    ).shape[-1]
    from hfrjax.tasks.classification import classification_step
    from hfrjax.train.task import Optimizer

    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
    opts = {"main": Optimizer(("backbone", "head"), tx)}
    state = state_lib.create_state(
        {"backbone": params, "head": state_lib.init_head(jax.random.key(1), _CLASSES.value, dim)},
        {"batch_stats": bs},
        opts,
        jax.random.key(2),
    )
    state = jax.device_put(state, mesh_lib.replicated(mesh))
    train_step = step_lib.make_train_step(
        classification_step(backbone, MarginConfig(m2=0.0, m3=0.4)), opts, mesh
    )

    def step(state, batch):
        return train_step(state, {"train": batch})

    size = backbone.input_size
    rng = np.random.default_rng(0)
    b = {
        "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, _CLASSES.value, batch).astype(np.int32),
    }
    b = {k: jax.device_put(v, mesh_lib.batch_sharding(mesh)) for k, v in b.items()}
    holder = {"state": state}

    def once():
        holder["state"], m = step(holder["state"], b)
        return m["loss"]

    t = time.perf_counter()
    jax.block_until_ready(once())
    compile_s = time.perf_counter() - t
    info = {
        "jax_compile_s": compile_s,
        "backbone_params": state_lib.count_params(params),
        "input_size": size,
        "device": str(jax.devices()[0].device_kind),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    return info, (once, jax.block_until_ready)


def build_torch(model_name: str, batch: int) -> tuple[dict, tuple] | None:
    """The same architecture and computation in PyTorch: (info, (step_once, sync)), or None
    when torch (or a reference for the model) is missing."""
    try:
        import torch
        import torch.nn.functional as F

        from hfrjax.models import torch_reference as tr
    except ImportError:
        return None
    cfg = _model_cfg(model_name)
    from hfrjax.models import IRESNET_LAYERS

    if cfg["name"] == "iresnet":
        k = cfg["kwargs"]
        model = tr.TorchIResNet(k["layers"], k["base_width"], k["embedding_dim"], k["input_size"])
        size = k["input_size"]
    elif cfg["name"].startswith("ir"):
        model = tr.TorchIResNet(IRESNET_LAYERS[int(cfg["name"][2:])])
        size = 112
    elif cfg["name"] == "mobilefacenet":
        model, size = tr.TorchMobileFaceNet(), 112
    else:
        return None
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(_cores())  # As many threads as XLA:CPU uses (the usable cores).
    model = model.to(dev)
    dim = model.features.num_features
    head = torch.nn.Parameter(0.01 * torch.randn(_CLASSES.value, dim, device=dev))
    opt = torch.optim.SGD(
        list(model.parameters()) + [head], lr=0.1, momentum=0.9, weight_decay=5e-4
    )
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=dev)
    y = torch.randint(0, _CLASSES.value, (batch,), device=dev)
    amp = _DTYPE.value == "bfloat16"
    if cuda and amp:
        model = model.to(memory_format=torch.channels_last)

    def once():
        xf = (x.float() - 127.5) / 127.5
        if cuda and amp:
            xf = xf.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            emb = model(xf)
        cos = F.linear(F.normalize(emb.float()), F.normalize(head))
        logits = 64.0 * (cos - 0.4 * F.one_hot(y, _CLASSES.value))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    sync = (lambda _: torch.cuda.synchronize()) if cuda else (lambda loss: loss.item())
    info = {"torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}
    return info, (once, sync)


def bench(model_name: str, batch: int) -> dict:
    """One row: both sides built, then timed in alternating rounds."""
    import statistics

    row = {"model": model_name, "batch": batch, "dtype": _DTYPE.value, "in_turn": _IN_TURN.value}
    info, jax_side = build_jax(model_name, batch)
    row.update(info)
    sides = {"jax": jax_side}
    times, cpu = {}, {}
    if _IN_TURN.value:  # JAX alone, then its buffers are freed before PyTorch is built.
        times, cpu = _time_rounds(sides, _STEPS.value, _ROUNDS.value, _WARMUP.value)
        row["peak_rss_gib_after_jax"] = _peak_rss_gib()
        del sides["jax"], jax_side
        import gc

        import jax

        gc.collect()
        jax.clear_caches()
    if _TORCH.value:
        built = build_torch(model_name, batch)
        if built is not None:
            row.update(built[0])
            sides["torch"] = built[1]
    more_times, more_cpu = _time_rounds(sides, _STEPS.value, _ROUNDS.value, _WARMUP.value)
    times.update(more_times)
    cpu.update(more_cpu)
    row["peak_rss_gib"] = _peak_rss_gib()
    for name, ts in times.items():
        row[f"{name}_step_s"] = min(ts)
        row[f"{name}_step_s_median"] = statistics.median(ts)
        row[f"{name}_step_s_rounds"] = ts
        row[f"{name}_cpu_s_rounds"] = cpu[name]
        row[f"{name}_images_per_s"] = batch / min(ts)
    if "torch" in times:
        row["jax_over_torch_step_time"] = row["jax_step_s"] / row["torch_step_s"]
        row["jax_over_torch_step_time_median"] = (
            row["jax_step_s_median"] / row["torch_step_s_median"]
        )
        row["jax_over_torch_cpu_time"] = min(cpu["jax"]) / min(cpu["torch"])
    return row


def main(argv):
    del argv
    if _XLA_FLAGS.value:
        if "jax" in sys.modules:
            raise RuntimeError("--xla_flags must be applied before jax is imported")
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_XLA_FLAGS.value}".strip()
    rows = []
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores ({_cores()} used), "
        f"Python {platform.python_version()}"
    )
    for name in _MODELS.value:
        for batch in map(int, _BATCH.value):
            row = bench(name, batch)
            rows.append(row)
            print(json.dumps(row), flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nmachine: {machine}; device: {rows[0]['device'] if rows else '?'}")
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load average at the end {load:.1f}")
    print(
        "| model | batch | dtype | JAX img/s | PyTorch img/s | JAX/PyTorch step time "
        "(best) | (median) | CPU time |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        tor = f"{r['torch_images_per_s']:.1f}" if "torch_images_per_s" in r else "–"
        ratio = f"{r['jax_over_torch_step_time']:.2f}" if "jax_over_torch_step_time" in r else "–"
        med = (
            f"{r['jax_over_torch_step_time_median']:.2f}"
            if "jax_over_torch_step_time_median" in r
            else "–"
        )
        cpu = f"{r['jax_over_torch_cpu_time']:.2f}" if "jax_over_torch_cpu_time" in r else "–"
        print(
            f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['jax_images_per_s']:.1f} | "
            f"{tor} | {ratio} | {med} | {cpu} |"
        )
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
