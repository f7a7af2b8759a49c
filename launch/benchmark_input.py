"""Input pipeline throughput on synthetic 112x112 faces: per core, with grain workers, and the
trainer's wait at the quickstart's speed.

  python launch/benchmark_input.py [--num_images 1000] [--rounds 4] [--json out.json]
      [--skip_scaling] [--skip_trainer]

Per core (issue 18 target: pipeline >= 70 % of decode only, for JPEG and for NIR PNG). One
thread; times are CPU time of that thread (time.thread_time), so other jobs on a loaded
machine do not count, and the two are measured in alternating chunks of the same images:
  decode only   the codec alone: simplejpeg for JPEG, libspng (pyspng) for PNG;
  pipeline      the training pipeline's per-image work (hfrjax.data.pipeline._Process): pread
                of the framed record, both CRC checks, tf.train.Example parse, decode,
                augmentation (flip, red channel p = 0.5, random erasing p = 0.5), from the
                shard files in the page cache.
Formats: RGB JPEG (VIS, as the synthetic sets and CASIA store it), single-band PNG (NIR,
replicated to 3 channels), RGB PNG.

Scaling (target: 2 workers >= 1.8x one): batches of 128 per wall second of the grain pipeline
(`make_train_input`) with `input.worker_count` = 1 and 2 worker processes, and in-process
with 1 and 2 threads, measured in turns. Wall time counts other jobs, so the spread over
--rounds turns is printed with the load average.

Trainer wait (target: the trainer never waits on input at the quickstart's speed): the
quickstart's pretraining step (IResNet [1,1,1,1] width 16 at 32x32, batch 128) fed by the
quickstart's input configuration (JPEG 112x112 resized to 32x32, flip + red channel, the
default 2 threads in process), as the trainer runs it (the next batch is fetched while the
previous step runs, then the previous step's metrics are read); prints the fraction of wall
time the device idled for input (a wait counted when the step in flight had finished by its
end, as the trainer's ``input wait``) and the whole time spent in `next(input)`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time

import numpy as np
import pyspng
import simplejpeg
from PIL import Image

from hfrjax.data import augment as aug
from hfrjax.data import pipeline, tfrecord
from hfrjax.data.dataset import Dataset, DatasetInfo

AUGMENT = aug.AugmentConfig(hflip=True, channel_aug="red", erasing_p=0.5)
# The quickstart's (and the Rethinking paper's) recipe: flip and red channel, no erasing.
AUGMENT_LIGHT = aug.AugmentConfig(hflip=True, channel_aug="red")


def _faces(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Synthetic VIS faces (the library's generator, tiny preset), cycled to ``n`` images."""
    from hfrjax.data import synthetic
    from hfrjax.data.pipeline import iter_eval_batches

    with tempfile.TemporaryDirectory() as d:
        synthetic.generate(d, "tiny", seed=seed, workers=1, image_size=size)
        ds = Dataset.open(os.path.join(d, "source"))
        faces = [
            img
            for b in iter_eval_batches(ds, list(ds.records.key), 16)
            for img, ok in zip(b["image"], b["valid"])
            if ok
        ]
    return [faces[i % len(faces)] for i in range(n)]


def _encode(imgs: list[np.ndarray]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {"jpeg": [], "png_grey": [], "png": []}
    for i in imgs:
        out["jpeg"].append(simplejpeg.encode_jpeg(np.ascontiguousarray(i), quality=92))
        for key, arr in (("png_grey", i[:, :, 0]), ("png", i)):
            buf = io.BytesIO()  # Pillow's default compression (6), as converted datasets use.
            Image.fromarray(arr).save(buf, format="PNG")
            out[key].append(buf.getvalue())
    return out


def _write_dataset(d: str, blobs: list[bytes], fmt: str, size: int) -> Dataset:
    modality = "nir" if fmt == "png_grey" else "vis"
    samples = [
        tfrecord.Sample(b, i % 100, modality, f"id{i % 100}", f"k{i}", "bench", fmt.split("_")[0])
        for i, b in enumerate(blobs)
    ]
    paths = tfrecord.write_shards(samples, d, "data", 4)
    DatasetInfo(
        "bench",
        [p.name for p in paths],
        len(samples),
        [f"id{i}" for i in range(100)],
        {modality: len(samples)},
        (size, size),
        fmt,
    ).save(d)
    return Dataset.open(d)


def _codec(fmt: str):
    if fmt == "jpeg":
        return lambda b: simplejpeg.decode_jpeg(b, colorspace="RGB")
    return pyspng.load


def per_core(fmt: str, blobs: list[bytes], d: str, rounds: int, chunk: int = 100) -> dict:
    """CPU seconds per image of decode only and of the pipeline's per-image work (with the
    erasing and the light augmentation), in alternating chunks of the same images; ratio =
    decode time / pipeline time (1 = no overhead)."""
    ds = Dataset.open(d)
    processes = {}
    for name, augment in (("pipeline", AUGMENT), ("pipeline_light", AUGMENT_LIGHT)):
        cfg = pipeline.InputConfig(
            data_dir=d, batch_size=128, seed=0, num_threads=1, augment=augment
        )
        source = pipeline.RecordSource(ds.records)
        processes[name] = pipeline._Process(source, ds.records.label, cfg, True)
    decode = _codec(fmt)
    n = len(blobs)
    for i in range(min(n, 50)):  # Warm up: page cache, descriptors, allocator.
        decode(blobs[i])
        for p in processes.values():
            p((i, i))
    total = dict.fromkeys(["decode", *processes], 0.0)
    ratios: dict[str, list[float]] = {name: [] for name in processes}
    for r in range(rounds):
        spent = dict.fromkeys(total, 0.0)
        for start in range(0, n, chunk):
            idx = range(start, min(n, start + chunk))
            t = time.thread_time()
            for i in idx:
                decode(blobs[i])
            spent["decode"] += time.thread_time() - t
            for name, process in processes.items():
                t = time.thread_time()
                for i in idx:
                    process((r * n + i, i))
                spent[name] += time.thread_time() - t
        for name in total:
            total[name] += spent[name]
        for name in processes:
            ratios[name].append(spent["decode"] / spent[name])
    out = {f"{fmt}_decode_only_per_core": rounds * n / total["decode"]}
    for name in processes:
        out[f"{fmt}_{name}_per_core"] = rounds * n / total[name]
        out[f"{fmt}_{name}_over_decode"] = total["decode"] / total[name]
        out[f"{fmt}_{name}_over_decode_rounds"] = ratios[name]
    return out


def _train_input(d: str, **kw) -> pipeline.TrainInput:
    base = dict(data_dir=d, batch_size=128, seed=0, num_threads=1, augment=AUGMENT)
    base.update(kw)
    return pipeline.make_train_input(pipeline.InputConfig(**base), process_index=0, process_count=1)


def scaling(d: str, rounds: int, batches: int = 6) -> dict:
    """Batches of 128 per wall second with 1 / 2 worker processes and 1 / 2 threads."""
    setups = {
        "1_thread": dict(num_threads=1),
        "2_threads": dict(num_threads=2),
        "1_worker": dict(worker_count=1),
        "2_workers": dict(worker_count=2),
    }
    rates: dict[str, list[float]] = {k: [] for k in setups}
    main_cpu: dict[str, float] = dict.fromkeys(setups, float("inf"))
    for _ in range(rounds):
        for name, kw in setups.items():
            inp = _train_input(d, **kw)
            try:
                for _ in range(2):  # Start-up (worker processes) and first prefetch.
                    next(inp)
                t, c = time.perf_counter(), time.thread_time()
                for _ in range(batches):
                    next(inp)
                rates[name].append(batches * 128 / (time.perf_counter() - t))
                main_cpu[name] = min(main_cpu[name], (time.thread_time() - c) / batches)
            finally:
                close = getattr(inp.iterator, "close", None)  # Stops worker processes.
                if callable(close):
                    close()
    out = {}
    for name, r in rates.items():
        out[f"grain_{name}_images_per_s"] = max(r)
        out[f"grain_{name}_images_per_s_rounds"] = r
        # CPU the consuming (trainer) thread spends per batch: with worker processes, the part
        # of the input work that does not run in parallel.
        out[f"grain_{name}_main_thread_cpu_s_per_batch"] = main_cpu[name]
    out["grain_2_workers_over_1"] = max(rates["2_workers"]) / max(rates["1_worker"])
    out["grain_2_workers_over_1_rounds"] = [
        a / b for a, b in zip(rates["2_workers"], rates["1_worker"])
    ]
    return out


def trainer_wait(d: str, steps: int) -> dict:
    """Fraction of wall time the quickstart's pretraining loop spends waiting on input."""
    import jax
    import optax

    from hfrjax.losses import MarginConfig
    from hfrjax.tasks.classification import classification_step
    from hfrjax.train import mesh as mesh_lib
    from hfrjax.train import state as state_lib
    from hfrjax.train import step as step_lib
    from hfrjax.train.task import Optimizer

    size = 32  # configs/quickstart.py: IMAGE_SIZE, MODEL.
    model = dict(
        name="iresnet",
        kwargs=dict(layers=(1, 1, 1, 1), base_width=16, embedding_dim=128, input_size=size),
    )
    inp = _train_input(
        d,
        image_size=(size, size),
        num_threads=2,
        augment=aug.AugmentConfig(hflip=True, channel_aug="red", channel_aug_p=0.5),
    )
    mesh = mesh_lib.make_mesh()
    inp.mesh = mesh
    backbone = state_lib.build_backbone(model)
    params, bs = state_lib.init_backbone(backbone, jax.random.key(0))
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
    opts = {"main": Optimizer(("backbone", "head"), tx)}
    state = state_lib.create_state(
        {"backbone": params, "head": state_lib.init_head(jax.random.key(1), 100, 128)},
        {"batch_stats": bs},
        opts,
        jax.random.key(2),
    )
    state = jax.device_put(state, mesh_lib.replicated(mesh))
    step = step_lib.make_train_step(
        classification_step(backbone, MarginConfig(m2=0.0, m3=0.4)), opts, mesh
    )
    for _ in range(3):  # Compile and warm up.
        state, metrics = step(state, {"train": next(inp)})
    jax.block_until_ready(metrics["loss"])
    waited, idle, pending = 0.0, 0.0, None
    t0 = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        batch = next(inp)
        dt = time.perf_counter() - t
        waited += dt
        # As the trainer counts it: a wait idles the device only if it outlasted the step in
        # flight (an upper bound on the idle time).
        if pending is None or pending["loss"].is_ready():
            idle += dt
        state, metrics = step(state, {"train": batch})
        if pending is not None:
            float(pending["loss"])  # The trainer reads the previous step's metrics.
        pending = metrics
    float(pending["loss"])
    total = time.perf_counter() - t0
    return {
        "trainer_steps": steps,
        "trainer_step_s": total / steps,
        "trainer_input_wait_fraction": idle / total,
        "trainer_time_in_next_fraction": waited / total,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num_images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--trainer_steps", type=int, default=30)
    ap.add_argument("--skip_scaling", action="store_true")
    ap.add_argument("--skip_trainer", action="store_true")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    from absl import flags

    flags.FLAGS(["benchmark_input"])  # grain's worker processes read absl flags.

    blobs = _encode(_faces(args.num_images, args.size))
    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "image_size": args.size,
        "num_images": args.num_images,
        "load_average_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory() as root:
        dirs = {}
        for fmt, b in blobs.items():
            dirs[fmt] = os.path.join(root, fmt)
            _write_dataset(dirs[fmt], b, fmt, args.size)
        for fmt, b in blobs.items():
            results.update(per_core(fmt, b, dirs[fmt], args.rounds))
        if not args.skip_scaling:
            results.update(scaling(dirs["jpeg"], max(2, args.rounds // 2)))
        if not args.skip_trainer:
            results.update(trainer_wait(dirs["jpeg"], args.trainer_steps))
    results["load_average_end"] = os.getloadavg()[0]

    print(
        f"machine: {results['machine']}; {args.size}x{args.size}, {args.num_images} images; "
        f"load average {results['load_average_start']:.1f} -> {results['load_average_end']:.1f}"
    )
    print(
        "\n| format | augmentation | decode only img/s/core | pipeline img/s/core "
        "| pipeline / decode | per round |"
    )
    print("|---|---|---:|---:|---:|---|")
    for fmt, name in (("jpeg", "RGB JPEG"), ("png_grey", "NIR PNG (1 band)"), ("png", "RGB PNG")):
        for key, what in (("pipeline", "flip, red, erasing"), ("pipeline_light", "flip, red")):
            rounds = ", ".join(f"{x:.2f}" for x in results[f"{fmt}_{key}_over_decode_rounds"])
            print(
                f"| {name} | {what} | {results[f'{fmt}_decode_only_per_core']:.0f} | "
                f"{results[f'{fmt}_{key}_per_core']:.0f} | "
                f"{results[f'{fmt}_{key}_over_decode']:.2f} | {rounds} |"
            )
    if not args.skip_scaling:
        print(
            "\n| grain pipeline (JPEG, batch 128) | images/s (best) | turns "
            "| main thread CPU ms / batch |"
        )
        print("|---|---:|---|---:|")
        for name in ("1_thread", "2_threads", "1_worker", "2_workers"):
            r = results[f"grain_{name}_images_per_s_rounds"]
            print(
                f"| {name.replace('_', ' ')} | {max(r):.0f} | "
                f"{', '.join(f'{x:.0f}' for x in r)} | "
                f"{1e3 * results[f'grain_{name}_main_thread_cpu_s_per_batch']:.1f} |"
            )
        per_turn = ", ".join(f"{x:.2f}" for x in results["grain_2_workers_over_1_rounds"])
        print(f"2 workers / 1 worker: {results['grain_2_workers_over_1']:.2f} (turns: {per_turn})")
    if not args.skip_trainer:
        print(
            f"\ntrainer at the quickstart's speed: {results['trainer_step_s'] * 1e3:.0f} ms/step, "
            f"device idle for input {100 * results['trainer_input_wait_fraction']:.1f} % of the "
            f"time (time in next(), overlapped or not: "
            f"{100 * results['trainer_time_in_next_fraction']:.1f} %)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
