"""Input pipeline throughput: decode + augment images/s per CPU core at 112x112.

Measures, in one thread (= one core):
  * decode only, JPEG (simplejpeg) and PNG (Pillow);
  * the pipeline's per-image work: tf.train.Example parse + decode + augment
    (flip, red-channel p=0.5, random erasing p=0.5) + the record read with CRC checks;
and the whole grain pipeline (batches of 128, 2 read threads) for reference.

  python launch/benchmark_input.py [--num_images 2000] [--json out.json]

Target (issue 2): >= 2,000 images/s per core. Results go in the README with the machine.
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
import simplejpeg
from PIL import Image

from hfrjax.data import augment as aug
from hfrjax.data import pipeline, tfrecord
from hfrjax.data.dataset import DatasetInfo


def _faces(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Synthetic VIS faces (the library's generator, tiny preset), cycled to ``n`` images."""
    from hfrjax.data import synthetic
    from hfrjax.data.dataset import Dataset
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


def _rate(fn, items, repeats: int = 3) -> float:
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        for x in items:
            fn(x)
        best = max(best, len(items) / (time.perf_counter() - t))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num_images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    imgs = _faces(args.num_images, args.size)
    jpegs = [simplejpeg.encode_jpeg(np.ascontiguousarray(i), quality=92) for i in imgs]
    # PNG at Pillow's default compression (6), as most converted datasets store it.
    pngs, greys = [], []
    for i in imgs:
        buf = io.BytesIO()
        Image.fromarray(i).save(buf, format="PNG")
        pngs.append(buf.getvalue())
        buf = io.BytesIO()  # Single-band, as NIR images are stored (fed as 3 equal channels).
        Image.fromarray(i[:, :, 0]).save(buf, format="PNG")
        greys.append(buf.getvalue())
    cfg = aug.AugmentConfig(hflip=True, channel_aug="red", erasing_p=0.5)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "image_size": args.size,
        "num_images": args.num_images,
    }

    for fmt, blobs in (("jpeg", jpegs), ("png", pngs), ("png_grey", greys)):
        results[f"{fmt}_decode_per_core"] = _rate(aug.decode_image, blobs)
        with tempfile.TemporaryDirectory() as d:
            samples = [
                tfrecord.Sample(
                    b, i % 100, "vis", f"id{i % 100}", f"k{i}", "bench", fmt.split("_")[0]
                )
                for i, b in enumerate(blobs)
            ]
            paths = tfrecord.write_shards(samples, d, "data", 4)
            DatasetInfo(
                "bench",
                [p.name for p in paths],
                len(samples),
                [f"id{i}" for i in range(100)],
                {"vis": len(samples)},
                (args.size, args.size),
                fmt,
            ).save(d)
            in_cfg = pipeline.InputConfig(
                data_dir=d, batch_size=128, seed=0, num_threads=1, augment=cfg
            )
            from hfrjax.data.dataset import Dataset

            ds = Dataset.open(d)
            labels = ds.records.label
            process = pipeline._Process(pipeline.RecordSource(ds.records), labels, in_cfg, True)
            rows = [(t, t) for t in range(len(samples))]
            results[f"{fmt}_read_decode_augment_per_core"] = _rate(process, rows)
            for threads in (1, 2):
                inp = pipeline.make_train_input(
                    pipeline.InputConfig(
                        data_dir=d, batch_size=128, seed=0, num_threads=threads, augment=cfg
                    ),
                    process_index=0,
                    process_count=1,
                )
                next(inp)
                n = 10
                t = time.perf_counter()
                for _ in range(n):
                    next(inp)
                results[f"{fmt}_grain_pipeline_{threads}_threads"] = (
                    n * 128 / (time.perf_counter() - t)
                )

    rows = [
        ("JPEG decode", "jpeg_decode_per_core"),
        ("JPEG read+parse+decode+augment", "jpeg_read_decode_augment_per_core"),
        ("JPEG grain pipeline, 1 thread", "jpeg_grain_pipeline_1_threads"),
        ("JPEG grain pipeline, 2 threads", "jpeg_grain_pipeline_2_threads"),
        ("PNG decode", "png_decode_per_core"),
        ("PNG read+parse+decode+augment", "png_read_decode_augment_per_core"),
        ("PNG grain pipeline, 1 thread", "png_grain_pipeline_1_threads"),
        ("PNG grain pipeline, 2 threads", "png_grain_pipeline_2_threads"),
        ("grey PNG (NIR) read+parse+decode+augment", "png_grey_read_decode_augment_per_core"),
        ("grey PNG (NIR) grain pipeline, 2 threads", "png_grey_grain_pipeline_2_threads"),
    ]
    print(f"machine: {results['machine']}; {args.size}x{args.size}, {args.num_images} images")
    print(f"| {'stage':42s} | images/s |")
    print(f"|{'-' * 44}|---------:|")
    for name, key in rows:
        print(f"| {name:42s} | {results[key]:8.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
