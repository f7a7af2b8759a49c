"""The one loop with a task that is not a classifier: tests/toy_task.py (two optimizers on two
parameter groups, alternating steps, an epoch hook writing extra state), killed and resumed."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
import toy_task  # noqa: F401 - registers the "toy" task.

from hfrjax.tasks import default_config, parse_config
from hfrjax.train import reporting, trainer
from hfrjax.train.workdir import WorkdirBusyError, WorkdirLock

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def toy_config(**over):
    c = default_config("toy", log_every=1, checkpoint_every=3, keep_checkpoints=20, tensorboard=False)
    c.update_from_flattened_dict(over)
    return c


def test_groups_alternate_and_frozen_groups_stay_bit_identical(tmp_path):
    r = trainer.train(toy_config(steps=6), str(tmp_path))
    # Plan: w, w, b, w, w, b: SGD made 4 updates, Adam 2.
    assert int(r.state.updates["sgd"]) == 4 and int(r.state.updates["adam"]) == 2
    assert int(r.state.extra["epochs"]) == 1  # Hook at boundary 5.
    # A step of one optimizer leaves the other's group and state untouched, bit for bit.
    from hfrjax.train import step as step_lib

    setup = r.setup
    fit_w = step_lib.make_train_step(setup.steps["fit_w"], setup.optimizers, r.mesh)
    before = jax.device_get((r.state.params["b"], r.state.opt_states["adam"]))
    after, _ = fit_w(r.state, {"data": next(toy_task.Stream(0))})
    got = jax.device_get((after.params["b"], after.opt_states["adam"]))
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(got)):
        assert np.array_equal(x, y)


def test_kill_and_resume_gives_the_same_losses_and_extra_state(tmp_path):
    ref = trainer.train(toy_config(), str(tmp_path / "ref"))
    ref_losses = [m["loss"] for m in reporting.read_metrics(tmp_path / "ref")]
    work = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(TESTS)!r})
        import toy_task
        from test_task_loop import toy_config
        from hfrjax.train import trainer
        trainer.train(toy_config(), {str(work)!r})
    """)
    env = dict(os.environ, TOY_KILL_AT="10")  # Killed (SIGKILL) at the epoch hook of step 10.
    p = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
    r = trainer.train(toy_config(), str(work))
    # The newest committed checkpoint before the kill (step 9's async save may not have made it).
    assert r.resumed_from in (6, 9)
    losses = [m["loss"] for m in reporting.read_metrics(work)]
    assert losses == ref_losses  # metrics.jsonl holds each step once, equal to the reference.
    for x, y in zip(jax.tree.leaves(jax.device_get(r.state.extra)), jax.tree.leaves(jax.device_get(ref.state.extra))):
        assert np.array_equal(x, y)
    # A complete run does nothing when started again.
    again = trainer.train(toy_config(), str(work))
    assert again.resumed_from == 20 and len(reporting.read_metrics(work)) == 20


def test_unknown_keys_name_the_key_and_the_closest_valid_one():
    with pytest.raises(ValueError, match=r"unknown key 'stepz'; did you mean 'steps'"):
        parse_config(toy_config(stepz=3))
    with pytest.raises(ValueError, match=r"unknown key 'task=.toi'"):
        parse_config(toy_config(task="toi"))


def test_second_trainer_on_a_workdir_is_refused(tmp_path):
    with WorkdirLock(tmp_path):
        with pytest.raises(WorkdirBusyError, match=rf"in use by another trainer \(pid {os.getpid()}"):
            trainer.train(toy_config(steps=2), str(tmp_path))
    trainer.train(toy_config(steps=2), str(tmp_path))  # Free again once released.


def test_input_wait_fraction_is_logged_and_sees_a_slow_input(tmp_path, monkeypatch):
    """metrics.jsonl's input_wait_fraction: the share of wall time the loop spent blocked on
    its inputs. A pipeline that sleeps 50 ms per batch, against microsecond toy steps,
    dominates the wall time."""
    monkeypatch.setenv("TOY_INPUT_SLEEP", "0.05")
    trainer.train(toy_config(steps=12, checkpoint_every=100), str(tmp_path))
    waits = [m["input_wait_fraction"] for m in reporting.read_metrics(tmp_path)]
    assert len(waits) == 12 and all(0.0 <= w <= 1.0 for w in waits)
    # Windows holding a compilation (each step's first use), a hook or a save wait less.
    assert np.median(waits) > 0.6, waits


def test_input_wait_overlapped_by_the_step_in_flight_is_not_counted(tmp_path, monkeypatch):
    """The loop keeps one step in flight: a 20 ms input behind steps several times longer
    never idles the device, so input_wait_fraction stays near 0 (counting every wait, as
    before, gave 10-15 %)."""
    monkeypatch.setenv("TOY_INPUT_SLEEP", "0.02")
    monkeypatch.setenv("TOY_STEP_MATMULS", "40")  # About 250 ms of device work per step.
    # Logging syncs: the first input of each 6-step window has no step to hide behind.
    trainer.train(toy_config(steps=12, checkpoint_every=100, log_every=6), str(tmp_path))
    waits = [m["input_wait_fraction"] for m in reporting.read_metrics(tmp_path)]
    assert len(waits) == 2 and max(waits) < 0.035, waits
