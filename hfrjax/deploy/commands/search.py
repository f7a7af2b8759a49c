"""Search probes against a gallery: top-k identities with scores, as CSV or JSON.

hfrjax search --model MODEL --probes FACES --gallery FACES_OR_EMBED_DIR [-k 5] [--out hits.csv]

Probes and gallery are image inputs as for `hfrjax embed` (embedded on the fly) or the output
directory of `hfrjax embed` (embeddings.npy + keys.json). Gallery images need identities.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from hfrjax.deploy.commands import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model (needed unless both sides are embedded)")
    p.add_argument("--probes", required=True, help="images, or an `hfrjax embed` output dir")
    p.add_argument("--gallery", required=True, help="images, or an `hfrjax embed` output dir")
    p.add_argument("-k", "--top-k", type=int, default=5, help="identities per probe")
    p.add_argument(
        "--block-size", type=int, default=65536, help="gallery images scored per block"
    )
    p.add_argument(
        "--out", default=None, help="results file: .csv or .json (default: CSV on stdout)"
    )
    common.add_reading_arguments(p)


def _side(spec: str, what: str, model, args):
    from hfrjax.deploy.embed import EMBEDDINGS, KEYS, EmbeddingSet, embed_in_memory
    from hfrjax.deploy.inputs import open_images

    p = Path(spec)
    if p.is_dir() and (p / EMBEDDINGS).exists() and (p / KEYS).exists():
        return EmbeddingSet.load(p)
    if model is None:
        raise ValueError(f"--{what} {spec} holds images: give --model to embed them")
    images = open_images(spec, modality=args.modality)
    reader = common.reader_for(model, args, images)
    emb, skipped = embed_in_memory(
        model,
        images,
        reader,
        batch_size=args.batch_size,
        skip_bad=args.skip_bad,
        progress=not args.quiet,
        desc=f"embed {what}",
    )
    for s in skipped:
        print(f"skipped {what} image {s['key']}: {s['error']}", file=sys.stderr)
    emb.meta["model_fingerprint"] = model.fingerprint()
    return emb


@common.friendly_errors
def run(args: argparse.Namespace) -> int:
    from hfrjax.deploy.search import top_k_identities

    model = common.load(args.model) if args.model else None
    probes = _side(args.probes, "probes", model, args)
    gallery = _side(args.gallery, "gallery", model, args)
    for name, s in (("probes", probes), ("gallery", gallery)):
        if model is not None and s.dim != model.embedding_dim:
            raise ValueError(
                f"--{name} embeddings are {s.dim}-d but {model.path} makes "
                f"{model.embedding_dim}-d embeddings: they come from another model"
            )
    if probes.dim != gallery.dim:
        raise ValueError(
            f"probe embeddings are {probes.dim}-d but gallery embeddings {gallery.dim}-d: "
            "they come from different models"
        )
    fp = {probes.meta.get("model_fingerprint"), gallery.meta.get("model_fingerprint")}
    if None not in fp and len(fp) > 1:
        print(
            "warning: probes and gallery were embedded with different model files; scores "
            "are only meaningful if they hold the same weights (e.g. ONNX and Flax copies)",
            file=sys.stderr,
        )
    missing = [k for k, i in zip(gallery.keys, gallery.identities) if i is None]
    if missing:
        raise ValueError(
            f"{len(missing)} gallery images have no identity (e.g. {missing[0]!r}): use a "
            "folder root/<identity>/..., a list with an identity column, or a dataset"
        )
    result = top_k_identities(
        probes.embeddings,
        gallery.embeddings,
        gallery.identities,
        k=args.top_k,
        block_size=args.block_size,
    )
    rows = result.rows(probes.keys, gallery.keys)
    if args.out and args.out.endswith(".json"):
        from hfrjax.fileio import write_text_atomic

        by_probe: dict[str, list] = {}
        for r in rows:
            by_probe.setdefault(r.pop("probe"), []).append(r)
        write_text_atomic(args.out, json.dumps(by_probe, indent=1) + "\n")
    else:
        f = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
        try:
            w = csv.DictWriter(f, fieldnames=["probe", "rank", "identity", "score", "gallery_key"])
            w.writeheader()
            for r in rows:
                w.writerow({**r, "score": f"{r['score']:.6f}"})
        finally:
            if args.out:
                f.close()
    if args.out:
        print(
            f"wrote top-{result.top_identity.shape[1]} identities of {len(probes.keys)} probes "
            f"({len(result.identities)} gallery identities) to {args.out}",
            file=sys.stderr,
        )
    return 0
