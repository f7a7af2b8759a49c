"""AFS, SSN's automatic feature search (Alg. 1): the S_train / S_val split and the step plan.

Alg. 1 step 1 splits the training set S_T 50/50 into S_train and S_val. The split here is
identity-preserving: every identity's images of each modality are shuffled (seeded) and
divided half and half, so both halves hold (nearly) every identity in both modalities. The
identity loss is a softmax over the training identities (SSN Eq. 1), and the mask step on
S_val needs the classifier rows of the identities it sees to be trained by the network steps
on S_train; an identity-disjoint split would leave S_val's rows untrained. A group with one
image goes to S_train. The lists are written to ``<workdir>/afs_split/`` (one key per line)
with ``split.json`` (seed, fraction, counts); a resumed run recomputes the split and refuses
to go on if the files on disk differ.

Step 2 alternates a mask step on an S_val batch (masks only: Adam, lr 1e-3) and a network
step on an S_train batch (network, classifier and critics: SGD, lr 1e-4); step 3 trains the
network with the searched masks fixed on the whole of S_T (`afs_plan`).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from hfrjax.fileio import write_text_atomic
from hfrjax.train.task import alternate, phases, single

SPLIT_DIR = "afs_split"
TRAIN_LIST = "s_train.txt"
VAL_LIST = "s_val.txt"
SPLIT_JSON = "split.json"


def identity_preserving_split(
    keys: Sequence[str],
    labels: Sequence[int],
    modalities: Sequence[str],
    *,
    seed: int,
    val_fraction: float = 0.5,
) -> tuple[list[str], list[str]]:
    """(S_train keys, S_val keys), each in the input order (module docstring).

    Each (identity, modality) group of n images sends floor(n * val_fraction) randomly chosen
    images to S_val and the rest to S_train; the draw depends only on ``seed`` and the group.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"afs val_fraction must be in (0, 1), got {val_fraction}")
    keys = np.asarray(keys)
    labels = np.asarray(labels)
    modalities = np.asarray(modalities)
    if not (len(keys) == len(labels) == len(modalities)):
        raise ValueError(
            f"keys ({len(keys)}), labels ({len(labels)}) and modalities ({len(modalities)}) "
            "differ in length"
        )
    if len(set(keys.tolist())) != len(keys):
        raise ValueError("the training records have duplicate keys; cannot write a split list")
    is_val = np.zeros(len(keys), bool)
    groups: dict[tuple[int, str], list[int]] = {}
    for i, (lab, mod) in enumerate(zip(labels.tolist(), modalities.tolist())):
        groups.setdefault((int(lab), str(mod)), []).append(i)
    for lab, mod in sorted(groups):
        rows = np.asarray(groups[(lab, mod)])
        rng = np.random.default_rng([int(seed), lab, zlib.crc32(mod.encode())])
        n_val = int(np.floor(len(rows) * val_fraction))
        is_val[rng.permutation(rows)[:n_val]] = True
    return keys[~is_val].tolist(), keys[is_val].tolist()


def _read_list(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def write_split(workdir: str | Path, train: list[str], val: list[str], info: dict) -> Path:
    """Writes (or checks) ``<workdir>/afs_split/``; returns the directory.

    Existing lists that differ from ``train`` / ``val`` are an error naming the file: the
    checkpointed search state belongs to the split it was trained on.
    """
    d = Path(workdir) / SPLIT_DIR
    for name, keys in ((TRAIN_LIST, train), (VAL_LIST, val)):
        p = d / name
        if p.exists():
            have = _read_list(p)
            if have != list(keys):
                raise ValueError(
                    f"{p} holds another AFS split ({len(have)} keys, expected {len(keys)}): the "
                    "data, fold or afs.split_seed changed since this workdir was started; use a "
                    "new workdir"
                )
    d.mkdir(parents=True, exist_ok=True)
    for name, keys in ((TRAIN_LIST, train), (VAL_LIST, val)):
        if not (d / name).exists():
            write_text_atomic(d / name, "".join(f"{k}\n" for k in keys))
    info = dict(info, num_train=len(train), num_val=len(val))
    write_text_atomic(d / SPLIT_JSON, json.dumps(info, indent=1) + "\n")
    return d


def read_split(workdir: str | Path) -> tuple[list[str], list[str]]:
    """The (S_train, S_val) keys a run wrote."""
    d = Path(workdir) / SPLIT_DIR
    return _read_list(d / TRAIN_LIST), _read_list(d / VAL_LIST)


def class_remap(full_labels: np.ndarray, subset_labels: np.ndarray, what: str) -> np.ndarray:
    """Class ids of a subset input -> class ids of the full training input.

    Each input numbers its classes 0..C-1 over its own identities (``class_labels``: the
    dataset label of each class id); this maps them onto the full set's numbering.
    """
    full = np.asarray(full_labels)
    sub = np.asarray(subset_labels)
    pos = np.searchsorted(full, sub)
    pos = np.clip(pos, 0, len(full) - 1)
    if not np.array_equal(full[pos], sub):
        missing = sub[full[pos] != sub]
        raise ValueError(f"{what}: labels {missing[:5].tolist()} are not training identities")
    return pos.astype(np.int32)


def afs_plan(search_steps: int, train_steps: int) -> Callable[[int], str]:
    """Alg. 1: ``search_steps`` (mask, network) pairs, then ``train_steps`` train steps."""
    return phases(
        [
            (2 * int(search_steps), alternate([("mask", 1), ("net", 1)])),
            (int(train_steps), single("train")),
        ]
    )
