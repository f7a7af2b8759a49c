"""Training throughput: images/s per backbone and batch size, JAX vs PyTorch on one machine.

  python launch/benchmark_train.py --models=ir18,ir50 --batch_sizes=32 [--dtype=bfloat16]
      [--steps=5] [--json=out.json]

Each JAX step is the library's real train step (hfrjax.train.step.make_train_step: backbone,
normalised classifier with a CosFace margin over --num_classes classes, SGD with momentum and
weight decay). When torch is importable the same architecture (hfrjax.models.torch_reference)
runs the same computation in PyTorch in the same process: cosine classifier, margin
cross-entropy, SGD; on a GPU with --dtype=bfloat16 it uses AMP and channels-last. The figure of
merit is the step-time ratio JAX / PyTorch (issue target: <= 1.2 on CPU). Steps are timed one
at a time after warm-up (block_until_ready / synchronize), best of --repeats.
"""

from __future__ import annotations

import json
import os
import platform
import time

from absl import app, flags

_MODELS = flags.DEFINE_list(
    "models",
    ["ir18", "ir50"],
    "backbones (registry names, or "
    "'small' = iresnet [1,1,1,1] width 16 at 32x32 as in the quickstart)",
)
_BATCH = flags.DEFINE_list("batch_sizes", ["32"], "batch sizes")
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps per repeat")
_REPEATS = flags.DEFINE_integer("repeats", 2, "repeats (best is reported)")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed steps after compilation")
_CLASSES = flags.DEFINE_integer("num_classes", 1000, "classifier size")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype")
_TORCH = flags.DEFINE_bool("torch", True, "also run PyTorch when importable")
_JSON = flags.DEFINE_string("json", "", "write results here")

SMALL = dict(
    name="iresnet",
    kwargs=dict(layers=[1, 1, 1, 1], base_width=16, embedding_dim=128, input_size=32),
)


def _model_cfg(name: str) -> dict:
    return SMALL if name == "small" else dict(name=name, kwargs={})


def _time_steps(step_once, sync, steps: int, repeats: int, warmup: int) -> float:
    """Best seconds per step."""
    for _ in range(warmup):
        sync(step_once())
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            sync(step_once())
        best = min(best, (time.perf_counter() - t) / steps)
    return best


def bench_jax(model_name: str, batch: int) -> dict:
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
    sec = _time_steps(once, jax.block_until_ready, _STEPS.value, _REPEATS.value, _WARMUP.value)
    return {
        "jax_step_s": sec,
        "jax_images_per_s": batch / sec,
        "jax_compile_s": compile_s,
        "backbone_params": state_lib.count_params(params),
        "input_size": size,
        "device": str(jax.devices()[0].device_kind),
    }


def bench_torch(model_name: str, batch: int) -> dict | None:
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
        torch.set_num_threads(os.cpu_count() or 1)
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
    sec = _time_steps(once, sync, _STEPS.value, _REPEATS.value, _WARMUP.value)
    return {
        "torch_step_s": sec,
        "torch_images_per_s": batch / sec,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv):
    del argv
    rows = []
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
    )
    for name in _MODELS.value:
        for batch in map(int, _BATCH.value):
            row = {"model": name, "batch": batch, "dtype": _DTYPE.value}
            row.update(bench_jax(name, batch))
            if _TORCH.value:
                t = bench_torch(name, batch)
                if t:
                    row.update(t)
                    row["jax_over_torch_step_time"] = row["jax_step_s"] / row["torch_step_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nmachine: {machine}; device: {rows[0]['device'] if rows else '?'}")
    print("| model | batch | dtype | JAX img/s | PyTorch img/s | JAX/PyTorch step time |")
    print("|---|---:|---|---:|---:|---:|")
    for r in rows:
        tor = f"{r['torch_images_per_s']:.1f}" if "torch_images_per_s" in r else "–"
        ratio = f"{r['jax_over_torch_step_time']:.2f}" if "jax_over_torch_step_time" in r else "–"
        print(
            f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['jax_images_per_s']:.1f} | "
            f"{tor} | {ratio} |"
        )
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
