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
import dataclasses
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from hfrjax.data import augment

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
