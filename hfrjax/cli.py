"""The ``hfrjax`` command: data and deployment tools. Training lives in ``launch/``.

hfrjax synth --out DIR [--preset quickstart|small|large|thermal_vis|longtail|...] [--seed 0]
    [--image_size N]
hfrjax info DIR          # what a dataset directory holds
hfrjax convert rec REC --out DIR --shards N       # InsightFace train.rec/.idx (MS1M, ...)
hfrjax convert nirvis --dataset casia-nirvis2|lamp-hq|oulu-casia|buaa --root DIR --out DIR
hfrjax convert reid --dataset sysu-mm01|regdb --root DIR --out DIR   # visible-infrared re-id
hfrjax convert thermal --arlvtf --root DIR --out DIR   # or --csv FILE (path,identity,modality,set)
hfrjax convert folder --root DIR --out DIR [--csv FILE]   # your own images
hfrjax align --src DIR --landmarks FILE --out DIR [--size 112|128]

hfrjax export EXPORT_DIR --format onnx|jax --out FILE     # ONNX (InsightFace layout) / jax.export
hfrjax import-onnx MODEL.onnx --out DIR                   # model-zoo IResNet -> hfrjax export
hfrjax embed FACES --model MODEL --out DIR                # embeddings.npy + keys.json
hfrjax verify A B --model MODEL                           # cosine similarity, same/different
hfrjax verify --calibrate DATASET --model MODEL --far 1e-3
hfrjax search --model MODEL --probes FACES --gallery FACES_OR_EMBED_DIR [-k 5]

MODEL is an hfrjax export directory, an .onnx file or a .jaxexport file.

Every subcommand takes --help.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _synth(args: argparse.Namespace) -> int:
    from hfrjax.data import synthetic

    t = time.perf_counter()
    summary = synthetic.generate(
        args.out,
        preset=args.preset,
        seed=args.seed,
        workers=args.workers,
        image_size=args.image_size,
    )
    print(json.dumps(summary, indent=1, default=str))
    print(f"wrote {args.out} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return 0


def _info(args: argparse.Namespace) -> int:
    from hfrjax.data.dataset import Dataset
    from hfrjax.data.protocol import Protocol

    ds = Dataset.open(args.dir)
    i = ds.info
    print(
        f"{i.name}: {i.num_images} images, {i.num_classes} identities, "
        f"{len(i.shards)} shards, {i.image_size[0]}x{i.image_size[1]} {i.image_format}"
    )
    print("  per modality: " + ", ".join(f"{m} {n}" for m, n in i.modalities.items()))
    try:
        p = Protocol.load(args.dir)
    except FileNotFoundError:
        return 0
    f = p.fold(1)
    print(
        f"  protocol {p.name}: {p.num_folds} folds; fold 1: "
        + ", ".join(f"{m} train {len(k)}" for m, k in f.train.items())
        + f", {p.gallery_modality} gallery {len(f.gallery)}, "
        f"{p.probe_modality} probes {len(f.probe)}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hfrjax", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="generate the synthetic NIR-VIS face sets")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument(
        "--preset",
        default="quickstart",
        choices=sorted(_synthetic_presets()),
        help="NIR-VIS sets (tiny, quickstart, small, large), thermal-visible (thermal_tiny, "
        "thermal_vis), long-tailed VIS (longtail_tiny, longtail)",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="crop size in pixels (default: the preset's, 112 for the NIR-VIS sets)",
    )
    s.set_defaults(fn=_synth)
    s = sub.add_parser("info", help="describe a dataset directory")
    s.add_argument("dir")
    s.set_defaults(fn=_info)
    convert = sub.add_parser("convert", help="convert a distributed dataset to TFRecords")
    csub = convert.add_subparsers(dest="format", required=True)
    for name, module, help_ in _CONVERTERS:
        _add_module_command(csub, name, module, help_)
    _add_module_command(sub, "align", "hfrjax.data.align", "5-point alignment to the template")
    for name, module, help_ in _DEPLOY_COMMANDS:
        _add_module_command(sub, name, module, help_)
    args = ap.parse_args(argv)
    return args.fn(args)


# (subcommand, module with add_arguments(parser) and run(args) -> int, help)
_CONVERTERS = (
    ("rec", "hfrjax.data.convert.recordio", "InsightFace RecordIO (train.rec + train.idx)"),
    ("nirvis", "hfrjax.data.convert.nirvis", "CASIA NIR-VIS 2.0, LAMP-HQ, Oulu-CASIA, BUAA"),
    ("folder", "hfrjax.data.convert.folders", "root/<identity>/<modality>/* or a CSV list"),
    ("reid", "hfrjax.data.convert.reid", "SYSU-MM01 and RegDB (visible-infrared person re-id)"),
    (
        "thermal",
        "hfrjax.data.convert.thermal",
        "ARL-VTF set lists, or a path,identity,modality,set CSV",
    ),
    (
        "ftl-subsets",
        "hfrjax.recipes.ftl.subsets",
        "FTL's UR training sets (Table 1 layout, per-class caps) from a converted dataset",
    ),
)


def _synthetic_presets() -> list[str]:
    from hfrjax.data.synthetic import PRESETS

    return list(PRESETS)


_DEPLOY_COMMANDS = (
    ("export", "hfrjax.deploy.commands.export", "export a model to ONNX or serialized JAX"),
    ("import-onnx", "hfrjax.deploy.commands.import_onnx", "import a model-zoo ONNX IResNet"),
    ("embed", "hfrjax.deploy.commands.embed", "embed faces to .npy + keys .json (resumable)"),
    ("verify", "hfrjax.deploy.commands.verify", "compare two faces; calibrate the threshold"),
    ("search", "hfrjax.deploy.commands.search", "top-k gallery identities of probe faces"),
)


def _add_module_command(sub, name: str, module: str, help_: str) -> None:
    """A subcommand whose arguments and action live in ``module`` (imported when used)."""
    import importlib

    mod = importlib.import_module(module)
    p = sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).splitlines()[0])
    mod.add_arguments(p)
    p.set_defaults(fn=mod.run)


if __name__ == "__main__":
    sys.exit(main())
