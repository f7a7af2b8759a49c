"""Users' own image folders -> an hfrjax dataset.

Two input layouts:

* ``layout="tree"``: ``root/<identity>/<modality>/**/<file>.{jpg,jpeg,png,bmp}``; the modality
  folder's name is looked up case-insensitively in `MODALITY_ALIASES` (vis/rgb/visible -> "vis",
  nir/ir -> "nir", thermal/lwir -> "thermal"). Any other folder name is an error naming it and
  the allowed names.
* ``layout="csv"``: a CSV file with a header holding the columns ``path,identity,modality``
  (``path`` relative to ``root`` or absolute under it; modality names as above).

What is written (`hfrjax.data.convert.writing.write_dataset`, which every image-file converter
shares and this module still exports; see `hfrjax.data.dataset` for the directory layout):

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
import os
from pathlib import Path
from typing import Any

from hfrjax.data import tfrecord
from hfrjax.data.convert.common import (  # noqa: F401 - SourceImage ... re-exported.
    IMAGE_EXTENSIONS,
    SHOW,
    ConversionError,
    ConversionReport,
    SourceImage,
    add_io_arguments,
    add_output_arguments,
    check_on_bad,
    check_out_dir,
    converter_options,
    csv_rows,
    input_root,
    is_image_file,
    missing_files_error,
    natural_key,
    relative_key,
    run_converter,
)
from hfrjax.data.convert.writing import (  # noqa: F401 - the writing stage, re-exported.
    REPORT_FILE,
    SHARD_PREFIX,
    SOURCES_FILE,
    Conversion,
    WrittenDataset,
    clear_outputs,
    fold_counts,
    fold_warnings,
    modality_counts,
    prune_protocol,
    write_dataset,
    write_report,
)
from hfrjax.data.protocol import PROTOCOL_DIR, Protocol

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
    for where, line_num, (path, identity, modality) in csv_rows(csv_path, CSV_COLUMNS, CSV_COLUMNS):
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
        first_line[rel] = line_num
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
    conv = Conversion(input_root(root, "input"), Path(out_dir), on_bad, num_shards, progress)
    root, out_dir, report, warnings = conv.root, conv.out_dir, conv.report, conv.warnings
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
    description = f"converted from {layout} layout at {root}"
    written = conv.write(name, images, proto, dropped, description, {"layout": layout})
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
    conv.print_outcome(name)
    return result


# --------------------------------------------------------------------------------------------
# Command line (wired by hfrjax.cli as ``hfrjax convert folder``).


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hfrjax convert folder``."""
    add_io_arguments(parser, "input folder (root/<identity>/<modality>/)")
    parser.add_argument(
        "--csv", default=None, help="CSV with columns path,identity,modality (csv layout)"
    )
    add_output_arguments(parser, "missing/undecodable images: fail, or skip and count them")
    parser.add_argument(
        "--protocol", default=None, help="directory with protocols/protocol.json to attach"
    )
    parser.add_argument("--name", default=None, help="dataset name (default: the root's name)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    """Runs ``hfrjax convert folder``; 0 on success, 2 with a message on bad input."""

    def summary(result: dict[str, Any]) -> None:
        print(
            f"wrote {result['num_images']} images of {result['identities']} identities to "
            f"{args.out} ({modality_counts(result)})"
        )

    return run_converter(
        convert_folder,
        args.root,
        args.out,
        layout="csv" if args.csv else "tree",
        csv_path=args.csv,
        protocol=args.protocol,
        name=args.name,
        then=summary,
        **converter_options(args),
    )
