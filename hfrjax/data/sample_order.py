"""Global sample orders of the random-access pipeline, and each process's slice of them.

Each order is a grain ``MapDataset`` from global position to table row, a pure function of
(seed, position): an exact global shuffle per epoch (`plain_order`) or identity-balanced
P x K batches (`IdentityBatchOrder`, for triplet-style and paired losses). `ProcessSlice` maps
a process's local elements to its share of every global batch, so the global batch is the same
whatever the number of processes (see pipeline.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np


class IdentityBatchOrder(grain.MapDataset):
    """Identity-balanced global order: batch b holds P identities x K images per modality.

    Batch b of epoch e uses the e-th seeded permutation of the eligible identities; images are
    drawn without replacement when an identity has enough, else with replacement.
    """

    def __init__(
        self,
        labels: np.ndarray,
        modality: np.ndarray,
        modalities: Sequence[str],
        p: int,
        k: int,
        seed: int,
        num_epochs: int | None,
    ):
        super().__init__()
        self._p, self._k, self._seed = p, k, seed
        self._modalities = list(modalities)
        rows_by = {}
        for m in self._modalities:
            sel = modality == m
            for lab in np.unique(labels[sel]):
                rows_by[(int(lab), m)] = np.nonzero(sel & (labels == lab))[0]
        self._rows_by = rows_by
        self._ids = np.array(
            sorted(
                {lab for (lab, _) in rows_by if all((lab, m) in rows_by for m in self._modalities)}
            )
        )
        if len(self._ids) < p:
            raise ValueError(
                f"sampler needs P={p} identities with images in every modality of "
                f"{self._modalities}, but only {len(self._ids)} have them"
            )
        self.batch_size = p * k * len(self._modalities)
        self.batches_per_epoch = len(self._ids) // p
        self._num_epochs = num_epochs
        self._cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        if self._num_epochs is None:
            import sys

            return sys.maxsize
        return self._num_epochs * self.batches_per_epoch * self.batch_size

    def _batch(self, b: int) -> np.ndarray:
        cached = self._cache
        if cached is not None and cached[0] == b:
            return cached[1]
        epoch, j = divmod(b, self.batches_per_epoch)
        perm = np.random.default_rng([self._seed, epoch]).permutation(self._ids)
        rng = np.random.default_rng([self._seed, epoch, j, 1])
        out = []
        for lab in perm[j * self._p : (j + 1) * self._p]:
            for m in self._modalities:
                rows = self._rows_by[(int(lab), m)]
                out.append(rng.choice(rows, self._k, replace=len(rows) < self._k))
        rows = np.concatenate(out)
        self._cache = (b, rows)
        return rows

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        b, slot = divmod(index, self.batch_size)
        return int(self._batch(b)[slot])


def plain_order(n: int, seed: int, shuffle: bool, num_epochs: int | None) -> grain.MapDataset:
    ds = grain.MapDataset.range(n)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    return ds.repeat(num_epochs)


class ProcessSlice(grain.MapDataset):
    """Local element j of this process -> (global position, row) of the global order.

    Process p reads positions [b*B + p*Bl, b*B + (p+1)*Bl) of every global batch b.
    """

    def __init__(
        self,
        order: grain.MapDataset,
        global_batch: int,
        process_index: int,
        process_count: int,
        num_batches: int,
    ):
        super().__init__()
        self._order = order
        self._gb = global_batch
        self._lb = global_batch // process_count
        self._p = process_index
        self._n = num_batches * self._lb

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        b, j = divmod(index, self._lb)
        t = b * self._gb + self._p * self._lb + j
        return t, self._order[t]
