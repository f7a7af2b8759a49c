"""Users' own image folders -> an hfrjax dataset, and the writing stage that every image-file
converter shares (`write_dataset`, also used by `hfrjax.data.convert.nirvis`).

Two input layouts:

* ``layout="tree"``: ``root/<identity>/<modality>/**/<file>.{jpg,jpeg,png,bmp}``; the modality
  folder's name is looked up case-insensitively in `MODALITY_ALIASES` (vis/rgb/visible -> "vis",
  nir/ir -> "nir", thermal/lwir -> "thermal"). Any other folder name is an error naming it and the allowed names.
* ``layout="csv"``: a CSV file with a header holding the columns ``path,identity,modality``
  (``path`` relative to ``root`` or absolute under it; modality names as above).

What is written (see `hfrjax.data.dataset` for the directory layout):

* keys: the file's path relative to ``root`` with '/' separators and without extension
  (``alice/nir/0001``), stable across runs and unique;
* labels: 0..C-1 over the identity names in natural sort order (``id2`` before ``id10``);
  ``class_names`` are the identity names;
* images: the source file's bytes unchanged, BMP included (`hfrjax.data.augment.decode_image`
  and TensorFlow's ``decode_image`` both read BMP), so a stored image is byte-identical to its
  source and can be audited by hash; the format is sniffed from the bytes, not the file name;
* ``sources.tsv``: key -> source path and format; ``conversion.json``: counts, skipped files
  and warnings. No protocol unless one is given (a `Protocol` or a directory holding
  ``protocols/protocol.json``, as `Protocol.save` writes it, with keys as above).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import csv
import dataclasses
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from hfrjax import fileio
from hfrjax.data import tfrecord
from hfrjax.data.convert.common import (
    SHOW,
    ConversionError,
    ConversionReport,
    ProgressLine,
    check_image,
    check_on_bad,
    missing_files_error,
)
from hfrjax.data.dataset import INFO_FILE, DatasetInfo
from hfrjax.data.protocol import PROTOCOL_DIR, Fold, Protocol

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
"""File name endings read as images (case-insensitive); other files are ignored and counted."""

MODALITY_ALIASES = {
    "vis": "vis",
    "rgb": "vis",
    "visible": "vis",
    "nir": "nir",
    "ir": "nir",  # Folders named "IR" in NIR-VIS data hold near infrared.
    "thermal": "thermal",  # Long-wave (thermal) infrared.
    "lwir": "thermal",
}
"""Modality folder / CSV value (lower-cased) -> stored modality name."""

LAYOUTS = ("tree", "csv")
CSV_COLUMNS = ("path", "identity", "modality")
SOURCES_FILE = "sources.tsv"
REPORT_FILE = "conversion.json"
SHARD_PREFIX = "data"


# --------------------------------------------------------------------------------------------
# Shared pieces.


@dataclasses.dataclass(frozen=True)
class SourceImage:
    """One image file to convert and the metadata it gets."""

    path: Path  # The file on disk.
    source: str  # Its path relative to the input root, '/'-separated (for sources.tsv).
    key: str
    identity: str
    modality: str


def relative_key(rel: str) -> str:
    """The sample key of a relative path: '/' separators, no extension.

    ``s2\\NIR\\10153\\001.bmp`` -> ``s2/NIR/10153/001``.
    """
    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"not a relative file path: {rel!r}")
    stem, dot, _ = parts[-1].rpartition(".")
    return "/".join([*parts[:-1], stem if dot and stem else parts[-1]])


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value ("id2" < "id10"); ties broken by the name."""
    parts = re.split(r"(\d+)", name)  # Alternates text, digits, text, ...: types line up.
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), name


def map_modality(name: str, where: str) -> str:
    """The stored modality of a folder name or CSV value; ConversionError naming ``where``."""
    modality = MODALITY_ALIASES.get(name.strip().lower())
    allowed = [a for a, m in MODALITY_ALIASES.items() if m in tfrecord.MODALITIES]
    if modality is None:
        raise ConversionError(
            f"{where}: unknown modality {name!r}; allowed (case-insensitive): {', '.join(allowed)}"
        )
    if modality not in tfrecord.MODALITIES:
        raise ConversionError(
            f"{where}: modality {name!r} maps to {modality!r}, which the library does not "
            f"store (hfrjax.data.tfrecord.MODALITIES = {tfrecord.MODALITIES}); allowed names "
            f"(case-insensitive): {', '.join(allowed)}"
        )
    return modality


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


@dataclasses.dataclass
class _Loaded:
    data: bytes | None
    image_format: str | None
    size: tuple[int, int] | None  # (height, width)
    error: str | None  # "unreadable file: ..." or "undecodable image"


def _load(image: SourceImage) -> _Loaded:
    """Reads and decode-checks one file (runs in a worker thread; never raises)."""
    try:
        data = image.path.read_bytes()
    except OSError as e:
        return _Loaded(None, None, None, f"unreadable file ({e})")
    fmt = check_image(data, str(image.path), "skip", ConversionReport())
    if fmt is None:
        return _Loaded(data, None, None, "undecodable image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            size = (im.height, im.width)
    except Exception:  # noqa: BLE001 - the size is only a statistic.
        size = None
    return _Loaded(data, fmt, size, None)


def clear_outputs(out_dir: Path) -> None:
    """Removes what an earlier conversion wrote to ``out_dir`` (and nothing else), so the
    directory ends up holding exactly what the new dataset.json and protocol list."""
    for pattern in (f"{SHARD_PREFIX}-*-of-*{tfrecord.SHARD_SUFFIX}*", INFO_FILE):
        for p in out_dir.glob(pattern):
            p.unlink()
    for name in (REPORT_FILE, SOURCES_FILE):
        (out_dir / name).unlink(missing_ok=True)
    pdir = out_dir / PROTOCOL_DIR
    if pdir.is_dir():
        for pattern in ("*_train_*.txt", "*_gallery_*.txt", "*_probe_*.txt", "protocol.json"):
            for p in pdir.glob(pattern):
                p.unlink()


def check_out_dir(root: Path, out_dir: Path, scans_root: bool) -> None:
    """Refuses to write into the input: a tree scan would read our own output next time."""
    r, o = root.resolve(), out_dir.resolve()
    if o == r or (scans_root and r in o.parents):
        raise ConversionError(
            f"output directory {out_dir} lies inside the input root {root}; choose another"
        )


def prune_protocol(protocol: Protocol, keep: set[str], warnings: list[str]) -> Protocol:
    """``protocol`` without the keys not in ``keep`` (skipped images); each removal is warned."""
    folds = []
    for k, fold in enumerate(protocol.folds, start=1):
        lists = {f"train {m}": keys for m, keys in fold.train.items()}
        lists.update(gallery=fold.gallery, probes=fold.probe)
        removed = {name: sum(x not in keep for x in keys) for name, keys in lists.items()}
        if any(removed.values()):
            what = ", ".join(f"{name} {n}" for name, n in removed.items() if n)
            warnings.append(f"fold {k}: removed skipped image(s) from the protocol lists ({what})")
        folds.append(
            Fold(
                train={m: [x for x in keys if x in keep] for m, keys in fold.train.items()},
                gallery=[x for x in fold.gallery if x in keep],
                probe=[x for x in fold.probe if x in keep],
            )
        )
    return dataclasses.replace(protocol, folds=folds)


def fold_counts(protocol: Protocol, identity_of: dict[str, str]) -> list[dict[str, int]]:
    """Per fold: identities and images of the train lists, gallery and probes."""
    out = []
    for fold in protocol.folds:
        train_ids = {identity_of[x] for keys in fold.train.values() for x in keys}
        gallery_ids = {identity_of[x] for x in fold.gallery}
        probe_ids = {identity_of[x] for x in fold.probe}
        counts = {"train_ids": len(train_ids)}
        counts.update({f"train_{m}": len(keys) for m, keys in sorted(fold.train.items())})
        counts.update(
            test_ids=len(gallery_ids | probe_ids),
            gallery=len(fold.gallery),
            probes=len(fold.probe),
            gallery_ids=len(gallery_ids),
            probe_ids_without_gallery=len(probe_ids - gallery_ids),
            train_test_shared_ids=len(train_ids & (gallery_ids | probe_ids)),
        )
        out.append(counts)
    return out


def fold_warnings(counts: Sequence[dict[str, int]]) -> list[str]:
    """What looks wrong in per-fold counts (overlapping identities, probes without gallery)."""
    out = []
    for k, c in enumerate(counts, start=1):
        if c["train_test_shared_ids"]:
            out.append(
                f"fold {k}: {c['train_test_shared_ids']} identities are in both the train and "
                "the test lists"
            )
        if c["probe_ids_without_gallery"]:
            out.append(
                f"fold {k}: {c['probe_ids_without_gallery']} probe identities have no gallery "
                "image (their probes only give impostor pairs)"
            )
        if not c["gallery"] or not c["probes"]:
            out.append(f"fold {k}: {c['gallery']} gallery and {c['probes']} probe images")
    return out


@dataclasses.dataclass
class WrittenDataset:
    """What `write_dataset` wrote."""

    info: DatasetInfo
    identity_of: dict[str, str]  # Written key -> identity.
    protocol: Protocol | None  # Pruned of skipped keys; None if none was given.
    skipped_keys: set[str]


def write_dataset(
    images: Sequence[SourceImage],
    out_dir: str | os.PathLike,
    *,
    name: str,
    num_shards: int,
    on_bad: str,
    report: ConversionReport,
    warnings: list[str],
    protocol: Protocol | None = None,
    dropped: Iterable[str] = (),
    description: str = "",
    extra: dict[str, Any] | None = None,
    progress: bool = True,
    workers: int = 4,
) -> WrittenDataset:
    """Writes ``images`` as shards + dataset.json (+ ``protocol``, pruned of skipped images).

    Images are read and decode-checked by ``workers`` threads and written in natural key
    order, so a conversion is byte-for-byte reproducible. An undecodable or unreadable file
    raises `ConversionError` (``on_bad="raise"``) or is counted in ``report`` and dropped from
    the protocol with a warning (``on_bad="skip"``). ``dropped`` are keys already skipped by
    the caller (missing files) that the protocol may still name. Labels are assigned over the
    identities of ``images`` before reading, so an identity whose every image turns out
    undecodable keeps an unused label (warned). dataset.json is written last: a directory
    with one is complete.
    """
    check_on_bad(on_bad)
    out_dir = Path(out_dir)
    images = sorted(images, key=lambda s: natural_key(s.key))
    seen: dict[str, SourceImage] = {}
    for s in images:
        if s.key in seen:
            raise ConversionError(
                f"two files map to the sample key {s.key!r}: {seen[s.key].path} and {s.path} "
                "(keys are paths without extension)"
            )
        seen[s.key] = s
    dropped = set(dropped)
    if protocol is not None:
        unknown = [
            x
            for f in protocol.folds
            for x in (*f.train_keys, *f.gallery, *f.probe)
            if x not in seen and x not in dropped
        ]
        if unknown:
            unknown = list(dict.fromkeys(unknown))
            raise ConversionError(
                f"protocol {protocol.name!r} names {len(unknown)} key(s) that are not among "
                f"the images to convert, e.g. {unknown[:SHOW]}"
            )
    if not images:
        raise ConversionError(f"no images to convert into {out_dir}")
    identities = sorted({s.identity for s in images}, key=natural_key)
    label = {ident: i for i, ident in enumerate(identities)}

    out_dir.mkdir(parents=True, exist_ok=True)
    clear_outputs(out_dir)
    line = ProgressLine(len(images), f"convert {name}") if progress else None
    modalities: collections.Counter = collections.Counter()
    formats: collections.Counter = collections.Counter()
    sizes: collections.Counter = collections.Counter()
    written: dict[str, str] = {}
    sources = ["key\tsource\tformat"]
    skipped: set[str] = set()
    chunk = 64
    with (
        concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool,
        tfrecord.ShardedWriter(out_dir, SHARD_PREFIX, num_shards) as writer,
    ):
        for start in range(0, len(images), chunk):
            batch = images[start : start + chunk]
            for s, got in zip(batch, pool.map(_load, batch)):
                if got.error is not None:
                    if on_bad == "raise":
                        if got.data is not None:  # Raises with the decoder's message.
                            check_image(got.data, str(s.path), "raise", report)
                        raise ConversionError(
                            f"{s.path}: {got.error}; pass on_bad='skip' (--on_bad=skip) to "
                            "skip and count such files"
                        )
                    report.skip(got.error.split(" (")[0], str(s.path))
                    skipped.add(s.key)
                    continue
                writer.write(
                    tfrecord.Sample(
                        image=got.data,
                        label=label[s.identity],
                        modality=s.modality,
                        identity=s.identity,
                        key=s.key,
                        dataset=name,
                        image_format=got.image_format,
                    )
                )
                written[s.key] = s.identity
                modalities[s.modality] += 1
                formats[got.image_format] += 1
                if got.size is not None:
                    sizes[got.size] += 1
                sources.append(f"{s.key}\t{s.source}\t{got.image_format}")
            if line is not None:
                line.update(start + len(batch), force=start + len(batch) == len(images))
        if not written:
            raise ConversionError(
                f"every one of the {len(images)} images was skipped ({report.summary()})"
            )
    report.written += len(written)

    kept = set(written.values())
    empty = [i for i in identities if i not in kept]
    if empty:
        warnings.append(
            f"{len(empty)} identities lost every image to skipping and keep unused labels, "
            f"e.g. {empty[:SHOW]}"
        )
    if protocol is not None:
        protocol = prune_protocol(protocol, set(written), warnings)
    (size, _), *others = sizes.most_common() or [((0, 0), 0)]
    if others:
        shown = ", ".join(f"{h}x{w}: {n}" for (h, w), n in sizes.most_common(SHOW))
        warnings.append(
            f"{len(sizes)} distinct image sizes (HxW: count; {shown}); dataset.json records "
            f"the most common, {size[0]}x{size[1]}: set the input pipeline's image_size so "
            "batches share one size"
        )
    info = DatasetInfo(
        name=name,
        shards=[p.name for p in writer.paths],
        num_images=len(written),
        class_names=identities,
        modalities={m: modalities[m] for m in tfrecord.MODALITIES if modalities[m]},
        image_size=size,
        image_format=next(iter(formats)) if len(formats) == 1 else "mixed",
        description=description,
        extra={
            **(extra or {}),
            "converter": f"{__name__}.write_dataset",
            "image_formats": dict(sorted(formats.items())),
            "image_sizes": {f"{h}x{w}": n for (h, w), n in sizes.most_common(20)},
            "skipped": report.num_skipped,
            "sources": SOURCES_FILE,
        },
    )
    fileio.write_text_atomic(out_dir / SOURCES_FILE, "\n".join(sources) + "\n")
    if protocol is not None:
        protocol.save(out_dir)
    info.save(out_dir)
    return WrittenDataset(info, written, protocol, skipped | dropped)


def write_report(out_dir: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Writes ``result`` as ``conversion.json`` (atomically)."""
    path = Path(out_dir) / REPORT_FILE
    fileio.write_text_atomic(path, json.dumps(result, indent=1, default=str) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# Users' folders.


def _scan_tree(root: Path, on_bad: str, report: ConversionReport, warnings: list[str]):
    images, stray, ignored = [], [], []
    for ident_dir in sorted(root.iterdir(), key=lambda p: natural_key(p.name)):
        if ident_dir.name.startswith("."):
            continue
        if not ident_dir.is_dir():
            ignored.append(str(ident_dir))
            continue
        for mod_dir in sorted(ident_dir.iterdir(), key=lambda p: natural_key(p.name)):
            if mod_dir.name.startswith("."):
                continue
            if not mod_dir.is_dir():
                (stray if is_image_file(mod_dir) else ignored).append(str(mod_dir))
                continue
            modality = map_modality(mod_dir.name, f"modality folder {mod_dir}")
            for f in sorted(mod_dir.rglob("*"), key=lambda p: natural_key(str(p))):
                if f.is_dir() or any(part.startswith(".") for part in f.relative_to(root).parts):
                    continue
                if not is_image_file(f):
                    ignored.append(str(f))
                    continue
                rel = f.relative_to(root).as_posix()
                images.append(SourceImage(f, rel, relative_key(rel), ident_dir.name, modality))
    if stray:
        if on_bad == "raise":
            raise ConversionError(
                f"{len(stray)} image(s) lie directly in an identity folder instead of "
                f"<identity>/<modality>/ under {root}, e.g. {stray[:SHOW]}; move them, or pass "
                "on_bad='skip' to skip and count them"
            )
        for p in stray:
            report.skip("not in an <identity>/<modality>/ folder", p)
    if ignored:
        warnings.append(
            f"ignored {len(ignored)} non-image file(s) (not {'/'.join(IMAGE_EXTENSIONS)}), "
            f"e.g. {ignored[:SHOW]}"
        )
    return images


def _scan_csv(root: Path, csv_path: Path, on_bad: str, report: ConversionReport):
    if not csv_path.is_file():
        raise ConversionError(f"CSV file {csv_path} does not exist")
    images, missing, first_line = [], [], {}
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ConversionError(f"{csv_path}: empty file; expected a header {CSV_COLUMNS}")
        cols = {h.strip().lower(): i for i, h in enumerate(header)}
        absent = [c for c in CSV_COLUMNS if c not in cols]
        if absent:
            raise ConversionError(
                f"{csv_path}:1: header {header} lacks the column(s) {absent}; expected "
                f"{','.join(CSV_COLUMNS)}"
            )
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise ConversionError(f"{where}: {len(row)} field(s), the header has {len(header)}")
            path, identity, modality = (row[cols[c]].strip() for c in CSV_COLUMNS)
            for col, value in zip(CSV_COLUMNS, (path, identity, modality)):
                if not value:
                    raise ConversionError(f"{where}: empty {col!r}")
            modality = map_modality(modality, where)
            full = Path(path) if os.path.isabs(path) else root / path.replace("\\", "/")
            try:
                rel = full.resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                raise ConversionError(f"{where}: {path} is not under the root {root}") from None
            if rel in first_line:
                raise ConversionError(
                    f"{where}: {path} is listed again (first at line {first_line[rel]})"
                )
            first_line[rel] = reader.line_num
            if not full.is_file():
                missing.append((str(full), rel))
                continue
            images.append(SourceImage(full, rel, relative_key(rel), identity, modality))
    if missing:
        if on_bad == "raise":
            raise missing_files_error([p for p, _ in missing], str(csv_path))
        for p, _ in missing:
            report.skip("missing file", p)
    return images, [relative_key(rel) for _, rel in missing]


def _load_protocol(protocol: Protocol | str | os.PathLike) -> Protocol:
    if isinstance(protocol, Protocol):
        return protocol
    path = Path(protocol)
    if (path / "protocol.json").is_file() and path.name == PROTOCOL_DIR:
        path = path.parent
    try:
        return Protocol.load(path)
    except FileNotFoundError as e:
        raise ConversionError(f"protocol {protocol}: {e}") from e


def convert_folder(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    layout: str = "tree",
    csv_path: str | os.PathLike | None = None,
    num_shards: int = 8,
    on_bad: str = "raise",
    protocol: Protocol | str | os.PathLike | None = None,
    name: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Converts a user's image folder (``layout="tree"``) or CSV listing (``layout="csv"``)
    to an hfrjax dataset in ``out_dir``; see the module docstring for the layouts.

    ``protocol`` (a `Protocol` or a dataset/protocols directory written by `Protocol.save`)
    must name keys of the converted images; skipped ones are removed from it with a warning.
    Returns the summary also written to ``out_dir/conversion.json``.
    """
    check_on_bad(on_bad)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise ConversionError(f"input root {root} is not a directory")
    report, warnings = ConversionReport(), []
    dropped: list[str] = []
    if layout == "tree":
        if csv_path is not None:
            raise ValueError("csv_path is only read with layout='csv'")
        check_out_dir(root, out_dir, scans_root=True)
        images = _scan_tree(root, on_bad, report, warnings)
        if not images:
            raise ConversionError(
                f"no images found under {root} in the layout <identity>/<modality>/<file> "
                f"with extensions {IMAGE_EXTENSIONS}"
            )
    else:
        if csv_path is None:
            raise ValueError("layout='csv' needs csv_path")
        check_out_dir(root, out_dir, scans_root=False)
        images, dropped = _scan_csv(root, Path(csv_path), on_bad, report)
    proto = None if protocol is None else _load_protocol(protocol)
    name = name or root.resolve().name
    written = write_dataset(
        images,
        out_dir,
        name=name,
        num_shards=num_shards,
        on_bad=on_bad,
        report=report,
        warnings=warnings,
        protocol=proto,
        dropped=dropped,
        description=f"converted from {layout} layout at {root}",
        extra={"source_root": str(root), "layout": layout},
        progress=progress,
    )
    result: dict[str, Any] = {
        "dataset": name,
        "root": str(root),
        "out_dir": str(out_dir),
        "layout": layout,
        "csv": None if csv_path is None else str(csv_path),
        "on_bad": on_bad,
        "num_images": written.info.num_images,
        "identities": written.info.num_classes,
        "modalities": written.info.modalities,
        "report": report.to_json(),
    }
    if written.protocol is not None:
        counts = fold_counts(written.protocol, written.identity_of)
        warnings += fold_warnings(counts)
        result["protocol"] = written.protocol.name
        result["folds"] = [{"fold": k, "counts": c} for k, c in enumerate(counts, start=1)]
    result["warnings"] = warnings
    write_report(out_dir, result)
    if progress:
        print(f"{name}: {report.summary()}", file=sys.stderr)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
    return result


# --------------------------------------------------------------------------------------------
# Command line (wired by hfrjax.cli as ``hfrjax convert folder``).


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hfrjax convert folder``."""
    parser.add_argument("--root", required=True, help="input folder (root/<identity>/<modality>/)")
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument(
        "--csv", default=None, help="CSV with columns path,identity,modality (csv layout)"
    )
    parser.add_argument("--shards", type=int, default=8, help="number of TFRecord shards")
    parser.add_argument(
        "--on_bad",
        default="raise",
        choices=["raise", "skip"],
        help="missing/undecodable images: fail, or skip and count them",
    )
    parser.add_argument(
        "--protocol", default=None, help="directory with protocols/protocol.json to attach"
    )
    parser.add_argument("--name", default=None, help="dataset name (default: the root's name)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    """Runs ``hfrjax convert folder``; 0 on success, 2 with a message on bad input."""
    try:
        result = convert_folder(
            args.root,
            args.out,
            layout="csv" if args.csv else "tree",
            csv_path=args.csv,
            num_shards=args.shards,
            on_bad=args.on_bad,
            protocol=args.protocol,
            name=args.name,
            progress=not args.quiet,
        )
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {result['num_images']} images of {result['identities']} identities to "
        f"{args.out} ({', '.join(f'{m} {n}' for m, n in result['modalities'].items())})"
    )
    return 0
