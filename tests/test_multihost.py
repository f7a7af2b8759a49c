"""Multi-process training through jax.distributed, on one machine.

Two CPU processes with two fake devices each (4 global devices) talk through a coordinator on
127.0.0.1 and gloo collectives; they must train exactly like one process with 4 devices, since
each process reads only its slice of every global batch (hfrjax/data/pipeline.py).
"""

import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import encode_png, write_tiny_dataset

from hfrjax.train import reporting

REPO = Path(__file__).resolve().parents[1]

# One training run; argv: data_dir pack workdir devices [coordinator num_processes process_id].
_WORKER = textwrap.dedent("""
    import json, os, sys
    data, pack, work, ndev = sys.argv[1:5]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ndev}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if len(sys.argv) > 5:  # Before any other use of jax, as launch/pretrain.py --multihost does.
        os.environ["JAX_COORDINATOR_ADDRESS"] = sys.argv[5]
        os.environ["JAX_NUM_PROCESSES"], os.environ["JAX_PROCESS_ID"] = sys.argv[6:8]
        from absl import flags
        from hfrjax.train import distributed
        flags.FLAGS(["worker"])
        distributed.maybe_initialize()
    sys.path.insert(0, TESTS)
    import numpy as np
    from test_train import tiny_config
    from hfrjax.train import trainer
    cfg = tiny_config(data, total_steps=4, checkpoint_every=2)
    cfg.eval.verification_packs = [pack]
    result = trainer.train(cfg, work)
    leaves = jax.tree.leaves(jax.device_get(result.state.params))  # Replicated: fetchable.
    print("RESULT", json.dumps({
        "process": jax.process_index(), "devices": jax.device_count(),
        "resumed_from": result.resumed_from,
        "checksum": float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in leaves)),
    }), flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(script, args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(procs, timeout=240) -> list[dict]:
    """Waits for all processes; one failure kills the rest (they would hang in a collective)."""
    deadline, outs = time.time() + timeout, {}
    while len(outs) < len(procs) and time.time() < deadline:
        for i, p in enumerate(procs):
            if i not in outs and p.poll() is not None:
                outs[i] = p.stdout.read()
                if p.returncode != 0:
                    for q in procs:
                        if q.poll() is None:
                            q.kill()
                    raise AssertionError(f"process {i} failed:\n{outs[i][-4000:]}")
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
    assert len(outs) == len(procs), "timed out (hung collective?)"
    results = []
    for i in range(len(procs)):
        line = [ln for ln in outs[i].splitlines() if ln.startswith("RESULT ")]
        assert line, outs[i][-4000:]
        results.append(json.loads(line[-1][len("RESULT ") :]))
    return results


def _losses(workdir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in reporting.read_metrics(workdir) if "loss" in r}


def _pack(path: Path) -> Path:
    """A tiny InsightFace-style verification pack: evaluation embeds through the mesh."""
    rng = np.random.default_rng(0)
    images, same = [], []
    for i in range(12):
        a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        b = a if i % 2 == 0 else rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        images += [encode_png(a), encode_png(b)]
        same.append(i % 2 == 0)
    path.write_bytes(pickle.dumps((images, same), protocol=4))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 4-step run by one process with 4 devices and by two with 2 devices each."""
    tmp = tmp_path_factory.mktemp("multihost")
    data = tmp / "tiny"
    write_tiny_dataset(data, num_ids=6, per_modality=4, size=16)
    script = tmp / "worker.py"
    script.write_text(_WORKER.replace("TESTS", repr(str(REPO / "tests"))))
    args = [data, _pack(tmp / "pairs.bin")]
    single, multi = tmp / "single", tmp / "multi"
    procs = [_start(script, [*args, single, 4])]
    procs += _start_pair(script, [*args, multi])
    ref, *workers = _finish(procs)
    return script, args, (single, ref), (multi, workers)


def _start_pair(script, args) -> list[subprocess.Popen]:
    address = f"127.0.0.1:{_free_port()}"
    return [_start(script, [*args, 2, address, 2, i]) for i in range(2)]


@pytest.mark.slow
def test_two_processes_train_like_one(runs):
    _, _, (single, ref), (multi, workers) = runs
    assert ref["devices"] == 4 and [w["devices"] for w in workers] == [4, 4]
    assert [w["process"] for w in workers] == [0, 1]
    want, got = _losses(single), _losses(multi)
    # One metrics line per step: only process 0 writes to the shared workdir.
    assert sorted(got) == [1, 2, 3, 4]
    assert len(reporting.read_metrics(multi)) == len(reporting.read_metrics(single))
    # Step 1 sees the same parameters and global batch; later steps amplify the different
    # reduction order of cross-process (gloo) and in-process all-reduces.
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
    for s in want:
        np.testing.assert_allclose(got[s], want[s], rtol=1e-4, err_msg=f"step {s}")
    # Both processes hold the same replicated parameters, close to the single-process run's.
    assert workers[1]["checksum"] == workers[0]["checksum"]
    np.testing.assert_allclose(workers[0]["checksum"], ref["checksum"], rtol=1e-4)
    # Evaluation embeds the full batch on every process; only process 0 writes the report.
    v_single = json.loads((single / "verification.json").read_text())["pairs"]
    v_multi = json.loads((multi / "verification.json").read_text())["pairs"]
    assert v_multi["accuracy"] == pytest.approx(v_single["accuracy"])

    # One checkpoint per step (Orbax coordinates the save), one iterator state per process.
    ckpts = multi / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["2", "4"]
    for step in (2, 4):
        names = sorted(p.name for p in (ckpts / str(step) / "data").glob("*.json"))
        assert names == ["process_0-of-2.json", "process_1-of-2.json"], names


@pytest.mark.slow
def test_two_processes_resume(runs, tmp_path):
    """Both processes restore the shared checkpoint and their own iterator states."""
    script, args, _, (multi, workers) = runs
    work = tmp_path / "resumed"
    shutil.copytree(multi, work)
    shutil.rmtree(work / "checkpoints" / "4")
    resumed = _finish(_start_pair(script, [*args, work]))
    assert [w["resumed_from"] for w in resumed] == [2, 2]
    want, got = _losses(multi), _losses(work)
    for s in (3, 4):
        np.testing.assert_allclose(got[s], want[s], rtol=1e-6, err_msg=f"step {s}")
    assert resumed[0]["checksum"] == resumed[1]["checksum"]
    np.testing.assert_allclose(resumed[0]["checksum"], workers[0]["checksum"], rtol=1e-6)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_at_one_step(runs, tmp_path):
    """A pre-emption notice reaching one process must stop every process at the same step
    (launch/pretrain.py with the explicit coordinator flags of hfrjax.train.distributed)."""
    _, (data, _), _, _ = runs
    cfg = tmp_path / "cfg.py"
    cfg.write_text(
        textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(REPO / "tests")!r})
            from test_train import tiny_config
            def get_config():
                return tiny_config({str(data)!r}, num_epochs=100000, checkpoint_every=100000)
        """)
    )
    work, address = tmp_path / "w", f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env.update(JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    procs = [
        subprocess.Popen(
            [sys.executable, str(REPO / "launch" / "pretrain.py"), f"--config={cfg}"]
            + [f"--workdir={work}", f"--coordinator_address={address}"]
            + ["--num_processes=2", f"--process_id={i}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        deadline = time.time() + 240
        while len(reporting.read_metrics(work)) < 3 and time.time() < deadline:
            assert all(p.poll() is None for p in procs), procs[0].communicate()[0][-3000:]
            time.sleep(0.2)
        assert len(reporting.read_metrics(work)) >= 3, "training did not start"
        procs[0].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [143, 143], outs[1][-3000:]
    steps = [int(re.search(r"pre-empted: saved step (\d+)", out).group(1)) for out in outs]
    assert steps[0] == steps[1]
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == [str(steps[0])]
    assert len(list((work / "checkpoints" / str(steps[0]) / "data").glob("*.json"))) == 2
