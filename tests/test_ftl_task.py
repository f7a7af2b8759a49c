"""The ``ftl`` task (FTL Alg. 1 on the core) at tiny size: frozen groups bit-identical in each
stage, the stage-1 loss against float64 numpy, UpdateStats against a brute-force pass, the
versioned stage-1 inputs, resume mid-stage, the hold-out evaluation and a tiny Table 1 sweep.

The loop tests use a dense stand-in network with FTL's four parameter groups and methods
(registered below), which compiles in a fraction of the conv network's time; the conv
network runs in the slow test and the benchmark.
"""

from __future__ import annotations

import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfrjax import models
from hfrjax.config import ConfigError
from hfrjax.data import synthetic
from hfrjax.data.dataset import Dataset
from hfrjax.data.pipeline import iter_eval_batches, select_train_records
from hfrjax.models.registry import register_model
from hfrjax.recipes.ftl import configs as ftl_configs
from hfrjax.recipes.ftl import evaluation, run
from hfrjax.recipes.ftl import task as ftl_task
from hfrjax.recipes.ftl.inputs import ListSampler, RecordImages, pad_rows, unpad_rows
from hfrjax.tasks import parse_config
from hfrjax.train import mesh as mesh_lib
from hfrjax.train import reporting, trainer
from hfrjax.train import step as step_lib
from hfrjax.train.task import HookContext, SetupContext

SIZE = 16
TINY_MODEL = "ftl_dense_test"


class _Encoder(nn.Module):
    feature_dim: int

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(self.feature_dim)(x.reshape(x.shape[0], -1))
        return nn.elu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))


class DenseFTL(nn.Module):
    """Enc/Dec/R/FC as dense layers, with the ``ftl`` model's groups and methods."""

    num_classes: int
    feature_dim: int = 8
    input_size: int = SIZE
    in_channels: int = 3

    def setup(self):
        self.enc = _Encoder(self.feature_dim)
        self.dec = nn.Dense(self.input_size * self.input_size * self.in_channels)
        self.filter = nn.Dense(self.feature_dim)
        self.fc = nn.Dense(self.num_classes, use_bias=False)

    def encode(self, x, train=False):
        return self.enc(x, train)

    def decode(self, g, train=False):
        return self.dec(g).reshape(g.shape[0], self.input_size, self.input_size, self.in_channels)

    def filter_features(self, g):
        return self.filter(g)

    def classify(self, f):
        return self.fc(f)

    def forward_all(self, x, train=False):
        g = self.encode(x, train)
        f = self.filter_features(g)
        return {"g": g, "reconstruction": self.decode(g, train), "f": f, "logits": self.classify(f)}

    def __call__(self, x, train=False):
        if self.is_initializing():
            return self.forward_all(x, train)["f"]
        return self.filter_features(self.encode(x, train))


if TINY_MODEL not in models.list_models():

    @register_model(TINY_MODEL)
    def dense_ftl(*, num_classes, feature_dim=8, input_size=SIZE, in_channels=3, **_):
        return DenseFTL(num_classes, feature_dim, input_size, in_channels)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("longtail")
    synthetic.generate(root, preset="longtail_tiny", seed=0, workers=1, image_size=SIZE)
    return root / "longtail"


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """Runs of one test share compiled steps through a persistent cache."""
    old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def tiny_config(data, variant="10K30K", mode="ftl", **over):
    c = ftl_configs.ftl_config(mode, "tiny", data_dir=str(data / f"train_{variant}"))
    c.model.name = TINY_MODEL
    c.tensorboard = False
    c.keep_checkpoints = 20
    c.stats.max_abs_yaw = 10.0  # The tiny set's yaw spread (16°) has samples beyond this.
    c.total_steps = 8
    c.update_from_flattened_dict(over)
    return c


def make_setup(config, workdir):
    task, _, cfg = parse_config(config)
    mesh = mesh_lib.make_mesh()
    setup = task.setup(cfg, SetupContext(mesh=mesh, workdir=str(workdir), restoring=False))
    return setup, cfg, mesh


def host(tree):
    """Host copies (a step donates its input state); PRNG keys as their key data."""

    def copy(x):
        if jnp.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.array(x)

    return jax.tree.map(copy, tree)


def same(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def run_hook(setup, mesh, workdir, name, state):
    hook = next(h for h in setup.hooks if h.name == name)
    return hook.fn(HookContext(mesh, str(workdir), setup, say=lambda m: None), state)


# ------------------------------------------------------------------------------------------
# Plan, schedule and configuration.


def test_plan_alternates_stages_after_pretraining_and_stats_precede_stage_one():
    plan = [ftl_task.stage_of(s, 3, 2) for s in range(11)]
    assert plan == ["pretrain"] * 3 + ["stage1"] * 2 + ["stage2"] * 2 + ["stage1"] * 2 + ["stage2"] * 2
    due = ftl_task.stats_due(3, 2)
    assert [s for s in range(12) if due(s)] == [3, 7, 11]
    tx, schedule = ftl_task.adam_for(ftl_task.AdamConfig(pretrain_lr=2e-4, lr=1e-5), 3)
    assert [float(schedule(n)) for n in (0, 2, 3, 9)] == pytest.approx([2e-4, 2e-4, 1e-5, 1e-5])


def test_setup_builds_named_inputs_groups_and_plan(data, tmp_path):
    setup, cfg, _ = make_setup(tiny_config(data), tmp_path)
    assert set(setup.inputs) == {"train", "hard", "ur"}
    assert {n: (s.inputs, s.optimizers) for n, s in setup.steps.items()} == {
        "pretrain": (("train",), ("enc", "dec", "filter", "fc")),
        "stage1": (("hard", "ur"), ("filter", "fc")),
        "stage2": (("train",), ("enc", "dec", "filter")),
    }
    assert {n: o.groups for n, o in setup.optimizers.items()} == {g: (g,) for g in ("enc", "dec", "filter", "fc")}
    assert [setup.plan(s) for s in range(8)] == [ftl_task.stage_of(s, 2, 2) for s in range(8)]
    # Fixed-shape extra state: centres [C, D], Q [D, k], the hard list at regular-record capacity.
    extra = setup.state.extra
    assert extra["centres"].shape == (12, 8) and extra["basis"].shape == (8, 4)
    assert extra["hard_rows"].shape == (3 * 8,) and setup.meta["ftl"]["ur_classes"] == 9
    # No hold-out set, no evaluator; the hard list is handed back after a restore.
    assert setup.evaluators == {} and setup.on_restore is not None
    # Baselines: one step, one input, no hooks, no statistics, nothing to restore.
    holdout = {"holdout.data_dir": str(data / "holdout")}
    base, _, _ = make_setup(tiny_config(data, mode="ml2", **holdout), tmp_path)
    assert set(base.steps) == {"pretrain"} and set(base.inputs) == {"train"}
    assert not base.hooks and base.state.extra == {} and base.on_restore is None
    assert list(base.evaluators) == [evaluation.EVALUATOR]


@pytest.mark.parametrize(
    "over, match",
    [
        ({"mode": "focal"}, "mode must be one of"),
        ({"alternation.pretrain_steps": 8}, "0 < alternation.pretrain_steps < total"),
        ({"stats.num_components": 9}, r"num_components=9 must be in \[1, feature dim 8\]"),
        ({"input.mode": "streaming"}, "random_access"),
    ],
)
def test_bad_configs_name_the_key(data, tmp_path, over, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        make_setup(tiny_config(data, **over), tmp_path)


def test_ftl_mode_needs_ur_classes(data, tmp_path):
    with pytest.raises(ConfigError, match=r"train_10K0K has 3 regular and 0 UR classes"):
        make_setup(tiny_config(data, variant="10K0K"), tmp_path)


# ------------------------------------------------------------------------------------------
# Inputs.


def test_list_sampler_is_deterministic_resumable_and_class_balanced(data):
    cfg = parse_config(tiny_config(data))[2].input
    records, class_ids, _ = select_train_records(cfg)
    images = RecordImages(records, class_ids, cfg)
    rows = np.array([0, 3, 5, 9, 11])

    def sampler(mode="rows"):
        return ListSampler("hard", images, 4, mode=mode, seed=7, stream=1)

    a = sampler()
    with pytest.raises(RuntimeError, match="holds no row list"):
        next(a)
    a.set_list(1, rows)
    first = [next(a) for _ in range(3)]
    drawn = np.concatenate([a.rows_at(np.arange(4 * i, 4 * i + 4)) for i in range(3)])
    assert set(drawn) <= set(rows) and sorted(drawn[:5]) == sorted(rows)  # Epoch 0 is a permutation.
    b = sampler()
    b.set_state({"version": 1, "position": 1})
    with pytest.raises(ValueError, match="inconsistent"):
        b.set_list(2, rows, restart=False)
    b.set_list(1, rows, restart=False)
    for want in first[1:]:
        got = next(b)
        assert np.array_equal(got["image"], want["image"]) and np.array_equal(got["label"], want["label"])
    assert b.get_state() == {"version": 1, "position": 3}
    b.set_list(2, rows)  # A new list restarts at position 0 with other permutations.
    assert b.get_state() == {"version": 2, "position": 0}
    ur_rows = np.flatnonzero(class_ids >= 3)
    u = sampler("classes")
    u.set_list(0, ur_rows)
    for i in range(2):  # 9 UR classes: two batches of 4 distinct classes in epoch 0.
        labels = next(u)["label"]
        assert len(set(labels.tolist())) == 4 and (labels >= 3).all()
    assert np.array_equal(unpad_rows(pad_rows(rows, 8), 5), rows)
    with pytest.raises(ValueError, match="exceed the list capacity"):
        pad_rows(rows, 4)


# ------------------------------------------------------------------------------------------
# UpdateStats and the stage steps.


def _all_features(setup, state, cfg):
    """Brute force: g of every training record and of its mirror, eagerly, float64."""
    network = models.get_model(setup.export.model["name"], **setup.export.model["kwargs"])
    records, class_ids, _ = select_train_records(cfg.input)
    ds = Dataset.open(cfg.input.data_dir)
    variables = {"params": state.params, **state.model_state}
    gs, flips = [], []
    for b in iter_eval_batches(ds, list(records.key), 16):
        x = step_lib.model_inputs(jnp.asarray(b["image"]))
        valid = np.asarray(b["valid"])
        gs.append(np.asarray(network.apply(variables, x, method="encode"), np.float64)[valid])
        flips.append(np.asarray(network.apply(variables, x[:, :, ::-1], method="encode"), np.float64)[valid])
    return np.concatenate(gs), np.concatenate(flips), class_ids, records.yaw


def test_update_stats_hook_matches_a_brute_force_pass(data, tmp_path):
    setup, cfg, mesh = make_setup(tiny_config(data), tmp_path)
    state = run_hook(setup, mesh, tmp_path, "update_stats", setup.state)
    extra = host(state.extra)
    g, g_bar, y, yaw = _all_features(setup, setup.state, cfg)
    inlier = np.abs(yaw) <= 10.0
    assert 0 < (~inlier).sum() < len(yaw)  # The bound excludes some samples.
    centres = np.stack(  # Eq. 5; a class without inliers falls back to the mean of its g.
        [
            (g[m] + g_bar[m]).mean(0) / 2 if (m := (y == c) & inlier).any() else g[y == c].mean(0)
            for c in range(12)
        ]
    )
    assert extra["fallback_classes"] == sum(not ((y == c) & inlier).any() for c in range(12))
    np.testing.assert_allclose(extra["centres"], centres, rtol=1e-4, atol=1e-5)
    regular = np.arange(12) < 3
    dev = g - centres[y]
    v = sum(np.outer(d, d) for d, c in zip(dev, y) if regular[c])
    values, vectors = np.linalg.eigh(v)
    top = vectors[:, ::-1][:, :4]
    np.testing.assert_allclose(np.abs(np.sum(top * extra["basis"], axis=0)), 1.0, atol=1e-4)
    np.testing.assert_allclose(extra["eigenvalues"], values[::-1], rtol=1e-4, atol=1e-6)
    assert extra["energy_kept"] == pytest.approx(values[::-1][:4].sum() / values.sum(), rel=1e-5)
    dist = np.linalg.norm(dev, axis=1)
    hard = [i for i in range(len(y)) if regular[y[i]] and dist[i] > dist[y == y[i]].mean()]
    assert unpad_rows(extra["hard_rows"], extra["hard_count"]).tolist() == hard
    assert extra["stats_version"] == 1
    np.testing.assert_allclose(
        extra["fc_norm_pretrained"], np.linalg.norm(np.asarray(setup.state.params["fc"]["kernel"]), axis=0), rtol=1e-6
    )
    assert setup.inputs["hard"].list_version == 1 and setup.inputs["hard"].get_state()["position"] == 0
    report = json.loads((tmp_path / ftl_task.STATS_FILE).read_text())["1"]
    assert report["images"] == len(y) and report["num_hard"] == len(hard)


def test_stage1_loss_is_three_batches_with_transfer_against_numpy(data, tmp_path):
    setup, cfg, mesh = make_setup(tiny_config(data), tmp_path)
    state = run_hook(setup, mesh, tmp_path, "update_stats", setup.state)
    batches = {"hard": next(setup.inputs["hard"]), "ur": next(setup.inputs["ur"])}
    loss, (metrics, _, _) = setup.steps["stage1"].loss_fn(
        state.params, state.model_state, state.extra, batches, jax.random.key(0)
    )
    network = models.get_model(setup.export.model["name"], **setup.export.model["kwargs"])
    variables = {"params": state.params, **state.model_state}

    def enc(images):
        return np.asarray(network.apply(variables, step_lib.model_inputs(jnp.asarray(images)), method="encode"), np.float64)

    c, q = np.asarray(state.extra["centres"], np.float64), np.asarray(state.extra["basis"], np.float64)
    y_r, y_u = np.asarray(batches["hard"]["label"]), np.asarray(batches["ur"]["label"])
    g_r, g_u = enc(batches["hard"]["image"]), enc(batches["ur"]["image"])
    g_t = c[y_u] + (g_r - c[y_r]) @ q @ q.T  # Eq. 7
    w = np.asarray(state.params["fc"]["kernel"], np.float64).T
    want = 0.0
    for name, gg, yy in (("hard", g_r, y_r), ("ur", g_u, y_u), ("transfer", g_t, y_u)):
        f = np.asarray(network.apply(variables, jnp.asarray(gg, jnp.float32), method="filter_features"), np.float64)
        logits = f @ w.T
        ce = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(yy)), yy])
        part = ce + 0.25 * np.mean((logits**2).sum(1))  # Eq. 2 + α_reg Eq. 3
        assert float(metrics[f"loss/{name}"]) == pytest.approx(part, rel=1e-4)
        want += part
    assert float(loss) == pytest.approx(want, rel=1e-4)
    assert (y_r < 3).all() and (y_u >= 3).all() and len(set(y_u.tolist())) == 4


def test_each_stage_leaves_its_frozen_groups_and_their_optimizer_state_bit_identical(data, tmp_path):
    setup, cfg, mesh = make_setup(tiny_config(data), tmp_path)
    pretrain = step_lib.make_train_step(setup.steps["pretrain"], setup.optimizers, mesh)
    state, _ = pretrain(setup.state, {"train": next(setup.inputs["train"])})
    state = run_hook(setup, mesh, tmp_path, "update_stats", state)
    for name, frozen, trained, batch_stats_frozen in (
        ("stage1", ("enc", "dec"), ("filter", "fc"), True),
        ("stage2", ("fc",), ("enc", "dec", "filter"), False),
    ):
        step = step_lib.make_train_step(setup.steps[name], setup.optimizers, mesh)
        batches = {n: next(setup.inputs[n]) for n in setup.steps[name].inputs}
        before = host(state)
        state, metrics = step(state, batches)
        after = host(state)
        assert bool(metrics["finite"])
        for g in frozen:
            assert same(before.params[g], after.params[g]), (name, g)
            assert same(before.opt_states[g], after.opt_states[g]), (name, g)
            assert before.updates[g] == after.updates[g]
        for g in trained:
            assert not same(before.params[g], after.params[g]), (name, g)
            assert after.updates[g] == before.updates[g] + 1
        assert same(before.model_state, after.model_state) == batch_stats_frozen, name
        assert same(before.extra, after.extra)


def test_softmax_baseline_logs_but_does_not_add_the_m_l2_term(data, tmp_path):
    setup, _, _ = make_setup(tiny_config(data, mode="softmax"), tmp_path)
    batch = {"train": next(setup.inputs["train"])}
    s = setup.state
    loss, (m, _, _) = setup.steps["pretrain"].loss_fn(s.params, s.model_state, s.extra, batch, jax.random.key(0))
    assert float(m["loss/reg"]) > 0
    assert float(loss) == pytest.approx(float(m["loss/softmax"]) + float(m["loss/recon"]), rel=1e-6)


# ------------------------------------------------------------------------------------------
# The loop: resume mid-stage.


def _losses(workdir):
    return [(m["step"], m["loss"]) for m in reporting.read_metrics(workdir) if "loss" in m]


HOLDOUT_METRICS = [f"{evaluation.EVALUATOR}/{m}" for m in evaluation.METRICS]


def _resume_matches(data, tmp_path, stops):
    # The reference also runs the loop's hold-out evaluator (no effect on training).
    ref_cfg = tiny_config(data, **{"holdout.data_dir": str(data / "holdout")})
    ref_cfg.holdout.gallery_dir = str(data / "train_10K10K")
    ref = trainer.train(ref_cfg, str(tmp_path / "ref"))
    assert int(ref.state.extra["stats_version"]) == 2  # UpdateStats before steps 3 and 7.
    assert list(ref.eval_results["metrics"]) == HOLDOUT_METRICS
    own = json.loads((tmp_path / "ref" / evaluation.EVAL_FILE).read_text())
    assert own["step"] == 8 and "before" in own["weight_norms"]
    assert ref.eval_results["mean"] == {f"{evaluation.EVALUATOR}/{k}": v for k, v in own["mean"].items()}
    loop_json = json.loads((tmp_path / "ref" / "eval.json").read_text())
    assert loop_json["mean"] == ref.eval_results["mean"] and loop_json["tasks"]["holdout"] == own
    for stop in stops:
        work = tmp_path / f"split{stop}"
        if stop == 2:  # Pretraining's end (total 2 is not an FTL config): the reference's
            # checkpoint of step 2 as a run killed right after saving it would leave it.
            shutil.copytree(tmp_path / "ref", work)
            for d in (work / "checkpoints").iterdir():
                if d.name.isdigit() and int(d.name) > stop:
                    shutil.rmtree(d)
            (work / trainer.DONE_FILE).unlink()
        else:
            first = trainer.train(tiny_config(data, total_steps=stop), str(work))
            assert int(first.state.step) == stop
        again = trainer.train(tiny_config(data), str(work))
        assert again.resumed_from == stop
        assert _losses(work) == _losses(tmp_path / "ref")
        assert same(host(again.state.extra), host(ref.state.extra))
        assert same(host(again.state.params), host(ref.state.params))
        assert same(host(again.state.opt_states), host(ref.state.opt_states))


def test_resume_mid_stage_restores_statistics_stage_and_inputs(data, tmp_path):
    """Stopped after step 3 (mid stage 1, statistics of version 1, hard input at batch 1)."""
    _resume_matches(data, tmp_path, (3,))


@pytest.mark.slow
def test_resume_at_a_stats_boundary_and_mid_stage_two(data, tmp_path):
    """Stopped at 2 (the UpdateStats boundary, redone on resume) and at 5 (mid stage 2)."""
    _resume_matches(data, tmp_path, (2, 5))


# ------------------------------------------------------------------------------------------
# Evaluation.


def test_nearest_centre_rank1_and_centres_against_brute_force():
    rng = np.random.default_rng(0)
    feats = evaluation.l2_normalize(rng.normal(size=(30, 5)))
    labels = rng.integers(0, 4, 30)
    classes, centres = evaluation.class_centres(feats, labels)
    for c, row in zip(classes, centres):
        m = feats[labels == c].mean(0)
        np.testing.assert_allclose(row, m / np.linalg.norm(m), atol=1e-6)
    probes, truth = evaluation.l2_normalize(rng.normal(size=(20, 5))), rng.integers(0, 4, 20)
    right = evaluation.nearest_centre_correct(probes, truth, centres, classes)
    brute = [classes[np.argmin([np.linalg.norm(p - c) for c in centres])] == t for p, t in zip(probes, truth)]
    assert right.tolist() == brute
    s = evaluation.weight_norm_summary(np.array([2.0, 4.0, 1.0]), np.array([30, 30, 5]), 20)
    assert s == {"mean_norm_regular": 3.0, "mean_norm_ur": 1.0, "ratio_ur_to_regular": 1 / 3}


def test_holdout_evaluation_galleries_and_missing_classes(data, tmp_path):
    proj = np.random.default_rng(1).normal(size=(SIZE * SIZE * 3, 6))

    def fn(images):  # A fixed random projection as g, its square as f.
        g = (np.asarray(images, np.float64).reshape(len(images), -1) / 255.0) @ proj
        return {"g": g, "f": g**2 + 0.1 * g}

    kw = dict(holdout_dir=str(data / "holdout"), batch_size=16)
    with pytest.raises(ValueError, match=r"3 hold-out classes have no training images .* holdout.gallery_dir"):
        evaluation.evaluate_holdout(fn, train_dir=str(data / "train_10K0K"), **kw)
    r = evaluation.evaluate_holdout(
        fn, train_dir=str(data / "train_10K0K"), gallery_dir=str(data / "train_10K10K"), **kw
    )
    assert r["counts"] == {"probes_regular": 15, "probes_ur": 15, "gallery_classes": 6, "gallery_images": 3 * 8 + 3 * 5}
    assert list(r["metrics"]) == list(evaluation.METRICS)
    # Independently: the UR classes' centres from their 5 images in train_10K10K, flip-fused.
    holdout, train = Dataset.open(data / "holdout"), Dataset.open(data / "train_10K10K")

    def feats(ds, keys):
        out = []
        for b in iter_eval_batches(ds, keys, 16):
            x = np.asarray(b["image"])
            e = fn(x)["g"] + fn(x[:, :, ::-1])["g"]
            out.append(e[np.asarray(b["valid"])])
        e = np.concatenate(out)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    keys = [k for k, y in zip(train.records.key, train.records.label) if y < 6]
    gal, gal_y = feats(train, keys), train.records.label[train.records.label < 6]
    cent = np.stack([gal[gal_y == c].mean(0) / np.linalg.norm(gal[gal_y == c].mean(0)) for c in range(6)])
    probes = feats(holdout, list(holdout.records.key))
    pred = np.argmax(probes @ cent.T, axis=1)
    ur = holdout.records.label >= 3
    assert r["metrics"]["rank1_ur_g"] == pytest.approx(np.mean(pred[ur] == holdout.records.label[ur]))
    path = evaluation.plot_weight_norms(tmp_path / "w.png", np.array([8, 8, 5]), np.ones(3), np.ones(3) * 2, ur_max_images=5)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------
# The Table 1 sweep at tiny size.


def test_table1_sweep_layout():
    cfg = ftl_configs.table1_sweep("synthetic")
    names = [c["name"] for c in cfg.cells]
    assert names == [f"{r}-{m}" for r in ftl_configs.ROWS for m in ftl_configs.METHODS if m != "ftl" or r not in ("10K0K", "60K0K")]
    assert list(cfg.table["metrics"]) == HOLDOUT_METRICS


def test_equal_epoch_scale_gives_every_row_the_reference_rows_epochs():
    """quick_epochs: steps scaled with the set size (images read per row = 10K10K's epochs)."""
    from hfrjax.data.synthetic import presets

    spec = presets.PRESETS["longtail"].longtail
    sizes = ftl_configs.row_images()
    # The preset's layout, counted by hand: 100 regular x 30, UR blocks of 100 m x 5.
    assert sizes == {"10K0K": 3000, "10K10K": 3500, "10K30K": 4500, "10K50K": 5500, "60K0K": 18000}
    assert spec.num_regular == 100
    quick = ftl_configs.QUICK
    batch = quick["batch_size"]
    ref_epochs = quick["steps"]["total"] * batch / sizes["10K10K"]
    cfg = ftl_configs.table1_sweep("quick_epochs")
    for cell in cfg.cells:
        row = cell["name"].split("-")[0]
        o = cell["stages"][0]["overrides"]
        assert abs(o["total_steps"] * batch / sizes[row] - ref_epochs) < 0.03 * ref_epochs
        assert (o["total_steps"] - o["alternation.pretrain_steps"]) == 4 * o["alternation.n_iter"]
        if row == "10K10K":  # The reference row is the quick scale's exactly.
            assert (o["alternation.pretrain_steps"], o["alternation.n_iter"], o["total_steps"]) == (
                quick["steps"]["pretrain"], quick["n_iter"], quick["steps"]["total"]
            )
    # The fixed-step scales add no step overrides.
    assert "total_steps" not in ftl_configs.table1_sweep("quick").cells[0]["stages"][0]["overrides"]


@pytest.mark.slow
def test_tiny_table1_sweep_runs_and_tables_every_method(data, tmp_path):
    sweep_cfg = ftl_configs.table1_sweep(
        "tiny",
        data_dir=str(data.parent),
        rows=("10K0K", "10K10K"),
        extra_overrides={"model.name": TINY_MODEL, "tensorboard": False},
    )
    assert [c["name"] for c in sweep_cfg.cells] == ["10K0K-softmax", "10K0K-ml2", "10K10K-softmax", "10K10K-ml2", "10K10K-ftl"]
    results = run.run_table(sweep_cfg, str(tmp_path / "sweep"), say=lambda m: None)
    assert all(set(r["0"]["mean"]) == set(HOLDOUT_METRICS) for r in results.values())
    table = (tmp_path / "sweep" / "tables.md").read_text()
    assert "| 10K10K-ftl |" in table and "holdout/rank1_ur_f" in table
    ftl_dir = next((tmp_path / "sweep" / "runs").glob("train-*/ftl_stats.json")).parent
    ev = json.loads((ftl_dir / run.EVAL_FILE).read_text())
    assert ev["mode"] == "ftl" and "before" in ev["weight_norms"]
    assert (ftl_dir / evaluation.PLOT_FILE).exists()


@pytest.mark.slow
def test_conv_network_trains_through_every_stage_and_evaluates(data, tmp_path):
    """The registered ``ftl`` conv network (tiny widths) through Alg. 1 and the evaluation."""
    c = ftl_configs.ftl_config("ftl", "tiny", data_dir=str(data / "train_10K30K"), holdout_dir=str(data / "holdout"))
    c.tensorboard = False
    r = run.train_and_evaluate(c, str(tmp_path / "conv"))
    assert int(r.state.step) == 6 and int(r.state.extra["stats_version"]) == 1
    assert {int(r.state.updates[g]) for g in ("enc", "dec")} == {2 + 2}  # pretraining + stage 2
    assert int(r.state.updates["fc"]) == 2 + 2 and int(r.state.updates["filter"]) == 6
    assert set(r.eval_results["mean"]) == set(HOLDOUT_METRICS)
    again = run.evaluate_workdir(tmp_path / "conv")
    assert again["mean"] == pytest.approx(r.eval_results["mean"])


def test_sweep_sees_the_holdout_evaluator_without_eval_data_dir(tmp_path):
    """A stage evaluated only on the hold-out set needs no eval.data_dir in a sweep."""
    from hfrjax.sweep import task_evaluator_names

    assert task_evaluator_names(tiny_config(tmp_path)) == []
    with_holdout = tiny_config(tmp_path, **{"holdout.data_dir": str(tmp_path / "holdout")})
    assert task_evaluator_names(with_holdout) == [evaluation.EVALUATOR] == ["holdout"]
