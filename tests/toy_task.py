"""A toy task of the README's "How a recipe plugs in": two parameter groups, two optimizers
(SGD on "w", Adam on "b"), a step of each alternating (k steps of one, 1 of the other), and an
epoch hook that writes into the extra state. It fits y = x·w* + b* on a seeded stream."""

import dataclasses
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hfrjax.config import Section
from hfrjax.tasks import register_task
from hfrjax.train import state as state_lib
from hfrjax.train import task as T


class Stream:
    """A resumable input: batch i is a pure function of (seed, i)."""

    def __init__(self, seed, batch=8, dim=4):
        self.seed, self.batch, self.dim, self.i = seed, batch, dim, 0

    def __next__(self):
        time.sleep(float(os.environ.get("TOY_INPUT_SLEEP", 0)))  # A slow pipeline, for tests.
        r = np.random.default_rng([self.seed, self.i])
        self.i += 1
        x = r.normal(size=(self.batch, self.dim)).astype(np.float32)
        return {"x": x, "y": x @ np.arange(1, self.dim + 1, dtype=np.float32) + 3.0}

    def get_state(self):
        return {"i": self.i}

    def set_state(self, s):
        self.i = s["i"]


@dataclasses.dataclass(frozen=True)
class ToyConfig(Section):
    steps: int = 20
    k: int = 2  # fit_w steps per fit_b step.
    steps_per_epoch: int = 5


@register_task("toy")
class ToyTask:
    config_class = ToyConfig

    def setup(self, cfg, ctx):
        params = {"w": {"w": jnp.zeros(4)}, "b": {"b": jnp.zeros(())}}
        opts = {
            "sgd": T.Optimizer(("w",), optax.sgd(0.05, momentum=0.9), optax.constant_schedule(0.05)),
            "adam": T.Optimizer(("b",), optax.adam(0.1)),
        }

        matmuls = int(os.environ.get("TOY_STEP_MATMULS", 0))  # A slow step, for tests.

        def loss_fn(params, model_state, extra, batches, rng):
            b = batches["data"]
            if matmuls:  # Device work that runs after the host has moved on (async dispatch).
                m = jnp.full((768, 768), 1e-3) * b["x"][0, 0]
                m = jax.lax.fori_loop(0, matmuls, lambda _, a: jnp.tanh(a @ a), m)
                b = dict(b, x=b["x"] + 0.0 * m[0, 0])
            pred = b["x"] @ params["w"]["w"] + params["b"]["b"]
            loss = jnp.mean((pred - b["y"]) ** 2) + 1e-3 * jnp.sum(extra["centre"] ** 2)
            return loss, ({"mse": loss}, model_state, extra)

        def epoch_hook(hctx, state):  # Host-side: writes into the checkpointed extra state.
            if int(state.step) == int(os.environ.get("TOY_KILL_AT", -1)):
                os.kill(os.getpid(), signal.SIGKILL)
            w = np.asarray(state.params["w"]["w"])
            extra = {"centre": jnp.asarray(w.mean() * np.ones(4, np.float32)),
                     "epochs": state.extra["epochs"] + 1}
            return state.replace(extra=extra)

        extra = {"centre": jnp.zeros(4), "epochs": jnp.zeros((), jnp.int32)}
        state = state_lib.create_state(params, {}, opts, jax.random.key(ctx.seed), extra)
        steps = {n: T.Step(loss_fn, ("data",), (o,)) for n, o in (("fit_w", "sgd"), ("fit_b", "adam"))}
        return T.TaskSetup(
            inputs={"data": Stream(ctx.seed)}, state=state, optimizers=opts, steps=steps,
            plan=T.alternate([("fit_w", cfg.k), ("fit_b", 1)]),
            total_steps=cfg.steps, steps_per_epoch=cfg.steps_per_epoch,
            hooks=[T.Hook("epoch", T.every(cfg.steps_per_epoch), epoch_hook),
                   T.Hook("sigterm", T.at(int(os.environ.get("TOY_SIGTERM_AT", -1))),
                          lambda hctx, st: (os.kill(os.getpid(), signal.SIGTERM), st)[1])],
            embed=lambda p, ms, x, m, bn=False: x.reshape(len(x), -1),
            export=T.ExportSpec(model={"name": "toy", "kwargs": {}}, variables={"params": ("params", "w")}),
            images_per_step=8,
        )
