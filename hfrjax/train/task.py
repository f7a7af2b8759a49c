"""The task interface: what a recipe supplies to the one training loop (`hfrjax.train.loop`).

A paper's method is a `Task`: given the config and a `SetupContext` (mesh, workdir, whether a
checkpoint will be restored), ``task.setup`` returns a `TaskSetup` with

* ``inputs``     named, resumable batch iterators (``next()`` gives global batches; they are
                 checkpointed together, so zipping several is just naming them);
* ``state``      the initial `TrainState`: parameter groups, model state (BN statistics, ...),
                 one optimizer state per named optimizer, and a task-owned ``extra`` pytree
                 (pseudo-labels, anchors, PCA bases, class centres);
* ``optimizers`` named `Optimizer` s, each owning some parameter groups;
* ``steps``      named `Step` s: a pure loss function, the inputs it eats and the optimizers
                 it updates (groups of other optimizers get no gradient and stay bit-identical,
                 optimizer state included);
* ``plan``       ``plan(step) -> step name``: which step runs at each global step
                 (`alternate`, `phases` build the usual ones: every k steps, "search then train");
* ``hooks``      host-side `Hook` s run at step boundaries (epoch or phase ends: re-clustering,
                 statistics, weight averaging); they return a new state, so what they compute
                 is checkpointed with it;
* ``embed``      ``embed(params, model_state, images, modality) -> embeddings``: what
                 evaluation and export use;
* ``evaluators`` task-specific evaluations (re-id, a hold-out set, a validation split), run
                 with the loop's and merged into ``eval.json``; ``final`` hooks end training
                 (best parameters back, weight averaging), and ``ctx.stop(reason)`` stops it early.

The loop owns everything else: jit with shardings and donation, the NaN guard, progress and
metric logs, checkpoints and exact resume, pre-emption, evaluation and export.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import jax
import optax

from hfrjax.train.state import TrainState

# loss_fn(params, model_state, extra, batches, rng) -> (loss, (metrics, model_state, extra)).
# ``batches`` maps each input the step eats to its batch. Metrics whose name starts with "_"
# are passed to ``Step.post_update`` and not logged.
LossFn = Callable[[Any, Any, Any, Mapping[str, Any], jax.Array], tuple[jax.Array, tuple]]
# embed(params, model_state, images, modality, train_bn) -> embeddings [B, D] (any norm; the
# loop normalises). ``images`` are the batch as stored (uint8 NHWC); ``modality`` int32 [B]
# codes of hfrjax.data.tfrecord.MODALITIES; ``train_bn`` normalises with batch statistics.
EmbedFn = Callable[[Any, Any, jax.Array, jax.Array, bool], jax.Array]


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optax transformation over some top-level parameter groups.

    ``schedule(n)`` (optional) is its learning rate after ``n`` of its own updates, logged as
    ``lr`` (one optimizer) or ``lr/<name>``.
    """

    groups: tuple[str, ...]
    tx: optax.GradientTransformation
    schedule: Callable[[Any], Any] | None = None


@dataclasses.dataclass(frozen=True)
class Step:
    """One kind of update: ``loss_fn`` on batches of ``inputs``, applied by ``optimizers``.

    ``post_update(old_state, params, opt_states, metrics) -> (params, opt_states)`` may amend
    the update inside the jitted step (e.g. Partial FC keeps unsampled classifier rows).
    """

    loss_fn: LossFn
    inputs: tuple[str, ...]
    optimizers: tuple[str, ...]
    post_update: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Hook:
    """``fn(ctx, state) -> state``, run on the host at step boundary ``s`` (after ``s`` steps,
    before step ``s + 1``) whenever ``due(s)``. Boundary 0 is the start of training.

    A hook must be a deterministic function of the state (use ``state.rng`` for randomness):
    a run resumed from a checkpoint at ``s`` runs the hooks due at ``s`` again.

    ``final=True``: run once at the end of training instead (after the last step, or where
    training stopped early; ``due`` is ignored), before the final save, so the saved and
    exported state hold its result (averaging weights, putting the best parameters back).
    A hook ends training at its boundary with ``ctx.stop(reason)``.
    """

    name: str
    due: Callable[[int], bool]
    fn: Callable[["HookContext", TrainState], TrainState]
    final: bool = False


@dataclasses.dataclass
class SetupContext:
    mesh: jax.sharding.Mesh
    workdir: str
    restoring: bool  # A checkpoint will overwrite the state: skip expensive initial values.
    seed: int = 0  # The run's seed (config.seed).


@dataclasses.dataclass
class HookContext:
    """What a hook sees: the mesh, the workdir, the setup and a ready embedding function."""

    mesh: jax.sharding.Mesh
    workdir: str
    setup: "TaskSetup"
    say: Callable[[str], None]
    stop_reason: str | None = None

    def stop(self, reason: str) -> None:
        """Ends training at this boundary (early stopping): the final hooks run, the state is
        saved as final (a rerun does not train on), then the final evaluation."""
        self.say(f"training stops at this boundary: {reason}")
        self.stop_reason = reason

    def embedder(self, state: TrainState, *, train_bn: bool = False):
        """A host function ``(images, modality=None) -> L2-normalised embeddings``."""
        from hfrjax.eval.embedding import MeshEmbedder

        return MeshEmbedder(
            self.setup.embed, state.params, state.model_state, self.mesh, train_bn=train_bn
        )


@dataclasses.dataclass
class ExportSpec:
    """What an export holds: a registered model and where its variables sit in the state.

    ``variables`` maps each collection the model's ``apply`` takes to a path into the state
    (or a list of paths whose dicts are merged), e.g. ``{"params": ("params", "backbone"),
    "batch_stats": ("model_state", "batch_stats")}``. Being data, it is stored with every
    checkpoint, so a workdir exports without the task's code.
    """

    model: dict  # {"name", "kwargs"} for hfrjax.models.get_model.
    variables: dict
    input_size: tuple[int, int] | None = None
    channels: int = 3

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "variables": {k: [list(p) for p in _paths(v)] for k, v in self.variables.items()},
            "input_size": list(self.input_size) if self.input_size else None,
            "channels": self.channels,
        }


def _paths(v) -> list[tuple]:
    if v and isinstance(v[0], (list, tuple)):
        return [tuple(p) for p in v]
    return [tuple(v)]


def select_variables(state_tree: Any, variables: dict) -> dict:
    """The model variables named by an `ExportSpec` 's ``variables`` in a (raw) state tree."""
    out = {}
    for coll, spec in variables.items():
        merged: dict = {}
        for path in _paths(spec):
            node = state_tree
            for k in path:
                node = node[k] if isinstance(node, dict) else getattr(node, k)
            merged.update(node)
        out[coll] = merged
    return out


@dataclasses.dataclass
class TaskSetup:
    inputs: dict[str, Iterator]
    state: TrainState
    optimizers: dict[str, Optimizer]
    steps: dict[str, Step]
    plan: Callable[[int], str]
    total_steps: int
    steps_per_epoch: int
    embed: EmbedFn
    export: ExportSpec
    hooks: Sequence[Hook] = ()
    images_per_step: int = 0  # For progress lines (images/s).
    state_sharding: Callable[[TrainState, jax.sharding.Mesh], Any] | None = None
    meta: dict = dataclasses.field(default_factory=dict)  # JSON kept with each checkpoint.
    describe: str = ""  # One line for the start-of-training message.
    eval_input: dict = dataclasses.field(default_factory=dict)  # {image_size, channels}.
    # Task-specific evaluations run with each loop evaluation (periodic and final):
    # ``fn(hook_ctx, state, step) -> result``, a flat {metric: value} or a protocol-shaped
    # {"folds": [{"fold", "metrics"}], ...}; merged into eval.json as "<name>/<metric>"
    # (`hfrjax.train.evaluation.merge_results`), where sweeps, best_metric and patience see it.
    evaluators: dict[str, Callable[["HookContext", TrainState, int], dict]] = dataclasses.field(
        default_factory=dict
    )
    # ``on_restore(state)`` after a checkpoint is restored: hands host-side copies of restored
    # state (a hard-example list an input samples from) back to where they are used.
    on_restore: Callable[[TrainState], None] | None = None


class Task(Protocol):
    """A registered training task (`hfrjax.train.tasks.register_task`)."""

    name: str
    config_class: type  # A `hfrjax.config.Section` of the task's own config keys.

    def setup(self, config: Any, ctx: SetupContext) -> TaskSetup: ...

    # Optional: ``evaluator_names(task_cfg) -> [name, ...]``, the `TaskSetup.evaluators` that
    # ``setup`` would return for this config, declared without building anything (a sweep
    # accepts an evaluated stage without ``eval.data_dir`` when its task names evaluators).


# ------------------------------------------------------------------------------------------
# Plans and hook schedules.


def single(name: str) -> Callable[[int], str]:
    """Every step runs ``name``."""
    return lambda step: name


def alternate(pattern: Sequence[tuple[str, int]]) -> Callable[[int], str]:
    """Cycle through ``[(step name, count), ...]``: e.g. [("mask", 1), ("net", 1)]."""
    pattern = [(n, int(k)) for n, k in pattern]
    if not pattern or any(k < 1 for _, k in pattern):
        raise ValueError(f"alternate needs positive counts, got {pattern}")
    period = sum(k for _, k in pattern)

    def plan(step: int) -> str:
        r = step % period
        for name, k in pattern:
            if r < k:
                return name
            r -= k
        raise AssertionError

    return plan


def phases(parts: Sequence[tuple[int, Callable[[int], str]]]) -> Callable[[int], str]:
    """Consecutive phases ``[(num_steps, plan), ...]``; each plan sees steps from 0."""
    starts, s = [], 0
    for n, _ in parts:
        starts.append(s)
        s += int(n)

    def plan(step: int) -> str:
        for start, (n, p) in zip(starts, parts):
            if step < start + n:
                return p(step - start)
        return parts[-1][1](step - starts[-1])

    return plan


def phase_starts(lengths: Sequence[int]) -> list[int]:
    out, s = [], 0
    for n in lengths:
        out.append(s)
        s += int(n)
    return out


def every(n: int, *, start: int = 0, first: bool = False) -> Callable[[int], bool]:
    """Due at boundaries ``start + k * n`` (k >= 1; and k = 0 when ``first``)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"hook period must be positive, got {n}")
    return lambda s: s >= start and (s - start) % n == 0 and (first or s > start)


def at(*steps: int) -> Callable[[int], bool]:
    wanted = frozenset(int(s) for s in steps)
    return lambda s: s in wanted
