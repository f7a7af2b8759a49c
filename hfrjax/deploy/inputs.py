"""Where the command-line tools read faces from: a folder, a list file, an hfrjax dataset
directory or single image files; aligned crops, or unaligned images plus 5-point landmarks.

Every image has a *key* (its path relative to the folder / as written in the list / the
dataset's sample key) and, when known, an *identity* (a folder's first path component
``root/<identity>/...``, a list line's second column, or the dataset's class name) that
`hfrjax search` reports. Reading an image gives uint8 [S, S, C] in the model's size and
channel count; every failure is an `ImageReadError` naming the file or record.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path
from typing import Callable

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """An image that cannot be used: unreadable, corrupt, wrong size, no landmarks."""


@dataclasses.dataclass(frozen=True)
class ImageRef:
    key: str
    identity: str | None
    path: Path | None = None  # Files.
    row: int | None = None  # Dataset records.

    def where(self) -> str:
        return str(self.path) if self.path is not None else f"record {self.key!r}"


@dataclasses.dataclass
class ImageSet:
    """An ordered list of faces and how to read their bytes."""

    spec: str  # What the user gave (for messages and resume checks).
    kind: str  # "folder" | "list" | "dataset" | "files"
    refs: list[ImageRef]
    read_bytes: Callable[[ImageRef], bytes]
    root: Path | None = None  # Folder / list-file directory (landmark paths are relative to it).

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def keys(self) -> list[str]:
        return [r.key for r in self.refs]


def _file_bytes(ref: ImageRef) -> bytes:
    try:
        return ref.path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{ref.path}: no such image file") from None
    except OSError as e:
        raise ImageReadError(f"{ref.path}: cannot read: {e}") from None


def _folder(root: Path) -> ImageSet:
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise ImageReadError(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    refs = []
    for p in files:
        rel = p.relative_to(root).as_posix()
        parts = rel.split("/")
        refs.append(ImageRef(rel, parts[0] if len(parts) > 1 else None, path=p))
    return ImageSet(str(root), "folder", refs, _file_bytes, root)


def _list_file(path: Path) -> ImageSet:
    """Lines ``image_path`` or ``image_path,identity`` (CSV); ``#`` comments and blank lines
    skipped; relative paths are relative to the list file's folder."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ImageReadError(f"list file {path} is not UTF-8 text: {e}") from None
    refs, seen = [], {}
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) > 2:
            raise ImageReadError(
                f"{path} line {lineno}: expected 'image_path' or 'image_path,identity', "
                f"got {len(row)} fields"
            )
        key = row[0].strip()
        if key in seen:
            raise ImageReadError(
                f"{path} line {lineno}: {key!r} is listed twice (first on line {seen[key]})"
            )
        seen[key] = lineno
        identity = row[1].strip() if len(row) == 2 and row[1].strip() else None
        p = Path(key)
        refs.append(ImageRef(key, identity, path=p if p.is_absolute() else path.parent / p))
    if not refs:
        raise ImageReadError(f"list file {path} lists no images")
    return ImageSet(str(path), "list", refs, _file_bytes, path.parent)


def _dataset(directory: Path, modality: str | None) -> ImageSet:
    from hfrjax.data import tfrecord
    from hfrjax.data.dataset import Dataset
    from hfrjax.data.pipeline import RecordSource

    ds = Dataset.open(directory)
    rec = ds.records
    rows = np.arange(len(rec))
    if modality:
        rows = rows[rec.modality == modality]
        if not rows.size:
            raise ImageReadError(
                f"dataset {directory} has no {modality!r} images; it has "
                f"{sorted(set(rec.modality.tolist()))}"
            )
    names = ds.info.class_names
    refs = [ImageRef(str(rec.key[i]), names[int(rec.label[i])], row=int(i)) for i in rows]
    source = RecordSource(rec)

    def read(ref: ImageRef) -> bytes:
        try:
            return tfrecord.decode_example(source[ref.row]).image
        except Exception as e:
            raise ImageReadError(f"{source.describe(ref.row)}: {e}") from None

    return ImageSet(str(directory), "dataset", refs, read, directory)


def open_images(spec: str | os.PathLike, *, modality: str | None = None) -> ImageSet:
    """A dataset directory (``dataset.json``), a folder of images, a list file, or one image."""
    p = Path(spec)
    if p.is_dir():
        if (p / "dataset.json").exists():
            return _dataset(p, modality)
        return _folder(p)
    if not p.exists():
        raise ImageReadError(f"{p} does not exist (expected a folder, list file or image)")
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return single_images([p])
    return _list_file(p)


def single_images(paths: list[str | os.PathLike]) -> ImageSet:
    """Image files given one by one (``hfrjax verify A B``); keys are the paths as given."""
    refs = [ImageRef(str(p), None, path=Path(p)) for p in paths]
    return ImageSet(" ".join(str(p) for p in paths), "files", refs, _file_bytes, None)


@dataclasses.dataclass
class FaceReader:
    """Turns image bytes into the model's input crop: decode (channels as the model wants),
    then align with landmarks, or check the size (``resize`` rescales instead)."""

    size: int
    channels: int
    landmarks: dict[str, np.ndarray] | None = None
    resize: bool = False

    def __call__(self, images: ImageSet, ref: ImageRef) -> np.ndarray:
        from hfrjax.data import augment

        data = images.read_bytes(ref)
        if not data:
            raise ImageReadError(f"{ref.where()}: empty file (0 bytes)")
        try:
            img = augment.decode_image(data, channels=self.channels)
        except Exception as e:
            raise ImageReadError(f"{ref.where()}: not a readable image ({e})") from None
        if self.landmarks is not None:
            from hfrjax.data.align import align_face

            pts = self.landmarks.get(ref.key)
            if pts is None:
                raise ImageReadError(f"{ref.where()}: no landmarks for key {ref.key!r}")
            return align_face(img, pts, size=self.size)
        if img.shape[:2] != (self.size, self.size):
            if self.resize:
                return augment.resize(img, (self.size, self.size))
            raise ImageReadError(
                f"{ref.where()}: image is {img.shape[0]}x{img.shape[1]} but the model takes "
                f"{self.size}x{self.size} aligned crops (give --landmarks to align, or "
                "--resize to rescale)"
            )
        return img


def load_landmark_file(path: str | os.PathLike, images: ImageSet) -> dict[str, np.ndarray]:
    """Landmarks keyed like ``images``' keys (paths relative to the folder / list)."""
    from hfrjax.data.align import load_landmarks

    raw = load_landmarks(path)
    root = images.root
    out = {}
    for key, pts in raw.items():
        k = Path(key)
        if k.is_absolute() and root is not None:
            try:
                key = k.resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                pass
        out[Path(key).as_posix()] = pts
    return out
