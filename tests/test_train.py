"""The training core: sharded steps, resume, pre-emption, export, frozen heads, failures."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from conftest import write_tiny_dataset

from hfrjax.data.dataset import Dataset
from hfrjax.train import checkpoint as ckpt_lib
from hfrjax.train import export as export_lib
from hfrjax.train import reporting, trainer
from hfrjax.train.export import load_embedder

REPO = Path(__file__).resolve().parents[1]


def tiny_config(data_dir, **over) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_epochs = 2
    c.total_steps = 0
    c.input = dict(
        data_dir=str(data_dir),
        batch_size=8,
        num_threads=1,
        seed=1,
        augment=dict(hflip=True, channel_aug="red", erasing_p=0.3),
    )
    c.model = dict(
        name="iresnet",
        kwargs=dict(layers=[1, 1, 1, 1], base_width=4, input_size=16, embedding_dim=16),
    )
    c.compute_dtype = "float32"
    c.margin = dict(preset="cosface")
    c.head = dict(init="random", freeze=False)
    c.init_from = ""
    c.optimizer = dict(name="sgd", momentum=0.9, weight_decay=5e-4)
    c.schedule = dict(name="piecewise", lr=0.05, boundaries_epochs=[1], factor=0.1)
    c.log_every = 1
    c.checkpoint_every = 3
    c.keep_checkpoints = 10
    c.tensorboard = False
    c.eval = dict(data_dir="", folds=None, every_epochs=0, batch_size=8, best_metric="")
    c.mesh = dict(data=-1, model=1)
    c.update_from_flattened_dict(over)
    return c


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "tiny"
    write_tiny_dataset(d, num_ids=6, per_modality=4, size=16)
    return d


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """An uninterrupted run: 12 steps, checkpoints every 3."""
    work = tmp_path_factory.mktemp("run_a")
    result = trainer.train(tiny_config(data), str(work))
    return work, result


def _losses(workdir):
    out = {}
    for row in reporting.read_metrics(workdir):
        if "loss" in row:
            out[row["step"]] = row["loss"]  # Later lines (after a resume) win.
    return out


def test_run_writes_logs_and_checkpoints(trained):
    work, result = trained
    losses = _losses(work)
    assert sorted(losses) == list(range(1, 13))
    assert all(np.isfinite(v) for v in losses.values())
    assert ckpt_lib.Checkpointer(work / "checkpoints").all_steps() == [3, 6, 9, 12]
    assert int(result.state.step) == 12


def test_resume_after_kill_gives_the_same_losses(data, trained, tmp_path):
    work_a, _ = trained
    work = tmp_path / "b"
    trainer.train(tiny_config(data), str(work))
    # Emulate a kill after step ~8: only the checkpoint of step 6 survived.
    import shutil

    for step in (9, 12):
        shutil.rmtree(work / "checkpoints" / str(step))
    result = trainer.train(tiny_config(data), str(work))
    assert result.resumed_from == 6
    want, got = _losses(work_a), _losses(work)
    for s in range(7, 13):
        np.testing.assert_allclose(got[s], want[s], rtol=1e-6, err_msg=f"step {s}")


def test_export_embeds_like_the_training_state(data, trained, tmp_path):
    work, result = trained
    out = export_lib.export_from_workdir(str(work), str(tmp_path / "export"))
    embedder = load_embedder(out)
    assert json.loads((out / "model.json").read_text())["model"]["name"] == "iresnet"
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    want = result.embedder(images)
    np.testing.assert_allclose(embedder(images), want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(want, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match=r"shape \[N, 16, 16, 3\]"):
        embedder(images[:, :8])


def test_mec_head_is_class_means_and_stays_frozen(data, trained, tmp_path):
    work, _ = trained
    export = export_lib.export_from_workdir(str(work), str(tmp_path / "export"))
    cfg = tiny_config(
        data,
        **{
            "task": "rethink",
            "init_from": str(export),
            "head.init": "class_means",
            "head.class_means_bn": "eval",
            "head.freeze": True,
            "head.class_means_flip": True,
            "input.fold": None,
        },
    )
    cfg.input.keys = None
    result = trainer.train(cfg, str(tmp_path / "ft"))
    # Independent computation: float64 numpy mean of flip-fused normalised embeddings.
    emb = load_embedder(export)
    ds = Dataset.open(data)
    from hfrjax.data.pipeline import iter_eval_batches

    feats, labels = [], []
    for b in iter_eval_batches(ds, list(ds.records.key), 8):
        e = emb(b["image"]).astype(np.float64) + emb(b["image"][:, :, ::-1]).astype(np.float64)
        feats.append(e[b["valid"]])
        labels.append(b["label"][b["valid"]])
    feats, labels = np.concatenate(feats), np.concatenate(labels)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    rows = np.stack([feats[labels == c].mean(0) for c in range(6)])
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    head = np.asarray(result.state.params["head"]["weight"])
    np.testing.assert_allclose(head, rows, atol=2e-5)
    # The backbone did train.
    before = emb.params["conv1"]["kernel"]
    after = np.asarray(result.state.params["backbone"]["conv1"]["kernel"])
    assert not np.allclose(before, after)


def test_nan_loss_is_an_error_naming_the_step(data, tmp_path):
    cfg = tiny_config(data, **{"schedule.lr": 1e38, "optimizer.momentum": 0.0})
    with pytest.raises(trainer.NonFiniteLossError, match=r"at step \d+"):
        trainer.train(cfg, str(tmp_path / "nan"))


def test_checkpoint_that_does_not_fit_the_model(data, trained):
    work, _ = trained
    cfg = tiny_config(data, **{"model.kwargs.embedding_dim": 24})
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match=r"does not fit.*fc.*kernel"):
        trainer.train(cfg, str(work))


def test_config_typos_are_errors(data, tmp_path):
    with pytest.raises(ValueError, match=r"unknown key 'margin.mm'; valid keys: m1, m2, m3, preset, s"):
        trainer.train(tiny_config(data, **{"margin.mm": 0.5}), str(tmp_path / "x"))
    with pytest.raises(ValueError, match="head.init"):
        trainer.train(tiny_config(data, **{"head.init": "means"}), str(tmp_path / "y"))
    with pytest.raises(ValueError, match=r"unknown key 'optimizer.weight_decy'; did you mean 'weight_decay'"):
        trainer.train(tiny_config(data, **{"optimizer.weight_decy": 0.1}), str(tmp_path / "z"))
    with pytest.raises(ValueError, match=r"unknown key 'schedule.boundary_epochs'; did you mean 'boundaries_epochs'"):
        trainer.train(tiny_config(data, **{"schedule.boundary_epochs": (1,)}), str(tmp_path / "w"))
    with pytest.raises(ValueError, match=r"unknown key 'checkpoint_evry'; did you mean 'checkpoint_every'"):
        trainer.train(tiny_config(data, **{"checkpoint_evry": 3}), str(tmp_path / "v"))


_SHARDED = textwrap.dedent("""
  import os, sys
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  import jax, numpy as np, optax
  from hfrjax import models
  from hfrjax.losses import MarginConfig
  from hfrjax.train import mesh as M, state as S, step as St
  from hfrjax.tasks import classification as C
  from hfrjax.train.task import Optimizer
  bb = models.get_model("iresnet", layers=[1, 1, 1, 1], base_width=4, input_size=16,
                        embedding_dim=16)
  p, bs = S.init_backbone(bb, jax.random.key(0))
  params = jax.device_get({"backbone": p, "head": S.init_head(jax.random.key(1), 10, 16)})
  bs = jax.device_get(bs)
  rng = np.random.default_rng(0)
  batches = [{"image": rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
              "label": rng.integers(0, 10, 16).astype(np.int32)} for _ in range(3)]
  tx = optax.sgd(0.1, momentum=0.9)
  opts = {"main": Optimizer(("backbone", "head"), tx)}
  def state0(p):
    return S.create_state(p, {"batch_stats": bs}, opts, jax.random.key(2))
  spec = C.classification_step(bb, MarginConfig(m2=0.5))
  def run(mesh):
    st = jax.device_put(state0(params), M.replicated(mesh))
    step = St.make_train_step(spec, opts, mesh)
    losses, after_first = [], None
    for b in batches:
      st, m = step(st, {"train": {k: jax.device_put(v, M.batch_sharding(mesh)) for k, v in b.items()}})
      losses.append(float(m["loss"]))
      if after_first is None:  # Compare parameters after one step: later steps amplify
        after_first = jax.device_get((st.params, st.batch_stats))  # reduction-order noise.
    return losses, after_first
  assert jax.device_count() == 8
  ref = run(M.make_mesh(devices=jax.devices()[:1]))
  for data, model in ((8, 1), (4, 2)):
    got = run(M.make_mesh(data, model))
    np.testing.assert_allclose(got[0], ref[0], rtol=2e-5)
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(ref[1])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # Class-sharded classifier (10 classes padded to 12 rows over model=4): same training.
  mesh = M.make_mesh(2, 4)
  padded = dict(params, head={"weight": np.concatenate(
      [params["head"]["weight"], np.ones((2, 16), np.float32)])})
  sh_spec = C.classification_step(bb, MarginConfig(m2=0.5), C.ShardedHead(mesh, 10))
  st = state0(padded)
  shard = M.state_sharding(st, mesh, shard_head=True)
  assert shard.params["head"]["weight"].spec == jax.sharding.PartitionSpec("model", None)
  st = jax.device_put(st, shard)
  step = St.make_train_step(sh_spec, opts, mesh, state_sharding=shard)
  losses = []
  for i, b in enumerate(batches):
    st, m = step(st, {"train": {k: jax.device_put(v, M.batch_sharding(mesh)) for k, v in b.items()}})
    losses.append(float(m["loss"]))
    if i == 0:
      w = np.asarray(st.params["head"]["weight"])
      np.testing.assert_allclose(w[:10], ref[1][0]["head"]["weight"], rtol=1e-4, atol=1e-5)
      assert (w[10:] == 1).all()  # Padding rows: no gradient (plain SGD, no weight decay).
  np.testing.assert_allclose(losses, ref[0], rtol=2e-5)
  assert st.params["head"]["weight"].sharding.spec == jax.sharding.PartitionSpec("model", None)
  # Partial FC: rows outside each step's sample keep their value and momentum.
  pfc = C.classification_step(bb, MarginConfig(m2=0.5), C.ShardedHead(mesh, 10, sample_rate=0.5))
  st = jax.device_put(state0(padded), shard)
  step = St.make_train_step(pfc, opts, mesh, state_sharding=shard)
  b = {"image": batches[0]["image"][:8], "label": np.array([0, 1, 0, 1, 0, 1, 0, 1], np.int32)}
  w0 = np.asarray(st.params["head"]["weight"])
  st, m = step(st, {"train": {k: jax.device_put(v, M.batch_sharding(mesh)) for k, v in b.items()}})
  w1, mom = np.asarray(st.params["head"]["weight"]), np.asarray(st.opt_states["main"][0].trace["head"]["weight"])
  moved = (w1 != w0).any(1)
  assert np.isfinite(float(m["loss"])) and moved[:2].all(), moved
  assert moved.sum() <= 4 * 2, moved  # At most 2 sampled rows in each of the 4 shards.
  np.testing.assert_array_equal(mom[~moved], 0)
  print("OK", ref[0])
""")


@pytest.mark.slow  # A subprocess on 8 fake devices (about 1 min); CI runs it with -m slow.
def test_train_step_on_8_devices_equals_single_device():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


def test_sigterm_saves_a_checkpoint(data, tmp_path):
    cfg_file = tmp_path / "cfg.py"
    cfg_file.write_text(
        textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {str(REPO / "tests")!r})
      from test_train import tiny_config
      def get_config():
        return tiny_config({str(data)!r}, num_epochs=100000, checkpoint_every=100000)
  """)
    )
    work = tmp_path / "w"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "launch" / "pretrain.py"),
            f"--config={cfg_file}",
            f"--workdir={work}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(reporting.read_metrics(work)) < 3:
        time.sleep(0.2)
    assert len(reporting.read_metrics(work)) >= 3, "training did not start"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    steps = ckpt_lib.Checkpointer(work / "checkpoints").all_steps()
    assert len(steps) == 1 and steps[0] >= 3
    assert "pre-empted: saved step" in out


def test_verification_packs_are_evaluated_during_pretraining(data, tmp_path):
    """An InsightFace-style .bin pack (pairs of encoded images + is-same flags) in eval."""
    import pickle

    from conftest import encode_png

    rng = np.random.default_rng(0)
    images, flags = [], []
    for i in range(20):
        a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        same = i % 2 == 0
        b = a if same else rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        images += [encode_png(a), encode_png(b)]
        flags.append(same)
    pack = tmp_path / "tiny_pairs.bin"
    pack.write_bytes(pickle.dumps((images, flags), protocol=4))
    cfg = tiny_config(data, **{"num_epochs": 1})
    cfg.eval.verification_packs = [str(pack)]
    trainer.train(cfg, str(tmp_path / "run"))
    ver = json.loads((tmp_path / "run" / "verification.json").read_text())
    r = ver["tiny_pairs"]
    assert r["num_pairs"] == 20 and 0.5 <= r["accuracy"] <= 1.0
    assert any(
        "verify/tiny_pairs/accuracy" in row for row in reporting.read_metrics(tmp_path / "run")
    )


@pytest.mark.slow  # About 40 s on 2 cores; CI runs it with -m slow.
def test_bf16_training_tracks_float32(data, tmp_path):
    """compute_dtype bfloat16 (backbone) + head.matmul_dtype bfloat16: losses within a few %."""
    f32 = trainer.train(
        tiny_config(data, num_epochs=1, **{"input.augment.erasing_p": 0.0}), str(tmp_path / "f32")
    )
    cfg = tiny_config(
        data, num_epochs=1, compute_dtype="bfloat16", **{"input.augment.erasing_p": 0.0}
    )
    cfg.head.matmul_dtype = "bfloat16"
    bf16 = trainer.train(cfg, str(tmp_path / "bf16"))
    a, b = _losses(tmp_path / "f32"), _losses(tmp_path / "bf16")
    assert a.keys() == b.keys() and len(a) >= 3
    first = min(a)
    assert b[first] == pytest.approx(a[first], rel=3e-2)
    assert all(np.isfinite(v) for v in b.values())
    del f32, bf16


def test_gradient_accumulation_is_one_update_with_the_mean_gradient():
    import jax
    import jax.numpy as jnp
    import optax

    from hfrjax.train import optim

    cfg = {"name": "sgd", "momentum": 0.9, "weight_decay": 0.0}
    params = {"w": jnp.asarray([1.0, -2.0, 3.0])}
    g1, g2 = {"w": jnp.asarray([0.5, 1.0, -1.0])}, {"w": jnp.asarray([1.5, -3.0, 2.0])}
    acc = optim.make_optimizer(dict(cfg, accumulate_steps=2), optax.constant_schedule(0.1))
    state = acc.init(params)
    upd, state = acc.update(g1, state, params)
    p1 = optax.apply_updates(params, upd)
    np.testing.assert_array_equal(p1["w"], params["w"])  # No update after the first batch.
    upd, state = acc.update(g2, state, p1)
    p2 = optax.apply_updates(p1, upd)
    one = optim.make_optimizer(cfg, optax.constant_schedule(0.1))
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    upd, _ = one.update(mean, one.init(params), params)
    np.testing.assert_allclose(p2["w"], optax.apply_updates(params, upd)["w"], rtol=1e-6)
