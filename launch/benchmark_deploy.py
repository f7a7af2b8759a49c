"""Embedding throughput of the three deployment paths: Flax (jax.jit), ONNX (onnxruntime) and
serialized JAX (jax.export), side by side, at several batch sizes.

  python launch/benchmark_deploy.py --model=ir50 --batch_sizes=1,64 --out=/tmp/bench_deploy

Builds the backbone with random weights (throughput does not depend on their values), writes
it as an hfrjax export, converts it to ONNX and to a serialized JAX artifact (checking parity),
and times ``EmbeddingModel.embed_raw`` on uint8 [B, H, W, C] batches for each format: the path
`hfrjax embed` takes, input normalisation included. Each measurement runs after one warm-up
call (compilation) until --seconds have passed and at least --min_calls calls were made.
Writes ``benchmark_deploy.json`` and a Markdown table ``benchmark_deploy.md`` to --out.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from pathlib import Path

from absl import app, flags

_MODEL = flags.DEFINE_string("model", "ir50", "registered backbone name")
_KWARGS = flags.DEFINE_string("kwargs", "{}", "JSON model kwargs (e.g. '{\"base_width\": 16}')")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "64"], "batch sizes")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "minimum timed seconds per measurement")
_MIN_CALLS = flags.DEFINE_integer("min_calls", 3, "minimum timed calls per measurement")
_FORMATS = flags.DEFINE_list("formats", ["flax", "onnx", "jax"], "formats to time")
_OUT = flags.DEFINE_string("out", "/tmp/hfrjax_benchmark_deploy", "output directory")


def _random_export(directory: Path, name: str, kwargs: dict) -> dict:
    """An hfrjax export of ``name`` with random weights (numpy; ``model.init`` is slow on CPU)."""
    import jax
    import numpy as np

    from hfrjax.models import dummy_input, get_model
    from hfrjax.train.export import export_embedder

    model = get_model(name, **kwargs)
    shapes = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), dummy_input(model)
    )
    rng = np.random.default_rng(0)

    def value(path, s):
        key = jax.tree_util.keystr(path)
        if key.endswith("['var']") or key.endswith("['scale']"):
            return np.ones(s.shape, np.float32)
        if len(s.shape) == 1:
            return np.zeros(s.shape, np.float32)
        return (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)

    v = jax.tree_util.tree_map_with_path(value, dict(shapes))
    export_embedder(
        directory,
        model_cfg={"name": name, "kwargs": kwargs},
        params=v["params"],
        batch_stats=v.get("batch_stats", {}),
    )
    return {"input_size": model.input_size, "channels": model.in_channels}


def _time(model, batch: int, seconds: float, min_calls: int) -> dict:
    import numpy as np

    x = np.random.default_rng(1).integers(
        0, 256, (batch, model.input_size, model.input_size, model.channels)
    ).astype(np.uint8)
    t = time.perf_counter()
    model.embed_raw(x)  # Warm-up: compilation / session initialisation.
    warmup = time.perf_counter() - t
    calls, t0 = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - t0 < seconds:
        model.embed_raw(x)
        calls += 1
    elapsed = time.perf_counter() - t0
    return {
        "batch": batch,
        "calls": calls,
        "seconds": elapsed,
        "images_per_s": batch * calls / elapsed,
        "ms_per_call": 1000 * elapsed / calls,
        "first_call_s": warmup,
    }


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
    import jax

    from hfrjax.deploy.backends import load_model
    from hfrjax.deploy.exporting import export_artifact

    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = json.loads(_KWARGS.value)
    t = time.perf_counter()
    info = _random_export(out / "export", _MODEL.value, kwargs)
    paths = {"flax": out / "export"}
    setup = {"flax_export_s": time.perf_counter() - t}
    for fmt, suffix in (("onnx", ".onnx"), ("jax", ".jaxexport")):
        if fmt in _FORMATS.value:
            t = time.perf_counter()
            report = export_artifact(out / "export", out / f"model{suffix}", fmt=fmt)
            setup[f"{fmt}_export_s"] = time.perf_counter() - t
            setup[f"{fmt}_parity_max_abs"] = report.get("parity_max_abs")
            setup[f"{fmt}_parity_scale"] = report.get("parity_scale")
            setup[f"{fmt}_bytes"] = os.path.getsize(report["path"])
            paths[fmt] = report["path"]
    results = []
    for fmt in _FORMATS.value:
        model = load_model(paths[fmt])
        for b in (int(s) for s in _BATCHES.value):
            r = {"format": fmt, **_time(model, b, _SECONDS.value, _MIN_CALLS.value)}
            print(
                f"{fmt:5s} batch {b:3d}: {r['images_per_s']:8.1f} images/s "
                f"({r['ms_per_call']:.0f} ms/call, first call {r['first_call_s']:.1f} s)",
                flush=True,
            )
            results.append(r)
        del model
    import onnxruntime

    env = {
        "model": _MODEL.value,
        "kwargs": kwargs,
        **info,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "onnxruntime": onnxruntime.__version__,
        "load_average_1min": os.getloadavg()[0],
        **setup,
    }
    (out / "benchmark_deploy.json").write_text(
        json.dumps({"env": env, "results": results}, indent=1) + "\n"
    )
    batches = [int(s) for s in _BATCHES.value]
    rows = [
        f"| {fmt} | "
        + " | ".join(
            f"{r['images_per_s']:.1f}"
            for b in batches
            for r in results
            if r["format"] == fmt and r["batch"] == b
        )
        + " |"
        for fmt in _FORMATS.value
    ]
    table = "\n".join(
        [
            f"| path ({_MODEL.value}, {info['input_size']}x{info['input_size']}) | "
            + " | ".join(f"batch {b} (images/s)" for b in batches)
            + " |",
            "|---|" + "---|" * len(batches),
            *rows,
        ]
    )
    (out / "benchmark_deploy.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    app.run(main)
