"""Memory and speed of the classifier step: dense data-parallel vs class-sharded vs Partial FC.

  python launch/benchmark_classifier.py --out=DIR [--classes=100000,1000000,2000000,10000000]
      [--dim=512] [--per_device_batch=128] [--sample_rate=0.1] [--devices=8]
      [--rows_dtype=float32|bfloat16] [--schemes=dense,sharded,pfc] [--timing=true|false]

Runs on --devices fake CPU devices (XLA_FLAGS is set here, before jax is imported). For each C
the classifier step -- margin-softmax loss, gradients w.r.t. classifier and features, SGD with
momentum (optax), classifier and momentum donated -- is lowered and compiled, never run, for
  dense    mesh data=N: classifier replicated, batch sharded (plain data parallelism);
  sharded  mesh model=N: rows sharded, each device embeds its own per_device_batch images and
           the features are all-gathered over model (hfrjax.losses.sharded, batch_over_model);
  pfc      as sharded, Partial FC with --sample_rate (masked update of the sampled rows).
``compiled.memory_analysis()`` gives per-device argument/output/alias/temp bytes; next to it an
analytic breakdown (classifier + momentum, gradient, logits per device). Then dense, sharded
and pfc steps are run at a size that fits this machine (--time_classes, --time_dim,
--time_batch global) and the median step time after warm-up is reported (--notiming skips it).

--rows_dtype=bfloat16 stores the classifier rows -- and so the SGD momentum, which optax's
``trace`` creates in the parameters' dtype, and the rows' gradient -- in bfloat16; the loss
widens the rows it uses to float32 (Partial FC: only the sampled rows), as the classification
task's ``head.rows_dtype`` does.

Writes DIR/benchmark_classifier.json and DIR/benchmark_classifier.md (with --rows_dtype other
than float32: DIR/benchmark_classifier_<dtype>.{json,md}).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # must precede the jax import
    _n = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--devices=")), "8")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_n}"
    ).strip()

import json
import math
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from hfrjax.losses.margin import margin_softmax_loss
from hfrjax.losses.sharded import (
    masked_head_update,
    num_sampled_rows,
    partial_fc_loss,
    sharded_margin_softmax_loss,
)
from hfrjax.train.mesh import make_mesh

_OUT = flags.DEFINE_string("out", None, "output directory", required=True)
_CLASSES = flags.DEFINE_list("classes", ["100000", "1000000", "2000000", "10000000"], "C values")
_DIM = flags.DEFINE_integer("dim", 512, "embedding dimension D")
_PER_DEVICE = flags.DEFINE_integer("per_device_batch", 128, "images per device")
_RATE = flags.DEFINE_float("sample_rate", 0.1, "Partial FC sample rate")
_DEVICES = flags.DEFINE_integer("devices", 8, "fake CPU devices (read before jax starts)")
_HBM = flags.DEFINE_float("device_gb", 80.0, "device memory the feasibility column assumes")
_T_CLASSES = flags.DEFINE_integer("time_classes", 20_000, "C of the timed run")
_T_DIM = flags.DEFINE_integer("time_dim", 128, "D of the timed run")
_T_BATCH = flags.DEFINE_integer("time_batch", 256, "global batch of the timed run")
_STEPS = flags.DEFINE_integer("steps", 15, "timed steps (median reported)")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed steps after compilation")
_ROWS_DTYPE = flags.DEFINE_enum(
    "rows_dtype", "float32", ["float32", "bfloat16"], "storage dtype of classifier and momentum"
)
_SCHEMES = flags.DEFINE_list("schemes", ["dense", "sharded", "pfc"], "schemes in the memory table")
_TIMING = flags.DEFINE_bool("timing", True, "also run the small timed steps")

MARGIN = dict(s=64.0, m1=1.0, m2=0.5, m3=0.0)  # ArcFace
LR = 0.1
SCHEMES = ("dense", "sharded", "pfc")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def make_step(scheme: str, mesh, tx, sample_rate: float):
    """jit'd (weight, opt_state, emb, labels, key) -> (weight, opt_state, loss, d loss/d emb)."""

    def loss_fn(w, emb, labels, key):
        if scheme == "dense":  # float32 math on (possibly bfloat16) stored rows
            return margin_softmax_loss(emb, w.astype(jnp.float32), labels, **MARGIN), None
        if scheme == "sharded":
            return sharded_margin_softmax_loss(
                emb, w, labels, mesh, batch_over_model=True, **MARGIN
            ), None
        return partial_fc_loss(
            emb, w, labels, mesh, sample_rate=sample_rate, rng=key, batch_over_model=True,
            **MARGIN,
        )  # fmt: skip

    def step(w, opt_state, emb, labels, key):
        (loss, mask), (g_w, g_emb) = jax.value_and_grad(loss_fn, (0, 1), has_aux=True)(
            w, emb, labels, key
        )
        updates, new_state = tx.update(g_w, opt_state, w)
        new_w = optax.apply_updates(w, updates)
        if mask is not None:  # Partial FC: unsampled rows and their momentum stay put
            new_w, new_state = masked_head_update(w, new_w, opt_state, new_state, mask, ())
        return new_w, new_state, loss, g_emb

    return step


def shardings(scheme: str, mesh):
    row = P() if scheme == "dense" else P("model")
    batch = P("data") if scheme == "dense" else P(("data", "model"))
    return NamedSharding(mesh, row), NamedSharding(mesh, batch)


def build(
    scheme: str,
    num_classes: int,
    dim: int,
    batch: int,
    n: int,
    sample_rate: float,
    rows_dtype=jnp.float32,
):
    mesh = make_mesh(n, 1) if scheme == "dense" else make_mesh(1, n)
    row_s, batch_s = shardings(scheme, mesh)
    tx = optax.sgd(LR, momentum=0.9)
    w = jax.ShapeDtypeStruct((num_classes, dim), rows_dtype, sharding=row_s)
    state = jax.eval_shape(tx.init, w)
    state_s = jax.tree.map(lambda _: row_s, state)
    state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, state_s
    )
    emb = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=batch_s)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_s)
    key = jax.eval_shape(lambda: jax.random.key(0))
    rep = NamedSharding(mesh, P())
    fn = jax.jit(
        make_step(scheme, mesh, tx, sample_rate),
        in_shardings=(row_s, state_s, batch_s, batch_s, rep),
        out_shardings=(row_s, state_s, rep, batch_s),
        donate_argnums=(0, 1),
    )
    return fn, (w, state, emb, labels, key), mesh


def analytic(
    scheme: str, num_classes: int, dim: int, batch: int, n: int, rate: float, row_bytes: int = 4
) -> dict:
    """Bytes per device of the classifier, its momentum, its gradient (``row_bytes`` per
    element, the storage dtype) and the float32 logits."""
    rows = num_classes if scheme == "dense" else num_classes // n
    cols = {"dense": num_classes, "sharded": rows}.get(scheme) or num_sampled_rows(
        num_classes, n, rate
    )
    logit_rows = batch // n if scheme == "dense" else batch
    return {
        "classifier_and_momentum": 2 * rows * dim * row_bytes,
        "gradient": rows * dim * row_bytes,
        "logits": logit_rows * cols * 4,
    }


def memory_table(
    classes: list[int],
    dim: int,
    batch: int,
    n: int,
    rate: float,
    rows_dtype=jnp.float32,
    schemes=SCHEMES,
) -> list[dict]:
    rows = []
    row_bytes = jnp.dtype(rows_dtype).itemsize
    for c in classes:
        for scheme in schemes:
            row = {"scheme": scheme, "C": c, "D": dim, "global_batch": batch}
            row["rows_dtype"] = jnp.dtype(rows_dtype).name
            row["analytic"] = analytic(scheme, c, dim, batch, n, rate, row_bytes)
            t = time.perf_counter()
            try:
                fn, args, _ = build(scheme, c, dim, batch, n, rate, rows_dtype)
                mem = fn.lower(*args).compile().memory_analysis()
                row["compiled"] = {
                    k: int(getattr(mem, f"{k}_size_in_bytes"))
                    for k in ("argument", "output", "alias", "temp")
                }
                m = row["compiled"]
                row["peak_estimate"] = m["argument"] + m["output"] - m["alias"] + m["temp"]
            except Exception as err:  # report and go on: one size must not sink the table
                row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
            row["compile_s"] = round(time.perf_counter() - t, 2)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def time_steps(
    c: int, dim: int, batch: int, n: int, rate: float, steps: int, warmup: int,
    rows_dtype=jnp.float32,
):  # fmt: skip
    rng = np.random.default_rng(0)
    out = {"C": c, "D": dim, "global_batch": batch, "steps": steps}
    emb_host = rng.normal(size=(batch, dim)).astype(np.float32)
    w_host = np.asarray(jnp.asarray(rng.normal(size=(c, dim)), rows_dtype))
    labels_host = rng.integers(0, c, batch).astype(np.int32)
    for scheme in SCHEMES:
        fn, _, mesh = build(scheme, c, dim, batch, n, rate, rows_dtype)
        row_s, batch_s = shardings(scheme, mesh)
        tx = optax.sgd(LR, momentum=0.9)
        w = jax.device_put(w_host, row_s)
        state = jax.device_put(tx.init(w_host), row_s)
        emb, labels = jax.device_put(emb_host, batch_s), jax.device_put(labels_host, batch_s)
        times, losses = [], []
        for i in range(warmup + steps):
            t = time.perf_counter()
            w, state, loss, g = fn(w, state, emb, labels, jax.random.key(i))
            jax.block_until_ready((w, state, loss, g))
            if i >= warmup:
                times.append(time.perf_counter() - t)
            losses.append(float(loss))
        out[scheme] = {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "first_loss": losses[0],
        }
        print(scheme, json.dumps(out[scheme]), flush=True)
    out["sharded_over_dense"] = out["sharded"]["median_s"] / out["dense"]["median_s"]
    out["pfc_over_dense"] = out["pfc"]["median_s"] / out["dense"]["median_s"]
    return out


def _mb(x: float) -> str:
    return f"{x / 2**20:,.1f}"


def markdown(result: dict) -> str:
    n, gb = result["devices"], result["device_gb"]
    lines = [
        f"Per-device bytes (MiB), {n} devices, D={result['dim']}, global batch "
        f"{result['global_batch']}, Partial FC r={result['sample_rate']}, classifier rows and "
        f"momentum stored in {result.get('rows_dtype', 'float32')}; compiled = "
        "`memory_analysis()` of loss+grad+SGD-momentum (classifier and momentum donated); "
        "peak est. = argument + output - alias + temp.",
        "",
        "| C | scheme | W+mom (analytic) | grad | logits | argument | output | temp | peak est. "
        f"| peak GB | fits {gb:g} GB | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["memory"]:
        a = r["analytic"]
        if "compiled" in r:
            m = r["compiled"]
            cells = [_mb(m["argument"]), _mb(m["output"]), _mb(m["temp"]), _mb(r["peak_estimate"])]
            cells.append(f"{r['peak_estimate'] / 1e9:.2f}")
            fits = "yes" if r["peak_estimate"] < gb * 1e9 else "no"
        else:
            cells, fits = ["compile failed"] * 5, "?"
        lines.append(
            f"| {r['C']:,} | {r['scheme']} | {_mb(a['classifier_and_momentum'])} | "
            f"{_mb(a['gradient'])} | {_mb(a['logits'])} | "
            + " | ".join(cells)
            + f" | {fits} | {r['compile_s']} |"
        )
    by = {(r["C"], r["scheme"]): r for r in result["memory"]}
    sizes = sorted({r["C"] for r in result["memory"]})
    both = [c for c in sizes if (c, "dense") in by and (c, "sharded") in by]
    if both:
        lines += ["", "Ratios (sharded / dense, per device):", ""]
    for c in both:
        d, s = by[(c, "dense")]["analytic"], by[(c, "sharded")]["analytic"]
        line = (
            f"- C={c:,}: classifier+momentum {s['classifier_and_momentum'] / d['classifier_and_momentum']:.3f}"
            f" (target 1/{n} = {1 / n:.3f}); logits {s['logits'] / d['logits']:.3f} of dense, "
            f"= B·C/{n}: {s['logits'] == result['global_batch'] * c // n * 4}"
        )
        if "compiled" in by[(c, "dense")] and "compiled" in by[(c, "sharded")]:
            ratio = by[(c, "sharded")]["peak_estimate"] / by[(c, "dense")]["peak_estimate"]
            line += f"; compiled peak {ratio:.3f}"
        lines.append(line)
    if "command" in result:
        lines += ["", f"Command: `{result['command']}`"]
    t = result.get("timing")
    if t is None:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"Step time (run), C={t['C']:,}, D={t['D']}, global batch {t['global_batch']}, "
        f"median of {t['steps']} after warm-up, {n} fake CPU devices on {result['cpus']} cores:",
        "",
        "| scheme | median ms | min ms | vs dense |",
        "|---|---|---|---|",
    ]
    for s in SCHEMES:
        ratio = t[s]["median_s"] / t["dense"]["median_s"]
        lines.append(
            f"| {s} | {1e3 * t[s]['median_s']:.1f} | {1e3 * t[s]['min_s']:.1f} | {ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    n = _DEVICES.value
    if jax.device_count() != n:
        raise SystemExit(f"expected {n} devices, jax sees {jax.device_count()}: {jax.devices()}")
    batch = _PER_DEVICE.value * n
    result = {
        "devices": n,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "dim": _DIM.value,
        "global_batch": batch,
        "sample_rate": _RATE.value,
        "rows_dtype": _ROWS_DTYPE.value,
        "device_gb": _HBM.value,
        "margin": MARGIN,
    }
    classes = [int(c) for c in _CLASSES.value]
    unknown = [s for s in _SCHEMES.value if s not in SCHEMES]
    if unknown or not _SCHEMES.value:
        raise SystemExit(f"--schemes={_SCHEMES.value}: each must be one of {SCHEMES}")
    dtype = DTYPES[_ROWS_DTYPE.value]
    result["command"] = " ".join(["python", *sys.argv])
    result["memory"] = memory_table(
        classes, _DIM.value, batch, n, _RATE.value, dtype, tuple(_SCHEMES.value)
    )
    if _TIMING.value:
        result["timing"] = time_steps(
            _T_CLASSES.value, _T_DIM.value, _T_BATCH.value, n, _RATE.value, _STEPS.value,
            _WARMUP.value, dtype,
        )  # fmt: skip
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    dtype_name = _ROWS_DTYPE.value
    stem = "benchmark_classifier" + ("" if dtype_name == "float32" else f"_{dtype_name}")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    table = markdown(result)
    (out / f"{stem}.md").write_text(table)
    print(table)
    if _TIMING.value:
        assert math.isfinite(result["timing"]["sharded_over_dense"])


if __name__ == "__main__":
    app.run(main)
