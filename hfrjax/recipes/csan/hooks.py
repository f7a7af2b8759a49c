"""The host side of CSAN's loop (Alg. 1) as task hooks over a fixed step schedule.

Steps (global): ``S`` merge stages of ``bank_epochs`` epochs each (the memory-bank
cross-entropy of the reference clustering method between merges, §III-B), then ``E`` epochs of
the triplet phase. At boundary

* 0: every image its own cluster, the memory bank = the images' features (with no merge
  stages: one agglomeration of the initial features to the target count, then filtering);
* ``k · stage`` (k = 1..S): merge stage k on the current features; the bank restarts at the new
  clusters' mean features; after stage S the silhouette / size filter (Alg. 1 lines 4-15);
* ``A + e · epoch`` (e = 0..E-1): validation on the held-out identities (early stopping:
  after ``patience`` epochs without improvement the hook ends training here with
  ``HookContext.stop``), then the cross-spectral vote of Alg. 1 lines 20-31, every epoch, and
  the diagnostics;
* the end of training (``A + E · epoch``, or where early stopping ended it), the final hook
  `PseudoLabelHook.finish`: the last validation when training ran to the end, then the best
  parameters are put back (early stopping keeps the best model).

Everything the steps need lives in ``state.extra`` with fixed shapes (the module docstring of
`hfrjax.recipes.csan.task` lists them), so a run resumed anywhere recomputes nothing: after a
restore the sampler's table is re-installed from the state (`PseudoLabelHook.on_restore`), and
a boundary re-run after a restore repeats the same deterministic computation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hfrjax.eval.embedding import embed_batches
from hfrjax.fileio import write_text_atomic
from hfrjax.recipes.csan import clustering, diagnostics, filtering
from hfrjax.recipes.csan import pseudo_labels as pl
from hfrjax.recipes.csan.inputs import CsanBatches, PseudoLabelTable, SampleStore
from hfrjax.recipes.csan.network import embed_features

DIAG_KEYS = (
    "rgb_clusters",
    "ir_clusters",
    "rgb_kept",
    "ir_kept",
    "rgb_linked",
    "link_accuracy",
    "rgb_kept_purity",
    "ir_kept_purity",
)
DIAGNOSTICS_FILE = "diagnostics.jsonl"
DIAGNOSTICS_PLOT = "diagnostics.png"
CLUSTERING_FILE = "clustering.jsonl"


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Where each phase's boundaries fall (global steps)."""

    steps_per_epoch: int
    bank_epochs: int
    merge_counts: np.ndarray  # [S, 2] clusters per modality after each merge stage.
    epochs: int  # E: triplet-phase epochs.

    @property
    def stages(self) -> int:
        return len(self.merge_counts) if self.bank_epochs > 0 else 0

    @property
    def stage_steps(self) -> int:
        return self.bank_epochs * self.steps_per_epoch

    @property
    def cluster_steps(self) -> int:  # A
        return self.stages * self.stage_steps

    @property
    def total_steps(self) -> int:
        return self.cluster_steps + self.epochs * self.steps_per_epoch

    def epoch_of(self, step: int) -> int | None:
        """Triplet-phase epoch e whose start is boundary ``step`` (E for the final one)."""
        r = step - self.cluster_steps
        if r < 0 or r % self.steps_per_epoch or r > self.epochs * self.steps_per_epoch:
            return None
        return r // self.steps_per_epoch

    def stage_of(self, step: int) -> int | None:
        """Merge stage k ending at boundary ``step``."""
        if self.stages == 0 or step <= 0 or step > self.cluster_steps or step % self.stage_steps:
            return None
        return step // self.stage_steps


class PseudoLabelHook:
    """``Hook.fn`` and ``Hook.due`` of the CSAN task (module docstring)."""

    def __init__(
        self,
        cfg,
        schedule: Schedule,
        store: SampleStore,
        val_store,
        batches: CsanBatches,
        dim: int,
        trainable: tuple[str, ...],
    ):
        self.cfg, self.schedule, self.store, self.val_store = cfg, schedule, store, val_store
        self.batches, self.dim, self.trainable = batches, dim, trainable
        n_rgb, n_ir = store.num_rgb, store.num_ir
        self.targets = (
            pl.target_count(n_rgb, cfg.clustering.target_clusters, cfg.clustering.target_fraction),
            pl.target_count(n_ir, cfg.clustering.target_clusters, cfg.clustering.target_fraction),
        )
        self._last_end: float | None = None
        self._last_epoch: int | None = None
        self._last_stage_end: float | None = None
        self._last_stage: int | None = None

    # -- Hook interface ----------------------------------------------------------------------

    def due(self, step: int) -> bool:
        s = self.schedule
        return step == 0 or s.stage_of(step) is not None or s.epoch_of(step) is not None

    def on_restore(self, state) -> None:
        """``TaskSetup.on_restore``: the sampler draws from the restored pseudo-labels."""
        self.batches.install(PseudoLabelTable.from_extra(state.extra))

    def __call__(self, hctx, state):
        t0 = time.perf_counter()
        step = int(jax.device_get(state.step))
        extra = dict(state.extra)
        host = {k: np.array(jax.device_get(v)) for k, v in extra.items() if k != "best_params"}
        s = self.schedule
        feats = None
        if step == 0:
            feats = self._embed(hctx, state, self.store)
            self._initial(host, feats)
            self._last_stage_end, self._last_stage = time.perf_counter(), 0
        k = s.stage_of(step)
        if k is not None:
            feats = self._embed(hctx, state, self.store)
            self._merge(host, feats, k)
            self._stage_record(hctx, host, k, step, t0)
        e = s.epoch_of(step)
        record = None
        if e is not None and not host["stopped"]:
            if self.val_store is not None:
                self._validate(hctx, state, host, extra, e)
                if host["stopped"]:
                    hctx.stop(
                        f"csan: early stop at epoch {e}: validation "
                        f"{self.cfg.early_stop.metric} {float(host['val'][e]):.4f}, best "
                        f"{float(host['best']):.4f} at epoch {int(host['best_epoch'])}"
                    )
            if e < s.epochs and not host["stopped"]:
                if feats is None:
                    feats = self._embed(hctx, state, self.store)
                vote_result = self._vote(host, feats)
                record = self._diagnose(host, vote_result, e, step, t0)
        for key, value in host.items():
            extra[key] = jnp.asarray(value)
        self.batches.install(PseudoLabelTable.from_extra(host))
        if record is not None:
            record["hook_seconds"] = time.perf_counter() - t0
            if self._last_end is not None and self._last_epoch == e - 1:
                record["train_seconds"] = t0 - self._last_end  # Wall time of the last epoch.
            self._write_record(hctx, record)
            hctx.say(_summary(record))
        if e is not None:
            self._last_end, self._last_epoch = time.perf_counter(), e
        return state.replace(extra=extra)

    def finish(self, hctx, state):
        """The final hook (``Hook(final=True)``), where training ends: the validation of the
        last epoch unless early stopping ended training, then the best parameters back."""
        if self.val_store is None:
            return state
        step = int(jax.device_get(state.step))
        extra = dict(state.extra)
        host = {k: np.array(jax.device_get(v)) for k, v in extra.items() if k != "best_params"}
        if not host["stopped"] and self.schedule.epoch_of(step) == self.schedule.epochs:
            self._validate(hctx, state, host, extra, self.schedule.epochs)
            for key, value in host.items():
                extra[key] = jnp.asarray(value)
        best = jax.tree.map(lambda x: jnp.array(x, copy=True), extra["best_params"])
        return state.replace(params={**state.params, **best}, extra=extra)

    # -- phases --------------------------------------------------------------------------------

    def _embed(self, hctx, state, store: SampleStore) -> np.ndarray:
        batch = self.cfg.input.embed_batch
        if store.features is not None:
            return embed_features(state.params, store.features, self.dim, batch)
        return embed_batches(hctx.embedder(state), store.image_batches(batch))

    def _cluster_kw(self) -> dict:
        c = self.cfg.clustering
        return dict(
            neighbours=c.neighbours,
            block_entries=c.block_entries,
            dtype=np.float64 if c.dtype == "float64" else np.float32,
        )

    def _split(self, x):
        n = self.store.num_rgb
        return x[:n], x[n:]

    def _initial(self, host: dict, feats: np.ndarray) -> None:
        n_rgb, n_ir = self.store.num_rgb, self.store.num_ir
        if self.schedule.stages > 0:
            labels = np.concatenate([np.arange(n_rgb), np.arange(n_ir)])
            host["raw_cluster"] = labels.astype(np.int32)
            host["cluster"] = labels.astype(np.int32)
            host["bank"] = feats.astype(np.float32)
            return
        raw = [
            clustering.agglomerative_clustering(f, t, **self._cluster_kw())
            for f, t in zip(self._split(feats), self.targets)
        ]
        host["raw_cluster"] = np.concatenate(raw).astype(np.int32)
        self._filter(host, feats)

    def _merge(self, host: dict, feats: np.ndarray, k: int) -> None:
        counts = self.schedule.merge_counts[k - 1]
        merged = [
            pl.merge_to(f, y.astype(np.int64), int(c), **self._cluster_kw())
            for f, y, c in zip(self._split(feats), self._split(host["raw_cluster"]), counts)
        ]
        labels = np.concatenate(merged)
        host["raw_cluster"] = labels.astype(np.int32)
        host["cluster"] = labels.astype(np.int32)
        if host["bank"].shape[0] == len(labels):
            n_rgb = self.store.num_rgb
            host["bank"] = np.concatenate(
                [
                    pl.cluster_means(feats[:n_rgb], merged[0], n_rgb),
                    pl.cluster_means(feats[n_rgb:], merged[1], self.store.num_ir),
                ]
            )
        if k == self.schedule.stages:
            self._filter(host, feats)

    def _filter(self, host: dict, feats: np.ndarray) -> None:
        f = self.cfg.filter
        kept = [
            pl.filter_modality(
                x,
                y.astype(np.int64),
                min_size=f.min_size,
                max_size_factor=f.max_size_factor,
                silhouette=f.silhouette,
                block_entries=self.cfg.clustering.block_entries,
            ).labels
            for x, y in zip(self._split(feats), self._split(host["raw_cluster"]))
        ]
        host["cluster"] = np.concatenate(kept).astype(np.int32)

    def _vote(self, host: dict, feats: np.ndarray):
        n_rgb = self.store.num_rgb
        cluster = host["cluster"].astype(np.int64)
        result, link, ir_to_rgb, neighbour = pl.vote(
            feats, cluster, n_rgb, self.cfg.clustering.block_entries
        )
        host["link"] = link.astype(np.int32)
        host["ir_to_rgb"] = ir_to_rgb.astype(np.int32)
        host["neighbour"] = neighbour.astype(np.int32)
        if self.cfg.loss.kind == "ce":  # Bank rows = the linked pairs' joint centres.
            rgb, ir = cluster[:n_rgb], cluster[n_rgb:]
            joint = np.concatenate(
                [
                    np.where((rgb >= 0) & (link[np.maximum(rgb, 0)] >= 0), rgb, -1),
                    np.where(ir >= 0, ir_to_rgb[np.maximum(ir, 0)], -1),
                ]
            )
            host["bank"] = pl.cluster_means(feats, joint, len(cluster))
        return result

    def _validate(self, hctx, state, host: dict, extra: dict, epoch: int) -> None:
        """Held-out retrieval at ``epoch``: records it in ``host``, copies the parameters into
        ``extra["best_params"]`` when better, sets ``host["stopped"]`` when patience ran out."""
        es = self.cfg.early_stop
        feats = self._embed(hctx, state, self.val_store)
        value = pl.validation_metric(
            feats, self.val_store.truth, self.val_store.num_rgb, es.direction, es.metric
        )
        host["val"][epoch] = value
        if not value <= host["best"]:  # Better (or the first).
            host["best"], host["best_epoch"] = np.float32(value), np.int32(epoch)
            # Own buffers: the state is donated to the step.
            extra["best_params"] = {
                g: jax.tree.map(jnp.array, state.params[g]) for g in self.trainable
            }
        elif epoch - int(host["best_epoch"]) >= es.patience and epoch < self.schedule.epochs:
            host["stopped"] = np.int32(1)

    def _diagnose(self, host: dict, vote_result, epoch: int, step: int, t0: float) -> dict:
        n_rgb = self.store.num_rgb
        raw, kept = host["raw_cluster"].astype(np.int64), host["cluster"].astype(np.int64)
        truth = self.store.truth
        record = diagnostics.epoch_diagnostics(
            rgb_labels=raw[:n_rgb],
            ir_labels=raw[n_rgb:],
            rgb_filter=_as_filter(raw[:n_rgb], kept[:n_rgb]),
            ir_filter=_as_filter(raw[n_rgb:], kept[n_rgb:]),
            vote=vote_result,
            rgb_truth=truth[:n_rgb],
            ir_truth=truth[n_rgb:],
        )
        record = {"epoch": epoch, "step": step, **record}
        if self.val_store is not None:
            v = float(host["val"][epoch])
            record[f"val_{self.cfg.early_stop.metric}"] = v
        host["diag"] = np.asarray([_finite(record.get(k, math.nan)) for k in DIAG_KEYS], np.float32)
        return record

    def _stage_record(self, hctx, host: dict, stage: int, step: int, t0: float) -> None:
        """clustering.jsonl: each merge stage's cluster counts and quality (identities are
        monitored only), with the stage's clustering time and the preceding training time."""
        n_rgb = self.store.num_rgb
        record = {"stage": stage, "step": step}
        for m, rows in (("rgb", slice(0, n_rgb)), ("ir", slice(n_rgb, None))):
            y, t = host["raw_cluster"][rows].astype(np.int64), self.store.truth[rows]
            record[f"{m}_clusters"] = diagnostics.num_clusters(y)
            record[f"{m}_purity"] = diagnostics.cluster_purity(y, t)
            record[f"{m}_nmi"] = diagnostics.normalized_mutual_info(y, t)
        if stage == self.schedule.stages:
            kept = host["cluster"].astype(np.int64)
            record["rgb_kept"] = diagnostics.num_clusters(kept[:n_rgb])
            record["ir_kept"] = diagnostics.num_clusters(kept[n_rgb:])
        record["hook_seconds"] = time.perf_counter() - t0
        if self._last_stage_end is not None and self._last_stage == stage - 1:
            record["train_seconds"] = t0 - self._last_stage_end
        self._last_stage_end, self._last_stage = time.perf_counter(), stage
        self._append(hctx, CLUSTERING_FILE, "stage", record)

    def _append(self, hctx, name: str, key: str, record: dict) -> list[dict]:
        """Appends ``record`` to a JSON-lines file of the workdir, dropping records whose
        ``key`` is not below the new one's (a resumed run keeps one record each)."""
        path = Path(hctx.workdir) / name
        history = []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    r = json.loads(line)
                    if r.get(key, -1) < record[key]:
                        history.append(r)
        history.append(record)
        if jax.process_index() == 0:
            text = "".join(json.dumps(r, default=float) + "\n" for r in history)
            write_text_atomic(path, text)
        return history

    def _write_record(self, hctx, record: dict) -> None:
        """diagnostics.jsonl (one record per epoch) and its PNG."""
        history = self._append(hctx, DIAGNOSTICS_FILE, "epoch", record)
        if jax.process_index() != 0:
            return
        diagnostics.plot_diagnostics(
            history, Path(hctx.workdir) / DIAGNOSTICS_PLOT, title="CSAN pseudo-labels per epoch"
        )


def _as_filter(raw: np.ndarray, kept: np.ndarray) -> filtering.ClusterFilter:
    k = int(raw.max()) + 1 if len(raw) else 0
    sizes = np.bincount(raw[raw >= 0], minlength=k)
    alive = np.zeros(k, bool)
    alive[np.unique(kept[kept >= 0])] = True
    return filtering.ClusterFilter(kept, alive, sizes, np.full(k, np.nan))


def _finite(x) -> float:
    x = float(x)
    return x if math.isfinite(x) else -1.0


def _summary(record: dict) -> str:
    parts = [f"csan epoch {record['epoch']}:"]
    for k in ("rgb_clusters", "ir_clusters", "rgb_kept", "ir_kept", "rgb_linked"):
        parts.append(f"{k} {record[k]}")
    for k in ("link_accuracy", "rgb_kept_purity"):
        if k in record:
            parts.append(f"{k} {record[k]:.3f}")
    parts.append(f"({record.get('hook_seconds', 0):.1f} s)")
    return " ".join(parts)
