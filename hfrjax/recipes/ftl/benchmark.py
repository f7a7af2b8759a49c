"""Speed of FTL's pieces on this machine: the UpdateStats pass and the three kinds of step.

  python -m hfrjax.recipes.ftl.benchmark --config=configs/ftl/synthetic.py:variant=10K30K,data=DATA

Builds the ``ftl`` task's setup from a config (mode ftl), runs UpdateStats once (images/s,
encoder images, the moments' memory, the process's peak resident memory) and times the
pretraining, stage-1 and stage-2 steps (median of ``--steps`` after one compiling call, host
input time included). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time

import jax
import numpy as np


def _time_step(setup, mesh, name: str, state, steps: int):
    from hfrjax.train import step as step_lib

    spec = setup.steps[name]
    fn = step_lib.make_train_step(spec, setup.optimizers, mesh)
    t = time.perf_counter()
    state, m = fn(state, {n: next(setup.inputs[n]) for n in spec.inputs})
    jax.block_until_ready(m["loss"])
    first = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = fn(state, {n: next(setup.inputs[n]) for n in spec.inputs})
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t)
    return state, {"first_call_s": first, "median_s": float(np.median(times)), "steps": steps}


def benchmark(config, steps: int = 5) -> dict:
    from hfrjax.tasks import parse_config
    from hfrjax.train import mesh as mesh_lib
    from hfrjax.train.task import HookContext, SetupContext

    task, _, cfg = parse_config(config)
    if cfg.mode != "ftl":
        raise ValueError("the benchmark needs mode='ftl'")
    mesh = mesh_lib.make_mesh()
    workdir = tempfile.mkdtemp(prefix="ftl_bench_")
    setup = task.setup(cfg, SetupContext(mesh=mesh, workdir=workdir, restoring=False))
    state = setup.state
    out = {"devices": [str(d) for d in jax.devices()], "batch": cfg.input.batch_size}
    state, out["pretrain_step"] = _time_step(setup, mesh, "pretrain", state, steps)
    hook = next(h for h in setup.hooks if h.name == "update_stats")
    ctx = HookContext(mesh, workdir, setup, say=lambda m: None)
    t = time.perf_counter()
    state = hook.fn(ctx, state)
    out["update_stats_s"] = time.perf_counter() - t
    report = json.loads((__import__("pathlib").Path(workdir) / "ftl_stats.json").read_text())["1"]
    out["update_stats"] = report
    state, out["stage1_step"] = _time_step(setup, mesh, "stage1", state, steps)
    state, out["stage2_step"] = _time_step(setup, mesh, "stage2", state, steps)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(argv: list[str] | None = None) -> int:
    from hfrjax import sweep

    ap = argparse.ArgumentParser(prog="python -m hfrjax.recipes.ftl.benchmark")
    ap.add_argument("--config", required=True, help="an ftl config path.py[:arg] (mode ftl)")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    print(json.dumps(benchmark(sweep.load_config(args.config), args.steps), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
