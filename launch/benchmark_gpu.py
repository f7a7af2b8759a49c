"""GPU benchmark in one call: IR50 training throughput against PyTorch, MFU, the class-sharded
and Partial FC classifier steps at 1M and 10M classes, and evaluation pairs/s at 100k x 100k.

  PYTHONPATH=. python3 launch/benchmark_gpu.py --out=/tmp/benchmark_gpu.json   # <= 8 min
  PYTHONPATH=. python3 launch/benchmark_gpu.py --smoke --out=/tmp/smoke.json   # CPU

Needs only jax (CUDA), flax, optax, chex, numpy, PyTorch with CUDA (for the comparison row)
and this repository's source, as the GPU machines have no network. It imports
``hfrjax.models`` and ``hfrjax.losses`` (only jax/flax/optax/chex/numpy underneath) and loads
``hfrjax/eval/metrics.py`` by path: the ``hfrjax.eval`` package imports the input pipeline.

Sections run in this order under one wall-clock budget (--budget_s, default 450 s; each gets
its cap or what is left), each in its own subprocess, so an out-of-memory error or a hang
loses one row, JAX and PyTorch never share the GPU, and each peak memory is the section's own
(``--smoke`` runs them in one process unless ``--isolate``):

* ``ir50_jax``: the IR50 train step (arcface_torch IResNet-50, 112x112, bf16 compute,
  float32 parameters), batch 256, dense normalised classifier over 10,000 classes, CosFace
  (s=64, m=0.4), SGD momentum 0.9 and weight decay 5e-4, state donated; images/s from the
  median of timed repeats. FLOPs per step from XLA's cost analysis of the compiled step (the
  lowered step's as a cross-check); MFU = FLOPs / step time / peak, against the GPU's
  datasheet dense bf16 peak (H100/H200 SXM: 989 TFLOP/s) and a bf16 8192^3 matmul timed here.
* ``ir50_torch``: the same computation in PyTorch (``hfrjax.models.torch_reference``): bf16
  autocast around the backbone, channels-last, float32 classifier (TF32 allowed, like XLA's
  default on GPU), SGD momentum with weight decay on every parameter; FLOPs counted by
  ``torch.utils.flop_counter`` to check XLA's count. Skipped when torch (or, in a full run,
  CUDA) is missing.
* ``eval``: ``score_blocks`` in histogram mode (2^20 bins, CMC ranks) of 100k probes x 100k
  gallery, 512-D, 10 images per identity: pairs/s of the scoring after a compiling warm-up,
  then the verification metrics from the histogram.
* ``classifier:C:scheme``, C in {1M, 10M}, scheme ``sharded`` or ``pfc``: the classifier step
  alone (features given, D=512, batch 256, ArcFace) -- `sharded_margin_softmax_loss`, or
  `partial_fc_loss` with r=0.1 and the masked update of the sampled rows -- on a one-device
  (data=1, model=1) mesh; gradients w.r.t. classifier and features, SGD momentum, classifier
  and momentum donated. The compiled step's ``memory_analysis()`` is checked against the
  device's memory first; step time is the median after warm-up.

Prints one Markdown table last and writes every number to --out (JSON, rewritten after each
section, so a killed run keeps what finished). ``--smoke``: every section at tiny sizes on the
CPU (JAX_PLATFORMS=cpu, torch on the CPU), for the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the project's source without installing it
    sys.path.insert(0, str(REPO))

# Datasheet dense bf16 peaks (TFLOP/s) by device-kind substring; first match wins.
DATASHEET_BF16_TFLOPS = (
    ("H200", 989.4),  # SXM; same processor as the H100 SXM
    ("H100 PCIe", 756.5),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run (full GPU run or CPU smoke run)."""

    layers: tuple[int, ...] = (3, 4, 14, 3)  # IR50
    width: int = 64
    embedding: int = 512
    image: int = 112
    batch: int = 256
    train_classes: int = 10_000
    warmup: int = 3
    steps: int = 10  # per timed repeat
    repeats: int = 3
    matmul: int = 8192
    classes: tuple[int, ...] = (1_000_000, 10_000_000)
    dim: int = 512
    cls_batch: int = 256
    sample_rate: float = 0.1
    cls_steps: int = 10
    eval_n: int = 100_000
    eval_dim: int = 512
    eval_block: int = 4096
    eval_bins: int = 1 << 20


FULL = Sizes()
# fmt: off
SMOKE = Sizes(
    layers=(1, 1, 1, 1), width=8, embedding=32, image=16, batch=8, train_classes=64, warmup=1,
    steps=2, repeats=2, matmul=128, classes=(2_000, 20_000), dim=16, cls_batch=8, cls_steps=2,
    eval_n=600, eval_dim=16, eval_block=128, eval_bins=1 << 12,
)
# fmt: on

# Wall-clock cap of each section kind (seconds); the budget left caps it further.
CAPS = {"ir50_jax": 210.0, "ir50_torch": 90.0, "eval": 90.0, "classifier": 60.0}
MARGIN_COSFACE = dict(s=64.0, m1=1.0, m2=0.0, m3=0.4)
MARGIN_ARCFACE = dict(s=64.0, m1=1.0, m2=0.5, m3=0.0)
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


class Skipped(Exception):
    """A section that cannot run here (e.g. torch missing); not a failure."""


def section_names(sizes: Sizes) -> list[str]:
    names = ["ir50_jax", "ir50_torch", "eval"]
    for c in sizes.classes:
        names += [f"classifier:{c}:sharded", f"classifier:{c}:pfc"]
    return names


# ---------------------------------------------------------------------------------------------
# Timing helpers.


def time_repeats(run_steps, sync, sizes: Sizes, deadline: float) -> dict:
    """Median and min seconds per step over ``repeats`` of ``steps`` steps (one sync per
    repeat, so dispatch overlaps with compute as in training), after ``warmup`` steps.
    Stops early (at least one repeat) when ``deadline`` (time.time()) is near."""
    sync(run_steps(sizes.warmup))
    per_step = []
    for _ in range(sizes.repeats):
        t = time.perf_counter()
        sync(run_steps(sizes.steps))
        per_step.append((time.perf_counter() - t) / sizes.steps)
        if time.time() + 2 * sizes.steps * per_step[-1] > deadline:
            break
    return {
        "step_s": statistics.median(per_step),
        "step_min_s": min(per_step),
        "repeats": len(per_step),
        "steps_per_repeat": sizes.steps,
    }


def datasheet_peak(device_kind: str) -> float | None:
    for key, tflops in DATASHEET_BF16_TFLOPS:
        if key.lower() in device_kind.lower():
            return tflops * 1e12
    return None


def _cost_flops(cost) -> float | None:
    """'flops' of a jax cost analysis (a dict, or a list of one dict in older releases)."""
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def _memory(compiled) -> dict:
    mem = compiled.memory_analysis()
    out = {
        k: int(getattr(mem, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")
    }
    out["peak_estimate"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def _device_memory(device) -> dict:
    stats = device.memory_stats() or {}
    return {k: int(stats[k]) for k in ("peak_bytes_in_use", "bytes_limit") if k in stats}


def _jax_environment() -> dict:
    import jax

    dev = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
    }


# ---------------------------------------------------------------------------------------------
# Section: IR50 train step in JAX, MFU.


def measure_matmul_tflops(n: int, deadline: float) -> float:
    """bf16 [n, n] x [n, n] rate in FLOP/s (float32 accumulation), on random data."""
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(7))
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    mm = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(a.dtype))
    mm(a, b).block_until_ready()
    reps, best = 10, float("inf")
    for _ in range(3):
        t = time.perf_counter()
        out = None
        for _ in range(reps):
            out = mm(a, b)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - t) / reps)
        if time.time() > deadline:
            break
    return 2.0 * n**3 / best


def run_ir50_jax(sizes: Sizes, deadline: float) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from hfrjax.losses.margin import margin_softmax_loss
    from hfrjax.models.iresnet import IResNet

    out = {"environment": _jax_environment(), "batch": sizes.batch}
    model = IResNet(
        layers=sizes.layers,
        base_width=sizes.width,
        embedding_dim=sizes.embedding,
        input_size=sizes.image,
        dtype=jnp.bfloat16,
    )
    tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LR, momentum=MOMENTUM))

    def init(key):  # one jitted program: op-by-op initialisation compiles every op on its own
        k_model, k_head, k_x, k_y = jax.random.split(key, 4)
        dummy = jnp.zeros((1, sizes.image, sizes.image, 3), jnp.float32)
        variables = model.init(k_model, dummy, train=False)
        head = 0.01 * jax.random.normal(k_head, (sizes.train_classes, sizes.embedding))
        params = {"backbone": variables["params"], "head": head}
        shape = (sizes.batch, sizes.image, sizes.image, 3)
        images = jax.random.randint(k_x, shape, 0, 256, jnp.int32).astype(jnp.uint8)
        labels = jax.random.randint(k_y, (sizes.batch,), 0, sizes.train_classes, jnp.int32)
        return (params, variables["batch_stats"], tx.init(params)), images, labels

    # RngBitGenerator keys: threefry in every initialiser makes this program slow to compile.
    state, images, labels = jax.jit(init)(jax.random.key(0, impl="rbg"))
    out["backbone_params"] = int(
        sum(np.prod(x.shape) for x in jax.tree.leaves(state[0]["backbone"]))
    )

    def step(state, images, labels):
        params, batch_stats, opt_state = state

        def loss_fn(p):
            x = (images.astype(jnp.float32) - 127.5) / 127.5
            emb, new = model.apply(
                {"params": p["backbone"], "batch_stats": batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            return margin_softmax_loss(emb, p["head"], labels, **MARGIN_COSFACE), new

        (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new["batch_stats"], opt_state), loss

    t = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=0).lower(state, images, labels)
    compiled = lowered.compile()
    out["compile_s"] = time.perf_counter() - t
    out["flops_compiled"] = _cost_flops(compiled.cost_analysis())
    out["flops_lowered"] = _cost_flops(lowered.cost_analysis())
    out["memory"] = _memory(compiled)

    holder = {"state": state, "losses": []}

    def run_steps(n):
        loss = None
        for _ in range(n):
            holder["state"], loss = compiled(holder["state"], images, labels)
        holder["losses"].append(loss)
        return loss

    out.update(time_repeats(run_steps, jax.block_until_ready, sizes, deadline))
    losses = [float(x) for x in holder["losses"]]
    out["loss_first"], out["loss_last"] = losses[0], losses[-1]
    if not all(np.isfinite(losses)):
        raise FloatingPointError(f"non-finite training loss: {losses}")
    out["images_per_s"] = sizes.batch / out["step_s"]
    out["device_memory"] = _device_memory(jax.devices()[0])

    flops = out["flops_compiled"] or out["flops_lowered"]
    out["flops_source"] = "compiled" if out["flops_compiled"] else "lowered"
    out["model_flops_per_s"] = flops / out["step_s"] if flops else None
    peak = datasheet_peak(out["environment"]["device_kind"])
    out["peak_datasheet_flops"] = peak
    out["mfu_datasheet"] = out["model_flops_per_s"] / peak if peak and flops else None
    out["matmul_flops_per_s"] = measure_matmul_tflops(sizes.matmul, deadline)
    if flops:
        out["mfu_measured_matmul"] = out["model_flops_per_s"] / out["matmul_flops_per_s"]
    return out


# ---------------------------------------------------------------------------------------------
# Section: the same step in PyTorch.


def run_ir50_torch(sizes: Sizes, deadline: float, smoke: bool) -> dict:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as err:
        raise Skipped(f"torch is not installed ({err})") from None
    from hfrjax.models import torch_reference as tr

    cuda = torch.cuda.is_available() and not smoke
    if not cuda and not smoke:
        raise Skipped("torch has no CUDA device; a CPU IR50 step at this batch would not fit")
    dev = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    if cuda:  # TF32 for the float32 classifier, as XLA's default f32 dot precision on GPU
        torch.set_float32_matmul_precision("high")
    model = tr.TorchIResNet(list(sizes.layers), sizes.width, sizes.embedding, sizes.image)
    model = model.to(dev).to(memory_format=torch.channels_last)
    head = torch.nn.Parameter(0.01 * torch.randn(sizes.train_classes, sizes.embedding, device=dev))
    opt = torch.optim.SGD(
        list(model.parameters()) + [head], lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    x = torch.randint(0, 256, (sizes.batch, 3, sizes.image, sizes.image), dtype=torch.uint8)
    x = x.to(dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, sizes.train_classes, (sizes.batch,), device=dev)
    m = MARGIN_COSFACE

    def one_step():
        xf = ((x.float() - 127.5) / 127.5).contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            emb = model(xf)
        cos = F.linear(F.normalize(emb.float()), F.normalize(head))
        logits = m["s"] * (cos - m["m3"] * F.one_hot(y, sizes.train_classes))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    losses = []

    def run_steps(n):
        loss = None
        for _ in range(n):
            loss = one_step()
        losses.append(loss.detach())
        return loss

    def sync(loss):
        if cuda:
            torch.cuda.synchronize()
        return loss

    out = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "backbone_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "batch": sizes.batch,
    }
    out.update(time_repeats(run_steps, sync, sizes, deadline))
    vals = [float(v) for v in losses]
    out["loss_first"], out["loss_last"] = vals[0], vals[-1]
    out["images_per_s"] = sizes.batch / out["step_s"]
    try:  # Independent FLOP count of one step (forward + backward).
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            one_step()
        out["flops_flop_counter"] = float(counter.get_total_flops())
    except Exception as err:  # a counting failure must not lose the timing
        out["flops_flop_counter_error"] = f"{type(err).__name__}: {err}"
    if cuda:
        out["device_memory"] = {"peak_bytes_in_use": int(torch.cuda.max_memory_allocated())}
    return out


# ---------------------------------------------------------------------------------------------
# Section: evaluation pairs/s.


def load_metrics_module():
    """``hfrjax/eval/metrics.py`` without the ``hfrjax.eval`` package (whose __init__ imports
    the protocols and through them the input pipeline's dependencies)."""
    name = "_hfrjax_eval_metrics_standalone"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "hfrjax" / "eval" / "metrics.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def run_eval(sizes: Sizes, deadline: float) -> dict:
    import jax
    import numpy as np

    metrics = load_metrics_module()
    n, dim = sizes.eval_n, sizes.eval_dim

    def embeddings(seed):
        rng = np.random.default_rng(seed)
        labels = np.arange(n) // 10
        centres = rng.standard_normal((labels.max() + 1, dim), np.float32)
        return centres[labels] + 1.5 * rng.standard_normal((n, dim), np.float32), labels

    (probe, pl), (gallery, gl) = embeddings(0), embeddings(1)
    kw = dict(retrieval=False, pair_scores="histogram", bins=sizes.eval_bins)
    t = time.perf_counter()
    metrics.score_blocks(
        probe[: sizes.eval_block], gallery, pl[: sizes.eval_block], gl, sizes.eval_block, **kw
    )
    warm = time.perf_counter() - t
    t = time.perf_counter()
    scores = metrics.score_blocks(probe, gallery, pl, gl, sizes.eval_block, **kw)
    score_s = time.perf_counter() - t
    t = time.perf_counter()
    ver = scores.verification_metrics((1e-6, 1e-4, 1e-2))
    metrics_s = time.perf_counter() - t
    if scores.num_genuine + scores.num_impostor != n * n:
        raise AssertionError(f"{scores.num_genuine + scores.num_impostor} pairs, expected {n * n}")
    return {
        "environment": _jax_environment(),
        "probes": n,
        "gallery": n,
        "dim": dim,
        "block_size": sizes.eval_block,
        "bins": sizes.eval_bins,
        "pairs": n * n,
        "warmup_s": warm,
        "score_s": score_s,
        "pairs_per_s": n * n / score_s,
        "metrics_s": metrics_s,
        "rank1": float(scores.cmc(1)[0]),
        "verification": ver,
        "device_memory": _device_memory(jax.devices()[0]),
    }


# ---------------------------------------------------------------------------------------------
# Section: class-sharded / Partial FC classifier step.


def build_classifier_step(sizes: Sizes, num_classes: int, scheme: str, device):
    """The compiled classifier step (weight, momentum, features, labels, key) -> (weight,
    momentum, loss, d loss / d features), and its shardings on a one-device mesh."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    from hfrjax.losses.sharded import (
        masked_head_update,
        partial_fc_loss,
        sharded_margin_softmax_loss,
    )

    if scheme not in ("sharded", "pfc"):
        raise ValueError(f"classifier scheme must be 'sharded' or 'pfc', got {scheme!r}")
    mesh = jax.make_mesh(
        (1, 1), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto), devices=[device]
    )
    rows, batch_s, rep = (NamedSharding(mesh, s) for s in (P("model"), P("data"), P()))
    d, b = sizes.dim, sizes.cls_batch
    tx = optax.sgd(LR, momentum=MOMENTUM)

    def loss_fn(w, emb, labels, key):
        if scheme == "sharded":
            return sharded_margin_softmax_loss(emb, w, labels, mesh, **MARGIN_ARCFACE), None
        return partial_fc_loss(
            emb, w, labels, mesh, sample_rate=sizes.sample_rate, rng=key, **MARGIN_ARCFACE
        )

    def step(w, opt_state, emb, labels, key):
        (loss, mask), (g_w, g_emb) = jax.value_and_grad(loss_fn, (0, 1), has_aux=True)(
            w, emb, labels, key
        )
        updates, new_state = tx.update(g_w, opt_state, w)
        new_w = optax.apply_updates(w, updates)
        if mask is not None:  # unsampled rows and their momentum stay bit-identical
            new_w, new_state = masked_head_update(w, new_w, opt_state, new_state, mask, ())
        return new_w, new_state, loss, g_emb

    def spec(shape, dtype, sharding):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    w_spec = spec((num_classes, d), jnp.float32, rows)
    state_spec = jax.tree.map(
        lambda a: spec(a.shape, a.dtype, rows), jax.eval_shape(tx.init, w_spec)
    )
    state_s = jax.tree.map(lambda _: rows, state_spec)
    args = (
        w_spec,
        state_spec,
        spec((b, d), jnp.float32, batch_s),
        spec((b,), jnp.int32, batch_s),
        jax.eval_shape(lambda: jax.random.key(0)),
    )
    compiled = (
        jax.jit(
            step,
            in_shardings=(rows, state_s, batch_s, batch_s, rep),
            out_shardings=(rows, state_s, rep, batch_s),
            donate_argnums=(0, 1),
        )
        .lower(*args)
        .compile()
    )
    return compiled, tx, rows, state_s, batch_s


def run_classifier(sizes: Sizes, deadline: float, num_classes: int, scheme: str) -> dict:
    import jax
    import numpy as np

    from hfrjax.losses.sharded import num_sampled_rows

    dev = jax.devices()[0]
    d, b = sizes.dim, sizes.cls_batch
    t = time.perf_counter()
    compiled, tx, rows, state_s, batch_s = build_classifier_step(sizes, num_classes, scheme, dev)
    out = {
        "environment": _jax_environment(),
        "scheme": scheme,
        "classes": num_classes,
        "dim": d,
        "batch": b,
        "sample_rate": sizes.sample_rate if scheme == "pfc" else 1.0,
        "sampled_rows": num_sampled_rows(num_classes, 1, sizes.sample_rate)
        if scheme == "pfc"
        else num_classes,
        "compile_s": time.perf_counter() - t,
        "memory": _memory(compiled),
    }
    limit = _device_memory(dev).get("bytes_limit")
    if limit and out["memory"]["peak_estimate"] > limit:
        raise MemoryError(
            f"compiled step needs ~{out['memory']['peak_estimate'] / 2**30:.1f} GiB, the device "
            f"allows {limit / 2**30:.1f} GiB"
        )

    normal = jax.jit(lambda k: jax.random.normal(k, (num_classes, d)), out_shardings=rows)
    w = normal(jax.random.key(0, impl="rbg"))  # RngBitGenerator: fast for 5e9 numbers
    opt_state = jax.jit(tx.init, out_shardings=state_s)(w)
    rng = np.random.default_rng(0)
    emb = jax.device_put(rng.standard_normal((b, d), np.float32), batch_s)
    labels = jax.device_put(rng.integers(0, num_classes, b).astype(np.int32), batch_s)
    holder = {"w": w, "state": opt_state, "i": 0, "losses": []}
    del w, opt_state

    def run_steps(n):
        loss = None
        for _ in range(n):
            holder["i"] += 1
            holder["w"], holder["state"], loss, _ = compiled(
                holder["w"], holder["state"], emb, labels, jax.random.key(holder["i"])
            )
        holder["losses"].append(loss)
        return loss

    cls_sizes = dataclasses.replace(sizes, steps=sizes.cls_steps, warmup=2, repeats=3)
    out.update(time_repeats(run_steps, jax.block_until_ready, cls_sizes, deadline))
    losses = [float(x) for x in holder["losses"]]
    if not all(np.isfinite(losses)):
        raise FloatingPointError(f"non-finite classifier loss: {losses}")
    out["loss_first"], out["loss_last"] = losses[0], losses[-1]
    out["device_memory"] = _device_memory(dev)
    return out


# ---------------------------------------------------------------------------------------------
# One section in this process (the child side).


def run_section(name: str, sizes: Sizes, deadline: float, smoke: bool) -> dict:
    if name == "ir50_jax":
        return run_ir50_jax(sizes, deadline)
    if name == "ir50_torch":
        return run_ir50_torch(sizes, deadline, smoke)
    if name == "eval":
        return run_eval(sizes, deadline)
    if name.startswith("classifier:"):
        _, c, scheme = name.split(":")
        return run_classifier(sizes, deadline, int(c), scheme)
    raise ValueError(f"unknown section {name!r}; known: {section_names(sizes)}")


def guarded(name: str, sizes: Sizes, deadline: float, smoke: bool) -> dict:
    """{'status': ok | skipped | error, 'result' | 'reason' | 'error', 'elapsed_s'}."""
    t = time.perf_counter()
    try:
        rec = {"status": "ok", "result": run_section(name, sizes, deadline, smoke)}
    except Skipped as why:
        rec = {"status": "skipped", "reason": str(why)}
    except Exception as err:  # one failing section must not lose the others
        rec = {
            "status": "error",
            "error": f"{type(err).__name__}: {err}"[:2000],
            "traceback": traceback.format_exc()[-4000:],
        }
    rec["elapsed_s"] = time.perf_counter() - t
    return rec


def child_env(smoke: bool) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if smoke:
        env["JAX_PLATFORMS"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:  # one section per process owns the GPU: let JAX use most of it (10M classes)
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
        env.setdefault("XLA_CLIENT_MEM_FRACTION", env["XLA_PYTHON_CLIENT_MEM_FRACTION"])
    return env


def run_in_subprocess(name: str, args, timeout: float, tmp: Path) -> dict:
    result_file = tmp / f"section_{name.replace(':', '_')}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--section={name}"]
    cmd += [f"--result={result_file}", f"--deadline={time.time() + timeout}"]
    cmd += ["--smoke"] if args.smoke else []
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=child_env(args.smoke), timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        return failure("timeout", f"killed after {timeout + 5:.0f} s", time.perf_counter() - t)
    if result_file.exists():
        return json.loads(result_file.read_text())
    why = f"exited with code {proc.returncode} and no result (crashed, e.g. out of memory)"
    return failure("error", why, time.perf_counter() - t)


def failure(status: str, error: str, elapsed_s: float) -> dict:
    return {"status": status, "error": error, "elapsed_s": elapsed_s}


# ---------------------------------------------------------------------------------------------
# Report.


def _gib(x) -> str:
    return "–" if x is None else f"{x / 2**30:.2f} GiB"


def _row_cells(name: str, rec: dict) -> tuple[str, str, str]:
    r = rec.get("result", {})
    if rec["status"] != "ok":
        why = rec.get("reason") or rec.get("error", "")
        return name, rec["status"], why.splitlines()[0][:160] if why else ""
    if name == "ir50_jax":
        env = r["environment"]
        return (
            f"IR50 train step, JAX bf16, batch {r['batch']}",
            f"{r['images_per_s']:,.1f} img/s",
            f"{1e3 * r['step_s']:.1f} ms/step (min {1e3 * r['step_min_s']:.1f}), compile "
            f"{r['compile_s']:.0f} s, {env['device_kind']}, jax {env['jax']}",
        )
    if name == "ir50_torch":
        return (
            f"IR50 train step, PyTorch AMP bf16 channels-last, batch {r['batch']}",
            f"{r['images_per_s']:,.1f} img/s",
            f"{1e3 * r['step_s']:.1f} ms/step (min {1e3 * r['step_min_s']:.1f}), torch "
            f"{r['torch']}, {r['device']}",
        )
    if name == "eval":
        return (
            f"Evaluation scoring {r['probes']:,} x {r['gallery']:,} (D={r['dim']}, histogram)",
            f"{r['pairs_per_s']:,.3g} pairs/s",
            f"{r['score_s']:.2f} s for {r['pairs']:.3g} pairs, block {r['block_size']}, "
            f"metrics {r['metrics_s']:.2f} s, device peak "
            f"{_gib(r['device_memory'].get('peak_bytes_in_use'))}",
        )
    if name.startswith("classifier:"):
        what = (
            "class-sharded softmax"
            if r["scheme"] == "sharded"
            else (f"Partial FC r={r['sample_rate']:g}")
        )
        return (
            f"Classifier step, C={r['classes']:,}, {what}, D={r['dim']}, batch {r['batch']}",
            f"{1e3 * r['step_s']:.2f} ms/step",
            f"compiled peak estimate {_gib(r['memory']['peak_estimate'])}, device peak "
            f"{_gib(r['device_memory'].get('peak_bytes_in_use'))}, compile {r['compile_s']:.1f} s",
        )
    return name, "ok", ""


def derived_rows(sections: dict) -> list[tuple[str, str, str]]:
    rows = []
    jx, th = sections.get("ir50_jax", {}), sections.get("ir50_torch", {})
    if jx.get("status") == "ok" and th.get("status") == "ok":
        j, t = jx["result"], th["result"]
        rows.append(
            (
                "JAX / PyTorch step time (same computation)",
                f"{j['step_s'] / t['step_s']:.2f}",
                "< 1 means JAX is faster",
            )
        )
    if jx.get("status") == "ok":
        j = jx["result"]
        if j.get("model_flops_per_s"):
            flops = j["flops_compiled"] or j["flops_lowered"]
            detail = (
                f"{flops / 1e12:.3g} TFLOP/step (XLA cost analysis, {j['flops_source']} step; "
                f"lowered {(j['flops_lowered'] or 0) / 1e12:.3g})"
            )
            if th.get("status") == "ok" and th["result"].get("flops_flop_counter"):
                detail += f"; torch flop counter {th['result']['flops_flop_counter'] / 1e12:.3g}"
            peak = j.get("peak_datasheet_flops")
            mfu = f"{100 * j['mfu_datasheet']:.1f} %" if j.get("mfu_datasheet") else "–"
            detail += (
                f"; peak used {peak / 1e12:.1f} TFLOP/s (datasheet dense bf16)"
                if peak
                else "; no datasheet peak for this device"
            )
            rows.append(("Model FLOPs utilisation (JAX IR50 step)", mfu, detail))
            rows.append(
                (
                    "  ... against the measured bf16 matmul rate",
                    f"{100 * j['mfu_measured_matmul']:.1f} %",
                    f"matmul {j['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s measured here",
                )
            )
    return rows


def table(report: dict) -> str:
    secs = report["sections"]
    rows = [_row_cells(n, secs[n]) for n in secs]
    ir_rows = [r for n, r in zip(secs, rows) if n.startswith("ir50")]
    rest = [r for n, r in zip(secs, rows) if not n.startswith("ir50")]
    lines = ["| benchmark | result | details |", "|---|---:|---|"]
    for a, b, c in ir_rows + derived_rows(secs) + rest:
        lines.append(f"| {a} | {b} | {c.replace('|', '/')} |")
    return "\n".join(lines)


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmark_gpu.json", help="JSON file to write")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--budget_s", type=float, help="total seconds (450; 300 with --smoke)")
    parser.add_argument("--sections", default="", help="comma-separated subset of sections")
    isolate_help = "one subprocess per section (default: yes, except with --smoke)"
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, help=isolate_help)
    parser.add_argument("--section", help=argparse.SUPPRESS)  # child: run this section
    parser.add_argument("--result", help=argparse.SUPPRESS)  # child: write its record here
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL

    if args.section:  # child process
        rec = guarded(args.section, sizes, args.deadline or time.time() + 600, args.smoke)
        write_json(Path(args.result), rec)
        return 0

    budget = args.budget_s if args.budget_s is not None else (300.0 if args.smoke else 450.0)
    isolate = (not args.smoke) if args.isolate is None else args.isolate
    if not isolate:  # before jax or torch is first imported, in this process
        env = child_env(args.smoke).items()
        os.environ.update({k: v for k, v in env if k.startswith(("JAX_", "CUDA_", "XLA_"))})
    start = time.time()
    names = section_names(sizes)
    if args.sections:
        wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in names]
        if unknown:
            parser.error(f"unknown section(s) {unknown}; known: {names}")
        names = [n for n in names if n in wanted]
    out = Path(args.out)
    if out.is_dir():
        out = out / "benchmark_gpu.json"
    report = {
        "mode": "smoke" if args.smoke else "full",
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": f"{platform.node()}, {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}",
        "budget_s": budget,
        "sizes": dataclasses.asdict(sizes),
        "sections": {},
    }
    tmp = out.parent / f".{out.name}.sections"
    tmp.mkdir(parents=True, exist_ok=True)
    for name in names:
        left = budget - (time.time() - start)
        cap = min(CAPS[name.split(":")[0]], left)
        if cap < 5:
            rec = failure("timeout", "total time budget spent before it started", 0.0)
        elif isolate:
            rec = run_in_subprocess(name, args, cap, tmp)
        else:
            rec = guarded(name, sizes, time.time() + cap, args.smoke)
        report["sections"][name] = rec
        report["elapsed_s"] = time.time() - start
        why = "" if rec["status"] == "ok" else f" -- {rec.get('error') or rec.get('reason')}"
        print(
            f"[benchmark_gpu] {name}: {rec['status']} in {rec['elapsed_s']:.1f} s{why}", flush=True
        )
        write_json(out, report)
    for f in tmp.glob("*.json"):
        f.unlink()
    tmp.rmdir()
    report["elapsed_s"] = time.time() - start
    report["table"] = table(report)
    write_json(out, report)
    print(
        f"\n{report['host']}; mode {report['mode']}; total {report['elapsed_s']:.1f} s "
        f"(budget {budget:.0f} s); JSON: {out}\n"
    )
    print(report["table"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
