"""Benchmark of blockwise probe-gallery scoring at scale: pairs/s and peak memory.

  python launch/benchmark_eval.py --sizes=10000,30000,100000 --dim=512 --out=/tmp/bench_eval

Scores P x P random unit embeddings (10 images per identity, so there are genuine pairs) with
`hfrjax.eval.metrics.score_blocks` in histogram mode (the bounded-memory path for 10^10 pairs)
and, up to --exact_max pairs, in exact mode; then computes TAR@FAR, EER, AUC and CMC from the
result. Each size runs in a fresh subprocess so that the peak host RSS (and, on a GPU, the
peak device memory) belongs to that size alone. Writes ``benchmark_eval.json``, a Markdown
table ``benchmark_eval.md`` and ``benchmark_eval.png`` (pairs/s and peak memory vs pairs) to
--out. A dense float32 similarity matrix would need 4 x P^2 bytes (40 GB at P = 100k): the
point of the blockwise path is that memory stays flat while that number explodes.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

_SIZES = flags.DEFINE_list("sizes", ["10000", "30000", "100000"], "probes = gallery sizes")
_DIM = flags.DEFINE_integer("dim", 512, "embedding dimension")
_BLOCK = flags.DEFINE_integer("block_size", 1024, "probe rows per device block")
_EXACT_MAX = flags.DEFINE_float("exact_max", 1e9, "largest P*G also run in exact mode")
_RETRIEVAL = flags.DEFINE_bool("retrieval", False, "also compute AP/mINP (sorts every row)")
_OUT = flags.DEFINE_string("out", "/tmp/hfrjax_benchmark_eval", "output directory")
_ONE = flags.DEFINE_string("one", None, "internal: run one 'size:mode' in this process")


def _embeddings(n: int, dim: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.arange(n) // 10
    centres = rng.normal(size=(labels.max() + 1, dim)).astype(np.float32)
    emb = centres[labels] + 1.5 * rng.normal(size=(n, dim)).astype(np.float32)
    return emb, labels


def _run_one(spec: str) -> dict:
    import jax

    from hfrjax.eval import metrics

    size, mode = spec.split(":")
    n = int(size)
    probe, pl = _embeddings(n, _DIM.value, 0)
    gallery, gl = _embeddings(n, _DIM.value, 1)
    # Warm-up compile on a small slice so the timing is the steady state.
    metrics.score_blocks(
        probe[: _BLOCK.value],
        gallery,
        pl[: _BLOCK.value],
        gl,
        _BLOCK.value,
        retrieval=_RETRIEVAL.value,
        pair_scores=mode,
    )
    t0 = time.perf_counter()
    scores = metrics.score_blocks(
        probe, gallery, pl, gl, _BLOCK.value, retrieval=_RETRIEVAL.value, pair_scores=mode
    )
    t_score = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = scores.verification_metrics((1e-6, 1e-4, 1e-2))
    m["Rank-1"] = float(scores.cmc(1)[0])
    t_metrics = time.perf_counter() - t0
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    return {
        "size": n,
        "mode": mode,
        "pairs": n * n,
        "dim": _DIM.value,
        "block_size": _BLOCK.value,
        "retrieval": _RETRIEVAL.value,
        "score_seconds": t_score,
        "metrics_seconds": t_metrics,
        "pairs_per_second": n * n / (t_score + t_metrics),
        "peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_device_gib": (stats or {}).get("peak_bytes_in_use", 0) / 2**30 or None,
        "dense_matrix_gib": 4 * n * n / 2**30,
        "device": device.device_kind,
        "metrics": m,
    }


def _table(rows: list[dict]) -> str:
    lines = [
        "| P = G | pairs | mode | pairs/s | score s | metrics s | peak host RSS GiB | "
        "peak device GiB | dense [P, G] GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dev = f"{r['peak_device_gib']:.2f}" if r["peak_device_gib"] else "–"
        lines.append(
            f"| {r['size']:,} | {r['pairs']:.1e} | {r['mode']} | {r['pairs_per_second']:.3g} | "
            f"{r['score_seconds']:.1f} | {r['metrics_seconds']:.2f} | "
            f"{r['peak_host_rss_gib']:.2f} | {dev} | {r['dense_matrix_gib']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_speed, ax_mem = fig.subplots(1, 2)
    for mode, style in (("histogram", "o-"), ("exact", "s--")):
        rs = [r for r in rows if r["mode"] == mode]
        if not rs:
            continue
        pairs = [r["pairs"] for r in rs]
        ax_speed.plot(pairs, [r["pairs_per_second"] for r in rs], style, label=mode)
        ax_mem.plot(pairs, [r["peak_host_rss_gib"] for r in rs], style, label=f"{mode}: host RSS")
    pairs = sorted({r["pairs"] for r in rows})
    ax_mem.plot(pairs, [4 * p / 2**30 for p in pairs], ":", color="grey", label="dense [P, G] f32")
    for ax, ylabel in ((ax_speed, "pairs / s"), (ax_mem, "peak memory (GiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("probe-gallery pairs")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"Blockwise scoring on {rows[0]['device']}, D = {rows[0]['dim']}")
    fig.savefig(path, dpi=110)


def main(argv):
    del argv
    if _ONE.value:
        print(json.dumps(_run_one(_ONE.value)))
        return
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    specs = []
    for s in _SIZES.value:
        specs.append(f"{int(s)}:histogram")
        if int(s) ** 2 <= _EXACT_MAX.value:
            specs.append(f"{int(s)}:exact")
    rows = []
    passthrough = [
        f"--dim={_DIM.value}",
        f"--block_size={_BLOCK.value}",
        f"--retrieval={_RETRIEVAL.value}",
    ]
    for spec in specs:
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, f"--one={spec}", *passthrough],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        if proc.returncode:
            raise SystemExit(f"benchmark {spec} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{spec}: {row['pairs_per_second']:.3g} pairs/s, host RSS "
            f"{row['peak_host_rss_gib']:.2f} GiB ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
    (out / "benchmark_eval.json").write_text(json.dumps(rows, indent=1) + "\n")
    table = _table(rows)
    (out / "benchmark_eval.md").write_text(table)
    _plot(rows, out / "benchmark_eval.png")
    print(table)
    print(f"wrote {out}/benchmark_eval.{{json,md,png}}")


if __name__ == "__main__":
    app.run(main)
