"""Task ``csan`` (hfrjax/recipes/csan): the cached-backbone head, the index-carrying input, the
host-side pseudo-label helpers, the memory-bank loss, a tiny run's mechanics, and (slow) resume
mid-epoch and early stopping."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfrjax.data import synthetic
from hfrjax.data.dataset import Dataset
from hfrjax.models import get_model
from hfrjax.recipes.csan import hooks as hooks_lib
from hfrjax.recipes.csan import network
from hfrjax.recipes.csan import pseudo_labels as pl
from hfrjax.recipes.csan.configs import csan_config
from hfrjax.recipes.csan.inputs import CsanBatches, PseudoLabelTable, SampleStore
from hfrjax.recipes.csan.task import (
    CsanInputConfig,
    CsanTask,
    _bank_cross_entropy,
    training_records,
)
from hfrjax.tasks import register_task
from hfrjax.train import reporting, trainer
from hfrjax.train.task import Hook


@pytest.fixture(scope="module")
def thermal_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("csan_data")
    synthetic.generate(out, preset="thermal_tiny", workers=1, image_size=32)
    return str(out / "thermal_vis")


def tiny_config(data_dir, **over):
    c = csan_config("tiny", data_dir=data_dir)
    c.eval.data_dir = ""
    c.checkpoint_every = 3
    c.keep_checkpoints = 50
    c.update_from_flattened_dict(over)
    return c


@pytest.fixture(scope="module")
def reference_run(thermal_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("csan_ref")
    result = trainer.train(tiny_config(thermal_dir), str(work))
    return result, work


# -- network ------------------------------------------------------------------------------


def test_head_on_cached_features_equals_the_model_values_and_gradients():
    model = get_model("csan", dim=8, backbone_widths=(4, 8, 8), input_size=16)
    images = jax.random.randint(jax.random.key(1), (4, 16, 16, 3), 0, 256).astype(jnp.uint8)
    modality = jnp.array([0, 2, 0, 3])
    params = model.init(jax.random.key(0), images.astype(jnp.float32))["params"]
    feats = network.make_backbone_fn(model)(params["backbone"], images)
    assert feats.shape == (4, 2, 2, 8)

    def full(p):
        emb, parts = model.apply(
            {"params": p}, network.model_inputs(images), modality, return_parts=True
        )
        return emb, parts["out"]

    def head(p):
        return network.subspace_head(p, feats, modality, 8)

    (e1, o1), (e2, o2) = full(params), head(params)
    np.testing.assert_allclose(e1, e2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-5)
    w = jax.random.normal(jax.random.key(2), e1.shape)
    g1 = jax.grad(lambda p: jnp.sum(full(p)[0] * w))(params)
    g2 = jax.grad(lambda p: jnp.sum(head(p)[0] * w))(params)
    for name in network.SUBSPACE_GROUPS:
        for a, b in zip(jax.tree.leaves(g1[name]), jax.tree.leaves(g2[name])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # An RGB-only batch sends nothing into the IR subspace (§III-C), through the head too.
    g_rgb = jax.grad(
        lambda p: jnp.sum(network.subspace_head(p, feats[:1], modality[:1], 8)[0] * w[:1])
    )(params)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_rgb["subspace_ir"]))
    assert any(float(jnp.abs(x).max()) > 0.0 for x in jax.tree.leaves(g_rgb["subspace_rgb"]))


# -- input --------------------------------------------------------------------------------


def _store(thermal_dir):
    inp = CsanInputConfig.from_config(tiny_config(thermal_dir).input.to_dict())
    records, ir = training_records(inp)
    return SampleStore(records, "vis", ir, (16, 16)), records


def test_batches_carry_indices_not_labels_and_follow_the_links(thermal_dir):
    store, _ = _store(thermal_dir)
    n_rgb = store.num_rgb
    assert np.all(store.modality[:n_rgb] == 0) and np.all(store.modality[n_rgb:] == 3)
    kw = dict(batch_size=8, k=2, hard_negatives=True, seed=5, steps_per_epoch=3, cluster_steps=6)
    batches = CsanBatches(store, **kw)
    with pytest.raises(RuntimeError, match="before its pseudo-label table"):
        next(batches)
    # Four RGB clusters of size >= 2 by identity, linked to IR clusters 0..3 (by identity too).
    truth = store.truth
    ids = np.unique(truth)[:4]
    cluster = np.full(len(store), -1)
    for c, i in enumerate(ids):
        cluster[(truth == i) & (np.arange(len(store)) < n_rgb)] = c
        cluster[(truth == i) & (np.arange(len(store)) >= n_rgb)] = 3 - c
    link = np.full(n_rgb, -1)
    link[:4] = [3, 2, 1, 0]
    link[2] = -1  # RGB cluster 2 sits out.
    neighbour = np.full(n_rgb, -1)
    neighbour[[0, 1, 3]] = [3, 3, 0]
    table = PseudoLabelTable(cluster, link, neighbour)
    batches.install(table)
    # Clustering phase: seeded permutations, RGB half then IR half; an epoch covers each
    # RGB sample (3 steps x 4 rows >= n_rgb).
    seen = []
    for i in range(3):
        rows, valid = batches.rows(i)
        assert valid.all() and np.all(rows[:4] < n_rgb) and np.all(rows[4:] >= n_rgb)
        seen += list(rows[:4])
    assert n_rgb >= 12 and len(set(seen)) == 12  # Without repeats within the epoch.
    batch = next(batches)
    assert set(batch) == {"x", "modality", "index", "valid"}  # No identity labels.
    assert batch["x"].shape == (8, 16, 16, 3) and batch["x"].dtype == np.uint8
    # Triplet phase: P = 2 clusters of K = 2; IR rows from the linked IR cluster, in order.
    for i in range(6, 12):
        rows, valid = batches.rows(i)
        assert valid.all()
        rgb_c, ir_c = cluster[rows[:4]], cluster[rows[4:]]
        assert set(rgb_c) <= {0, 1, 3}
        assert np.all(link[rgb_c] == ir_c)
        anchor = rgb_c[0]
        assert neighbour[anchor] in rgb_c  # The anchor's nearest linked cluster is batched.
    # Pure function of (seed, step, table); the state is the step.
    other = CsanBatches(store, **kw)
    other.install(table)
    other.set_state({"i": 9})
    assert not other.synced  # A restore waits for the hook to reinstall the table.
    other.install(table)
    assert np.array_equal(next(other)["index"], batches.rows(9)[0])
    assert other.get_state() == {"i": 10}
    # Nothing linked: an all-padding batch.
    batches.install(PseudoLabelTable(cluster, np.full(n_rgb, -1), neighbour))
    assert not batches.rows(7)[1].any()
    with pytest.raises(ValueError, match="must divide half"):
        CsanBatches(store, **dict(kw, k=3))


# -- host helpers -------------------------------------------------------------------------


def test_nearest_linked_clusters_against_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    labels = rng.integers(-1, 8, 40)
    link = np.array([2, -1, 0, 5, 1, -1, 3, 4])
    got = pl.nearest_linked_clusters(x, labels, link, 1 << 12)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    for c in range(8):
        if link[c] < 0:
            assert got[c] == -1
            continue
        best, arg = np.inf, -1
        for o in range(8):
            if o == c or link[o] < 0:
                continue
            sub = d[np.ix_(labels == c, labels == o)]
            if sub.size and sub.min() < best:
                best, arg = sub.min(), o
        assert got[c] == arg


def test_tables_schedules_means_and_holdout():
    link = np.array([1, -1, 1, 0])
    assert pl.ir_to_rgb_table(link, 3).tolist() == [3, 2, -1]  # Line 27: the last one wins.
    counts = pl.merge_counts((40, 20), (4, 2), 0.25)
    assert counts[:, 0].tolist() == [30, 20, 10, 4]
    assert counts[:, 1].tolist() == [15, 10, 5, 2]  # IR: 5 per stage (int(20·0.25)), to 2.
    x = np.random.default_rng(1).normal(size=(6, 3))
    means = pl.cluster_means(x, np.array([0, 0, 2, -1, 2, 2]), 4)
    ref = np.stack([x[:2].mean(0), np.zeros(3), x[[2, 4, 5]].mean(0), np.zeros(3)])
    ref[[0, 2]] /= np.linalg.norm(ref[[0, 2]], axis=1, keepdims=True)
    np.testing.assert_allclose(means, ref, rtol=1e-6)
    labels = np.repeat(np.arange(10), 3)
    held = pl.holdout_split(labels, 0.2, 0)
    assert held.sum() == 6 and len(np.unique(labels[held])) == 2
    for i in range(10):  # Whole identities only.
        assert held[labels == i].all() or not held[labels == i].any()
    assert np.array_equal(held, pl.holdout_split(labels, 0.2, 0))
    assert not pl.holdout_split(labels, 0.0, 0).any()
    assert pl.target_count(100, 0, 0.1) == 10 and pl.target_count(100, 7, 0.1) == 7


def test_memory_bank_cross_entropy_against_float64_numpy():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(6, 4))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    bank = rng.normal(size=(5, 4))
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    rows = np.array([0, 2, 2, 4, 1, 3])
    labelled = np.array([True, True, True, False, True, True])
    allowed = np.ones((6, 5), bool)
    allowed[:, 3] = False
    allowed[5, 3] = True
    ce, new = _bank_cross_entropy(
        jnp.asarray(f, jnp.float32),
        jnp.asarray(rows),
        jnp.asarray(labelled),
        jnp.asarray(bank, jnp.float32),
        jnp.asarray(allowed),
        0.1,
    )
    logits = np.where(allowed, f @ bank.T / 0.1, -np.inf)
    top = logits.max(1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
    ref = -np.mean([logp[i, rows[i]] for i in range(6) if labelled[i]])
    np.testing.assert_allclose(float(ce), ref, rtol=1e-5)
    want = bank.copy()
    for r in np.unique(rows[labelled]):
        v = bank[r] + f[labelled & (rows == r)].mean(0)
        want[r] = v / np.linalg.norm(v)
    np.testing.assert_allclose(np.asarray(new), want, rtol=1e-5, atol=1e-6)


# -- a tiny run ---------------------------------------------------------------------------


def test_tiny_run_mechanics(reference_run):
    result, work = reference_run
    extra = jax.device_get(result.state.extra)
    setup = result.setup
    n_rgb, n_ir = setup.meta["num_rgb"], setup.meta["num_ir"]
    n = n_rgb + n_ir
    assert extra["cluster"].shape == (n,) and extra["cluster"].dtype == np.int32
    assert extra["link"].shape == (n_rgb,) and extra["ir_to_rgb"].shape == (n_ir,)
    assert extra["bank"].shape[0] == n
    cluster, link = extra["cluster"], extra["link"]
    # Links join surviving RGB clusters to surviving IR clusters.
    for c in np.flatnonzero(link >= 0):
        assert (cluster[:n_rgb] == c).any() and (cluster[n_rgb:] == link[c]).any()
    stages = setup.meta["merge_stages"]
    assert stages >= 1
    spe = setup.steps_per_epoch
    metrics = reporting.read_metrics(work)
    cluster_steps = setup.meta["cluster_steps"]
    assert [m["step"] for m in metrics] == list(range(1, setup.total_steps + 1))
    assert all("loss/bank_ce" in m for m in metrics[:cluster_steps])
    train = metrics[cluster_steps:]
    assert len(train) == 2 * spe and all("loss/ptl" in m and "loss/pcs" in m for m in train)
    assert any(m["anchors"] > 0 for m in train)
    diag = [json.loads(x) for x in (work / hooks_lib.DIAGNOSTICS_FILE).read_text().splitlines()]
    assert [d["epoch"] for d in diag] == [0, 1]
    for d in diag:
        logged = metrics[d["step"]]  # The first step after the vote logs its counts.
        assert logged["pl/rgb_linked"] == d["rgb_linked"]
        assert d["rgb_kept"] <= d["rgb_clusters"] and d["rgb_linked"] <= d["rgb_kept"]
        assert 0.0 <= d["rgb_purity"] <= 1.0 and "link_accuracy" in d
    assert (work / hooks_lib.DIAGNOSTICS_PLOT).stat().st_size > 1000
    lines = (work / hooks_lib.CLUSTERING_FILE).read_text().splitlines()
    stages_log = [json.loads(x) for x in lines]
    assert [r["stage"] for r in stages_log] == list(range(1, stages + 1))
    counts = [r["rgb_clusters"] for r in stages_log]
    assert counts == sorted(counts, reverse=True)
    assert counts[-1] == pl.target_count(n_rgb, 0, 0.5)
    # Only the subspaces learn: the VGG backbone is bit-identical to its initialisation.
    fresh = get_model("csan", dim=8, backbone_widths=(4, 8, 8), input_size=16)
    init = jax.jit(lambda r: fresh.init(r, jnp.zeros((2, 16, 16, 3))))(
        jax.random.split(jax.random.key(0))[0]
    )["params"]
    trained = result.state.params["backbone"]
    for a, b in zip(jax.tree.leaves(init["backbone"]), jax.tree.leaves(trained)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


# -- slow: resume, early stopping ----------------------------------------------------------


class _Crash(RuntimeError):
    pass


@register_task("csan_crash_test")
class _CrashingCsan(CsanTask):
    """The CSAN task plus a hook that fails at boundary ``CRASH_AT`` (after the periodic
    checkpoints before it were written), like a killed process."""

    crash_at = -1

    def setup(self, cfg, ctx):
        setup = super().setup(cfg, ctx)

        def crash(hctx, state):
            raise _Crash(f"crash at {int(state.step)}")

        setup.hooks = [*setup.hooks, Hook("crash", lambda s: s == type(self).crash_at, crash)]
        return setup


@pytest.mark.slow
def test_resume_mid_epoch_gives_the_same_pseudo_labels_and_losses(
    reference_run, thermal_dir, tmp_path
):
    ref, ref_work = reference_run
    spe = ref.setup.steps_per_epoch
    cluster_steps = ref.setup.meta["cluster_steps"]
    crash_at = cluster_steps + spe - 1  # Late in the first triplet epoch.
    last_saved = crash_at // 3 * 3  # checkpoint_every = 3
    assert last_saved > cluster_steps and (last_saved - cluster_steps) % spe  # Mid-epoch.
    _CrashingCsan.crash_at = crash_at
    cfg = tiny_config(thermal_dir, task="csan_crash_test")
    with pytest.raises(_Crash):
        trainer.train(cfg, str(tmp_path))
    _CrashingCsan.crash_at = -1
    r = trainer.train(cfg, str(tmp_path))
    assert r.resumed_from == last_saved
    got = reporting.read_metrics(tmp_path)
    want = reporting.read_metrics(ref_work)
    assert [m["loss"] for m in got] == [m["loss"] for m in want]
    got_extra, ref_extra = jax.device_get(r.state.extra), jax.device_get(ref.state.extra)
    assert got_extra.keys() == ref_extra.keys()
    for a, b in zip(jax.tree.leaves(got_extra), jax.tree.leaves(ref_extra)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(r.state.params), jax.tree.leaves(ref.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_early_stopping_restores_the_best_parameters(thermal_dir, tmp_path, monkeypatch):
    values = iter([0.5, 0.7, 0.6, 0.9, 0.9])
    calls = []

    def scripted(features, truth, num_rgb, direction, metric):
        assert direction == "ir->rgb" and metric == "Rank-1" and len(truth) == len(features)
        calls.append(len(features))
        return next(values)

    monkeypatch.setattr(pl, "validation_metric", scripted)
    cfg = tiny_config(
        thermal_dir, epochs=3, **{"early_stop.holdout_fraction": 0.34, "early_stop.patience": 1}
    )
    r = trainer.train(cfg, str(tmp_path))
    extra = jax.device_get(r.state.extra)
    assert len(calls) == 3  # Epochs 0, 1, 2; stopped before 3.
    np.testing.assert_array_equal(extra["val"][:3], np.float32([0.5, 0.7, 0.6]))
    assert int(extra["best_epoch"]) == 1 and int(extra["stopped"]) == 1
    for g in network.SUBSPACE_GROUPS:
        best = extra["best_params"][g]
        for a, b in zip(jax.tree.leaves(r.state.params[g]), jax.tree.leaves(best)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    metrics = reporting.read_metrics(tmp_path)
    spe = r.setup.steps_per_epoch
    stop_step = r.setup.meta["cluster_steps"] + 2 * spe
    # Training ended at the epoch-2 boundary (ctx.stop); the final hook put the best back.
    assert int(r.state.step) == stop_step and metrics[-1]["step"] == stop_step
    assert r.setup.total_steps == r.setup.meta["cluster_steps"] + 3 * spe
    done = json.loads((tmp_path / trainer.DONE_FILE).read_text())
    assert "early stop at epoch 2" in done["stopped"]
    again = trainer.train(cfg, str(tmp_path))  # A stopped run is complete: no more training.
    assert int(again.state.step) == stop_step and len(calls) == 3
    for a, b in zip(jax.tree.leaves(again.state.params), jax.tree.leaves(r.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(reporting.read_metrics(tmp_path)) == len(metrics)
    assert all(m["loss"] > 0.0 for m in metrics[:stop_step] if "loss/ptl" in m and m["anchors"] > 0)
    diag = [json.loads(x) for x in (tmp_path / hooks_lib.DIAGNOSTICS_FILE).read_text().splitlines()]
    assert [d["val_Rank-1"] for d in diag] == pytest.approx([0.5, 0.7])
    assert Dataset.open(thermal_dir).info.num_classes == 10
