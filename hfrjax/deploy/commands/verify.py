"""Compare two faces (cosine similarity, same/different at a calibrated threshold), score a
list of pairs, or calibrate the threshold for a false-accept rate on a dataset's protocol.

hfrjax verify A.jpg B.jpg --model MODEL [--far 1e-3 | --threshold 0.3] [--json]
hfrjax verify --pairs pairs.csv --model MODEL [--out scores.csv]
hfrjax verify --calibrate DATASET_DIR --model MODEL [--far 1e-3 --far 1e-4] [--folds 1,2]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from hfrjax.deploy.commands import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", help="two face images A B")
    common.add_model_argument(p)
    p.add_argument("--pairs", default=None, help="CSV of image pairs 'a,b' (paths relative to it)")
    p.add_argument("--calibrate", default=None, help="dataset directory with a protocol")
    p.add_argument(
        "--far",
        type=float,
        action="append",
        default=None,
        help="false-accept rate of the threshold (calibrate: repeatable; default 1e-3)",
    )
    p.add_argument("--threshold", type=float, default=None, help="use this cosine threshold")
    p.add_argument(
        "--direction", default="probe->gallery", choices=["probe->gallery", "gallery->probe"]
    )
    p.add_argument("--folds", default=None, help="calibrate on these folds (e.g. 1,2; default all)")
    p.add_argument("--out", default=None, help="--pairs: write scores here (CSV or .json)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    common.add_reading_arguments(p)


def _threshold(model, args):
    if args.threshold is not None:
        return args.threshold, {"source": "--threshold"}
    from hfrjax.deploy.calibration import load_threshold

    far = args.far[0] if args.far else None
    found = load_threshold(model, far)
    if found is None and far is not None:
        raise ValueError(
            f"{model.path} has no calibrated threshold; run `hfrjax verify --calibrate DATASET "
            f"--model {model.path} --far {far:g}` first, or give --threshold"
        )
    return found if found is not None else (None, None)


def _calibrate(model, args) -> int:
    from hfrjax.deploy.calibration import calibrate, save_calibration

    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    record = calibrate(
        model,
        args.calibrate,
        args.far or [1e-3],
        direction=args.direction,
        folds=folds,
        batch_size=args.batch_size,
    )
    path = save_calibration(model.path, record)
    if args.json:
        print(json.dumps(record, indent=1))
    else:
        print(
            f"calibrated on {record['protocol']} ({record['direction']}, folds "
            f"{record['folds']}): {record['num_genuine']} genuine, {record['num_impostor']} "
            "impostor pairs"
        )
        for e in record["thresholds"]:
            print(
                f"  FAR {e['far']:g}: threshold {e['threshold']:.6f} (achieved FAR "
                f"{e['achieved_far']:.3g}, TAR {e['tar']:.4f})"
            )
        print(f"saved to {path}")
    return 0


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    pairs = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2:
                raise ValueError(f"{path} line {lineno}: expected 'image_a,image_b'")
            a, b = (
                str(p if Path(p).is_absolute() else path.parent / p)
                for p in (row[0].strip(), row[1].strip())
            )
            pairs.append((a, b))
    if not pairs:
        raise ValueError(f"{path} lists no pairs")
    return pairs


@common.friendly_errors
def run(args: argparse.Namespace) -> int:
    import numpy as np

    from hfrjax.deploy.embed import embed_in_memory
    from hfrjax.deploy.inputs import single_images

    model = common.load(args.model)
    if args.calibrate:
        return _calibrate(model, args)
    if args.pairs:
        pairs = _read_pairs(Path(args.pairs))
    elif len(args.images) == 2:
        pairs = [tuple(args.images)]
    else:
        raise ValueError("give two images A B, --pairs FILE or --calibrate DATASET")
    files = list(dict.fromkeys(p for pair in pairs for p in pair))
    images = single_images(files)
    reader = common.reader_for(model, args, images)
    emb, skipped = embed_in_memory(
        model,
        images,
        reader,
        batch_size=args.batch_size,
        skip_bad=args.skip_bad,
        progress=not args.quiet and len(files) > args.batch_size,
        desc="verify",
    )
    row = {k: i for i, k in enumerate(emb.keys)}
    threshold, info = _threshold(model, args)
    results = []
    for a, b in pairs:
        if a not in row or b not in row:
            results.append({"a": a, "b": b, "score": None, "same": None})
            continue
        score = float(np.dot(emb.embeddings[row[a]], emb.embeddings[row[b]]))
        same = None if threshold is None else bool(score >= threshold)
        results.append({"a": a, "b": b, "score": score, "same": same})
    summary = {"threshold": threshold, "threshold_info": info, "skipped": skipped}
    if args.pairs:
        _write_pairs(results, args.out)
        if args.out:
            print(f"wrote {len(results)} pair scores to {args.out}", file=sys.stderr)
        return 0
    r = results[0]
    if args.json:
        print(json.dumps({**r, **summary}, indent=1))
    else:
        print(f"cosine similarity {r['score']:.4f}")
        if threshold is None:
            print(
                "no calibrated threshold: calibrate with `hfrjax verify --calibrate DATASET` "
                "or give --threshold"
            )
        else:
            far = f" (FAR {info['far']:g})" if info and "far" in info else ""
            print(f"{'SAME' if r['same'] else 'DIFFERENT'} at threshold {threshold:.4f}{far}")
    return 0


def _write_pairs(results: list[dict], out: str | None) -> None:
    if out and out.endswith(".json"):
        from hfrjax.fileio import write_text_atomic

        write_text_atomic(out, json.dumps(results, indent=1) + "\n")
        return
    f = open(out, "w", newline="", encoding="utf-8") if out else sys.stdout
    try:
        w = csv.DictWriter(f, fieldnames=["a", "b", "score", "same"])
        w.writeheader()
        for r in results:
            w.writerow({**r, "score": "" if r["score"] is None else f"{r['score']:.6f}"})
    finally:
        if out:
            f.close()
