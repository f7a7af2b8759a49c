"""Speed and memory of CSAN's host-side pseudo-labelling at a chosen set size.

  python -m hfrjax.recipes.csan.benchmark --rgb 4120 --ir 4120 --dim 16384
  python -m hfrjax.recipes.csan.benchmark --rgb 22000 --ir 11000 --dim 2048

Features are synthetic L2-normalised embeddings with identity structure (``--per-id`` images
per identity and modality: an identity centre plus noise, and a fixed modality offset for
IR), stored as float32 as the task's embedder returns them. Times, one run each (the steps
take seconds, so the spread of repeats is small against the machine's load):

* ``gemm``: one float32 X·Xᵀ of the RGB set in blocks (the floor of any exact pass over all
  pairs);
* ``first_stage``: the first merge stage from singletons (BUC's ``int(n · mp)`` merges);
* ``late_stage``: a merge stage from the clusters two stages above the target, on features
  moved slightly (as the memory bank moves them between stages);
* ``agglomerate``: singletons to the target count in one step (fixed features);
* ``filter``: size and silhouette filtering (Alg. 1 lines 4-15) of the target clustering;
* ``vote``: one epoch's cross-spectral vote and hard-negative neighbours (lines 20-31), every
  RGB cluster of ``agglomerate`` voting (none filtered out: the most work);
* ``train_step`` (ask for it in ``--steps``): one jitted forward + backward of the CSAN network
  (frozen VGG16-conv3 + subspaces) on a batch of ``--batch`` images of ``--height`` x
  ``--width`` (RegDB: 32, 128 x 64), the best of 3 after compilation, and the epoch it implies
  for ``--rgb + --ir`` images: what the host steps compete with (CSAN §IV-C).

Each record gives the wall time, the largest traced allocation peak (``tracemalloc``, which
numpy reports to; BLAS scratch is not included) and the load average before the step, since
this machine's cores are shared. Prints one JSON object per line, then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tracemalloc

import numpy as np

from hfrjax.recipes.csan import clustering
from hfrjax.recipes.csan import pseudo_labels as pl
from hfrjax.recipes.csan.distances import DEFAULT_BLOCK_ENTRIES, block_rows_for


def synthetic_features(
    num: int, dim: int, per_id: int, seed: int, offset: float = 0.0, noise: float = 1.2
) -> tuple[np.ndarray, np.ndarray]:
    """(float32 L2-normalised features [num, dim], identity [num]): identity centre ~ N(0, I)
    plus ``noise`` · N(0, I), plus ``offset`` · a fixed modality direction."""
    ids = max(1, -(-num // per_id))
    centres = np.random.default_rng([seed, 0]).standard_normal((ids, dim), dtype=np.float32)
    identity = np.arange(num) // per_id
    rng = np.random.default_rng([seed, 1 + int(offset * 1000)])
    x = centres[identity]
    x += noise * rng.standard_normal((num, dim), dtype=np.float32)
    if offset:
        x += offset * np.random.default_rng([seed, 2]).standard_normal(dim, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, identity


def _measure(
    name: str, fn, records: list[dict], stats: dict | None = None, describe=None, **info
) -> object:
    load = os.getloadavg()[0]
    tracemalloc.start()
    tracemalloc.reset_peak()
    t = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    record = {
        "step": name,
        "seconds": round(seconds, 3),
        "peak_mb": round(peak / 2**20, 1),
        "load_before": round(load, 2),
        **info,
        **(stats or {}),
        **(describe(result) if describe else {}),
    }
    records.append(record)
    print(json.dumps(record), flush=True)
    return result


def _gemm_pass(x: np.ndarray, block_entries: int) -> None:
    """X·Xᵀ in blocks of rows, results dropped: the cost of one exact pass over all pairs."""
    step = block_rows_for(len(x), block_entries)
    for start in range(0, len(x), step):
        x[start : start + step] @ x.T


def benchmark(args) -> list[dict]:
    records: list[dict] = []
    rgb, _ = synthetic_features(args.rgb, args.dim, args.per_id, args.seed)
    ir, _ = synthetic_features(args.ir, args.dim, args.per_id, args.seed, offset=0.5)
    n = args.rgb
    kw = dict(
        neighbours=args.neighbours,
        block_entries=args.block_entries,
        dtype=np.dtype(args.dtype).type,
    )
    stats: dict = {}
    target = pl.target_count(n, 0, args.target_fraction)
    counts = clustering.merge_schedule(n, target, args.merge_fraction)
    steps = set(args.steps.split(","))
    info = dict(
        rgb=args.rgb, ir=args.ir, dim=args.dim, dtype=args.dtype, block_entries=args.block_entries
    )
    if "gemm" in steps:
        _measure("gemm", lambda: _gemm_pass(rgb, args.block_entries), records, **info)
    if "first_stage" in steps:
        _measure(
            "first_stage",
            lambda: pl.merge_to(rgb, np.arange(n), counts[0], stats=stats, **kw),
            records,
            stats,
            merges=n - counts[0],
            **info,
        )
    labels = None
    if steps & {"agglomerate", "filter", "vote", "late_stage"}:
        labels = _measure(
            "agglomerate",
            lambda: clustering.merge_step(rgb, np.arange(n), n - target, stats=stats, **kw),
            records,
            stats,
            target=target,
            **info,
        )
    if "late_stage" in steps and len(counts) >= 3:
        above = clustering.agglomerative_clustering(rgb, counts[-3], **kw)
        moved = rgb + 0.02 * np.random.default_rng(args.seed + 7).standard_normal(
            rgb.shape, dtype=np.float32
        )
        moved /= np.linalg.norm(moved, axis=1, keepdims=True)
        _measure(
            "late_stage",
            lambda: pl.merge_to(moved, above, counts[-2], stats=stats, **kw),
            records,
            stats,
            merges=counts[-3] - counts[-2],
            **info,
        )
    if "filter" in steps:
        _measure(
            "filter",
            lambda: (
                pl.filter_modality(
                    rgb,
                    labels,
                    min_size=2,
                    max_size_factor=4.0,
                    silhouette=args.silhouette,
                    block_entries=args.block_entries,
                    dtype=np.dtype(args.filter_dtype).type,
                ).labels
            ),
            records,
            describe=lambda kept: {"kept_samples": int((kept >= 0).sum())},
            **{**info, "dtype": args.filter_dtype},
        )
    if "vote" in steps:
        ir_labels = np.minimum(np.arange(args.ir) // args.per_id, target - 1)
        cluster = np.concatenate([labels, ir_labels])  # Every sample votes: the worst case.
        both = np.concatenate([rgb, ir])
        _measure(
            "vote",
            lambda: pl.vote(both, cluster, n, args.block_entries),
            records,
            describe=lambda r: {"rgb_linked": int((r[1] >= 0).sum())},
            **info,
        )
    if "train_step" in steps:
        _measure(
            "train_step",
            lambda: _train_step_seconds(args),
            records,
            describe=lambda t: {
                "step_s": round(t, 3),
                "epoch_s": round(t * -(-(args.rgb + args.ir) // args.batch), 1),
            },
            batch=args.batch,
            height=args.height,
            width=args.width,
        )
    return records


def _train_step_seconds(args) -> float:
    """Best of 3 timed calls of a jitted value_and_grad of the CSAN network (half RGB, half
    IR inputs; the loss is a stand-in: the network's cost is the step's cost)."""
    import jax
    import jax.numpy as jnp

    from hfrjax.models import get_model

    model = get_model("csan", input_size=args.height)
    rng = np.random.default_rng(args.seed)
    x = jnp.asarray(rng.random((args.batch, args.height, args.width, 3), dtype=np.float32))
    modality = jnp.asarray([0] * (args.batch // 2) + [2] * (args.batch - args.batch // 2))
    variables = model.init(jax.random.key(args.seed), x[:2], modality[:2])

    def loss(params):
        out = model.apply({**variables, "params": params}, x, modality, train=True)
        return jnp.sum(jnp.abs(out))

    step = jax.jit(jax.value_and_grad(loss))
    jax.block_until_ready(step(variables["params"]))
    times = []
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(step(variables["params"]))
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rgb", type=int, default=4120, help="RGB images (RegDB: 4,120)")
    p.add_argument("--ir", type=int, default=4120, help="IR images")
    p.add_argument("--dim", type=int, default=16384, help="feature size")
    p.add_argument("--per-id", type=int, default=10, help="images per identity and modality")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument(
        "--filter-dtype",
        default="float64",
        choices=("float32", "float64"),
        help="the silhouette's distance precision (the task uses float64)",
    )
    p.add_argument("--block-entries", type=int, default=DEFAULT_BLOCK_ENTRIES)
    p.add_argument("--neighbours", type=int, default=16)
    p.add_argument("--target-fraction", type=float, default=0.1)
    p.add_argument("--merge-fraction", type=float, default=0.05)
    p.add_argument("--silhouette", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", default="gemm,first_stage,late_stage,agglomerate,filter,vote")
    p.add_argument("--batch", type=int, default=32, help="train_step: batch (CSAN: 32)")
    p.add_argument("--height", type=int, default=128, help="train_step: image height")
    p.add_argument("--width", type=int, default=64, help="train_step: image width")
    args = p.parse_args(argv)
    records = benchmark(args)
    print("\n| step | seconds | peak MB | load |\n|---|---|---|---|")
    for r in records:
        print(f"| {r['step']} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | {r['load_before']:.1f} |")


if __name__ == "__main__":
    main()
