"""Class ids of (joint) classifiers: contiguous labels, and which block of rows each dataset
occupies (`ClassRange`, stored in checkpoint metadata so SSC fine-tuning can slice a target
dataset's rows out of a "+target" pretrained classifier, `class_rows_for`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np


def remap_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dataset labels -> contiguous 0..C-1; returns (new labels, dataset label of each class)."""
    classes, new = np.unique(labels, return_inverse=True)
    return new.astype(np.int64), classes


@dataclasses.dataclass(frozen=True, eq=False)
class ClassRange:
    """The class ids [start, stop) that one dataset occupies in a (joint) classifier.

    Stored in checkpoint metadata (`to_json`) so that SSC fine-tuning can slice the target
    dataset's rows out of a "+target" pretrained classifier (`class_rows_for`).
    """

    data_dir: str
    fold: int | None
    start: int
    stop: int
    labels: np.ndarray  # Raw dataset label of class ids start..stop-1, in order.

    def __post_init__(self):
        labels = np.array(self.labels, dtype=np.int64).reshape(-1)
        labels.setflags(write=False)
        object.__setattr__(self, "labels", labels)
        if not 0 <= self.start <= self.stop or self.stop - self.start != len(labels):
            raise ValueError(
                f"class range of {self.data_dir}: [{self.start}, {self.stop}) does not fit "
                f"its {len(labels)} labels"
            )

    @property
    def num_classes(self) -> int:
        return self.stop - self.start

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClassRange):
            return NotImplemented
        return (self.data_dir, self.fold, self.start, self.stop) == (
            other.data_dir,
            other.fold,
            other.start,
            other.stop,
        ) and np.array_equal(self.labels, other.labels)

    def __hash__(self) -> int:
        return hash((self.data_dir, self.fold, self.start, self.stop, self.labels.tobytes()))

    def to_json(self) -> dict[str, Any]:
        """A plain dict (JSON-serialisable) for checkpoint metadata."""
        return {
            "data_dir": str(self.data_dir),
            "fold": None if self.fold is None else int(self.fold),
            "start": int(self.start),
            "stop": int(self.stop),
            "labels": [int(x) for x in self.labels],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ClassRange":
        """Inverse of `to_json`; missing or unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        if set(d) != known:
            raise ValueError(
                f"class range {d!r}: missing keys {sorted(known - set(d))}, "
                f"unknown keys {sorted(set(d) - known)}"
            )
        fold = d["fold"]
        return cls(
            str(d["data_dir"]),
            None if fold is None else int(fold),
            int(d["start"]),
            int(d["stop"]),
            np.asarray(d["labels"], np.int64),
        )


def class_rows_for(
    ranges: Sequence[ClassRange],
    data_dir: str | os.PathLike,
    raw_labels: Sequence[int] | np.ndarray,
) -> np.ndarray:
    """Class id, in the joint classifier described by ``ranges``, of each raw label of dataset
    ``data_dir`` (paths compared after ``os.path.realpath``); e.g. the SSC target rows."""
    real = os.path.realpath(data_dir)
    matches = [r for r in ranges if os.path.realpath(r.data_dir) == real]
    if not matches:
        raise ValueError(
            f"dataset {data_dir} has no class range; the classifier holds "
            f"{[r.data_dir for r in ranges]}"
        )
    if len(matches) > 1:
        raise ValueError(
            f"dataset {data_dir} has {len(matches)} class ranges "
            f"{[(r.start, r.stop) for r in matches]}; cannot tell which one is meant"
        )
    (rng,) = matches
    pos = {int(lab): rng.start + i for i, lab in enumerate(rng.labels)}
    raw = np.asarray(raw_labels, np.int64).reshape(-1)
    missing = sorted({int(x) for x in raw if int(x) not in pos})
    if missing:
        raise ValueError(
            f"{len(missing)} label(s) of dataset {data_dir} have no class in the classifier "
            f"(range [{rng.start}, {rng.stop}), fold {rng.fold}), e.g. {missing[:10]}"
        )
    return np.asarray([pos[int(x)] for x in raw], np.int64)
