"""FTL's under-represented training sets from a converted face dataset (CASIA-WebFace, MS1M).

Yin et al., "Feature Transfer Learning for Face Recognition with Under-Represented Data", §4.3:
"we use the top 60K regular classes, which contain the most images ... the top 10K classes are
selected as regular classes which are shared among all training sets ... Among the rest 50K
classes sorted by the number of images, we select the first 10K, 30K and 50K and randomly pick 5
images per class ... A hold-out testing set is formed by selecting 5 images from each of the
shared 10K regular classes and 10K UR classes."

Two ways, both seeded and reproducible, both writing new dataset directories (records copied,
not re-encoded; labels renumbered; every selected source key listed in ``keys.txt``):

* `build_table1_sets` (``--layout table1``): ``train_10K0K``, ``train_10K{10m}K`` for each UR
  multiple m, ``train_{10(1+max m)}K0K`` and ``holdout/`` (its ``dataset.json`` names the
  regular / UR classes, as `evaluation` reads them). Classes are ranked by image count (ties:
  by label); class i has label i in every set.
* `build_capped_set` (``--max_images_per_class N``, optionally ``--classes FILE`` or
  ``--num_classes K``): at most N random images of each (selected) class.

  python -m hfrjax.recipes.ftl.subsets --src=MS1M --out=MS1M_FTL --layout=table1 \\
      --num_regular=10000 --ur_multiples=1,3,5 --seed=0
  python -m hfrjax.recipes.ftl.subsets --src=CASIA --out=CASIA_5 --max_images_per_class=5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from hfrjax.data import tfrecord
from hfrjax.data.dataset import Dataset, DatasetInfo
from hfrjax.data.pipeline import RecordSource
from hfrjax.fileio import write_text_atomic

KEYS_FILE = "keys.txt"


@dataclasses.dataclass
class Selection:
    """Rows of the source table to write, and the new label of each source label."""

    rows: np.ndarray  # int64 source rows, in writing order.
    classes: list[int]  # Source labels in new-label order (new label i = classes[i]).
    extra: dict


def rank_classes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Source labels by image count, most first; ties by label."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
    return np.lexsort((np.arange(num_classes), -counts))


def _pick(rng_seed: Sequence[int], rows: np.ndarray, n: int) -> np.ndarray:
    """``n`` of ``rows`` drawn without replacement by a generator seeded with ``rng_seed``,
    in ascending row order."""
    rng = np.random.default_rng(list(rng_seed))
    return np.sort(rng.choice(rows, n, replace=False))


def plan_table1(
    labels: np.ndarray,
    num_classes: int,
    *,
    num_regular: int,
    ur_multiples: Sequence[int] = (1, 3, 5),
    ur_images: int = 5,
    holdout_images: int = 5,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> dict[str, Selection]:
    """The Table 1 sets (module docstring) as row selections of a source table's labels."""
    labels = np.asarray(labels, np.int64)
    mults = [int(m) for m in ur_multiples]
    if num_regular < 1 or not mults or mults != sorted(set(mults)) or mults[0] < 1:
        raise ValueError(
            f"need num_regular >= 1 and increasing UR multiples >= 1, got {num_regular}, {mults}"
        )
    n_ur = num_regular * mults[-1]
    ranked = rank_classes(labels, num_classes)
    if len(ranked) < num_regular + n_ur:
        raise ValueError(
            f"the source has {num_classes} classes; the layout needs {num_regular} regular + "
            f"{n_ur} UR classes"
        )
    chosen = ranked[: num_regular + n_ur]
    first_block = num_regular * (1 + mults[0])
    rows_of = {int(c): np.flatnonzero(labels == c) for c in chosen}
    name = (lambda c: class_names[c]) if class_names is not None else str
    holdout, train = {}, {}
    for i, c in enumerate(chosen.tolist()):
        rows = rows_of[c]
        need = (holdout_images if i < first_block else 0) + (ur_images if i >= num_regular else 1)
        if len(rows) < need:
            raise ValueError(
                f"class {name(c)} (label {c}, rank {i}) has {len(rows)} images; its role needs "
                f"{need} ({'regular' if i < num_regular else 'UR'}"
                f"{' with hold-out images' if i < first_block else ''})"
            )
        held = _pick((seed, 0, c), rows, holdout_images) if i < first_block else rows[:0]
        train[c] = np.setdiff1d(rows, held)
        holdout[c] = held
    ur_pick = {
        c: _pick((seed, 1, c), train[c], ur_images) for c in chosen[num_regular:].tolist()
    }
    base = {"source_ranking": "image count, most first; ties by label", "seed": seed}

    def selection(n_ur_classes: int, capped: bool, extra: dict) -> Selection:
        classes = chosen[: num_regular + n_ur_classes].tolist()
        parts = [
            ur_pick[c] if (capped and i >= num_regular) else train[c]
            for i, c in enumerate(classes)
        ]
        return Selection(np.concatenate(parts), classes, {**base, **extra})

    out = {"10K0K": selection(0, False, {"regular_classes": num_regular, "ur_classes": 0})}
    for m in mults:
        out[f"10K{10 * m}K"] = selection(
            m * num_regular, True,
            {"regular_classes": num_regular, "ur_classes": m * num_regular, "images_per_ur": ur_images},
        )
    out[f"{10 * (1 + mults[-1])}K0K"] = selection(
        n_ur, False, {"regular_classes": num_regular + n_ur, "ur_classes": 0, "upper_bound": True}
    )
    hold_classes = chosen[:first_block].tolist()
    out["holdout"] = Selection(
        np.concatenate([holdout[c] for c in hold_classes]),
        hold_classes,
        {**base, "regular_classes": num_regular, "ur_classes": first_block - num_regular,
         "holdout_images": holdout_images},
    )
    return out


def plan_capped(
    labels: np.ndarray,
    num_classes: int,
    *,
    max_images_per_class: int,
    classes: Sequence[int] | None = None,
    seed: int = 0,
) -> Selection:
    """At most ``max_images_per_class`` random images of each of ``classes`` (default all,
    in label order)."""
    labels = np.asarray(labels, np.int64)
    if max_images_per_class < 1:
        raise ValueError(f"max_images_per_class must be >= 1, got {max_images_per_class}")
    classes = list(range(num_classes)) if classes is None else [int(c) for c in classes]
    parts = []
    for c in classes:
        rows = np.flatnonzero(labels == c)
        if len(rows) == 0:
            raise ValueError(f"class label {c} has no images in the source")
        parts.append(rows if len(rows) <= max_images_per_class else _pick((seed, 2, c), rows, max_images_per_class))
    return Selection(
        np.concatenate(parts), classes,
        {"max_images_per_class": max_images_per_class, "seed": seed},
    )


def write_selection(
    src: Dataset, selection: Selection, out_dir: str | Path, name: str, *, num_shards: int = 8,
    overwrite: bool = False,
) -> DatasetInfo:
    """A new dataset directory with ``selection``'s records (labels renumbered, images and
    yaw copied), ``dataset.json`` (extra: the selection and its source) and ``keys.txt``."""
    out = Path(out_dir)
    if (out / "dataset.json").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset; pass overwrite=True (--overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("data-*.tfrecord*"):
        old.unlink()
    new_label = {c: i for i, c in enumerate(selection.classes)}
    source = RecordSource(src.records)
    modalities: dict[str, int] = {}
    with tfrecord.ShardedWriter(out, "data", max(1, min(num_shards, len(selection.rows)))) as w:
        for row in selection.rows.tolist():
            sample = tfrecord.decode_example(source[row])
            w.write(dataclasses.replace(sample, label=new_label[int(src.records.label[row])], dataset=name))
            modalities[sample.modality] = modalities.get(sample.modality, 0) + 1
    keys = [str(k) for k in src.records.key[selection.rows]]
    write_text_atomic(out / KEYS_FILE, "".join(k + "\n" for k in keys))
    info = DatasetInfo(
        name=name,
        shards=[p.name for p in w.paths],
        num_images=len(selection.rows),
        class_names=[src.info.class_names[c] for c in selection.classes],
        modalities=modalities,
        image_size=tuple(src.info.image_size),
        image_format=src.info.image_format,
        description=f"FTL subset of {src.info.name} ({src.directory}); source keys in {KEYS_FILE}.",
        extra={"source": str(src.directory), "source_name": src.info.name, **selection.extra},
    )
    info.save(out)
    return info


def build_table1_sets(src_dir: str | Path, out_dir: str | Path, *, num_shards: int = 8,
                      overwrite: bool = False, **plan_kwargs) -> dict[str, dict]:
    """`plan_table1` written as ``out_dir/train_<variant>/`` and ``out_dir/holdout/``."""
    src = Dataset.open(src_dir)
    plan = plan_table1(
        src.records.label, src.info.num_classes, class_names=src.info.class_names, **plan_kwargs
    )
    summary = {}
    for variant, sel in plan.items():
        sub = "holdout" if variant == "holdout" else f"train_{variant}"
        info = write_selection(
            src, sel, Path(out_dir) / sub, f"{src.info.name}_{variant}",
            num_shards=num_shards, overwrite=overwrite,
        )
        summary[sub] = {"images": info.num_images, "classes": info.num_classes, **sel.extra}
    write_text_atomic(Path(out_dir) / "subsets.json", json.dumps(summary, indent=1) + "\n")
    return summary


def build_capped_set(src_dir: str | Path, out_dir: str | Path, *, max_images_per_class: int,
                     classes_file: str | None = None, num_classes: int | None = None,
                     seed: int = 0, num_shards: int = 8, overwrite: bool = False) -> DatasetInfo:
    """`plan_capped` over the classes named in ``classes_file`` (one name a line) or the
    ``num_classes`` with the most images (default: all), written to ``out_dir``."""
    src = Dataset.open(src_dir)
    classes = None
    if classes_file and num_classes:
        raise ValueError("give classes_file or num_classes, not both")
    if classes_file:
        index = {n: i for i, n in enumerate(src.info.class_names)}
        classes = []
        for n, line in enumerate(Path(classes_file).read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                if line.strip() not in index:
                    raise ValueError(f"{classes_file}:{n}: class {line.strip()!r} is not in {src_dir}")
                classes.append(index[line.strip()])
    elif num_classes:
        classes = rank_classes(src.records.label, src.info.num_classes)[:num_classes].tolist()
    sel = plan_capped(
        src.records.label, src.info.num_classes, max_images_per_class=max_images_per_class,
        classes=classes, seed=seed,
    )
    return write_selection(
        src, sel, out_dir, f"{src.info.name}_max{max_images_per_class}",
        num_shards=num_shards, overwrite=overwrite,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the subsets command (for ``hfrjax convert ftl-subsets`` too)."""
    parser.add_argument("--src", required=True, help="a converted dataset directory")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--layout", choices=["table1", "capped"], default=None,
                        help="table1: FTL's Table 1 sets; capped: --max_images_per_class")
    parser.add_argument("--num_regular", type=int, default=10000)
    parser.add_argument("--ur_multiples", default="1,3,5")
    parser.add_argument("--ur_images", type=int, default=5)
    parser.add_argument("--holdout_images", type=int, default=5)
    parser.add_argument("--max_images_per_class", type=int, default=None)
    parser.add_argument("--classes", default=None, help="file of class names (capped layout)")
    parser.add_argument("--num_classes", type=int, default=None,
                        help="capped layout: the classes with the most images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    layout = args.layout or ("capped" if args.max_images_per_class else "table1")
    if layout == "capped":
        if not args.max_images_per_class:
            raise SystemExit("--layout=capped needs --max_images_per_class")
        info = build_capped_set(
            args.src, args.out, max_images_per_class=args.max_images_per_class,
            classes_file=args.classes, num_classes=args.num_classes, seed=args.seed,
            num_shards=args.shards, overwrite=args.overwrite,
        )
        print(json.dumps({"images": info.num_images, "classes": info.num_classes, **info.extra}, indent=1))
    else:
        summary = build_table1_sets(
            args.src, args.out, num_shards=args.shards, overwrite=args.overwrite,
            num_regular=args.num_regular,
            ur_multiples=[int(m) for m in args.ur_multiples.split(",")],
            ur_images=args.ur_images, holdout_images=args.holdout_images, seed=args.seed,
        )
        print(json.dumps(summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hfrjax.recipes.ftl.subsets", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
