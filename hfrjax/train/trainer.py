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
    """Evaluation during and after training (``hfrjax.eval``)."""

    data_dir: str = ""  # A dataset with a protocol (protocols/): k-fold HFR evaluation.
    folds: tuple[int, ...] | None = None  # None: all folds.
    every_epochs: float = 0.0  # 0: only at the end.
    batch_size: int = 128
    best_metric: str = ""  # e.g. "rank1": also keep the best checkpoint by this metric.
    fars: tuple[float, ...] = (1e-3, 1e-2)
    flip: bool = False  # Fuse each image's embedding with its mirror's.
    verification_packs: tuple[str, ...] = ()  # InsightFace .bin packs (lfw.bin, ...).


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
        if start is not None:
            state, _ = ckpt.restore(start, state, inputs)
        writer = reporting.MetricWriter(
            workdir, tensorboard=loop_cfg.tensorboard, resume_step=start or 0
        )
        runner = _Runner(task, loop_cfg, setup, mesh, ckpt, inputs, writer, workdir, meta, sharding)
        return runner.run(state, start)
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

    def _save(self, step: int, state, *, force=False, metrics=None) -> None:
        self.ckpt.check_for_errors()
        self.ckpt.save(step, state, self.inputs, meta=self.meta, metrics=metrics, force=force)

    def _evaluate(self, state, step: int) -> dict | None:
        return evaluation.evaluate(
            self.cfg.eval, self.setup, state, self.mesh, step, self.writer, self.workdir, say
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

    def run(self, state, start: int | None) -> TrainResult:
        setup, total = self.setup, self.setup.total_steps
        step = int(jax.device_get(state.step))
        done = self._done()
        if start is not None and step >= total and done and done.get("step") == step:
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
        progress = reporting.Progress(total, setup.images_per_step, step)
        pending, last, eval_results = None, {}, None
        with ckpt_lib.PreemptionGuard() as guard:
            while step < total:
                for hook in setup.hooks:
                    if hook.due(step):
                        if pending is not None:
                            last, pending = self._check(pending), None
                        t = time.perf_counter()
                        state = _place(hook.fn(self.hook_ctx, state), self.sharding)
                        logging.info("hook %s at step %d: %.1f s", hook.name, step, time.perf_counter() - t)
                name = setup.plan(step)
                spec = setup.steps[name]
                batches = self.inputs.next_for(spec.inputs)
                state, metrics = self.steps[name](state, batches)
                step += 1
                if pending is not None:
                    last = self._check(pending)
                pending = (metrics, step)  # Fetched one step late to keep the device busy.
                if step % self.cfg.log_every == 0 or step == total:
                    self.ckpt.check_for_errors()  # A failed async save (disk full) surfaces now.
                    last, pending = self._check(pending), None
                    self.writer.write(step, last)
                    say(progress.line(step, last))
                evaluated = None
                if eval_every and step % eval_every == 0 and step < total:
                    if pending is not None:
                        last, pending = self._check(pending), None
                    eval_results = self._evaluate(state, step)
                    evaluated = eval_results and dict(eval_results["mean"])
                stop = guard.should_stop(step)
                ckpt_due = step % self.cfg.checkpoint_every == 0 and step < total
                if stop or ckpt_due or (evaluated and self.cfg.eval.best_metric):
                    if pending is not None:  # Never save a state we have not checked.
                        last, pending = self._check(pending), None
                    self._save(step, state, force=True, metrics=evaluated)
                if stop:
                    self.ckpt.wait()
                    raise Preempted(f"pre-empted: saved step {step} to {self.ckpt.directory}")
            if pending is not None:
                last, pending = self._check(pending), None
            if tfrecord.CORRUPTION_STATS.total:
                logging.warning("input: %s", tfrecord.CORRUPTION_STATS.report())
            # Save first: an evaluation failure (a missing pack, a SIGTERM) loses nothing.
            if self.ckpt.latest_step() != step:
                self._save(step, state, force=True)
            self.ckpt.wait()
            guard.raise_on_signal = True  # From here a SIGTERM stops at once; all is saved.
            eval_results = self._evaluate(state, step)
        if jax.process_index() == 0:
            record = {"step": step, "eval": eval_results and eval_results.get("mean")}
            write_text_atomic(self.workdir / DONE_FILE, json.dumps(record, default=float) + "\n")
        return TrainResult(state, setup, self.mesh, last, eval_results, start)


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
