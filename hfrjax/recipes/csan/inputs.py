"""CSAN's training input: unlabelled RGB and IR samples, batches drawn from the pseudo-labels.

The core pipeline's batches carry identity labels but no sample index; CSAN trains on no
labels and must look each sample's pseudo-label up in the checkpointed state. So this input
yields ``{"x", "modality", "index", "valid"}``: ``x`` is the images (uint8) or their cached
backbone features, ``index`` the sample's row in `SampleStore` (RGB samples first, then IR),
which indexes the pseudo-label arrays of the task's extra state. Ground-truth identities stay
on the host, for the diagnostics only.

Every batch holds B/2 RGB rows followed by B/2 IR rows, and batch ``i`` (the global step) is
a pure function of (seed, i, the installed table), so a checkpoint needs only ``i``:

* clustering phase (steps < ``cluster_steps``): each modality's samples in a seeded
  permutation per epoch (memory-bank cross-entropy, CSAN §III-B);
* triplet phase: P = B / (2K) RGB clusters linked by this epoch's vote, K RGB samples of each
  and K IR samples of its linked IR cluster (CSAN §III-D: anchor and positive come from a
  linked pair); with ``hard_negatives`` half the clusters are anchors taken in a seeded order
  and the other half their nearest linked RGB clusters, so the batch holds "the closest RGB
  cluster that does not belong to i" for the hardest-negative mining of Eq. 4.

The table (pseudo-labels, links, neighbours) is installed by the task's hook, from the state,
at every epoch boundary and after a restore, before the next batch is drawn.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from hfrjax.data import augment as augment_lib
from hfrjax.data import pipeline, tfrecord
from hfrjax.data.dataset import RecordTable


class SampleStore:
    """The training (or validation) samples: RGB rows first, then IR rows.

    ``features`` (set by `cache_features`) replaces image decoding by the frozen backbone's
    block-3 features.
    """

    def __init__(self, records: RecordTable, rgb_modality: str, ir_modality: str, image_size):
        order = np.concatenate(
            [np.flatnonzero(records.modality == m) for m in (rgb_modality, ir_modality)]
        )
        self.records = records.subset(order)
        self.num_rgb = int(np.sum(records.modality == rgb_modality))
        self.num_ir = len(order) - self.num_rgb
        if self.num_rgb == 0 or self.num_ir == 0:
            raise ValueError(
                f"CSAN needs images of both modalities; got {self.num_rgb} {rgb_modality!r} and "
                f"{self.num_ir} {ir_modality!r} images"
            )
        codes = [tfrecord.MODALITIES.index(m) for m in (rgb_modality, ir_modality)]
        self.modality = np.where(np.arange(len(order)) < self.num_rgb, *codes).astype(np.int32)
        self.truth = np.asarray(self.records.label, np.int64)  # Monitoring only.
        self.image_size = tuple(image_size) if image_size else None
        self.source = pipeline.RecordSource(self.records)
        self.features: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def rgb_rows(self) -> np.ndarray:
        return np.arange(self.num_rgb)

    @property
    def ir_rows(self) -> np.ndarray:
        return np.arange(self.num_rgb, len(self))

    def images(self, rows) -> np.ndarray:
        """Decoded uint8 [len(rows), H, W, 3] images (single-band ones as 3 channels)."""
        out = []
        for row in np.asarray(rows, np.int64):
            data = self.source[int(row)]
            try:
                sample = tfrecord.decode_example(data)
                img = augment_lib.decode_image(sample.image, channels=3, size=self.image_size)
            except Exception as e:  # noqa: BLE001 - re-raised with the record named.
                raise augment_lib.ImageDecodeError(
                    f"cannot decode {self.source.describe(int(row))}: {e}"
                ) from e
            out.append(img)
        return np.stack(out)

    def inputs(self, rows) -> np.ndarray:
        """What a training step eats for ``rows``: cached features, else images."""
        return self.features[rows] if self.features is not None else self.images(rows)

    def cache_features(self, backbone_fn, backbone_params, batch: int) -> None:
        """Runs the frozen backbone once over every sample (fixed batch shape)."""
        parts = []
        for start in range(0, len(self), batch):
            rows = np.arange(start, min(len(self), start + batch))
            x = self.images(rows)
            if len(rows) < batch:
                x = np.concatenate([x, np.zeros((batch - len(rows), *x.shape[1:]), x.dtype)])
            parts.append(np.asarray(backbone_fn(backbone_params, x))[: len(rows)])
        self.features = np.concatenate(parts)

    def image_batches(self, batch: int):
        """Fixed-size image batches of every sample in order (for `embed_batches`)."""
        for start in range(0, len(self), batch):
            rows = np.arange(start, min(len(self), start + batch))
            x, m = self.images(rows), self.modality[rows]
            pad = batch - len(rows)
            if pad:
                x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
                m = np.concatenate([m, np.zeros(pad, np.int32)])
            yield {"image": x, "modality": m, "valid": np.arange(batch) < len(rows)}


@dataclasses.dataclass
class PseudoLabelTable:
    """Host copy of the state's pseudo-labels that the sampler draws from."""

    cluster: np.ndarray  # [N] per-modality cluster id, -1 = out.
    link: np.ndarray  # [N_rgb] linked IR cluster of each RGB cluster, -1 = sits out.
    neighbour: np.ndarray  # [N_rgb] nearest linked RGB cluster, -1 = none.

    @classmethod
    def from_extra(cls, extra) -> "PseudoLabelTable":
        get = lambda k: np.asarray(jax.device_get(extra[k])).astype(np.int64)  # noqa: E731
        return cls(get("cluster"), get("link"), get("neighbour"))


class CsanBatches:
    """The resumable input described in the module docstring; state ``{"i": step}``."""

    def __init__(
        self,
        store: SampleStore,
        *,
        batch_size: int,
        k: int,
        hard_negatives: bool,
        seed: int,
        steps_per_epoch: int,
        cluster_steps: int,
        mesh=None,
    ):
        if batch_size % 2 or batch_size < 2:
            raise ValueError(f"batch_size must be even (RGB half, IR half), got {batch_size}")
        if k < 1 or (batch_size // 2) % k:
            raise ValueError(f"input.k={k} must divide half the batch ({batch_size // 2})")
        self.store, self.batch_size, self.k = store, batch_size, k
        self.hard_negatives, self.seed = hard_negatives, seed
        self.steps_per_epoch, self.cluster_steps = steps_per_epoch, cluster_steps
        self.mesh = mesh
        self.i = 0
        self.table: PseudoLabelTable | None = None
        self._members: tuple[dict, dict] | None = None

    # -- resumable-iterator protocol ---------------------------------------------------------

    def get_state(self) -> dict:
        return {"i": int(self.i)}

    def set_state(self, state: dict) -> None:
        self.i = int(state["i"])
        self.table = None  # The task's hook installs the restored state's table.

    def __iter__(self):
        return self

    @property
    def synced(self) -> bool:
        return self.table is not None

    def install(self, table: PseudoLabelTable) -> None:
        self.table = table
        n_rgb = self.store.num_rgb
        self._members = (
            _members(table.cluster[:n_rgb], 0),
            _members(table.cluster[n_rgb:], n_rgb),
        )

    def __next__(self) -> dict:
        if self.table is None:
            raise RuntimeError(
                "CSAN input used before its pseudo-label table was installed (the task's "
                "hook installs it at step boundaries)"
            )
        rows, valid = self.rows(self.i)
        self.i += 1
        batch = {
            "x": self.store.inputs(rows),
            "modality": self.store.modality[rows],
            "index": rows.astype(np.int32),
            "valid": valid,
        }
        if self.mesh is None:
            return batch
        n, p = jax.process_count(), jax.process_index()
        local = self.batch_size // n
        batch = {k: v[p * local : (p + 1) * local] for k, v in batch.items()}
        return pipeline.to_global(batch, self.mesh)

    # -- sampling ----------------------------------------------------------------------------

    def rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(sample rows [B], valid [B]) of batch ``i``."""
        if i < self.cluster_steps:
            return self._permutation_rows(i), np.ones(self.batch_size, bool)
        return self._pk_rows(i - self.cluster_steps)

    def _permutation_rows(self, i: int) -> np.ndarray:
        half = self.batch_size // 2
        epoch, pos = divmod(i, self.steps_per_epoch)
        out = []
        for stream, rows in ((1, self.store.rgb_rows), (2, self.store.ir_rows)):
            perm = np.random.default_rng([self.seed, stream, epoch]).permutation(rows)
            out.append(perm[(pos * half + np.arange(half)) % len(perm)])
        return np.concatenate(out)

    def _pk_rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        half = self.batch_size // 2
        p = half // self.k
        t = self.table
        rgb_members, ir_members = self._members
        linked = np.flatnonzero(t.link >= 0)
        linked = linked[[int(c) in rgb_members and int(t.link[c]) in ir_members for c in linked]]
        if len(linked) == 0:  # Nothing linked this epoch: an all-padding batch (zero loss).
            return np.zeros(self.batch_size, np.int64), np.zeros(self.batch_size, bool)
        epoch, pos = divmod(i, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, 3, epoch]).permutation(linked)
        rng = np.random.default_rng([self.seed, 4, i])
        n_anchor = max(1, p // 2) if self.hard_negatives else p
        anchors = order[(pos * n_anchor + np.arange(n_anchor)) % len(order)]
        chosen: list[int] = []
        for c in anchors:
            for cand in (int(c), int(t.neighbour[c]) if self.hard_negatives else -1):
                if cand >= 0 and cand not in chosen and len(chosen) < p:
                    chosen.append(cand)
        rest = [int(c) for c in rng.permutation(linked) if int(c) not in chosen]
        chosen += rest[: p - len(chosen)]
        while len(chosen) < p:  # Fewer linked clusters than P: repeat some.
            chosen.append(int(chosen[len(chosen) % max(1, len(chosen))]))
        rgb, ir = [], []
        for c in chosen:
            rgb.append(_draw(rng, rgb_members[c], self.k))
            ir.append(_draw(rng, ir_members[int(t.link[c])], self.k))
        return np.concatenate(rgb + ir), np.ones(self.batch_size, bool)


def _members(clusters: np.ndarray, offset: int) -> dict[int, np.ndarray]:
    """{cluster id: its sample rows} for the clusters of one modality."""
    out: dict[int, np.ndarray] = {}
    ok = np.flatnonzero(clusters >= 0)
    order = ok[np.argsort(clusters[ok], kind="stable")]
    ids, starts = np.unique(clusters[order], return_index=True)
    for c, rows in zip(ids, np.split(order, starts[1:])):
        out[int(c)] = rows + offset
    return out


def _draw(rng: np.random.Generator, rows: np.ndarray, k: int) -> np.ndarray:
    """k of ``rows``: without replacement when there are enough."""
    return rng.choice(rows, size=k, replace=len(rows) < k)
