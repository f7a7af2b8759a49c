"""Classifier rows stored in bfloat16 (``head.rows_dtype``): float32 math, parity with float32
rows, bf16 momentum, Partial FC's masked update and a training run.

Tolerances (CosFace, s = 64, m3 = 0.4; C = 50 classes, D = 16, B = 16). bfloat16 keeps 8
significant bits, so storing a float32 row rounds each element by at most u = 2^-8 ~ 3.9e-3 of
its value.

(i) Float32 math. The loss on bf16 rows must equal a float64 NumPy reference evaluated on the
    *rounded* rows to float32 accuracy (rtol 1e-5), and the weight gradient (returned in
    bf16) to its own rounding (rtol u); a loss computed in bf16 would be off by ~ s·u ~ 0.25.
(ii) Parity with float32 rows. A normalised row moves by at most 2u, so every cosine by
    delta <= 2u; the log-sum-exp is 1-Lipschitz in the max norm and the CosFace target logit
    is linear in cos, so the mean loss moves by at most 2·s·delta (asserted with the measured
    delta, itself asserted <= 2u). The weight gradient's relative (Frobenius) change is at most
    4u (row direction and norm) plus e^(2·s·delta) - 1 (each softmax probability moves by at
    most that factor). Measured on this case: |d loss| ~ 1e-3 against a bound ~ 0.2, gradient
    ~ 0.6 % against ~ 22 %: the bounds are worst cases, the errors are unbiased roundings.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
U = 2.0**-8  # bf16 unit roundoff (8 significant bits, round to nearest)
S, M3 = 64.0, 0.4  # CosFace
NUM_CLASSES, DIM = 50, 16
# Each of the 4 class shards of 13 rows (52 = 50 padded to a multiple of 4) holds <= 4 of the
# batch's classes, so Partial FC at r = 0.5 (7 rows per shard) always keeps every positive.
LABELS = np.array([0, 1, 2, 3, 13, 14, 15, 16, 26, 27, 28, 29, 39, 40, 41, 42], np.int32)


def case(rows: int = NUM_CLASSES):
    rng = np.random.default_rng(0)
    w = (0.01 * rng.normal(size=(rows, DIM))).astype(np.float32)
    emb = rng.normal(size=(len(LABELS), DIM)).astype(np.float32)
    return w, emb


def bf16_rounded(w: np.ndarray) -> np.ndarray:
    return np.asarray(jnp.asarray(w, jnp.bfloat16).astype(jnp.float32))


def cosface_reference(emb, w, labels, columns):
    """Float64 (loss, d loss/d w, d loss/d emb) of the CosFace softmax over ``columns`` of w;
    rows outside ``columns`` get a zero gradient."""
    emb, w = np.asarray(emb, np.float64), np.asarray(w, np.float64)
    cols = np.flatnonzero(columns)
    en = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    wn = w[cols] / np.linalg.norm(w[cols], axis=1, keepdims=True)
    cos = en @ wn.T
    onehot = labels[:, None] == cols[None, :]
    assert onehot.sum(1).min() == 1, "every label must be among the columns"
    logits = S * (cos - M3 * onehot)
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    loss = np.mean(-np.log(p[onehot]))
    d_cos = S * (p - onehot) / len(labels)  # [B, K]
    d_wn = d_cos.T @ en
    d_w = np.zeros_like(w)
    norms = np.linalg.norm(w[cols], axis=1, keepdims=True)
    d_w[cols] = (d_wn - np.sum(d_wn * wn, 1, keepdims=True) * wn) / norms
    d_en = d_cos @ wn
    d_emb = (d_en - np.sum(d_en * en, 1, keepdims=True) * en) / np.linalg.norm(
        emb, axis=1, keepdims=True
    )
    return loss, d_w, d_emb, cos


def check_bf16_rows(loss_and_grads, w32, emb, columns=None):
    """Runs ``loss_and_grads(w, emb) -> (loss, d_w, d_emb, row mask or None)`` with float32 and
    with bfloat16 rows and checks (i) and (ii) of the module docstring. Returns the mask."""
    l32, g32, ge32, mask32 = loss_and_grads(jnp.asarray(w32), jnp.asarray(emb))
    w16 = jnp.asarray(w32, jnp.bfloat16)
    l16, g16, ge16, mask16 = loss_and_grads(w16, jnp.asarray(emb))
    assert g16.dtype == jnp.bfloat16 and g32.dtype == jnp.float32
    if mask32 is not None:  # Partial FC draws its rows from the key and labels only
        np.testing.assert_array_equal(np.asarray(mask16), np.asarray(mask32))
        columns = np.asarray(mask32)
    columns = np.ones(len(w32), bool) if columns is None else columns
    rounded = bf16_rounded(w32)
    ref32 = cosface_reference(emb, w32, LABELS, columns)
    ref16 = cosface_reference(emb, rounded, LABELS, columns)
    # The float32 path is the float64 reference to float32 accuracy.
    np.testing.assert_allclose(float(l32), ref32[0], rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(g32), ref32[1], rtol=1e-4, atol=1e-5 * np.abs(ref32[1]).max()
    )
    # (i) bf16 storage, float32 math.
    np.testing.assert_allclose(float(l16), ref16[0], rtol=1e-5)
    g16 = np.asarray(g16.astype(jnp.float32))
    np.testing.assert_allclose(g16, ref16[1], rtol=U, atol=1e-5 * np.abs(ref16[1]).max())
    np.testing.assert_allclose(
        np.asarray(ge16), ref16[2], rtol=1e-4, atol=1e-5 * np.abs(ref16[2]).max()
    )
    # (ii) parity with float32 rows, with the bounds derived in the module docstring.
    delta = np.abs(ref16[3] - ref32[3]).max()
    assert 0 < delta <= 2 * U
    assert abs(float(l16) - float(l32)) <= 2 * S * delta
    rel = np.linalg.norm(g16 - np.asarray(g32)) / np.linalg.norm(np.asarray(g32))
    assert rel <= 4 * U + np.expm1(2 * S * delta), (rel, delta)
    rel_e = np.linalg.norm(np.asarray(ge16) - np.asarray(ge32)) / np.linalg.norm(np.asarray(ge32))
    assert rel_e <= 4 * U + np.expm1(2 * S * delta), (rel_e, delta)
    return columns


def test_dense_loss_on_bf16_rows():
    from hfrjax.losses import MarginConfig
    from hfrjax.tasks.classification import margin_loss

    margin = MarginConfig(s=S, m3=M3, m2=0.0)
    w, emb = case()

    @jax.jit
    def loss_and_grads(w, e):
        loss, (g, ge) = jax.value_and_grad(
            lambda w, e: margin_loss(e, w, jnp.asarray(LABELS), margin)[0], (0, 1)
        )(w, e)
        return loss, g, ge, None

    check_bf16_rows(loss_and_grads, w, emb)


def test_bad_rows_dtype_is_a_config_error(tmp_path):
    from conftest import write_tiny_dataset
    from test_train import tiny_config

    from hfrjax.config import ConfigError
    from hfrjax.train import trainer

    write_tiny_dataset(tmp_path / "data", num_ids=4, per_modality=1, size=16)
    cfg = tiny_config(tmp_path / "data")
    cfg.head = dict(init="random", freeze=False, rows_dtype="float16")
    with pytest.raises(ConfigError, match="head.rows_dtype.*float16"):
        trainer.train(cfg, str(tmp_path / "w"))


# The class-sharded and Partial FC paths on 8 fake CPU devices (mesh data 2 x model 4), a
# jitted Partial FC train step (bf16 momentum, masked update) and a short training run.
_SHARDED = textwrap.dedent("""
  import os, sys
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  sys.path.insert(0, {tests!r})
  import flax.linen as nn, jax, jax.numpy as jnp, numpy as np, optax
  from test_bf16_rows import LABELS, NUM_CLASSES, DIM, S, M3, case, check_bf16_rows
  from hfrjax.losses import MarginConfig
  from hfrjax.losses import sharded as sh
  from hfrjax.tasks import classification as C
  from hfrjax.train import mesh as M, state as St, step as Sp
  from hfrjax.train.task import Optimizer
  assert jax.device_count() == 8
  mesh = M.make_mesh(2, 4)
  margin = MarginConfig(s=S, m3=M3, m2=0.0)
  rows = sh.padded_num_classes(NUM_CLASSES, 4)  # 52: two padding rows
  w, emb = case(rows)
  real = np.arange(rows) < NUM_CLASSES
  key = jax.random.key(7)

  def make(rate):
    head = C.ShardedHead(mesh, NUM_CLASSES, rate)
    def f(w, e):
      (loss, mask), (g, ge) = jax.value_and_grad(
          lambda w, e: (lambda l, a, m: (l, m))(*C.sharded_margin_loss(
              e, w, jnp.asarray(LABELS), margin, head, key)), (0, 1), has_aux=True)(w, e)
      return loss, g, ge, mask
    return f

  # The task's sharded random rows: drawn sharded, the same draws as on one device (the
  # compiled normal transform may differ from the eager one in the last float32 bit).
  import types
  for name in ("float32", "bfloat16"):
    cfg = types.SimpleNamespace(head=types.SimpleNamespace(rows_dtype=name))
    got = C.ClassificationTask.init_rows(cfg, mesh, jax.random.key(5), rows, DIM, None,
                                         sharded=True)["weight"]
    assert got.sharding.spec[0] == "model" and got.dtype == jnp.dtype(name), got.sharding
    want = St.init_head(jax.random.key(5), rows, DIM)["weight"].astype(name)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               rtol=1e-6 if name == "float32" else 2.0**-8)

  check_bf16_rows(make(1.0), w, emb, columns=real)
  mask = check_bf16_rows(make(0.5), w, emb)
  assert mask.sum() == 4 * 7 and not mask[NUM_CLASSES:].any()  # 7 of 13 rows per shard

  # A jitted Partial FC step on bf16 rows: the head's momentum is bf16, dtypes stay put, and
  # rows the second step did not sample keep their value and momentum bit for bit although
  # the first step's momentum would move them.
  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(DIM)(x.reshape(x.shape[0], -1))
  bb = Tiny()
  images = np.random.default_rng(1).integers(0, 256, (16, 4, 4, 3), dtype=np.uint8)
  p = bb.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))["params"]
  params = {{"backbone": p, "head": {{"weight": jnp.asarray(w, jnp.bfloat16)}}}}
  opts = {{"main": Optimizer(("backbone", "head"), optax.sgd(0.5, momentum=0.9))}}
  st = St.create_state(params, {{}}, opts, jax.random.key(3))
  trace = st.opt_states["main"][0].trace["head"]["weight"]
  assert trace.dtype == jnp.bfloat16, trace.dtype
  head = C.ShardedHead(mesh, NUM_CLASSES, 0.5)
  spec = C.classification_step(bb, margin, head)
  shard = M.state_sharding(st, mesh, shard_head=True)
  st = jax.device_put(st, shard)
  step = Sp.make_train_step(spec, opts, mesh, state_sharding=shard)
  batch = {{"train": {{"image": images, "label": LABELS}}}}
  batch = jax.device_put(batch, M.batch_sharding(mesh))

  def drawn(state):  # the row mask the step will use (classification_step's key)
    k = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 2)
    return np.asarray(sh.partial_fc_loss(jnp.ones((16, DIM)), jnp.zeros((rows, DIM)),
        jnp.asarray(LABELS), mesh, sample_rate=0.5, rng=k, num_classes=NUM_CLASSES)[1])
  m1 = drawn(st)
  st, met = step(st, batch)
  w1 = np.asarray(st.params["head"]["weight"].astype(jnp.float32))
  t1 = np.asarray(st.opt_states["main"][0].trace["head"]["weight"].astype(jnp.float32))
  m2 = drawn(st)
  st, met = step(st, batch)
  assert bool(met["finite"])
  w2 = st.params["head"]["weight"]
  t2 = st.opt_states["main"][0].trace["head"]["weight"]
  assert w2.dtype == jnp.bfloat16 and t2.dtype == jnp.bfloat16, (w2.dtype, t2.dtype)
  w2 = np.asarray(w2.astype(jnp.float32)); t2 = np.asarray(t2.astype(jnp.float32))
  moved_before = m1 & ~m2 & (np.abs(t1).max(1) > 0)
  assert moved_before.any(), "no row with momentum outside the second sample"
  np.testing.assert_array_equal(w2[~m2], w1[~m2])
  np.testing.assert_array_equal(t2[~m2], t1[~m2])
  assert (np.abs(w2 - w1).max(1) > 0)[m2 & real].mean() > 0.5  # sampled rows do move
  print("OK")
""")


def test_sharded_and_partial_fc_on_bf16_rows():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    script = _SHARDED.format(tests=str(REPO / "tests"))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


_TRAIN = textwrap.dedent("""
  import os, sys
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  sys.path.insert(0, {tests!r})
  import jax, jax.numpy as jnp, numpy as np
  from conftest import write_tiny_dataset
  from test_train import tiny_config
  from hfrjax.train import checkpoint as ckpt_lib, reporting, trainer
  data, work = sys.argv[1], sys.argv[2]
  from pathlib import Path
  write_tiny_dataset(Path(data), num_ids=40, per_modality=1, size=16)
  cfg = tiny_config(data, total_steps=3, checkpoint_every=3)
  # 40 classes over model=4: 10 rows per shard, 8 sampled >= the global batch of 8.
  cfg.head = dict(init="random", freeze=False, classifier="partial_fc", sample_rate=0.8,
                  rows_dtype="bfloat16")
  cfg.mesh = dict(data=2, model=4)
  result = trainer.train(cfg, work)
  losses = [r["loss"] for r in reporting.read_metrics(work) if "loss" in r]
  assert len(losses) == 3 and np.isfinite(losses).all(), losses
  step, state, _ = ckpt_lib.Checkpointer(os.path.join(work, "checkpoints")).restore_untyped()
  assert step == 3
  def head_leaves(tree, path=()):
    if isinstance(tree, (dict, list, tuple)):
      items = tree.items() if isinstance(tree, dict) else enumerate(tree)
      for k, v in items:
        yield from head_leaves(v, path + (k,))
    elif path[-2:] == ("head", "weight"):
      yield path, tree
  found = dict(head_leaves(state))
  assert ("params", "head", "weight") in found and len(found) == 2, list(found)  # rows + trace
  for path, leaf in found.items():
    assert leaf.dtype == jnp.bfloat16 and leaf.shape == (40, 16), (path, leaf.dtype, leaf.shape)
  live = result.state.params["head"]["weight"]
  assert live.dtype == jnp.bfloat16 and live.sharding.spec[0] == "model", live.sharding
  print("OK")
""")


@pytest.mark.slow  # ~35 s of CPU: an 8-device trainer run (compiles the backbone step)
def test_training_with_bf16_partial_fc_rows_checkpoints_bf16(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    script = _TRAIN.format(tests=str(REPO / "tests"))
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "data"), str(tmp_path / "w")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout
