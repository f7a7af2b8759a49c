"""Class-sharded margin softmax and Partial FC on 8 fake CPU devices.

XLA_FLAGS must be set before jax is imported, so the checks run in one subprocess (this file
executed as a script, imports inside the checks); each pytest test reports one check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

MARGINS = {
    "arcface": dict(s=64.0, m1=1.0, m2=0.5, m3=0.0),
    "cosface": dict(s=64.0, m1=1.0, m2=0.0, m3=0.4),
    "combined": dict(s=64.0, m1=1.0, m2=0.3, m3=0.2),
    "sphere_like": dict(s=30.0, m1=1.35, m2=0.1, m3=0.05),
}


def _problem(batch=16, num_classes=64, dim=8, seed=0):
    """Random features/rows/labels; samples 0-2 point away from their class row, so their
    theta + m2 > pi (the fallback branch of the margin)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(batch, dim)).astype(np.float32)
    weight = rng.normal(size=(num_classes, dim)).astype(np.float32)
    labels = rng.permutation(num_classes)[:batch].astype(np.int32)
    for i in range(3):
        emb[i] = -weight[labels[i]] + 0.05 * rng.normal(size=dim).astype(np.float32)
    return emb, weight, labels


def _assert_close(got, want):
    import numpy as np

    got, want = np.asarray(got), np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6 * max(1.0, np.abs(want).max()))


def _meshes():
    import jax
    from jax.sharding import AxisType

    from hfrjax.train.mesh import make_mesh

    return {
        "1x8": (make_mesh(1, 8), False),
        "2x4": (make_mesh(2, 4), False),
        "2x4_batch_over_model": (make_mesh(2, 4), True),
        "model_only": (jax.make_mesh((8,), ("model",), axis_types=(AxisType.Auto,)), True),
    }


def check_sharded_equals_dense():
    import math

    import jax
    import numpy as np

    from hfrjax.losses.margin import margin_softmax_loss
    from hfrjax.losses.sharded import sharded_margin_softmax_loss

    emb, weight, labels = _problem()
    cos_y = np.sum(emb * weight[labels], 1) / (
        np.linalg.norm(emb, axis=1) * np.linalg.norm(weight[labels], axis=1)
    )
    assert (cos_y[:3] < math.cos(math.pi - 0.5)).all(), cos_y[:3]  # theta + m2 > pi covered
    meshes = _meshes()
    cases = [(m, "1x8") for m in ("arcface", "cosface", "combined")]
    cases += [(m, "2x4") for m in ("arcface", "cosface", "combined", "sphere_like")]
    cases += [("arcface", "2x4_batch_over_model"), ("combined", "model_only")]
    for margin, mesh_name in cases:
        kw = MARGINS[margin]
        mesh, over = meshes[mesh_name]

        def dense(e, w, kw=kw):
            return margin_softmax_loss(e, w, labels, **kw)

        def sharded(e, w, kw=kw, mesh=mesh, over=over):
            return sharded_margin_softmax_loss(e, w, labels, mesh, batch_over_model=over, **kw)

        want = jax.value_and_grad(dense, (0, 1))(emb, weight)
        got = jax.jit(jax.value_and_grad(sharded, (0, 1)))(emb, weight)
        try:
            for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                _assert_close(g, w)
        except AssertionError as err:
            raise AssertionError(f"{margin} on {mesh_name}: {err}") from None


def check_backward_never_forms_full_logits():
    import re

    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from hfrjax.losses.margin import margin_softmax_loss
    from hfrjax.losses.sharded import sharded_margin_softmax_loss
    from hfrjax.train.mesh import make_mesh

    batch, num_classes, dim = 64, 8192, 16
    mesh = make_mesh(2, 4)
    spec = NamedSharding(mesh, P("data"))
    args = (
        jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=spec),
        jax.ShapeDtypeStruct(
            (num_classes, dim), jnp.float32, sharding=NamedSharding(mesh, P("model"))
        ),
        jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=spec),
    )

    def sharded(e, w, y):
        return sharded_margin_softmax_loss(e, w, y, mesh)

    compiled = jax.jit(jax.value_and_grad(sharded, (0, 1))).lower(*args).compile()
    hlo = compiled.as_text()
    assert f"f32[{batch // 2},{num_classes // 4}]" in hlo  # the per-device logits exist...
    assert not re.search(rf"\[{batch},{num_classes}\]", hlo)  # ...the global ones never do
    assert not re.search(rf"\[\d+,{num_classes}\]", hlo)  # nor any full row of classes
    dense = jax.jit(jax.value_and_grad(lambda e, w, y: margin_softmax_loss(e, w, y), (0, 1)))
    plain = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
    dense_temp = dense.lower(*plain).compile().memory_analysis().temp_size_in_bytes
    temp = compiled.memory_analysis().temp_size_in_bytes
    logits_bytes = batch * num_classes * 4
    # Dense temp holds a few [B, C] buffers; per device the sharded one holds B*C/8 ones.
    assert dense_temp >= logits_bytes, dense_temp
    assert temp < logits_bytes / 2, (temp, logits_bytes)


def check_partial_fc_rate_one_is_the_full_softmax():
    import jax
    import numpy as np

    from hfrjax.losses.sharded import partial_fc_loss, sharded_margin_softmax_loss

    emb, weight, labels = _problem()
    mesh, _ = _meshes()["2x4"]
    kw = MARGINS["combined"]

    def full(e, w):
        return sharded_margin_softmax_loss(e, w, labels, mesh, **kw)

    def pfc(e, w):
        return partial_fc_loss(e, w, labels, mesh, sample_rate=1.0, rng=jax.random.key(3), **kw)

    want = jax.jit(jax.value_and_grad(full, (0, 1)))(emb, weight)
    (loss, mask), grads = jax.jit(jax.value_and_grad(pfc, (0, 1), has_aux=True))(emb, weight)
    np.testing.assert_array_equal(loss, want[0])
    for g, w in zip(grads, want[1]):
        np.testing.assert_array_equal(g, w)
    assert mask.shape == (weight.shape[0],) and bool(mask.all())
    # Eagerly too.
    loss_eager, mask_eager = pfc(emb, weight)
    np.testing.assert_array_equal(loss_eager, want[0])
    assert bool(mask_eager.all())


def _pfc_problem():
    """128 classes on 4 model shards (32 rows each), 4 positives per shard."""
    import numpy as np

    emb, weight, _ = _problem(batch=16, num_classes=128, seed=1)
    rng = np.random.default_rng(2)
    labels = np.concatenate([32 * k + rng.permutation(32)[:4] for k in range(4)])
    return emb, weight, rng.permutation(labels).astype(np.int32)


def check_partial_fc_samples_positives_and_exact_counts():
    import jax
    import numpy as np

    from hfrjax.losses.margin import margin_softmax_loss
    from hfrjax.losses.sharded import num_sampled_rows, partial_fc_loss

    emb, weight, labels = _pfc_problem()
    kw = MARGINS["arcface"]
    num_sampled = num_sampled_rows(128, 4, 0.3)
    assert num_sampled == 10  # ceil(0.3 * 32)
    assert num_sampled_rows(10_000_000, 8, 0.1) == 125_000  # no float-error round-up
    for mesh_name in ("2x4", "2x4_batch_over_model"):
        mesh, over = _meshes()[mesh_name]

        def pfc(e, w, key, mesh=mesh, over=over):
            return partial_fc_loss(
                e, w, labels, mesh, sample_rate=0.3, rng=key, batch_over_model=over, **kw
            )

        step = jax.jit(jax.value_and_grad(pfc, (0, 1), has_aux=True))
        masks = []
        for seed in range(3):
            (loss, mask), (g_emb, g_w) = step(emb, weight, jax.random.key(seed))
            mask = np.asarray(mask)
            masks.append(mask)
            np.testing.assert_array_equal(mask.reshape(4, 32).sum(1), num_sampled)
            assert mask[labels].all(), "a positive class was not sampled"
            assert not np.asarray(g_w)[~mask].any(), "an unsampled row got a gradient"
            # Same as the dense loss over the sampled rows, labels remapped to their positions.
            rows = np.flatnonzero(mask)
            remapped = np.searchsorted(rows, labels).astype(np.int32)

            def dense(e, w_sub, remapped=remapped):
                return margin_softmax_loss(e, w_sub, remapped, **kw)

            want = jax.value_and_grad(dense, (0, 1))(emb, weight[rows])
            _assert_close(loss, want[0])
            _assert_close(g_emb, want[1][0])
            _assert_close(np.asarray(g_w)[rows], want[1][1])
        assert not all((m == masks[0]).all() for m in masks[1:]), "negatives are not random"


def check_partial_fc_step_keeps_unsampled_rows_and_momentum():
    import jax
    import numpy as np
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from hfrjax.losses.sharded import masked_head_update, partial_fc_loss

    emb, weight, labels = _pfc_problem()
    mesh, _ = _meshes()["2x4"]
    tx = optax.sgd(0.1, momentum=0.9)
    params = {"head": {"weight": weight}, "other": np.ones((3,), np.float32)}
    params = jax.device_put(params, {"head": {"weight": NamedSharding(mesh, P("model"))},
                                     "other": NamedSharding(mesh, P())})  # fmt: skip
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, key):
        def loss_fn(p):
            loss, mask = partial_fc_loss(
                emb, p["head"]["weight"], labels, mesh, sample_rate=0.3, rng=key
            )
            return loss + 0.1 * p["other"].sum(), mask

        (_, mask), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, new_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        kept = masked_head_update(params, new_params, opt_state, new_state, mask)
        return kept, (new_params, new_state), mask

    (p1, s1), _, m1 = step(params, opt_state, jax.random.key(0))
    (p2, s2), (raw_p2, raw_s2), m2 = step(p1, s1, jax.random.key(1))
    m1, m2 = np.asarray(m1), np.asarray(m2)
    stale = m1 & ~m2  # moved at step 1 (momentum != 0), not sampled at step 2
    assert stale.any()

    def head(p):
        return np.asarray(p["head"]["weight"])

    def trace(s):
        return np.asarray(s[0].trace["head"]["weight"])

    np.testing.assert_array_equal(head(p2)[~m2], head(p1)[~m2])
    np.testing.assert_array_equal(trace(s2)[~m2], trace(s1)[~m2])
    np.testing.assert_array_equal(head(p2)[m2], head(raw_p2)[m2])
    np.testing.assert_array_equal(trace(s2)[m2], trace(raw_s2)[m2])
    np.testing.assert_array_equal(np.asarray(p2["other"]), np.asarray(raw_p2["other"]))
    # Without the mask momentum would have moved the stale rows.
    assert (head(raw_p2)[stale] != head(p1)[stale]).any()
    assert not np.asarray(trace(s1)[~m1]).any()  # never-sampled rows: zero momentum
    assert p2["head"]["weight"].sharding.spec == P("model")


def check_errors():
    import jax
    import numpy as np

    from hfrjax.losses.sharded import partial_fc_loss, sharded_margin_softmax_loss

    mesh, _ = _meshes()["1x8"]
    emb, weight, labels = _problem(num_classes=60)
    for fn in (
        lambda: sharded_margin_softmax_loss(emb, weight, labels, mesh),
        lambda: partial_fc_loss(emb, weight, labels, mesh, sample_rate=0.5, rng=jax.random.key(0)),
    ):
        try:
            fn()
        except ValueError as err:
            assert "C=60" in str(err) and "divisible" in str(err), err
        else:
            raise AssertionError("C=60 on 8 model shards did not raise")
    emb, weight, labels = _problem(num_classes=64)
    bad = labels.copy()
    bad[3] = 64
    for call, match in (
        (lambda: sharded_margin_softmax_loss(emb, weight, bad, mesh), "labels must lie in"),
        (lambda: partial_fc_loss(emb, weight, labels, mesh, sample_rate=0.0, rng=None), "(0, 1]"),
        (lambda: sharded_margin_softmax_loss(emb, weight.T, labels, mesh), ""),
    ):
        try:
            call()
        except (ValueError, AssertionError) as err:
            assert match in str(err), err
        else:
            raise AssertionError(f"no error ({match})")
    # 16 distinct positives in one shard that keeps num_sampled = 10 rows.
    mesh4, _ = _meshes()["2x4"]
    emb, weight, _ = _problem(num_classes=128)
    crowded = np.arange(16, dtype=np.int32)  # all in shard 0 (32 rows), num_sampled = 10

    def pfc(y):
        return partial_fc_loss(emb, weight, y, mesh4, sample_rate=0.3, rng=jax.random.key(0))[0]

    try:
        pfc(crowded)
    except ValueError as err:
        assert "16 distinct positive classes" in str(err), err
    else:
        raise AssertionError("positive overflow not reported")
    assert np.isnan(jax.jit(pfc)(crowded)), "overflow under jit must give a NaN loss"


def check_padded_classifier_equals_dense_over_real_rows():
    """C = 61 real classes in 64 rows (divisible by 8): padding rows change nothing."""
    import jax
    import numpy as np

    from hfrjax.losses.margin import margin_softmax_loss
    from hfrjax.losses.sharded import (
        padded_num_classes,
        partial_fc_loss,
        sharded_margin_softmax_loss,
    )

    assert padded_num_classes(61, 8) == 64 and padded_num_classes(64, 8) == 64
    emb, weight, labels = _problem(num_classes=61)
    padded = np.concatenate([weight, np.ones((3, weight.shape[1]), np.float32)])
    mesh, _ = _meshes()["2x4"]
    kw = MARGINS["arcface"]
    want = jax.value_and_grad(lambda e, w: margin_softmax_loss(e, w, labels, **kw), (0, 1))(
        emb, weight
    )

    def sharded(e, w):
        return sharded_margin_softmax_loss(e, w, labels, mesh, num_classes=61, **kw)

    loss, (ge, gw) = jax.jit(jax.value_and_grad(sharded, (0, 1)))(emb, padded)
    _assert_close(loss, want[0])
    _assert_close(ge, want[1][0])
    _assert_close(np.asarray(gw)[:61], want[1][1])
    assert not np.asarray(gw)[61:].any(), "padding rows must get no gradient"
    full, _ = partial_fc_loss(
        emb, padded, labels, mesh, sample_rate=1.0, rng=jax.random.key(0), num_classes=61, **kw
    )
    _assert_close(full, want[0])
    _, mask = partial_fc_loss(
        emb, padded, labels, mesh, sample_rate=0.5, rng=jax.random.key(0), num_classes=61, **kw
    )
    assert not np.asarray(mask)[61:].any(), "Partial FC drew a padding row over real negatives"


CHECKS = {
    name[len("check_") :]: fn for name, fn in list(globals().items()) if name.startswith("check_")
}


@pytest.fixture(scope="module")
def results() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600
    )
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and lines, out.stderr[-3000:]
    return json.loads(lines[-1])


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_sharded_softmax(results, name):
    assert results.get(name) == "ok", results.get(name, "check did not run")


if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax

    assert jax.device_count() == 8, jax.devices()
    report = {}
    for check_name, check in CHECKS.items():
        try:
            check()
            report[check_name] = "ok"
        except Exception:
            report[check_name] = traceback.format_exc()[-3000:]
    print(json.dumps(report))
