"""Embed a folder, list file or dataset of faces -> embeddings.npy + keys.json (resumable).

hfrjax embed FACES --model MODEL --out DIR [--batch-size 64] [--landmarks FILE] [--resize]
"""

from __future__ import annotations

import argparse
import sys

from hfrjax.deploy.commands import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "images",
        help="folder of aligned faces (root/<identity>/...), list file (path[,identity] per "
        "line), hfrjax dataset directory, or one image",
    )
    common.add_model_argument(p)
    p.add_argument("--out", required=True, help="output directory")
    common.add_reading_arguments(p)
    p.add_argument(
        "--chunk-size", type=int, default=1024, help="images per saved chunk (resume granularity)"
    )
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out")


@common.friendly_errors
def run(args: argparse.Namespace) -> int:
    import time

    from hfrjax.deploy.embed import embed_images
    from hfrjax.deploy.inputs import open_images

    model = common.load(args.model)
    images = open_images(args.images, modality=args.modality)
    reader = common.reader_for(model, args, images)
    print(f"{model.describe()}: {len(images)} images from {images.spec}", file=sys.stderr)
    t = time.perf_counter()
    result = embed_images(
        model,
        images,
        args.out,
        reader,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        skip_bad=args.skip_bad,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    skipped = result.meta.get("skipped", [])
    print(
        f"wrote {len(result.keys)} x {result.dim} embeddings to {args.out} "
        f"({time.perf_counter() - t:.2f} s)"
        + (f"; skipped {len(skipped)} unreadable images, listed in keys.json" if skipped else "")
    )
    return 0
