"""Orbax checkpoints of the train state *and* the grain iterator, plus pre-emption saves.

``workdir/checkpoints/<step>/{state,data,meta}``: ``state`` the TrainState, ``data`` the
input iterator (grain's checkpoint handler: one JSON per process), ``meta`` a JSON dict (class
ids, config). Orbax writes each step to a temporary directory and renames it when complete,
so a crash mid-save never leaves a checkpoint that looks valid. Keeps the last ``keep`` steps
and, when ``best_metric`` is set, also the best one by that metric.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import flax
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as ocm


class CheckpointMismatchError(ValueError):
    """A checkpoint whose arrays do not fit the model being restored."""


class Checkpointer:
    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 3,
        best_metric: str | None = None,
        best_mode: str = "max",
        async_save: bool = True,
    ):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        policies: list[Any] = [ocm.LatestN(n=keep)]
        if best_metric:
            policies.append(
                ocm.BestN(
                    get_metric_fn=lambda m: m[best_metric],
                    reverse=best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        self.directory = Path(directory).absolute()
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=ocm.AnyPreservationPolicy(policies),
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
            ),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def best_step(self) -> int | None:
        """The kept step with the best ``best_metric`` (None without one or before any)."""
        return self._mngr.best_step()

    def delete(self, step: int) -> None:
        """Removes ``step`` (to rewrite it: the final state of a run that changes it after
        its last in-loop save, see `hfrjax.train.trainer`)."""
        self._mngr.wait_until_finished()
        self._mngr.delete(step)

    def latest_readable_step(self, say=logging.warning) -> int | None:
        """The newest step whose metadata and state metadata can be read.

        A zero-byte or truncated file in the newest checkpoint (a full disk, a copy cut short)
        must not block resuming: older checkpoints are tried in turn, and ``say`` explains
        which step was skipped and why.
        """
        for step in sorted(self.all_steps(), reverse=True):
            try:
                self._mngr.item_metadata(step)
                self.restore_meta(step)
                return step
            except Exception as e:  # noqa: BLE001 - any unreadable file means "skip it".
                say(
                    f"checkpoint {self.directory / str(step)} is unreadable "
                    f"({type(e).__name__}: {str(e)[:200]}); trying an older one"
                )
        return None

    def check_for_errors(self) -> None:
        """Raises now the error of an async save that failed (e.g. disk full), naming it."""
        try:
            self._mngr.check_for_errors()
        except Exception as e:
            raise OSError(f"saving a checkpoint to {self.directory} failed: {e}") from e

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        data_iterator: Any = None,
        *,
        meta: dict | None = None,
        metrics: dict | None = None,
        force: bool = False,
    ) -> bool:
        args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta or {})}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self._mngr.save(
            step,
            args=ocp.args.Composite(**args),
            metrics=_to_python(metrics) if metrics else None,
            force=force,
        )

    def restore(
        self, step: int, state_template: Any, data_iterator: Any = None
    ) -> tuple[Any, dict]:
        """(state, meta) of ``step``; the data iterator, if given, is restored in place."""
        self._check_fits(step, state_template)
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            state_template,
        )
        args = {"state": ocp.args.StandardRestore(abstract), "meta": ocp.args.JsonRestore()}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        out = self._mngr.restore(step, args=ocp.args.Composite(**args))
        return out["state"], dict(out["meta"] or {})

    def restore_untyped(self, step: int | None = None) -> tuple[int, dict, dict]:
        """(step, state as nested dicts of arrays, meta) without a template: for reading
        weights out of a run (export, init_from) whatever its optimizer was."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory} holds no checkpoint")
        out = self._mngr.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
        )
        return step, out["state"], dict(out["meta"] or {})

    def restore_meta(self, step: int) -> dict:
        return dict(
            self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            or {}
        )

    def _check_fits(self, step: int, template: Any) -> None:
        """Raises CheckpointMismatchError listing every model array missing or mis-shaped.

        Compares ``params``, ``model_state`` and ``extra`` (plain nested dicts on both sides)
        with the checkpoint's metadata, so the error names the layers at fault instead of
        surfacing as an opaque restore failure.
        """
        stored = _as_tree(self._mngr.item_metadata(step)["state"])
        if stored is None:
            return
        template = flax.serialization.to_state_dict(template)
        problems = []
        for part in ("params", "model_state", "extra"):
            problems += shape_problems(template.get(part, {}), stored.get(part, {}) or {}, part)
        if problems:
            raise CheckpointMismatchError(
                f"checkpoint {self.directory / str(step)} does not fit the model "
                f"({len(problems)} problem(s)): " + "; ".join(problems[:8])
            )

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def shape_problems(want: Any, have: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two trees of arrays (or array metadata):
    mis-shaped leaves, leaves missing in ``have``, and leaves ``want`` does not have."""

    def shapes(tree):
        return {
            jax.tree_util.keystr(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_leaves_with_path(tree)
            if hasattr(x, "shape")
        }

    w, h = shapes(want), shapes(have)
    problems = [
        f"{prefix}{k}: checkpoint {h[k]} vs model {w[k]}" for k in w if k in h and h[k] != w[k]
    ]
    problems += [f"{prefix}{k}: missing in checkpoint" for k in w if k not in h]
    problems += [f"{prefix}{k}: in checkpoint, not in model" for k in h if k not in w]
    return problems


def _as_tree(metadata: Any) -> Any:
    tree = getattr(metadata, "tree", metadata)
    return tree


def _to_python(metrics: dict) -> dict:
    return {k: float(np.asarray(v)) for k, v in metrics.items()}


class PreemptionGuard:
    """Turns SIGTERM (pre-emption) into a flag the training loop polls between steps.

    Single process: a Python signal handler sets the flag. Multi-process runs leave SIGTERM to
    JAX's own pre-emption watcher (``jax.distributed``'s coordination service) and ask its
    sync point, so every process saves at the same step even when only one got the signal
    (a local flag would make that one process save alone and the others hang).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self._event = threading.Event()
        self._signals = signals
        self._previous: dict[int, Any] = {}
        # Once everything is saved (the final evaluation), a signal stops at once instead.
        self.raise_on_signal = False

    def __enter__(self) -> "PreemptionGuard":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for s in self._signals:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        self._event.set()
        if self.raise_on_signal:
            from hfrjax.train.trainer import Preempted

            raise Preempted(
                f"received signal {signum} after the last step was saved: stopping; rerun to "
                "finish the final evaluation"
            )
        logging.warning("received signal %d: will save a checkpoint and stop", signum)

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self._event.is_set()

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
