"""What every converter shares: image checks, missing-file reports, progress lines.

Bad input is never dropped silently: a missing file or an undecodable image is either fatal
(``on_bad="raise"``, the default) or skipped *and counted* (``on_bad="skip"``), and every
converter ends with a `ConversionReport` that names counts and the first few offenders.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import TextIO

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


def missing_files_error(missing: Sequence[str], what: str) -> ConversionError:
    """An error naming how many files are missing and the first few."""
    shown = ", ".join(map(str, missing[:SHOW]))
    more = f" (and {len(missing) - SHOW} more)" if len(missing) > SHOW else ""
    return ConversionError(f"{len(missing)} file(s) listed in {what} do not exist: {shown}{more}")


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
