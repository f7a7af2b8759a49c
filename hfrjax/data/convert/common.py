"""What every converter shares: the bad-input policy and its reports, progress lines, finding
and naming the input images, and the command-line plumbing.

Bad input is never dropped silently: a missing file or an undecodable image is either fatal
(``on_bad="raise"``, the default) or skipped *and counted* (``on_bad="skip"``), and every
converter ends with a `ConversionReport` that names counts and the first few offenders.
Writing the dataset (shards, dataset.json, protocol, conversion.json) is
`hfrjax.data.convert.writing`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from hfrjax.data import augment
from hfrjax.data.protocol import Fold, Protocol

ON_BAD = ("raise", "skip")
SHOW = 5  # Offending paths named in messages.


class ConversionError(ValueError):
    """Input a converter cannot use; the message names the file(s), record or value."""


def check_on_bad(on_bad: str) -> str:
    if on_bad not in ON_BAD:
        raise ValueError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
    return on_bad


def sniff_format(data: bytes) -> str:
    """ "jpeg" | "png" | "bmp" from the leading bytes (not the file name, which lies: CASIA)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    return "unknown"


def show_some(items: Sequence) -> str:
    """The first few items, comma-separated, and how many more there are."""
    more = f" (and {len(items) - SHOW} more)" if len(items) > SHOW else ""
    return ", ".join(map(str, items[:SHOW])) + more


def missing_files_error(missing: Sequence[str], what: str) -> ConversionError:
    """An error naming how many files are missing and the first few."""
    return ConversionError(
        f"{len(missing)} file(s) listed in {what} do not exist: {show_some(missing)}"
    )


@dataclasses.dataclass
class ConversionReport:
    """Counts of what a conversion wrote and what it skipped, by reason."""

    written: int = 0
    skipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        self.skipped.setdefault(reason, []).append(where)

    @property
    def num_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def summary(self) -> str:
        parts = [f"{self.written} image(s) written"]
        for reason, where in self.skipped.items():
            shown = ", ".join(where[:SHOW]) + (" ..." if len(where) > SHOW else "")
            parts.append(f"{len(where)} skipped ({reason}: {shown})")
        return "; ".join(parts)

    def to_json(self) -> dict:
        return {
            "written": self.written,
            "skipped": {k: {"count": len(v), "first": v[:SHOW]} for k, v in self.skipped.items()},
        }


def check_image(data: bytes, where: str, on_bad: str, report: ConversionReport) -> str | None:
    """The image's format if ``data`` decodes; else raise (on_bad="raise") or count and return
    None (on_bad="skip"). ``where`` names the file or record in messages."""
    fmt = sniff_format(data)
    try:
        if fmt == "unknown":
            raise augment.ImageDecodeError("not a JPEG, PNG or BMP file")
        augment.decode_image(data)
    except Exception as e:  # noqa: BLE001 - any decoder failure is the same bad-input case.
        if on_bad == "raise":
            raise ConversionError(
                f"{where}: cannot decode the image ({e}); pass on_bad='skip' "
                "(--on_bad=skip) to skip and count such images"
            ) from e
        report.skip("undecodable image", where)
        return None
    return fmt


class ProgressLine:
    """A throttled "name: done/total (pct) rate/s ETA" line for long conversions."""

    def __init__(self, total: int, name: str, every_s: float = 2.0, stream: TextIO | None = None):
        self.total, self.name, self.every = total, name, every_s
        self.stream = stream or sys.stderr
        self._t0 = self._last = time.perf_counter()

    def update(self, done: int, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < self.every:
            return
        self._last = now
        rate = done / max(now - self._t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        pct = 100.0 * done / max(self.total, 1)
        eta_s = f"{eta / 60:.1f} min" if eta != float("inf") else "?"
        print(
            f"{self.name}: {done}/{self.total} ({pct:.1f}%) {rate:.0f}/s ETA {eta_s}",
            file=self.stream,
            flush=True,
        )


# --------------------------------------------------------------------------------------------
# Input images.

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
"""File name endings read as images (case-insensitive); other files are ignored and counted."""


@dataclasses.dataclass(frozen=True)
class SourceImage:
    """One image file to convert and the metadata it gets."""

    path: Path  # The file on disk.
    source: str  # Its path relative to the input root, '/'-separated (for sources.tsv).
    key: str
    identity: str
    modality: str


def relative_parts(path: str) -> list[str] | None:
    """The components of a relative path written with '/' or '\\' ('.' and empty ones
    dropped); None if nothing is left or a component is '..'."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return None if not parts or ".." in parts else parts


def relative_key(rel: str) -> str:
    """The sample key of a relative path: '/' separators, no extension.

    ``s2\\NIR\\10153\\001.bmp`` -> ``s2/NIR/10153/001``.
    """
    parts = relative_parts(rel)
    if parts is None:
        raise ValueError(f"not a relative file path: {rel!r}")
    stem, dot, _ = parts[-1].rpartition(".")
    return "/".join([*parts[:-1], stem if dot and stem else parts[-1]])


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value ("id2" < "id10"); ties broken by the name."""
    parts = re.split(r"(\d+)", name)  # Alternates text, digits, text, ...: types line up.
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), name


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def input_root(root: str | Path, what: str) -> Path:
    """``root`` as a Path; ConversionError "<what> root ... is not a directory" otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise ConversionError(f"{what} root {root} is not a directory")
    return root


def check_out_dir(root: Path, out_dir: Path, scans_root: bool) -> None:
    """Refuses to write into the input: a tree scan would read our own output next time."""
    r, o = root.resolve(), out_dir.resolve()
    if o == r or (scans_root and r in o.parents):
        raise ConversionError(
            f"output directory {out_dir} lies inside the input root {root}; choose another"
        )


def subdirs(d: Path) -> dict[str, Path]:
    """Non-hidden subfolders of ``d`` by lower-cased name, in natural order."""
    out: dict[str, Path] = {}
    for p in sorted(d.iterdir(), key=lambda p: natural_key(p.name)):
        if p.is_dir() and not p.name.startswith("."):
            out.setdefault(p.name.lower(), p)
    return out


def files_in(d: Path) -> list[Path]:
    """Non-hidden files of ``d`` in natural order."""
    return sorted(
        (p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )


def nested_root_hint(top: Mapping[str, Path], child: str) -> str:
    """"; pass <folder> as the root" when a folder of ``top`` holds ``child`` (the dataset was
    unpacked one level deeper than the root given), else ""."""
    inner = [str(d) for d in top.values() if child.lower() in subdirs(d)]
    return f"; pass {inner[0]} as the root" if inner else ""


# --------------------------------------------------------------------------------------------
# Images named by list files.


class CaseResolver:
    """Finds a listed relative path: as listed, then with each of ``extensions`` for its own,
    then matching the names case-insensitively (lists written on Windows; the first name in
    sorted order where two differ only in case)."""

    def __init__(self, root: Path, extensions: Sequence[str] = ()):
        self.root, self.extensions = root, tuple(extensions)
        self._listings: dict[Path, dict[str, str]] = {}

    def _listing(self, d: Path) -> dict[str, str]:
        if d not in self._listings:
            try:
                names = sorted(os.listdir(d))
            except OSError:
                names = []
            listing: dict[str, str] = {}
            for n in names:
                listing.setdefault(n.lower(), n)
            self._listings[d] = listing
        return self._listings[d]

    def __call__(self, parts: Sequence[str]) -> Path | None:
        path = self.root.joinpath(*parts)
        stem = Path(parts[-1]).stem
        names = [parts[-1], *(stem + e for e in self.extensions)]
        for n in names:
            if (path.parent / n).is_file():
                return path.parent / n
        d = self.root
        for p in parts[:-1]:
            real = self._listing(d).get(p.lower())
            if real is None:
                return None
            d = d / real
        listing = self._listing(d)
        for n in names:
            real = listing.get(n.lower())
            if real is not None and (d / real).is_file():
                return d / real
        return None


class ListedImages:
    """The images list files name: one `SourceImage` per key (with ``strict``, a file listed
    again must have the same identity and modality), the listed files that do not exist, and
    how many lines repeated a key within a list."""

    def __init__(self, root: Path, extensions: Sequence[str] = (), strict: bool = True):
        self.root, self.strict = root, strict
        self.resolve = CaseResolver(root, extensions)
        self.images: dict[str, SourceImage] = {}
        self.where: dict[str, str] = {}  # Key -> where it was first listed.
        self.missing: dict[str, str] = {}  # Key -> "listed path (list:line)".
        self.missing_modality: dict[str, str] = {}
        self.repeated = 0

    def add(
        self, parts: Sequence[str], identity: str, modality: str, where: str, listed: str
    ) -> str:
        """The key of the file at ``parts`` (relative to the root), listed as ``listed`` at
        ``where``; a file that does not exist is remembered as missing."""
        found = self.resolve(parts)
        if found is None:
            key = relative_key("/".join(parts))
            self.missing.setdefault(key, f"{'/'.join(parts)} ({where})")
            self.missing_modality.setdefault(key, modality)
            return key
        rel = found.relative_to(self.root).as_posix()
        key = relative_key(rel)
        old = self.images.get(key)
        if old is None:
            self.images[key] = SourceImage(found, rel, key, identity, modality)
            self.where[key] = where
        elif self.strict and (old.identity, old.modality) != (identity, modality):
            raise ConversionError(
                f"{where}: {listed} is {modality} of identity {identity!r} here but "
                f"{old.modality} of identity {old.identity!r} at {self.where[key]}"
            )
        return key

    def once(self, keys: Sequence[str]) -> list[str]:
        """``keys`` (one list's) without repeats, which are counted in ``repeated``."""
        unique = list(dict.fromkeys(keys))
        self.repeated += len(keys) - len(unique)
        return unique

    def modality_of(self, key: str) -> str:
        """The modality a listed key (found or missing) was given."""
        return self.images[key].modality if key in self.images else self.missing_modality[key]

    def drop_missing(
        self, what: str, on_bad: str, report: ConversionReport, warnings: list[str], tried: str = ""
    ) -> list[str]:
        """The keys of the missing files, counted in ``report`` and warned (on_bad="skip"), or
        an error naming them as listed in ``what`` (on_bad="raise"); ``tried`` says what else
        was looked for."""
        if not self.missing:
            return []
        shown = list(self.missing.values())
        if on_bad == "raise":
            raise missing_files_error(
                shown, f"{what} ({tried}pass on_bad='skip' to skip and count them)"
            )
        for where in shown:
            report.skip("missing file", where)
        warnings.append(
            f"{len(shown)} listed file(s) do not exist and were left out, e.g. {show_some(shown)}"
        )
        return list(self.missing)


def list_lines(
    path: Path, split: Callable[[str], list[str]] = str.split
) -> Iterator[tuple[str, str, list[str]]]:
    """(where "path:line", line, tokens) per line of a text list with tokens (a BOM and
    undecodable bytes are tolerated)."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = split(line)
        if tokens:
            yield f"{path}:{lineno}", line, tokens


def numbered_lists(
    root: Path, templates: Mapping[str, str], messages: Mapping[str, str], first: str = "train_vis"
) -> list[dict[str, Path]]:
    """The list files of folds 1..K: ``templates`` maps a role to its path relative to
    ``root`` with "{k}" for the fold, K is the last fold whose lists exist. A fold with only
    some of its lists ("partial"), no fold ("none") or a missing fold before an existing one
    ("gap") is an error worded by ``messages``: format strings with the fields k, absent, root,
    first (fold 1's ``first`` list), where (what the folder holding it holds), later and
    later_path (the first later fold)."""
    folds = []
    for k in range(1, 1000):
        paths = {role: root / t.format(k=k) for role, t in templates.items()}
        present = {role: p.is_file() for role, p in paths.items()}
        if not any(present.values()):
            break
        absent = [str(paths[r]) for r, ok in present.items() if not ok]
        if absent:
            raise ConversionError(messages["partial"].format(k=k, absent=absent))
        folds.append(paths)
    if not folds:
        path = root / templates[first].format(k=1)
        parent = path.parent
        found = sorted(p.name for p in parent.iterdir()) if parent.is_dir() else []
        where = f"{parent} holds {show_some(found)}" if parent.is_dir() else f"{parent} is absent"
        raise ConversionError(messages["none"].format(root=root, first=path, where=where))
    later = [
        k for k in range(len(folds) + 2, 100) if (root / templates[first].format(k=k)).is_file()
    ]
    if later:
        later_path = root / templates[first].format(k=later[0])
        raise ConversionError(
            messages["gap"].format(k=len(folds) + 1, later=later[0], later_path=later_path)
        )
    return folds


def protocol_from_lists(
    name: str,
    folds: Sequence[Mapping[str, list[str]]],
    train: Mapping[str, str],
    modalities: tuple[str, str],
    description: str,
) -> Protocol:
    """A protocol whose folds are read from lists: per fold {role: keys}, the training lists
    the roles ``train`` names {modality: role}, the gallery the "gallery" role's, the probes
    the "probe" role's; ``modalities`` = (gallery modality, probe modality)."""
    return Protocol(
        name,
        [
            Fold(
                train={m: f[role] for m, role in train.items()},
                gallery=f["gallery"],
                probe=f["probe"],
            )
            for f in folds
        ],
        *modalities,
        description,
    )


def csv_rows(
    csv_path: Path, columns: Sequence[str], required: Sequence[str]
) -> Iterator[tuple[str, int, list[str]]]:
    """(where "csv:line", line number, the stripped values of ``columns``) per non-blank row
    of a CSV whose header names ``columns`` (any case and order; other columns ignored); an
    empty ``required`` value is an error."""
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ConversionError(f"{csv_path}: empty file; expected a header {columns}")
        cols = {h.strip().lower(): i for i, h in enumerate(header)}
        absent = [c for c in columns if c not in cols]
        if absent:
            raise ConversionError(
                f"{csv_path}:1: header {header} lacks the column(s) {absent}; expected "
                f"{','.join(columns)}"
            )
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise ConversionError(f"{where}: {len(row)} field(s), the header has {len(header)}")
            values = [row[cols[c]].strip() for c in columns]
            for col, value in zip(columns, values):
                if col in required and not value:
                    raise ConversionError(f"{where}: empty {col!r}")
            yield where, reader.line_num, values


# --------------------------------------------------------------------------------------------
# Command lines (``hfrjax convert <format>``).

ON_BAD_HELP = "missing/undecodable images: fail, or skip, count and drop them from the protocol"


def add_io_arguments(parser: argparse.ArgumentParser, root_help: str) -> None:
    """``--root`` (the input) and ``--out`` (the dataset directory)."""
    parser.add_argument("--root", required=True, help=root_help)
    parser.add_argument("--out", required=True, help="output dataset directory")


def add_output_arguments(parser: argparse.ArgumentParser, on_bad_help: str = ON_BAD_HELP) -> None:
    """``--shards`` and ``--on_bad``; with ``--quiet``, what `converter_options` reads."""
    parser.add_argument("--shards", type=int, default=8, help="number of TFRecord shards")
    parser.add_argument("--on_bad", default="raise", choices=list(ON_BAD), help=on_bad_help)


def converter_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments ``--shards``, ``--on_bad`` and ``--quiet`` stand for."""
    return {"num_shards": args.shards, "on_bad": args.on_bad, "progress": not args.quiet}


def usage_error(message: str) -> int:
    """Prints "error: <message>" to stderr; returns 2, a command's status for bad input."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_converter(
    convert: Callable[..., Any],
    *args: Any,
    errors: tuple[type[Exception], ...] = (ConversionError,),
    then: Callable[[Any], None] | None = None,
    **kwargs: Any,
) -> int:
    """A command's body: ``convert(*args, **kwargs)``, then ``then(result)``; 0 on success, 2
    with the message on stderr when the conversion raises one of ``errors`` (bad input)."""
    try:
        result = convert(*args, **kwargs)
    except errors as e:
        return usage_error(str(e))
    if then is not None:
        then(result)
    return 0
