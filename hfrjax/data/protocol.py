"""Evaluation protocols: per fold, training keys, gallery keys and probe keys.

The on-disk layout follows CASIA NIR-VIS 2.0 View 2, the field's reference protocol, with
one sample key per line (keys are those of the dataset's TFRecords)::

    DIR/protocols/protocol.json          {"name", "num_folds", "gallery_modality", ...}
    DIR/protocols/vis_train_1.txt        training images of fold 1, per modality
    DIR/protocols/nir_train_1.txt
    DIR/protocols/vis_gallery_1.txt      gallery (modality ``gallery_modality``)
    DIR/protocols/nir_probe_1.txt        probes  (modality ``probe_modality``)

Set-based protocols (ARL-VTF: a visible gallery with or without eyewear, thermal probe sets for
baseline, expression and eyewear conditions) are folds too: one fold per (probe set, gallery set)
pair, named in ``fold_names`` (e.g. "P_TB0|G_VB0-"); reports show the names instead of numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

PROTOCOL_DIR = "protocols"


@dataclasses.dataclass
class Fold:
    """One train/test split. ``train`` maps modality -> keys."""

    train: dict[str, list[str]]
    gallery: list[str]
    probe: list[str]

    @property
    def train_keys(self) -> list[str]:
        return [k for keys in self.train.values() for k in keys]


@dataclasses.dataclass
class Protocol:
    """A k-fold HFR protocol: which keys train, which form the gallery and the probes."""

    name: str
    folds: list[Fold]
    gallery_modality: str = "vis"
    probe_modality: str = "nir"
    description: str = ""
    fold_names: list[str] | None = None  # One per fold (set-based protocols); None: "1".."k".

    def __post_init__(self) -> None:
        if self.fold_names is not None and len(self.fold_names) != len(self.folds):
            raise ValueError(
                f"protocol {self.name!r}: {len(self.fold_names)} fold names for "
                f"{len(self.folds)} folds"
            )

    def fold_name(self, k: int) -> str:
        """The display name of fold ``k`` (numbered from 1)."""
        self.fold(k)
        return self.fold_names[k - 1] if self.fold_names else str(k)

    @property
    def num_folds(self) -> int:
        return len(self.folds)

    def fold(self, k: int) -> Fold:
        """Fold ``k``, numbered from 1 as in the datasets' own lists."""
        if not 1 <= k <= self.num_folds:
            raise ValueError(f"protocol {self.name!r} has folds 1..{self.num_folds}, asked for {k}")
        return self.folds[k - 1]

    def save(self, dataset_dir: str | os.PathLike) -> Path:
        d = Path(dataset_dir) / PROTOCOL_DIR
        d.mkdir(parents=True, exist_ok=True)
        modalities = sorted({m for f in self.folds for m in f.train})
        for k, fold in enumerate(self.folds, start=1):
            for m in modalities:
                _write_list(d / f"{m}_train_{k}.txt", fold.train.get(m, []))
            _write_list(d / f"{self.gallery_modality}_gallery_{k}.txt", fold.gallery)
            _write_list(d / f"{self.probe_modality}_probe_{k}.txt", fold.probe)
        meta = {
            "name": self.name,
            "num_folds": self.num_folds,
            "train_modalities": modalities,
            "gallery_modality": self.gallery_modality,
            "probe_modality": self.probe_modality,
            "description": self.description,
        }
        if self.fold_names:
            meta["fold_names"] = list(self.fold_names)
        (d / "protocol.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return d

    @classmethod
    def load(cls, dataset_dir: str | os.PathLike) -> "Protocol":
        d = Path(dataset_dir) / PROTOCOL_DIR
        meta_path = d / "protocol.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} not found: dataset {dataset_dir} has no protocol")
        from hfrjax.fileio import read_json

        meta = read_json(meta_path)
        g, p = meta["gallery_modality"], meta["probe_modality"]
        folds = []
        for k in range(1, meta["num_folds"] + 1):
            train = {m: _read_list(d / f"{m}_train_{k}.txt") for m in meta["train_modalities"]}
            folds.append(
                Fold(
                    train=train,
                    gallery=_read_list(d / f"{g}_gallery_{k}.txt"),
                    probe=_read_list(d / f"{p}_probe_{k}.txt"),
                )
            )
        return cls(
            meta["name"], folds, g, p, meta.get("description", ""), meta.get("fold_names")
        )


def _write_list(path: Path, keys: Sequence[str]) -> None:
    path.write_text("".join(f"{k}\n" for k in keys), encoding="utf-8")


def _read_list(path: Path) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"protocol list {path} is missing")
    out = []
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise ValueError(
                f"protocol list {path}, line {n}: not UTF-8 (byte {e.start} of the line, "
                f"{raw[e.start:e.start + 1]!r}); keys must be UTF-8 text"
            ) from None
        if line:
            out.append(line)
    return out
