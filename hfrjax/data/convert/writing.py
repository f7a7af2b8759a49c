"""The writing stage every image-file converter shares: the images, read and checked by
worker threads, as TFRecord shards + dataset.json (+ the protocol, pruned of skipped images),
``sources.tsv`` and ``conversion.json``; per-fold counts checked against the papers' numbers;
and `finish_conversion`, the common end of `convert_nirvis`, `convert_reid` and the thermal
converters.

What is written (see `hfrjax.data.dataset` for the directory layout): keys as the converter
gives them (`hfrjax.data.convert.common.relative_key`); labels 0..C-1 over the identity names
in natural sort order, ``class_names`` the identity names; images the source files' bytes
unchanged, BMP included (`hfrjax.data.augment.decode_image` and TensorFlow's ``decode_image``
both read BMP), so a stored image is byte-identical to its source and can be audited by hash;
the format is sniffed from the bytes, not the file name.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    SourceImage,
    check_image,
    check_on_bad,
    natural_key,
    show_some,
)
from hfrjax.data.dataset import INFO_FILE, DatasetInfo
from hfrjax.data.protocol import PROTOCOL_DIR, Fold, Protocol

SOURCES_FILE = "sources.tsv"
REPORT_FILE = "conversion.json"
SHARD_PREFIX = "data"
WRITER = "hfrjax.data.convert.folders.write_dataset"
"""The writer dataset.json names: `write_dataset`'s public path (the name it had when it lived
in `hfrjax.data.convert.folders`, which still exports it), so datasets stay byte-identical."""


# --------------------------------------------------------------------------------------------
# Writing.


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
            "converter": WRITER,
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
# Per-fold counts and how they compare with the papers'.

APPROX_TOLERANCE = 0.05  # "~N" in an expected count: within 5 %.


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


def named_fold_warnings(warnings: Sequence[str], names: Sequence[str]) -> list[str]:
    """`fold_warnings` with fold names for numbers, identical messages of several folds merged
    into one line ("folds all-search/1, all-search/2: ...")."""
    merged: dict[str, list[str]] = {}
    rest = []
    for w in warnings:
        m = re.match(r"^fold (\d+): (.*)$", w, re.S)
        if m is None:
            rest.append(w)
        else:
            merged.setdefault(m.group(2), []).append(names[int(m.group(1)) - 1])
    out = [
        f"fold{'s' if len(folds) > 1 else ''} {show_some(folds)}: {msg}"
        for msg, folds in merged.items()
    ]
    return out + rest


def _parse_expected(value: Any) -> tuple[int, bool]:
    if isinstance(value, str) and value.startswith("~"):
        return int(value[1:]), True
    return int(value), False


def count_matches(got: int, value: Any) -> bool:
    """Whether ``got`` agrees with an expected count (int exact, "~N" within 5 %)."""
    want, approx = _parse_expected(value)
    return abs(got - want) <= APPROX_TOLERANCE * want if approx else got == want


def compare_counts(
    expected: Mapping[str, Any],
    totals: Mapping[str, int],
    folds: Sequence[Mapping[str, int]],
    fold_names: Sequence[str] | None = None,
) -> list[str]:
    """Warnings for every count that differs from ``expected``. A per-fold expectation may be a
    mapping {part of the fold name: value}, the parts split at "/" and "|" ("all-search/3",
    "P_TB0|G_VB0-")."""
    out = [
        f"{name}: {got}, expected {expected[name]}"
        for name, got in totals.items()
        if name in expected and not count_matches(got, expected[name])
    ]
    for k, counts in enumerate(folds, start=1):
        label = fold_names[k - 1] if fold_names else str(k)
        bad = []
        for name, got in counts.items():
            want = expected.get(name)
            if isinstance(want, Mapping):
                want = next((want[p] for p in re.split(r"[/|]", label) if p in want), None)
            if want is not None and not count_matches(got, want):
                bad.append(f"{name} {got} (expected {want})")
        if bad:
            out.append(f"fold {label}: {', '.join(bad)}")
    return out


def format_fold_table(result: Mapping[str, Any]) -> str:
    """Per-fold counts of a `finish_conversion` result with named folds, as text."""
    columns: list[str] = []
    for f in result["folds"]:
        for c in f["counts"]:
            if c not in columns and c not in ("probe_ids_without_gallery", "gallery_ids"):
                columns.append(c)
    rows = [("fold", *columns)]
    for f in result["folds"]:
        rows.append((str(f["name"]), *(str(f["counts"].get(c, "-")) for c in columns)))
    head = (
        f"{result['dataset']}: {result['num_images']} images ({modality_counts(result)}), "
        f"{result['identities']} identities, {len(result['folds'])} fold(s)"
    )
    return text_table(head, rows)


def modality_counts(result: Mapping[str, Any]) -> str:
    """"vis 120, nir 240": the images per modality of a conversion summary."""
    return ", ".join(f"{m} {n}" for m, n in result["modalities"].items())


def text_table(head: str, rows: Sequence[Sequence[str]]) -> str:
    """``head`` over ``rows`` in left-aligned columns two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([head, *lines])


# --------------------------------------------------------------------------------------------
# A conversion from start to end.


@dataclasses.dataclass
class Conversion:
    """One conversion's input, output and options, and the skips and warnings it gathers."""

    root: Path
    out_dir: Path
    on_bad: str = "raise"
    num_shards: int = 8
    progress: bool = True
    workers: int = 4
    report: ConversionReport = dataclasses.field(default_factory=ConversionReport)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def write(
        self,
        name: str,
        images: Sequence[SourceImage],
        protocol: Protocol | None,
        dropped: Iterable[str],
        description: str,
        extra: Mapping[str, Any],
    ) -> WrittenDataset:
        """`write_dataset` with this conversion's options; ``extra`` after "source_root"."""
        return write_dataset(
            images,
            self.out_dir,
            name=name,
            num_shards=self.num_shards,
            on_bad=self.on_bad,
            report=self.report,
            warnings=self.warnings,
            protocol=protocol,
            dropped=dropped,
            description=description,
            extra={"source_root": str(self.root), **extra},
            progress=self.progress,
            workers=self.workers,
        )

    def print_outcome(self, name: str, table: str | None = None) -> None:
        """With ``progress``: ``table`` on stdout, the report and the warnings on stderr."""
        if not self.progress:
            return
        if table is not None:
            print(table)
        print(f"{name}: {self.report.summary()}", file=sys.stderr)
        for w in self.warnings:
            print(f"warning: {w}", file=sys.stderr)


def finish_conversion(
    conv: Conversion,
    name: str,
    images: Sequence[SourceImage],
    protocol: Protocol,
    dropped: Iterable[str],
    *,
    expected: Mapping[str, Any],
    extra: Mapping[str, Any],
    settings: Mapping[str, Any] | None = None,
    named_folds: bool = True,
    table: Callable[[Mapping[str, Any]], str] = format_fold_table,
) -> dict[str, Any]:
    """Writes a converted benchmark with its protocol and returns its summary, also written to
    ``conversion.json`` (and printed with ``table`` when ``conv.progress``): per-fold counts
    next to ``expected``, skipped files and warnings. ``settings`` are the summary entries
    after "on_bad" (a generated protocol's seed and spec); ``named_folds`` labels folds by the
    protocol's fold names (merging identical warnings) rather than by number."""
    description = f"{name} converted from {conv.root}: {protocol.description}"
    written = conv.write(name, images, protocol, dropped, description, extra)
    info, protocol = written.info, written.protocol
    counts = fold_counts(protocol, written.identity_of)
    if named_folds:
        names = [protocol.fold_name(k) for k in range(1, protocol.num_folds + 1)]
        conv.warnings += named_fold_warnings(fold_warnings(counts), names)
        folds = [
            {"fold": k, "name": n, "counts": c} for k, (n, c) in enumerate(zip(names, counts), 1)
        ]
    else:
        names = None
        conv.warnings += fold_warnings(counts)
        folds = [{"fold": k, "counts": c} for k, c in enumerate(counts, start=1)]
    totals = {
        "identities": info.num_classes,
        "num_folds": protocol.num_folds,
        **{f"{m}_images": n for m, n in info.modalities.items()},
    }
    conv.warnings += compare_counts(expected, totals, counts, names)
    result: dict[str, Any] = {
        "dataset": name,
        "root": str(conv.root),
        "out_dir": str(conv.out_dir),
        "on_bad": conv.on_bad,
        **(settings or {}),
        "protocol": protocol.name,
        "num_images": info.num_images,
        "identities": info.num_classes,
        "modalities": info.modalities,
        "expected": dict(expected),
        "folds": folds,
        "report": conv.report.to_json(),
        "warnings": conv.warnings,
    }
    write_report(conv.out_dir, result)
    conv.print_outcome(name, table(result) if conv.progress else None)
    return result
