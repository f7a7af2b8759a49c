"""The training loop: one for every task (`hfrjax.train.task`), written once.

``train(config, workdir)`` locks the workdir, builds the mesh, asks the task named by
``config.task`` for its inputs, state, steps, plan and hooks, restores the newest readable
checkpoint (state *and* input positions), and runs the plan: hooks at step boundaries, the
jitted step of each global step, progress lines (images/s, ETA), ``metrics.jsonl`` and
TensorBoard, evaluation every ``eval.every_epochs``, checkpoints every ``checkpoint_every``
steps, a checkpoint on SIGTERM (exit status 143). At the end it saves, *then* evaluates,
then marks the run complete (``complete.json``); a rerun of a complete run does nothing, a rerun of
a run stopped after its last step only evaluates. Every exit path waits for the saves in
flight, so a checkpoint is either complete or absent.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from hfrjax.config import Section
from hfrjax.data import tfrecord
from hfrjax.fileio import write_text_atomic
from hfrjax.train import checkpoint as ckpt_lib
from hfrjax.train import evaluation, reporting
from hfrjax.train import mesh as mesh_lib
from hfrjax.train import step as step_lib
from hfrjax.train.inputs import NamedInputs
from hfrjax.train.state import TrainState, count_params
from hfrjax.train.task import HookContext, SetupContext, TaskSetup
from hfrjax.train.workdir import WorkdirLock

DONE_FILE = "complete.json"


@dataclasses.dataclass(frozen=True)
class MeshConfig(Section):
    data: int = -1  # -1: all devices the model axis leaves.
    model: int = 1  # Class-sharded classifiers split their rows over this axis.


@dataclasses.dataclass(frozen=True)
class EvalConfig(Section):
    """Evaluation during and after training (``hfrjax.eval``), and early stopping on it."""

    data_dir: str = ""  # A dataset with a protocol (protocols/): k-fold HFR evaluation.
    folds: tuple[int, ...] | None = None  # None: all folds.
    every_epochs: float = 0.0  # 0: only at the end.
    batch_size: int = 128
    # Probe -> gallery roles: "probe->gallery" (the protocol's own), "gallery->probe", or by
    # modality name ("nir->vis", "vis->thermal", ...).
    direction: str = "probe->gallery"
    occlusion: str = "none"  # none | maskTop | maskBottom: probe images only (SSN §IV).
    tar_method: str = "nearest"
    ranks: tuple[int, ...] = (1,)
    gallery_mode: str = "images"  # images | template (one fused template per identity).
    fars: tuple[float, ...] = (1e-3, 1e-2)
    flip: bool = False  # Fuse each image's embedding with its mirror's.
    verification_packs: tuple[str, ...] = ()  # InsightFace .bin packs (lfw.bin, ...).
    # Best checkpoint and early stopping, on a metric of the merged evaluation (e.g. "Rank-1",
    # or a task evaluator's "val/rank1"); the periodic evaluations (every_epochs) feed them.
    best_metric: str = ""  # Also keep the best checkpoint by this metric.
    best_mode: str = "max"  # max | min
    patience: int = 0  # > 0: stop after this many evaluations without a better best_metric.
    restore_best: bool = False  # End training with the best checkpoint's parameters.

    def __post_init__(self):
        from hfrjax.data.occlusion import OCCLUSIONS
        from hfrjax.eval.metrics import TAR_METHODS

        if self.occlusion not in ("none", *OCCLUSIONS):
            raise ValueError(
                f"occlusion must be one of {('none', *OCCLUSIONS)}, got {self.occlusion!r}"
            )
        if self.tar_method not in TAR_METHODS:
            raise ValueError(f"tar_method must be one of {TAR_METHODS}, got {self.tar_method!r}")
        if "->" not in self.direction:
            raise ValueError(
                f"direction must look like 'probe->gallery' or 'nir->vis', got {self.direction!r}"
            )
        if self.best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {self.best_mode!r}")
        if (self.patience or self.restore_best) and not self.best_metric:
            raise ValueError("patience and restore_best need best_metric (the metric to watch)")
        if self.patience and not self.every_epochs:
            raise ValueError("patience needs periodic evaluations: set every_epochs")


@dataclasses.dataclass(frozen=True)
class LoopConfig(Section):
    """What the loop itself reads; the task's own sections sit beside these keys."""

    task: str = "classification"
    seed: int = 0
    mesh: MeshConfig = MeshConfig()
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    tensorboard: bool = True
    eval: EvalConfig = EvalConfig()


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/inf; the message names the step."""


class Preempted(SystemExit):
    """SIGTERM: the state is saved; exit status 143."""

    def __init__(self, msg: str):
        super().__init__(143)
        self.msg = msg


def say(msg: str) -> None:
    """A progress line on stdout (process 0 only); absl logging stays for details."""
    if jax.process_index() == 0:
        print(msg, flush=True)


@dataclasses.dataclass
class TrainResult:
    state: TrainState = dataclasses.field(repr=False)
    setup: TaskSetup = dataclasses.field(repr=False)  # Its initial state was donated.
    mesh: Any = dataclasses.field(repr=False)
    final_metrics: dict = dataclasses.field(default_factory=dict)
    eval_results: dict | None = None
    resumed_from: int | None = None

    @property
    def embedder(self):
        from hfrjax.eval.embedding import MeshEmbedder

        return MeshEmbedder(self.setup.embed, self.state.params, self.state.model_state, self.mesh)


def _place(state: TrainState, sharding) -> TrainState:
    """device_put a state; a typed PRNG key cannot be put onto other processes' devices."""
    impl = jax.random.key_impl(state.rng)
    state = jax.device_put(state.replace(rng=jax.random.key_data(state.rng)), sharding)
    return state.replace(rng=jax.random.wrap_key_data(state.rng, impl=impl))


def train(config: Any, workdir: str) -> TrainResult:
    """Trains (or resumes, or only finishes) the run described by ``config`` in ``workdir``."""
    from hfrjax.tasks import parse_config

    task, loop_cfg, task_cfg = parse_config(config)
    workdir_p = Path(workdir).absolute()
    workdir_p.mkdir(parents=True, exist_ok=True)
    with WorkdirLock(workdir_p, active=jax.process_index() == 0):
        return _train(task, loop_cfg, task_cfg, config, workdir_p)


def _train(task, loop_cfg: LoopConfig, task_cfg, config, workdir: Path) -> TrainResult:
    mesh = mesh_lib.make_mesh(loop_cfg.mesh.data, loop_cfg.mesh.model)
    ckpt = ckpt_lib.Checkpointer(
        workdir / "checkpoints",
        keep=loop_cfg.keep_checkpoints,
        best_metric=loop_cfg.eval.best_metric or None,
        best_mode=loop_cfg.eval.best_mode,
    )
    inputs = None
    writer = None
    try:
        start = ckpt.latest_readable_step(say)
        ctx = SetupContext(
            mesh=mesh,
            workdir=str(workdir),
            restoring=start is not None,
            seed=loop_cfg.seed,
        )
        setup = task.setup(task_cfg, ctx)
        inputs = NamedInputs(setup.inputs)
        sharding = (
            setup.state_sharding(setup.state, mesh)
            if setup.state_sharding is not None
            else jax.tree.map(lambda _: mesh_lib.replicated(mesh), setup.state)
        )
        state = _place(setup.state, sharding)
        meta = {
            "task": task.name,
            "config": _jsonable(config.to_dict() if hasattr(config, "to_dict") else config),
            "export": setup.export.to_json(),
            **setup.meta,
        }
        if loop_cfg.eval.data_dir:  # Lets launch/evaluate.py --workdir find the protocol.
            meta["eval"] = {"data_dir": loop_cfg.eval.data_dir, "folds": loop_cfg.eval.folds}
        restored_meta: dict = {}
        if start is not None:
            state, restored_meta = ckpt.restore(start, state, inputs)
            if setup.on_restore is not None:
                setup.on_restore(state)
        writer = reporting.MetricWriter(
            workdir, tensorboard=loop_cfg.tensorboard, resume_step=start or 0
        )
        runner = _Runner(task, loop_cfg, setup, mesh, ckpt, inputs, writer, workdir, meta, sharding)
        return runner.run(state, start, restored_meta)
    finally:
        if inputs is not None:
            inputs.close()
        ckpt.close()  # Waits for saves in flight, on every exit path.
        if writer is not None:
            writer.close()


class _Runner:
    def __init__(self, task, cfg, setup, mesh, ckpt, inputs, writer, workdir, meta, sharding):
        self.task, self.cfg, self.setup, self.mesh = task, cfg, setup, mesh
        self.ckpt, self.inputs, self.writer, self.workdir = ckpt, inputs, writer, workdir
        self.meta, self.sharding = meta, sharding
        self.steps = {
            name: step_lib.make_train_step(s, setup.optimizers, mesh, sharding)
            for name, s in setup.steps.items()
        }
        self.hook_ctx = HookContext(mesh=mesh, workdir=str(workdir), setup=setup, say=say)

    # -- helpers -----------------------------------------------------------------------------

    def _check(self, pending) -> dict:
        """Host copy of a step's metrics; raises on a non-finite step (nothing is saved)."""
        m, at = pending
        m = jax.device_get(m)
        if not bool(m["finite"]):
            raise NonFiniteLossError(
                f"non-finite loss ({float(m['loss'])}) or gradient at step {at}; the state was "
                f"kept at step {at - 1} and not saved; last checkpoint: "
                f"{self.ckpt.latest_step()} in {self.ckpt.directory}. Lower the learning "
                "rate, check the data, or enable optimizer.clip_norm."
            )
        return {k: float(v) for k, v in m.items() if k != "finite" and np.ndim(v) == 0}

    def _save(self, step: int, state, *, force=False, metrics=None, best=None, finished=None):
        self.ckpt.check_for_errors()
        meta = dict(self.meta)
        if best is not None and best.metric:
            meta["best"] = best.to_json()
        if finished is not None:
            meta["finished"] = finished
        self.ckpt.save(step, state, self.inputs, meta=meta, metrics=metrics, force=force)

    def _evaluate(self, state, step: int) -> dict | None:
        return evaluation.evaluate(
            self.cfg.eval,
            self.setup,
            state,
            self.mesh,
            step,
            self.writer,
            self.workdir,
            say,
            hook_ctx=self.hook_ctx,
        )

    def _done(self) -> dict | None:
        p = self.workdir / DONE_FILE
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logging.warning("%s is unreadable; the final evaluation runs again", p)
            return None

    # -- the loop ----------------------------------------------------------------------------

    def _final_state(self, state, step: int, stopper: "_BestTracker"):
        """The end of training: the best checkpoint's parameters when asked, then the
        task's final hooks (boundary ``step``), in that order. Returns (state, changed)."""
        changed = False
        if (
            self.cfg.eval.restore_best
            and stopper.best_step is not None
            and stopper.best_step != step
        ):
            best, _ = self.ckpt.restore(stopper.best_step, state)
            say(
                f"restoring the best checkpoint (step {stopper.best_step}, "
                f"{self.cfg.eval.best_metric} {stopper.best:.4f}) as the final state"
            )
            state, changed = _place(best.replace(step=state.step), self.sharding), True
        for hook in self.setup.hooks:
            if hook.final:
                changed = True
                t = time.perf_counter()
                state = _place(hook.fn(self.hook_ctx, state), self.sharding)
                logging.info(
                    "final hook %s at step %d: %.1f s", hook.name, step, time.perf_counter() - t
                )
        return state, changed

    def run(self, state, start: int | None, restored_meta: dict | None = None) -> TrainResult:
        setup, total = self.setup, self.setup.total_steps
        restored_meta = restored_meta or {}
        step = int(jax.device_get(state.step))
        finished = restored_meta.get("finished")  # Set by the save after the final hooks.
        if finished and not finished.get("stopped") and step < total:
            finished = None  # A finished run given more steps trains on.
        done = self._done()
        if start is not None and done and done.get("step") == step and (step >= total or finished):
            say(f"{self.workdir} is complete (step {step}); nothing to do")
            evals = done.get("eval")
            return TrainResult(state, setup, self.mesh, {}, evals, start)
        say(
            f"training task {self.task.name}: {setup.describe or ''}"
            f"{count_params(state.params):,} params, {total} steps ({setup.steps_per_epoch} per "
            f"epoch), mesh {dict(self.mesh.shape)}"
            + (f", resumed at step {start}" if start is not None else "")
        )
        eval_every = int(round(self.cfg.eval.every_epochs * setup.steps_per_epoch))
        tracker = _BestTracker(self.cfg.eval, restored_meta.get("best"))
        progress = reporting.Progress(total, setup.images_per_step, step)
        pending, last, eval_results = None, {}, None
        stopped = (finished or {}).get("stopped")
        with ckpt_lib.PreemptionGuard() as guard:
            while not finished and step < total:
                for hook in setup.hooks:
                    if not hook.final and hook.due(step):
                        if pending is not None:
                            last, pending = self._check(pending), None
                        t = time.perf_counter()
                        state = _place(hook.fn(self.hook_ctx, state), self.sharding)
                        logging.info(
                            "hook %s at step %d: %.1f s", hook.name, step, time.perf_counter() - t
                        )
                        if self.hook_ctx.stop_reason:
                            break
                if self.hook_ctx.stop_reason:  # A hook ended training at this boundary.
                    stopped = self.hook_ctx.stop_reason
                    break
                name = setup.plan(step)
                spec = setup.steps[name]
                t_in = time.perf_counter()
                batches = self.inputs.next_for(spec.inputs)
                if pending is None or _ready(pending[0]):
                    # Only a wait that outlasted the step in flight left the device idle (an
                    # upper bound on that idle time); one it overlapped cost nothing.
                    progress.add_input_wait(time.perf_counter() - t_in)
                state, metrics = self.steps[name](state, batches)
                step += 1
                if pending is not None:
                    last = self._check(pending)
                pending = (metrics, step)  # Fetched one step late to keep the device busy.
                if step % self.cfg.log_every == 0 or step == total:
                    self.ckpt.check_for_errors()  # A failed async save (disk full) surfaces now.
                    last, pending = self._check(pending), None
                    line = progress.line(step, last)
                    self.writer.write(step, {**last, "input_wait_fraction": progress.input_wait})
                    say(line)
                evaluated = None
                if eval_every and step % eval_every == 0 and step < total:
                    if pending is not None:
                        last, pending = self._check(pending), None
                    eval_results = self._evaluate(state, step)
                    evaluated = eval_results and dict(eval_results["mean"])
                    stopped = tracker.update(step, evaluated)
                    if stopped:
                        say(stopped)
                        break  # The final save below holds this step (its metrics included).
                stop = step < total and guard.should_stop(step)  # At the end: asked below.
                ckpt_due = step % self.cfg.checkpoint_every == 0 and step < total
                if step < total and (stop or ckpt_due or (evaluated and self.cfg.eval.best_metric)):
                    if pending is not None:  # Never save a state we have not checked.
                        last, pending = self._check(pending), None
                    self._save(step, state, force=True, metrics=evaluated, best=tracker)
                if stop:
                    self.ckpt.wait()
                    raise Preempted(f"pre-empted: saved step {step} to {self.ckpt.directory}")
            if pending is not None:
                last, pending = self._check(pending), None
            if tfrecord.CORRUPTION_STATS.total:
                logging.warning("input: %s", tfrecord.CORRUPTION_STATS.report())
            if not finished:
                # Save first: an evaluation failure (a missing pack, a SIGTERM) loses nothing.
                state, changed = self._final_state(state, step, tracker)
                saved = self.ckpt.latest_step() == step
                if saved and (changed or stopped):  # Saved in the loop, before the end.
                    self.ckpt.delete(step)
                if not saved or changed or stopped:
                    record = {
                        "final_hooks": True,
                        "stopped": stopped,
                        "restored_best": (
                            tracker.best_step if self.cfg.eval.restore_best else None
                        ),
                    }
                    self._save(
                        step,
                        state,
                        force=True,
                        best=tracker,
                        finished=record,
                        metrics=tracker.metrics_at(step),
                    )
            self.ckpt.wait()
            if guard.should_stop(step):
                raise Preempted(
                    f"pre-empted: saved step {step} (the last) to {self.ckpt.directory}; "
                    "a rerun evaluates"
                )
            guard.raise_on_signal = True  # From here a SIGTERM stops at once; all is saved.
            eval_results = self._evaluate(state, step)
        if jax.process_index() == 0:
            record = {"step": step, "eval": eval_results and eval_results.get("mean")}
            if stopped:
                record["stopped"] = stopped
            write_text_atomic(self.workdir / DONE_FILE, json.dumps(record, default=float) + "\n")
        return TrainResult(state, setup, self.mesh, last, eval_results, start)


class _BestTracker:
    """The best value of ``eval.best_metric`` so far and the evaluations since it improved;
    kept in each checkpoint's metadata, so early stopping resumes exactly."""

    def __init__(self, cfg: EvalConfig, saved: dict | None):
        self.metric, self.mode, self.patience = cfg.best_metric, cfg.best_mode, cfg.patience
        saved = saved or {}
        self.best = saved.get("best")
        self.best_step = saved.get("best_step")
        self.bad = int(saved.get("bad", 0))
        self._last: tuple[int, dict] | None = None

    def update(self, step: int, evaluated: dict | None) -> str | None:
        """Records an evaluation; returns the early-stop message when patience ran out."""
        if not self.metric or not evaluated:
            return None
        if self.metric not in evaluated:
            raise KeyError(
                f"eval.best_metric {self.metric!r} is not among the evaluation's metrics "
                f"{sorted(evaluated)}"
            )
        value = float(evaluated[self.metric])
        self._last = (step, evaluated)
        better = self.best is None or (
            value > self.best if self.mode == "max" else value < self.best
        )
        if better:
            self.best, self.best_step, self.bad = value, step, 0
            return None
        self.bad += 1
        if self.patience and self.bad >= self.patience:
            return (
                f"early stop at step {step}: {self.metric} {value:.4f}, no better than "
                f"{self.best:.4f} (step {self.best_step}) for {self.bad} evaluations"
            )
        return None

    def metrics_at(self, step: int) -> dict | None:
        return self._last[1] if self._last and self._last[0] == step else None

    def to_json(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _ready(tree: Any) -> bool:
    """Whether every array of ``tree`` (a step's metrics) is computed."""
    return all(getattr(a, "is_ready", lambda: True)() for a in jax.tree.leaves(tree))
