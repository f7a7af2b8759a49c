"""TOPLight train-step throughput: dual-path steps against the single-path MobileNetV3 step.

  python launch/benchmark_toplight.py [--batch_size=72] [--image_size=288,144]
      [--width_mult=1.0] [--steps=3] [--repeats=3] [--json=out.json] [--compile_cache=DIR]
  python launch/benchmark_toplight.py --flops [...]   # FLOPs per step only, no compilation

Three steps at the same batch of B images, each the core's jitted train step
(`hfrjax.train.step.make_train_step`, AdamW) on random uint8 images:
* ``single``: MobileNetV3-Large, one path, L_id + 0.5 L_tri (the VI loss) on B images;
* ``vi``: the souped network (two stems, Block2-7 shared) with FDR after Block4, the VI step
  of ``toplight_vi`` (`task.vi_loss_terms`): B/2 visible images through Block1-1, B/2 infrared
  through Block1-2;
* ``top``: the TOP network (Block1-4 per path) with Eq. 4 (`task.top_loss_terms`): B source
  images, each through *both* paths (colour and texture copies), so 2B images pass Block1-7.
All steps are compiled first, then timed in turns (round robin, --repeats turns of --steps
steps), so that load changes on a shared machine hit every kind alike. Reported: seconds per
step (median and min over the turns), images/s (B / median step time; for ``top`` also the 2B
path-images/s) and the ratio to ``single``.
"""

from __future__ import annotations

import json
import platform
import statistics
import time

from absl import app, flags

_BATCH = flags.DEFINE_integer("batch_size", 72, "images per step (even)")
_SIZE = flags.DEFINE_list("image_size", ["288", "144"], "height,width")
_WIDTH = flags.DEFINE_float("width_mult", 1.0, "MobileNetV3 width multiplier")
_CLASSES = flags.DEFINE_integer("num_classes", 395, "identities (SYSU-MM01's 395)")
_STEPS = flags.DEFINE_integer("steps", 3, "timed steps per repeat")
_REPEATS = flags.DEFINE_integer("repeats", 3, "turns (the median is reported)")
_WARMUP = flags.DEFINE_integer("warmup", 1, "untimed steps after compilation")
_KINDS = flags.DEFINE_list("kinds", ["single", "vi", "top"], "steps to time")
_JSON = flags.DEFINE_string("json", "", "write results here")
_CACHE = flags.DEFINE_string("compile_cache", "", "JAX persistent compilation cache directory")
_FLOPS = flags.DEFINE_bool("flops", False, "only print each step's FLOPs (XLA cost analysis of "
                           "the lowered step; no compilation, no timing)")


def _build(kind: str, batch: int, size: tuple[int, int], width: float, classes: int):
    """(step spec, state, batch) of one kind."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from hfrjax.losses import batch_hard_triplet_loss
    from hfrjax.models.mobilenetv3 import mobilenetv3_large
    from hfrjax.recipes.toplight import network, task
    from hfrjax.train import state as state_lib
    from hfrjax.train.task import Optimizer, Step

    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, *size, 3), np.uint8)  # noqa: E731
    labels = lambda n: np.repeat(np.arange(n // 4), 4)[:n].astype(np.int32) % classes  # noqa: E731
    opt = Optimizer(("network", "classifier"), optax.adamw(1e-3, weight_decay=1e-2))
    key = jax.random.key(0)
    if kind == "single":
        model = mobilenetv3_large(width_mult=width, input_size=size)
        variables = jax.jit(lambda k: model.init(k, jnp.zeros((2, *size, 3)), train=False))(key)
        dim = variables["params"]["head"]["neck_bn"]["scale"].shape[-1]

        def loss_fn(params, ms, extra, batches, r):
            b = batches["train"]
            (out, inter), new_ms = task.apply_network(
                model, params["network"], ms, b["image"], True, r, return_intermediates=True
            )
            logits = out @ params["classifier"]["weight"].T
            l_id = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, b["label"]))
            l_tri = batch_hard_triplet_loss(inter["pre_neck"], b["label"], margin=0.3)
            return l_id + 0.5 * l_tri, ({}, new_ms, extra)

        data = {"image": images(batch), "label": labels(batch)}
    elif kind == "vi":
        model, _ = task.build_network(_Cfg(width, size), private_blocks=1, fdr=True)
        variables = network.init_variables(model, 0)
        dim = variables["params"]["head"]["neck_bn"]["scale"].shape[-1]
        lab = labels(batch // 2)
        data = {"vis_image": images(batch // 2), "vis_label": lab,
                "ir_image": images(batch // 2), "ir_label": lab}

        def loss_fn(params, ms, extra, batches, r):
            loss, _, new_ms = task.vi_loss_terms(
                model, params, ms, batches["train"], task.ViLossConfig(), r
            )
            return loss, ({}, new_ms, extra)
    else:
        model, _ = task.build_network(_Cfg(width, size), private_blocks=4)
        variables = network.init_variables(model, 0)
        dim = variables["params"]["block7"]["pre_logits"]["kernel"].shape[-1]
        from hfrjax.losses.domain_conflict import LogisticDomainClassifier
        from hfrjax.models.mobilenetv3 import mobilenetv3_large_blocks

        c4 = mobilenetv3_large_blocks(width)[3].out_channels
        clf = LogisticDomainClassifier()
        data = {"colour": images(batch), "texture": images(batch), "label": labels(batch)}

        def loss_fn(params, ms, extra, batches, r):
            loss, _, new_ms = task.top_loss_terms(
                model, params, ms, batches["train"], task.TopLossConfig(), r
            )
            return loss, ({}, new_ms, extra)

        opt = Optimizer(("network", "classifier", "domain"), opt.tx)
    params = {"network": variables["params"],
              "classifier": {"weight": 0.01 * jax.random.normal(key, (classes, dim))}}
    if kind == "top":
        params["classifier"] = {"shared": {**params["classifier"], "bias": jnp.zeros(classes)}}
        params["domain"] = {"mid": clf.init(key, jnp.zeros((1, c4)))["params"],
                            "final": clf.init(key, jnp.zeros((1, dim)))["params"]}
    state = state_lib.create_state(
        params, {"batch_stats": variables["batch_stats"]}, {"main": opt}, key, {}
    )
    return Step(loss_fn, ("train",), ("main",)), {"main": opt}, state, data


class _Cfg:
    """The few config fields `task.build_network` reads."""

    def __init__(self, width, size):
        from hfrjax.recipes.toplight.task import NetworkConfig

        self.network = NetworkConfig(width_mult=width)
        self.compute_dtype = "float32"
        self.input = type("I", (), {"image_size": tuple(size), "channels": 3})()


def compile_step(kind: str, batch: int, size, width: float, classes: int) -> dict:
    """Builds and compiles one kind's train step (its first call); returns the run record."""
    import jax

    from hfrjax.data.pipeline import to_global
    from hfrjax.train import mesh as mesh_lib
    from hfrjax.train.step import make_train_step

    mesh = mesh_lib.make_mesh()
    spec, opts, state, data = _build(kind, batch, size, width, classes)
    fn = make_train_step(spec, opts, mesh)
    batches = {"train": to_global(data, mesh)}
    t = time.perf_counter()
    state, m = fn(state, batches)
    jax.block_until_ready(m)
    return {"kind": kind, "fn": fn, "state": state, "batches": batches,
            "compile_s": time.perf_counter() - t, "times": [], "loss": None}


def step_flops(kind: str, batch: int, size, width: float, classes: int) -> float:
    """FLOPs of one kind's train step: XLA's cost analysis of the lowered (uncompiled) HLO."""
    from hfrjax.data.pipeline import to_global
    from hfrjax.train import mesh as mesh_lib
    from hfrjax.train.step import make_train_step

    mesh = mesh_lib.make_mesh()
    spec, opts, state, data = _build(kind, batch, size, width, classes)
    lowered = make_train_step(spec, opts, mesh).lower(state, {"train": to_global(data, mesh)})
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def time_in_turns(runs: list[dict], warmup: int, repeats: int, steps: int) -> None:
    """Times every run's step round robin, so a change in the machine's load during the
    benchmark hits every kind alike (a shared CPU's load moves by several x in minutes)."""
    import jax

    for r in runs:
        for _ in range(warmup):
            r["state"], m = r["fn"](r["state"], r["batches"])
            jax.block_until_ready(m)
    for _ in range(repeats):
        for r in runs:
            t = time.perf_counter()
            for _ in range(steps):
                r["state"], m = r["fn"](r["state"], r["batches"])
            jax.block_until_ready(m)
            r["times"].append((time.perf_counter() - t) / steps)
            r["loss"] = float(m["loss"])


def main(argv):
    del argv
    import jax

    if _CACHE.value:
        jax.config.update("jax_compilation_cache_dir", _CACHE.value)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    size = tuple(int(x) for x in _SIZE.value)
    batch = _BATCH.value
    if batch % 4:
        raise app.UsageError("--batch_size must be a multiple of 4")
    if _FLOPS.value:
        flops = {k: step_flops(k, batch, size, _WIDTH.value, _CLASSES.value) for k in _KINDS.value}
        base = flops.get("single")
        print(f"batch {batch}, {size[0]}x{size[1]}, width {_WIDTH.value}: GFLOP per train step")
        for kind, f in flops.items():
            print(f"  {kind}: {f / 1e9:.2f}" + (f" ({f / base:.2f}x single)" if base else ""))
        return
    runs = []
    for kind in _KINDS.value:
        runs.append(compile_step(kind, batch, size, _WIDTH.value, _CLASSES.value))
        print(f"compiled {kind} in {runs[-1]['compile_s']:.1f} s", flush=True)
    time_in_turns(runs, _WARMUP.value, _REPEATS.value, _STEPS.value)
    rows = []
    for r in runs:
        sec = statistics.median(r["times"])
        row = {"kind": r["kind"], "batch": batch, "step_s": sec, "min_step_s": min(r["times"]),
               "images_per_s": batch / sec, "compile_s": r["compile_s"], "loss": r["loss"]}
        if r["kind"] == "top":
            row["path_images_per_s"] = 2 * batch / sec
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["kind"] == "single"), None)
    print(f"\n{platform.processor() or platform.machine()}, {jax.device_count()} "
          f"{jax.default_backend()} device(s); batch {batch}, {size[0]}x{size[1]}, "
          f"width {_WIDTH.value}; median of {_REPEATS.value} turns of {_STEPS.value} steps\n")
    print("| step | s/step (median) | s/step (min) | images/s | vs single |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['images_per_s'] / base['images_per_s']:.2f}x" if base else "-"
        extra = f" ({r['path_images_per_s']:.1f} path-images/s)" if "path_images_per_s" in r else ""
        print(f"| {r['kind']} | {r['step_s']:.3f} | {r['min_step_s']:.3f} | "
              f"{r['images_per_s']:.1f}{extra} | {ratio} |")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"rows": rows, "image_size": size, "width_mult": _WIDTH.value}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
