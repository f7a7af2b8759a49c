"""TOPLight recipe on the core: the two inputs, the uniform soup through the VI task's setup,
the gradient reversal inside the TOP step, resume, and the synthetic Table 3 sweep (tiny)."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import write_tiny_dataset
from flax import traverse_util

from hfrjax.config import ConfigError
from hfrjax.data import pipeline
from hfrjax.data import task_augment as ta
from hfrjax.data.protocol import Fold, Protocol
from hfrjax.losses.domain_conflict import LogisticDomainClassifier
from hfrjax.recipes.toplight import evaluation, inputs, network, task
from hfrjax.tasks import default_config, parse_config
from hfrjax.train import mesh as mesh_lib
from hfrjax.train.export import export_embedder
from hfrjax.train.task import SetupContext

SIZE = 16  # images and network input (Block4 map 2 x 2)
NET = {"width_mult": 0.25, "depthwise_impl": "conv"}


def _keys(ids, mod, n=4):
    return [f"id{i:03d}/{mod}/{j:03d}" for i in ids for j in range(n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """source: 4 identities (generic set); target: 6 identities, a 2-fold NIR-VIS protocol."""
    root = tmp_path_factory.mktemp("toplight")
    write_tiny_dataset(root / "source", num_ids=4, per_modality=4, size=SIZE, seed=1)
    write_tiny_dataset(root / "target", num_ids=6, per_modality=4, size=SIZE, seed=2)
    folds = []
    for test in ([0, 1, 2], [3, 4, 5]):
        train = [i for i in range(6) if i not in test]
        folds.append(
            Fold(
                train={"vis": _keys(train, "vis"), "nir": _keys(train, "nir")},
                gallery=[f"id{i:03d}/vis/000" for i in test],
                probe=_keys(test, "nir"),
            )
        )
    Protocol("tiny-2fold", folds).save(root / "target")
    return root


def top_cfg(data, **over):
    c = default_config("toplight_top", log_every=1, tensorboard=False, checkpoint_every=2,
                       keep_checkpoints=10)
    c.network.update(NET)
    c.input.update(data_dir=str(data / "source"), modalities=("vis",), batch_size=4,
                   image_size=(SIZE, SIZE), num_threads=1)
    c.total_steps = 4
    c.update_from_flattened_dict(over)
    return c


def vi_cfg(data, **over):
    c = default_config("toplight_vi", log_every=1, tensorboard=False, checkpoint_every=2,
                       keep_checkpoints=10)
    c.network.update(NET)
    c.input.update(data_dir=str(data / "target"), fold=1, batch_size=8, p=2, k=2,
                   image_size=(SIZE, SIZE), num_threads=1)
    c.total_steps = 4
    c.update_from_flattened_dict(over)
    return c


def setup_of(config, workdir, restoring=False):
    t, loop_cfg, task_cfg = parse_config(config)
    ctx = SetupContext(mesh_lib.make_mesh(), str(workdir), restoring, seed=loop_cfg.seed)
    return t.setup(task_cfg, ctx), task_cfg


def flat(tree):
    return {"/".join(k): np.asarray(v, np.float64) for k, v in
            traverse_util.flatten_dict(jax.device_get(tree)).items()}


# ------------------------------------------------------------------------------------------
# Inputs.


def test_augment_pair_switches_against_task_augment(data):
    img = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), np.uint8)
    opts = ta.TaskAugmentConfig()
    for t in range(4):
        full = inputs.augment_pair(img, ta.sample_rng(5, t), inputs.TaskAugmentSection())
        ref = ta.task_augment_pair(img, ta.sample_rng(5, t), opts)
        assert all(np.array_equal(a, b) for a, b in zip(full, ref))
        # G only: each path is the generic draw of its own stream, nothing else.
        _, colour_rng, texture_rng = ta.sample_rng(5, t).spawn(3)
        g = inputs.augment_pair(img, ta.sample_rng(5, t),
                                inputs.TaskAugmentSection(colour_texture=False))
        assert np.array_equal(g[0], ta.random_generic(img, colour_rng, opts))
        assert np.array_equal(g[1], ta.random_generic(img, texture_rng, opts))
        # C+T only: the colour pick and the texture chain on the raw image.
        _, colour_rng, texture_rng = ta.sample_rng(5, t).spawn(3)
        ct = inputs.augment_pair(img, ta.sample_rng(5, t), inputs.TaskAugmentSection(generic=False))
        assert np.array_equal(ct[0], ta.random_colour(img, colour_rng, opts))
        assert np.array_equal(ct[1], ta.random_texture(img, texture_rng, opts))
    none = inputs.augment_pair(img, ta.sample_rng(5, 0),
                               inputs.TaskAugmentSection(generic=False, colour_texture=False))
    assert np.array_equal(none[0], img) and np.array_equal(none[1], img)


def _paired(data, seed=3):
    cfg = pipeline.InputConfig(data_dir=str(data / "source"), batch_size=4, modalities=("vis",),
                               num_threads=1, seed=seed,
                               augment=pipeline.augment_lib.AugmentConfig(hflip=False))
    inner = pipeline.make_train_input(cfg, mesh=None)
    return inputs.PairedAugmentInput(inner, inputs.TaskAugmentSection(), seed=seed, global_batch=4)


def test_paired_input_is_the_plain_stream_augmented_and_resumes(data):
    it = _paired(data)
    plain = _paired(data).inner
    batches = [next(it) for _ in range(3)]
    state_after_1 = None
    for i, b in enumerate(batches):
        raw = next(plain)
        assert np.array_equal(b["label"], raw["label"])
        for j, img in enumerate(raw["image"]):  # Sample rng keyed by the global position.
            want = ta.task_augment_pair(img, ta.sample_rng(3, 4 * i + j))
            assert np.array_equal(b["colour"][j], want[0])
            assert np.array_equal(b["texture"][j], want[1])
        assert np.array_equal(b["texture"][..., 0], b["texture"][..., 2])  # sharpen-grey p=1
    it2 = _paired(data)
    next(it2)
    state_after_1 = json.loads(json.dumps(it2.get_state()))  # What NamedInputs stores.
    resumed = _paired(data)
    resumed.set_state(state_after_1)
    for b in batches[1:]:
        r = next(resumed)
        assert all(np.array_equal(r[k], b[k]) for k in b)


def test_modality_split_input_halves_and_refuses_unbalanced_batches(data):
    cfg = pipeline.InputConfig(data_dir=str(data / "target"), fold=1, batch_size=8,
                               sampler="pk", p=2, k=2, num_threads=1,
                               augment=pipeline.augment_lib.AugmentConfig(hflip=False))
    split = inputs.ModalitySplitInput(pipeline.make_train_input(cfg, mesh=None), None)
    b = next(split)
    assert b["vis_image"].shape == b["ir_image"].shape == (4, SIZE, SIZE, 3)
    assert sorted(b["vis_label"]) == sorted(b["ir_label"])  # K of each modality per identity
    assert np.all(b["vis_image"][:, 0, 1, 0] == 0) and np.all(b["ir_image"][:, 0, 1, 0] == 1)
    plain = pipeline.InputConfig(data_dir=str(data / "target"), fold=1, batch_size=8,
                                 modalities=("vis",), num_threads=1)
    bad = inputs.ModalitySplitInput(pipeline.make_train_input(plain, mesh=None), None)
    with pytest.raises(ValueError, match="equal visible and infrared halves"):
        next(bad)


def test_config_errors_name_the_key(data, tmp_path):
    with pytest.raises(ConfigError, match="input.augment must stay off"):
        setup_of(top_cfg(data, **{"input.augment.hflip": True}), tmp_path)
    with pytest.raises(ConfigError, match="loss.identity"):
        setup_of(top_cfg(data, **{"loss.identity": "both"}), tmp_path)
    with pytest.raises(ConfigError, match="input.sampler='pk'"):
        setup_of(vi_cfg(data, **{"input.sampler": "plain"}), tmp_path)


# ------------------------------------------------------------------------------------------
# Step 2: the uniform soup, through the VI task's setup.


def _top_export(tmp_path):
    """A TOP network with two really different paths (and a non-default head), exported."""
    model, model_cfg = task.build_network(parse_config(top_cfg(tmp_path))[2], private_blocks=4)
    v = network.init_variables(model, seed=3)
    rng = np.random.default_rng(0)

    def shake(tree):
        return jax.tree.map(lambda x: x + rng.normal(size=x.shape).astype(x.dtype), tree)

    for coll in ("params", "batch_stats"):
        for name in list(v[coll]):
            if name.endswith("_2") or name == "head":
                v[coll][name] = shake(v[coll][name])
    export_embedder(tmp_path / "top", model_cfg=model_cfg, params=v["params"],
                    batch_stats=v["batch_stats"])
    return v


def test_vi_setup_soups_a_top_run_and_keeps_the_stems(data, tmp_path):
    top = _top_export(tmp_path)
    setup, _ = setup_of(vi_cfg(data, init_from=str(tmp_path / "top")), tmp_path / "vi")
    state = jax.device_get(setup.state)
    for coll, got_tree in (("params", state.params["network"]),
                           ("batch_stats", state.model_state["batch_stats"])):
        src, got = top[coll], flat(got_tree)
        for b in (2, 3, 4):  # Elementwise mean of the two paths, in float64.
            a, c = flat(src[f"block{b}_1"]), flat(src[f"block{b}_2"])
            for k, v in a.items():
                np.testing.assert_allclose(got[f"block{b}/{k}"], (v + c[k]) / 2, rtol=0,
                                           atol=1e-6)
        for name in ("block1_1", "block1_2", "block5", "block6", "block7"):  # untouched
            for k, v in flat(src[name]).items():
                assert np.array_equal(got[f"{name}/{k}"], v), (coll, name, k)
        assert not any(k.startswith(("block2_", "block3_", "block4_")) for k in got)
    # The head and FDR are the VI task's own: fresh neck, zero-initialised attention.
    head = flat(state.params["network"]["head"])
    assert all(np.all(v == 1.0) for k, v in head.items() if k.endswith("scale"))
    fdr = flat(state.params["network"]["fdr"])
    assert np.all(fdr["fc2/kernel"] == 0) and np.all(fdr["fc2/bias"] == 0)
    assert network.souped_blocks_equal_mean(top["params"], state.params["network"]) < 1e-6


def test_vi_setup_from_a_single_path_network_copies_the_stem(data, tmp_path):
    top = _top_export(tmp_path)  # Its colour path, renamed, is a single-path MobileNetV3.
    single = {coll: {(k[:-2] if k.endswith("_1") else k): v for k, v in tree.items()
                     if not k.endswith("_2")} for coll, tree in top.items()}
    export_embedder(tmp_path / "single", model_cfg={"name": "mobilenetv3_large", "kwargs": {}},
                    params=single["params"], batch_stats=single["batch_stats"])
    setup, _ = setup_of(vi_cfg(data, init_from=str(tmp_path / "single")), tmp_path / "vi")
    got = flat(setup.state.params["network"])
    for stem in ("block1_1", "block1_2"):
        for k, v in flat(single["params"]["block1"]).items():
            assert np.array_equal(got[f"{stem}/{k}"], v)
    for b in range(2, 8):
        for k, v in flat(single["params"][f"block{b}"]).items():
            assert np.array_equal(got[f"block{b}/{k}"], v)
    with pytest.raises(ValueError, match="souped network"):
        network.convert_network({"params": {"block1_1": {}, "block1_2": {}, "block2": {}}}, 4, "x")


# ------------------------------------------------------------------------------------------
# Step 1: the gradient reversal inside the TOP step.


def test_top_step_reverses_the_final_domain_gradient(data, tmp_path):
    lam = 0.5
    setup, cfg = setup_of(
        top_cfg(data, **{"loss.reversal_scale": lam, "loss.reversal_schedule": "constant"}),
        tmp_path,
    )
    batch = next(setup.inputs["train"])
    state = setup.state
    model, _ = task.build_network(cfg, private_blocks=4)
    ms, rng = state.model_state, jax.random.key(1)

    def grl_final(params):  # L_d(GRL(x^_1), d_1) + L_d(GRL(x^_2), d_2) inside the TOP step
        loss, (m, _, extra) = setup.steps["train"].loss_fn(
            params, ms, state.extra, {"train": batch}, rng
        )
        return m["_fd1_final"] + m["_fd2_final"], (loss, dict(m, next_step=extra["step"]))

    def plain_final(params):  # The same without the GRL, written out: mean BCE of the logits
        # of the final classifier on the unit-normalised features (loss.normalize_final).
        (_, inter), _ = task.apply_network(model, params["network"], ms,
                                           (batch["colour"], batch["texture"]), True, rng,
                                           return_intermediates=True)
        total = 0.0
        for f, d in zip(inter["block7"], (0.0, 1.0)):
            f = f / jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True))
            z = LogisticDomainClassifier().apply({"params": params["domain"]["final"]}, f)
            total = total + jnp.mean(jax.nn.softplus(z) - d * z)
        return total

    @jax.jit
    def probe(params):
        g_grl, (loss, metrics) = jax.grad(grl_final, has_aux=True)(params)
        return g_grl, jax.grad(plain_final)(params), loss, metrics

    g_grl, g_plain, loss, m = jax.device_get(probe(state.params))
    net_grl, net_plain = flat(g_grl["network"]), flat(g_plain["network"])
    assert max(np.abs(v).max() for v in net_plain.values()) > 1e-6
    for k, v in net_plain.items():  # Reversed and scaled by lambda below the GRL ...
        # Two compiled backward passes: float32 rounding differs by ~1e-7 on 0.1-sized leaves.
        np.testing.assert_allclose(net_grl[k], -lam * v, rtol=1e-4, atol=1e-6)
    for k, v in flat(g_plain["domain"]["final"]).items():  # ... not in the classifier.
        np.testing.assert_allclose(flat(g_grl["domain"]["final"])[k], v, rtol=1e-5, atol=1e-8)
    # Eq. 4: the step's loss is L_idc + L_fd^1 + L_fd^2; the step advances the GRL's clock.
    np.testing.assert_allclose(loss, m["loss/idc"] + m["loss/fd1"] + m["loss/fd2"], rtol=1e-6)
    assert float(m["grl_lambda"]) == lam and int(m["next_step"]) == 1


def test_ganin_reversal_schedule():
    cfg = task.TopLossConfig(reversal_scale=0.5)
    for step, total in ((0, 10), (5, 10), (10, 10), (3, 7)):
        p = step / total
        want = 0.5 * (2 / (1 + np.exp(-10 * p)) - 1)  # Ganin & Lempitsky §5
        np.testing.assert_allclose(task.reversal_lambda(cfg, step, total), want, rtol=1e-6)
    const = task.TopLossConfig(reversal_scale=0.5, reversal_schedule="constant")
    assert float(task.reversal_lambda(const, 0, 10)) == 0.5


# ------------------------------------------------------------------------------------------
# Re-id mode: the VI task's loop evaluators.

REID = {"reid_eval.folds": (1,), "reid_eval.gallery": "all", "reid_eval.batch_size": 8}


def _reference_reid(emb_q, labels_q, emb_g, labels_g):
    """Rank-1, mAP (scikit-learn's AP per query) and mINP (|relevant| / rank of the last
    relevant image) of cosine scores, in float64."""
    from sklearn.metrics import average_precision_score

    sim = emb_q.astype(np.float64) @ emb_g.astype(np.float64).T
    rank1, aps, inps = [], [], []
    for s, lab in zip(sim, labels_q):
        rel = labels_g == lab
        order = np.argsort(-s, kind="stable")
        rank1.append(float(rel[order[0]]))
        aps.append(average_precision_score(rel, s))
        inps.append(rel.sum() / (np.flatnonzero(rel[order])[-1] + 1))
    return {"Rank-1": np.mean(rank1), "mAP": np.mean(aps), "mINP": np.mean(inps)}


def test_reid_evaluators_run_in_the_loops_evaluation(data, tmp_path):
    from hfrjax.data.dataset import Dataset
    from hfrjax.eval.protocols import embed_keys
    from hfrjax.train import evaluation as loop_eval
    from hfrjax.train.task import HookContext

    c = vi_cfg(data, **{"eval.data_dir": str(data / "target"), "eval.folds": (1,),
                        "eval.batch_size": 8, "reid_eval.data_dir": str(data / "target"), **REID})
    t, loop_cfg, task_cfg = parse_config(c)
    mesh = mesh_lib.make_mesh()
    setup = t.setup(task_cfg, SetupContext(mesh, str(tmp_path), False))
    assert list(setup.evaluators) == t.evaluator_names(task_cfg) == ["reid"]
    hctx = HookContext(mesh, str(tmp_path), setup, say=lambda m: None)
    written = []
    writer = type("W", (), {"write": lambda self, step, flat: written.append(flat)})()
    result = loop_eval.evaluate(loop_cfg.eval, setup, setup.state, mesh, 3, writer, tmp_path,
                                lambda m: None, hook_ctx=hctx)
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk["step"] == 3 and on_disk["mean"] == pytest.approx(result["mean"])
    fold = on_disk["folds"][0]["metrics"]
    assert {"Rank-1", "TAR@FAR=1e-2", "reid/Rank-1", "reid/Rank-10", "reid/mAP",
            "reid/mINP"} <= set(fold)
    assert written[0]["eval/reid/mAP"] == pytest.approx(fold["reid/mAP"])
    # Independent: fold 1's NIR probes against every VIS image of its test identities.
    ds = Dataset.open(data / "target")
    probes = _keys([0, 1, 2], "nir")
    gallery = _keys([0, 1, 2], "vis")
    emb = embed_keys(hctx.embedder(setup.state), ds, probes + gallery, 8,
                     image_size=(SIZE, SIZE))
    lab = np.asarray([int(k[2:5]) for k in probes + gallery])
    want = _reference_reid(emb[:12], lab[:12], emb[12:], lab[12:])
    for name, v in want.items():
        assert fold[f"reid/{name}"] == pytest.approx(v, abs=1e-6), name


def test_reid_evaluator_names_and_errors_come_before_training(data):
    vi = task.ViTask()

    def names(**over):
        return vi.evaluator_names(parse_config(vi_cfg(data, **over))[2])

    assert names() == []  # No reid_eval.data_dir: no re-id evaluation.
    target = str(data / "target")
    assert names(**{"reid_eval.data_dir": target}) == ["reid"]
    assert names(**{"reid_eval.data_dir": target,
                    "reid_eval.directions": ("probe->gallery", "gallery->probe")}) == [
        "reid[probe->gallery]", "reid[gallery->probe]"]
    assert names(**{"reid_eval.data_dir": target, "reid_eval.modes": ("a", "b")}) == [
        "reid[a]", "reid[b]"]
    with pytest.raises(ConfigError, match="gallery='all' takes no modes"):
        names(**{"reid_eval.data_dir": target, "reid_eval.modes": ("a",),
                 "reid_eval.gallery": "all"})
    with pytest.raises(ConfigError, match="reid_eval.gallery must be"):
        names(**{"reid_eval.gallery": "every"})


def _one_vi_cell_sweep(data, eval_dir: bool, reid_dir: bool, **over) -> dict:
    """A sweep of one TOPLight VI cell at tiny size (no pretraining: random initialisation)."""
    from hfrjax import sweep

    overrides = {"input.data_dir": "{data}/target", "network.width_mult": 0.25,
                 "input.image_size": [SIZE, SIZE], "input.batch_size": 8, "input.p": 2,
                 "input.k": 2, "eval.batch_size": 8, "eval.data_dir": "", **REID,
                 "reid_eval.data_dir": "{data}/target" if reid_dir else "", **over}
    if eval_dir:
        overrides["eval.data_dir"] = "{data}/target"
    vi = sweep.stage("vi", "configs/toplight/synthetic.py:stage=vi,row=9", overrides)
    return {"name": "tl", "cells": [{"name": "vi9", "stages": [vi]}], "data_dir": str(data),
            "table": {"metrics": ["Rank-1", "reid/Rank-1", "reid/mAP", "reid/mINP"]}}


def test_sweep_plans_a_reid_only_stage_and_refuses_one_without_evaluation(data, tmp_path):
    from hfrjax import sweep

    plan = sweep.plan_sweep(_one_vi_cell_sweep(data, False, True), tmp_path / "out")
    assert plan.runs[0].evaluate and not plan.runs[0].config.eval.data_dir
    with pytest.raises(ValueError, match="no eval.data_dir and its task declares no evaluators"):
        sweep.plan_sweep(_one_vi_cell_sweep(data, False, False), tmp_path / "out")


# ------------------------------------------------------------------------------------------
# Whole runs (each compiles a dual-path train step: minutes on a loaded 2-core CPU).


@pytest.mark.slow
def test_sweep_runs_a_toplight_cell_with_reid_columns(data, tmp_path):
    """The standard sweep and trainer (no TOPLight-specific train_fn): one VI step, then the
    face protocol and the re-id evaluators fill one table row."""
    from hfrjax import sweep

    cfg = _one_vi_cell_sweep(data, True, True, total_steps=1)
    results = sweep.run_sweep(cfg, tmp_path / "sweep", say=lambda m: None)
    ev = results["vi9"]["0"]
    fold = ev["folds"][0]["metrics"]
    assert {"Rank-1", "reid/Rank-1", "reid/mAP", "reid/mINP"} <= set(fold)
    table = (tmp_path / "sweep" / sweep.TABLES_MD).read_text()
    header = next(x for x in table.splitlines() if x.startswith("| Cell"))
    line = next(x for x in table.splitlines() if x.startswith("| vi9 "))
    cols = dict(zip([h.strip() for h in header.split("|")], [v.strip() for v in line.split("|")]))
    assert cols["reid/mAP"].startswith(f"{100 * fold['reid/mAP']:.2f}"), (header, line)
    assert cols["Rank-1"].startswith(f"{100 * fold['Rank-1']:.2f}"), (header, line)


def _losses(workdir):
    from hfrjax.train import reporting

    return [m["loss"] for m in reporting.read_metrics(workdir) if "loss" in m]


def _resume_matches(config, workdir):
    from hfrjax.train import trainer

    trainer.train(config, str(workdir))
    ref = _losses(workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")  # As if stopped after the step-2 checkpoint.
    (workdir / trainer.DONE_FILE).unlink()
    r = trainer.train(config, str(workdir))
    assert r.resumed_from == 2
    assert _losses(workdir) == ref and len(ref) == 4
    return r


@pytest.mark.slow
def test_top_resume_gives_identical_losses(data, tmp_path):
    _resume_matches(top_cfg(data), tmp_path / "top")


@pytest.mark.slow
def test_vi_resume_gives_identical_losses_and_evaluates_both_modes(data, tmp_path):
    c = vi_cfg(data, **{"eval.data_dir": str(data / "target"), "eval.folds": (1,),
                        "eval.batch_size": 8, "reid_eval.data_dir": str(data / "target"),
                        "reid_eval.folds": (1,), "reid_eval.gallery": "all",
                        "reid_eval.batch_size": 8})
    r = _resume_matches(c, tmp_path / "vi")
    ev = json.loads((tmp_path / "vi" / "eval.json").read_text())  # The loop's evaluation.
    assert {"Rank-1", "TAR@FAR=1e-2", "reid/Rank-1", "reid/mAP", "reid/mINP"} <= set(
        ev["metrics"])
    # What the removed train_and_evaluate merged after training (re-id of the returned
    # state's embedder) is what the loop's evaluators put in eval.json.
    ref = evaluation.reid_result(r.embedder, parse_config(c)[2].reid_eval, None,
                                 "probe->gallery", (SIZE, SIZE))
    got = r.eval_results["folds"][0]["metrics"]
    for name, v in ref["folds"][0]["metrics"].items():
        assert got[f"reid/{name}"] == pytest.approx(v, abs=1e-7), name


@pytest.mark.slow
def test_table3_sweep_runs_at_tiny_size(data, tmp_path):
    from hfrjax import sweep

    cfg = sweep.load_config("configs/toplight/tables_synthetic.py:1+2+9")
    size = [SIZE, SIZE]
    tiny = {
        "sp": {"model.kwargs.width_mult": 0.25, "model.kwargs.input_size": size,
               "input.image_size": size, "input.batch_size": 8, "total_steps": 2},
        "top": {"network.width_mult": 0.25, "input.image_size": size, "input.batch_size": 4,
                "total_steps": 2},
        "vi": {"network.width_mult": 0.25, "input.image_size": size, "input.batch_size": 8,
               "input.p": 2, "input.k": 2, "total_steps": 2, "eval.batch_size": 8,
               "reid_eval.batch_size": 8},
    }
    for c in cfg["cells"]:
        for s in c["stages"]:
            s["overrides"].update(tiny[s["name"]])
    cfg["data_dir"] = str(data)
    results = sweep.run_sweep(cfg, tmp_path / "sweep", say=lambda m: None)  # The loop's trainer.
    assert set(results) == {"no1-sp", "no2-g-id", "no9-hvsa"}
    table = (tmp_path / "sweep" / sweep.TABLES_MD).read_text()
    for row in ("no1-sp", "no2-g-id", "no9-hvsa"):
        line = next(x for x in table.splitlines() if x.startswith(f"| {row} "))
        assert "pending" not in line and "–" not in line, line
    assert "reid/mAP" in table
