"""Times SSN's steps against the plain LightCNN step at the same batch (the cost of the masks,
the IB critics and the search).

  python launch/benchmark_ssn.py --preset=paper --batch=128        # 128x128, LightCNN-29v2
  python launch/benchmark_ssn.py --preset=synthetic --batch=64     # what a CPU manages

Steps timed (each jitted exactly as the training loop runs it, on random uint8 batches with
half NIR and half VIS images; all compiled first, then timed in turns):
  plain LightCNN   mode baseline's step: LightCNN-29v2 + softmax classifier, one SGD optimizer;
  SI split         mode si_split's step: + per-modality indicators (joint optimizer);
  AFS mask step    the search's mask update (Adam on the indicators; L_id + λ L_ib on S_val);
  AFS net step     the search's network update (network, classifier and both IB critics);
  AFS train step   the training phase after the search (same computation as the net step).
Prints one line per step (median ms, images/s, ratio to the plain step) and, with --json, the
numbers as JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from absl import app, flags

_PRESET = flags.DEFINE_enum(
    "preset", "synthetic", ["paper", "synthetic", "test"], "model / input size"
)
_BATCH = flags.DEFINE_integer("batch", 0, "global batch (0: the preset's)")
_CLASSES = flags.DEFINE_integer("classes", 360, "identities in the classifier (CASIA fold: ~360)")
_REPEATS = flags.DEFINE_integer("repeats", 10, "timed calls per step")
_JSON = flags.DEFINE_string("json", None, "also write the numbers to this file")


def main(argv):
    del argv
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hfrjax.recipes.ssn import configs as ssn_configs
    from hfrjax.recipes.ssn.task import build_parts, make_optimizers
    from hfrjax.tasks import parse_config
    from hfrjax.train import mesh as mesh_lib
    from hfrjax.train import state as state_lib
    from hfrjax.train import step as step_lib
    from hfrjax.train.task import Step

    mesh = mesh_lib.make_mesh(-1, 1)
    s = ssn_configs.scale_settings(_PRESET.value)
    batch = _BATCH.value or s["batch_size"]
    size = s["image_size"]
    rng = np.random.default_rng(0)
    data = {
        "image": jnp.asarray(rng.integers(0, 256, (batch, size, size, 1), dtype=np.uint8)),
        "label": jnp.asarray(rng.integers(0, _CLASSES.value, batch), jnp.int32),
        "modality": jnp.asarray(np.arange(batch) % 2, jnp.int32),
    }

    def steps_of(mode):
        c = ssn_configs.ssn_config(mode, scale=_PRESET.value, data_dir="unused")
        c.input.batch_size = batch
        _, _, cfg = parse_config(c)
        parts = build_parts(cfg, _CLASSES.value, 0)
        opts = make_optimizers(parts, 100, 1000)
        state = state_lib.create_state(parts.params, parts.model_state, opts, jax.random.key(1), {})
        remap = np.arange(_CLASSES.value)
        out = {
            "train": (
                Step(
                    parts.loss("train", None, train_critics=True, keep_model_state=False),
                    ("train",),
                    ("net",),
                ),
                "train",
            )
        }
        if mode == "afs":
            out = {
                "mask": (
                    Step(
                        parts.loss("search_val", remap, train_critics=False, keep_model_state=True),
                        ("search_val",),
                        ("mask",),
                    ),
                    "search_val",
                ),
                "net": (
                    Step(
                        parts.loss(
                            "search_train", remap, train_critics=True, keep_model_state=False
                        ),
                        ("search_train",),
                        ("net",),
                    ),
                    "search_train",
                ),
                **out,
            }
        return state, opts, out

    # Compile everything first, then time the steps in turns (round robin), so that a change
    # in the machine's load during the run hits every step alike.
    runs = []
    for label, mode, which in (
        ("plain LightCNN", "baseline", "train"),
        ("SI split", "si_split", "train"),
        ("AFS mask step", "afs", "mask"),
        ("AFS net step", "afs", "net"),
        ("AFS train step", "afs", "train"),
    ):
        state, opts, steps = steps_of(mode)
        step, name = steps[which]
        fn = step_lib.make_train_step(step, opts, mesh)
        t = time.perf_counter()
        state, m = fn(state, {name: data})
        jax.block_until_ready(m)
        runs.append(
            {
                "label": label,
                "fn": fn,
                "state": state,
                "name": name,
                "compile_s": time.perf_counter() - t,
                "times": [],
            }
        )
    for _ in range(_REPEATS.value):
        for r in runs:
            t = time.perf_counter()
            r["state"], m = r["fn"](r["state"], {r["name"]: data})
            jax.block_until_ready(m)
            r["times"].append(time.perf_counter() - t)
    rows = []
    for r in runs:
        sec = statistics.median(r["times"])
        rows.append(
            {
                "step": r["label"],
                "ms": 1000 * sec,
                "min_ms": 1000 * min(r["times"]),
                "images_per_s": batch / sec,
                "compile_s": r["compile_s"],
            }
        )
    base = rows[0]["ms"]
    dev = jax.devices()[0]
    print(
        f"SSN step times: preset {_PRESET.value} ({size}x{size}), batch {batch}, "
        f"{_CLASSES.value} classes, {dev.platform} ({dev.device_kind}), median of {_REPEATS.value}"
    )
    print("| step | ms / step (median) | ms (min) | images / s | × plain (median) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        r["ratio"] = r["ms"] / base
        print(
            f"| {r['step']} | {r['ms']:.1f} | {r['min_ms']:.1f} | {r['images_per_s']:.0f} | {r['ratio']:.2f} |"
        )
    if _JSON.value:
        Path(_JSON.value).write_text(
            json.dumps({"preset": _PRESET.value, "batch": batch, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    app.run(main)
