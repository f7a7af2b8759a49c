"""Reliability cases of the loop and the file readers (issue "nothing lost"): each reproduces a
failure a user met, with real subprocesses where a signal is involved."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
import toy_task  # noqa: F401 - registers the "toy" task.
from test_task_loop import toy_config

from hfrjax.train import checkpoint as ckpt_lib
from hfrjax.train import export as export_lib
from hfrjax.train import trainer

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def _run_toy(work: Path, env: dict, **over) -> subprocess.CompletedProcess:
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(TESTS)!r})
        sys.path.insert(0, {str(REPO / "launch")!r})
        import toy_task, train
        from test_task_loop import toy_config
        train.run(toy_config(**{over!r}), {str(work)!r})
    """)
    return subprocess.run(
        [sys.executable, "-c", script], env=dict(os.environ, **env), cwd=REPO,
        capture_output=True, text=True, timeout=300,
    )


def test_sigterm_after_the_last_step_then_the_rerun_only_finishes(tmp_path):
    p = _run_toy(tmp_path, {"TOY_SIGTERM_AT": "5"}, steps=6)
    assert p.returncode == 143, p.stderr[-2000:]
    assert "pre-empted: saved step 6" in p.stderr.strip().splitlines()[-1]
    assert not (tmp_path / trainer.DONE_FILE).exists()  # The final stage did not run yet.
    r = trainer.train(toy_config(steps=6), str(tmp_path))
    assert r.resumed_from == 6 and (tmp_path / trainer.DONE_FILE).exists()


def test_an_error_in_the_final_evaluation_loses_no_training(tmp_path):
    bad = toy_config(steps=4, **{"eval.verification_packs": (str(tmp_path / "lfw_typo.bin"),)})
    with pytest.raises(Exception, match="lfw_typo"):
        trainer.train(bad, str(tmp_path / "run"))
    ck = ckpt_lib.Checkpointer(tmp_path / "run" / "checkpoints", async_save=False)
    assert ck.latest_step() == 4  # Saved before evaluating; no temporary directory left.
    ck.close()
    assert not list((tmp_path / "run" / "checkpoints").glob("*tmp*"))
    r = trainer.train(toy_config(steps=4), str(tmp_path / "run"))
    assert r.resumed_from == 4


def test_the_error_is_the_last_line_a_user_sees(tmp_path):
    p = _run_toy(tmp_path, {}, steps=2, **{"eval.verification_packs": ("/nowhere/lfw.bin",)})
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "/nowhere/lfw.bin" in last


def test_an_unreadable_newest_checkpoint_falls_back_to_an_older_one(tmp_path, capsys):
    trainer.train(toy_config(steps=6), str(tmp_path))
    newest = tmp_path / "checkpoints" / "6"
    for f in newest.rglob("*"):
        if f.is_file():
            f.write_bytes(b"")  # Zero-byte files, as after a full disk.
    (tmp_path / trainer.DONE_FILE).unlink()
    r = trainer.train(toy_config(steps=6), str(tmp_path))
    assert r.resumed_from == 3
    assert "checkpoints/6 is unreadable" in capsys.readouterr().out


def test_interrupted_export_replacement_is_recovered(tmp_path):
    variables = {"params": {"w": np.ones(3, np.float32)}}
    model = {"name": "iresnet", "kwargs": {"layers": [1, 1, 1, 1], "base_width": 4, "input_size": 16, "embedding_dim": 8}}
    out = tmp_path / "export"
    export_lib.export_embedder(out, model_cfg=model, params=variables["params"], batch_stats={})
    # A kill between "rename old aside" and "rename new in": only DIR.old-export exists.
    os.replace(out, tmp_path / ("export" + export_lib.OLD_SUFFIX))
    with pytest.warns(UserWarning, match="replacement of the export was interrupted"):
        got_model, got = export_lib.load_weights(out)
    assert got_model["name"] == "iresnet" and np.array_equal(got["params"]["w"], np.ones(3))
    # Exporting again completes the replacement and leaves no side directory.
    export_lib.export_embedder(out, model_cfg=model, params=variables["params"], batch_stats={})
    assert out.exists() and not (tmp_path / ("export" + export_lib.OLD_SUFFIX)).exists()


def test_bad_files_name_themselves(tmp_path):
    from conftest import write_tiny_dataset

    from hfrjax.data.dataset import Dataset
    from hfrjax.data.protocol import Fold, Protocol

    d = tmp_path / "ds"
    write_tiny_dataset(d)
    Protocol("p", [Fold({"vis": ["id000/vis/000"]}, ["id000/vis/000"], ["id000/nir/000"])]).save(d)
    lst = d / "protocols" / "nir_probe_1.txt"
    lst.write_bytes(b"id000/nir/000\nid\xff001/nir/000\n")
    with pytest.raises(ValueError, match=r"nir_probe_1.txt, line 2: not UTF-8"):
        Protocol.load(d)
    (d / "protocols" / "protocol.json").write_text("")
    with pytest.raises(ValueError, match=r"protocol.json is empty"):
        Protocol.load(d)
    info = json.loads((d / "dataset.json").read_text())
    (d / "dataset.json").write_text(json.dumps(info)[:40])
    with pytest.raises(ValueError, match=r"dataset.json is not valid JSON \(line 1"):
        Dataset.open(d)
    info.update(shards=[], num_images=0)
    (d / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"dataset.json lists no shards"):
        Dataset.open(d)


def test_weight_converters_take_a_pth_path(tmp_path):
    torch = pytest.importorskip("torch")
    from hfrjax.models.convert import strip_prefix

    sd = {"module.conv.weight": torch.ones(2, 2)}
    torch.save(sd, tmp_path / "w.pth")
    assert list(strip_prefix(tmp_path / "w.pth")) == ["conv.weight"]
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pth")
    assert list(strip_prefix(str(tmp_path / "ckpt.pth"))) == ["conv.weight"]
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list.pth holds a list, not a state_dict"):
        strip_prefix(tmp_path / "list.pth")
    with pytest.raises(TypeError, match="expected a state_dict"):
        strip_prefix(3)


def test_every_documented_field_is_settable_on_every_shipped_config():
    import importlib

    from hfrjax.tasks import parse_config

    sys.path.insert(0, str(REPO))
    qs = importlib.import_module("configs.quickstart")
    for stage in ("pretrain", "finetune"):
        c = qs.get_config(stage)
        c.input.on_corrupt = "skip"  # Documented in the README's data section.
        c.model.kwargs.layers = (2, 2, 2, 2)  # Tuples: overridable from the command line.
        _, _, task_cfg = parse_config(c)
        assert task_cfg.input.on_corrupt == "skip" and task_cfg.model.kwargs["layers"] == (2, 2, 2, 2)


def test_sigterm_in_the_final_evaluation_stops_at_once_with_status_143():
    """After the last step is saved the loop sets ``raise_on_signal``: a SIGTERM then raises
    `Preempted` (exit status 143) where it lands, e.g. inside the final evaluation, instead of
    letting the default handler kill the process with no message."""
    import signal

    with ckpt_lib.PreemptionGuard() as guard:
        guard.raise_on_signal = True
        with pytest.raises(trainer.Preempted) as e:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # The handler runs between bytecodes.
                sum(range(100))
        assert e.value.code == 143 and "rerun to finish the final evaluation" in e.value.msg
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # Restored on exit.


def test_load_weights_reads_a_checkpoint_once_and_sees_a_new_one(tmp_path, monkeypatch):
    """Fine-tuning every fold from one pretraining run reads its checkpoint once; a newer
    checkpoint (or a rewritten one) is read again; callers get their own containers."""
    from hfrjax.train import checkpoint as ckpt_lib

    trainer.train(toy_config(steps=3), str(tmp_path))
    reads = []
    restore = ckpt_lib.Checkpointer.restore_untyped
    monkeypatch.setattr(
        ckpt_lib.Checkpointer,
        "restore_untyped",
        lambda self, step=None: reads.append(step) or restore(self, step),
    )
    model, first = export_lib.load_weights(tmp_path)
    want = jax.tree.map(np.array, first)
    # A train step donates its state: the next caller's arrays must survive that.
    jax.jit(lambda v: jax.tree.map(lambda a: a + 1, v), donate_argnums=0)(first)
    first["params"].clear()  # A caller editing its copy must not touch the next caller's.
    _, second = export_lib.load_weights(tmp_path)
    assert reads == [3] and second["params"]
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(second)):
        np.testing.assert_array_equal(a, b)
    trainer.train(toy_config(steps=6), str(tmp_path))  # Resumes: a checkpoint at step 6.
    _, third = export_lib.load_weights(tmp_path)
    assert reads == [3, 6]
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(second["params"]), jax.tree.leaves(third["params"]))
    ]
    assert any(changed)
