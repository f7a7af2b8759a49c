"""The SSN recipe on the core loop: AFS's split, plan and step isolation, modality separation of
the saliency indicators through the IB critics, the embedder, mask pictures, exact resume."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import write_tiny_dataset
from PIL import Image

from hfrjax.data.dataset import Dataset
from hfrjax.recipes.ssn import search
from hfrjax.recipes.ssn.masks_plot import main as masks_main
from hfrjax.recipes.ssn.masks_plot import mask_maps, write_mask_pictures
from hfrjax.recipes.ssn.task import build_inputs
from hfrjax.tasks import default_config, parse_config
from hfrjax.train import checkpoint as ckpt_lib
from hfrjax.train import reporting, trainer
from hfrjax.train import step as step_lib
from hfrjax.train.export import load_weights
from hfrjax.train.task import SetupContext

TINY_MODEL = {"layers": (1, 1, 1, 1), "channels": (4, 6, 8, 4, 4), "embedding_dim": 8}
SEARCH, TRAIN = 2, 3  # (mask, net) pairs, then train steps: plan M N M N T T T.


def tiny_config(data, mode="afs", **over):
    c = default_config(
        "ssn",
        mode=mode,
        log_every=1,
        tensorboard=False,
        checkpoint_every=1,
        keep_checkpoints=50,
        model={"kwargs": TINY_MODEL},
        # 3 channels and no flips / occlusion keep the pixels that encode each image's key.
        input=dict(
            data_dir=str(data),
            batch_size=8,
            channels=3,
            image_size=(16, 16),
            num_threads=1,
            augment=dict(hflip=False),
        ),
        ib=dict(critic_features=(8,), critic_head=(8,), pool=4),
        afs=dict(search_steps=SEARCH, schedule=dict(name="constant", lr=0.01)),
        total_steps=TRAIN,
        schedule=dict(name="constant", lr=0.05),
    )
    c.update_from_flattened_dict(over)
    return c


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ssn_data") / "tiny"
    write_tiny_dataset(d, num_ids=4, per_modality=4, size=16)
    return d


@pytest.fixture(scope="module")
def afs_run(data, tmp_path_factory):
    """One AFS run: 2 x (mask, net) search steps, 3 train steps, a checkpoint after each.
    Its tests are marked slow: the run compiles LightCNN's initialisers and three steps
    (about 75 s of one core)."""
    work = tmp_path_factory.mktemp("ssn_afs")
    return work, trainer.train(tiny_config(data), str(work))


def _losses(workdir):
    return {m["step"]: m["loss"] for m in reporting.read_metrics(workdir) if "loss" in m}


def _key_of(img: np.ndarray) -> str:
    """write_tiny_dataset's key, read back from the pixels that encode it."""
    return f"id{img[0, 0, 0]:03d}/{('vis', 'nir')[img[0, 1, 0]]}/{img[0, 2, 0]:03d}"


# ------------------------------------------------------------------------------------------
# The split and the plan.


def test_identity_preserving_split_is_seeded_disjoint_and_balanced():
    keys = [f"id{i}/{m}/{j}" for i in range(5) for m in ("vis", "nir") for j in range(i + 1)]
    labels = [int(k[2]) for k in keys]
    mods = [k.split("/")[1] for k in keys]
    tr, va = search.identity_preserving_split(keys, labels, mods, seed=3)
    assert set(tr).isdisjoint(va) and sorted(tr + va) == sorted(keys)
    assert tr == [k for k in keys if k in set(tr)]  # Input order kept.
    for i in range(5):
        for m in ("vis", "nir"):
            n_val = sum(k.startswith(f"id{i}/{m}/") for k in va)
            assert n_val == (i + 1) // 2  # floor(n / 2) of each group; singletons train.
    assert search.identity_preserving_split(keys, labels, mods, seed=3) == (tr, va)
    assert search.identity_preserving_split(keys, labels, mods, seed=4) != (tr, va)
    with pytest.raises(ValueError, match="duplicate keys"):
        search.identity_preserving_split(
            keys + keys[:1], labels + labels[:1], mods + mods[:1], seed=0
        )
    with pytest.raises(ValueError, match="val_fraction"):
        search.identity_preserving_split(keys, labels, mods, seed=0, val_fraction=1.0)


def test_split_files_are_checked_on_resume(tmp_path):
    search.write_split(tmp_path, ["a", "b"], ["c"], {"seed": 0})
    assert search.read_split(tmp_path) == (["a", "b"], ["c"])
    search.write_split(tmp_path, ["a", "b"], ["c"], {"seed": 0})  # Same split: fine.
    with pytest.raises(ValueError, match=r"s_train.txt holds another AFS split"):
        search.write_split(tmp_path, ["a"], ["b", "c"], {"seed": 1})


def test_class_remap_maps_subset_ids_to_full_ids():
    np.testing.assert_array_equal(search.class_remap([2, 5, 9, 11], [5, 11], "v"), [1, 3])
    with pytest.raises(ValueError, match="labels \\[7\\] are not training identities"):
        search.class_remap([2, 5, 9], [5, 7], "v")


@pytest.mark.slow
def test_afs_plan_alternates_then_trains(afs_run):
    work, r = afs_run
    plan = [r.setup.plan(s) for s in range(2 * SEARCH + TRAIN)]
    assert plan == ["mask", "net"] * SEARCH + ["train"] * TRAIN
    s = r.setup
    assert s.steps["mask"].inputs == ("search_val",) and s.steps["mask"].optimizers == ("mask",)
    assert s.steps["net"].inputs == ("search_train",) and s.steps["net"].optimizers == ("net",)
    assert s.steps["train"].inputs == ("train",) and s.steps["train"].optimizers == ("net",)
    assert s.optimizers["mask"].groups == ("masks",)
    assert set(s.optimizers["net"].groups) == {"network", "head", "critic"}
    assert int(r.state.updates["mask"]) == SEARCH and int(r.state.updates["net"]) == SEARCH + TRAIN
    rows = reporting.read_metrics(work)
    assert [("lr/mask" in m) for m in rows] == [p == "mask" for p in plan]
    assert all(("loss/critic" in m) == (p != "mask") for m, p in zip(rows, plan))


@pytest.mark.slow
def test_split_is_written_and_mask_steps_see_only_validation_images(data, afs_run):
    work, r = afs_run
    records = Dataset.open(str(data)).records
    tr, va = search.read_split(work)
    assert (tr, va) == search.identity_preserving_split(
        records.key, records.label, records.modality, seed=0
    )
    assert len(va) == 16 and set(tr).isdisjoint(va)
    assert json.loads((work / "afs_split" / "split.json").read_text())["num_val"] == 16
    # The inputs the task builds (a resumed run rebuilds them the same way, from the files).
    _, loop_cfg, cfg = parse_config(tiny_config(data))
    inputs, remaps, steps, _ = build_inputs(cfg, SetupContext(r.mesh, str(work), True, 0))
    assert steps == SEARCH and sorted(inputs) == ["search_train", "search_val", "train"]
    np.testing.assert_array_equal(remaps["search_val"], np.arange(4))
    for name, allowed in (("search_val", set(va)), ("search_train", set(tr))):
        seen = set()
        for _ in range(4):
            batch = next(inputs[name])
            seen |= {_key_of(np.asarray(im)) for im in batch["image"]}
        assert seen == allowed, name
    for it in inputs.values():
        it.iterator.close()


def _restore(work, step):
    ck = ckpt_lib.Checkpointer(Path(work) / "checkpoints", async_save=False)
    try:
        return ck.restore_untyped(step)[1]
    finally:
        ck.close()


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_mask_steps_change_only_masks_and_network_steps_never_masks(afs_run):
    work, _ = afs_run
    states = {s: _restore(work, s) for s in range(2, 7)}
    # Step 3 is a mask step (after step 2): only the indicators and the mask optimizer move.
    a, b = states[2], states[3]
    assert not _same(a["params"]["masks"], b["params"]["masks"])
    for g in ("network", "head", "critic"):
        assert _same(a["params"][g], b["params"][g]), g
    assert _same(a["model_state"], b["model_state"])  # Critic BN statistics untouched too.
    assert _same(a["opt_states"]["net"], b["opt_states"]["net"])
    # Steps 4 (net, search) and 5, 6 (train): the masks and their optimizer stay bit-identical.
    for s in (4, 5, 6):
        a, b = states[s - 1], states[s]
        assert _same(a["params"]["masks"], b["params"]["masks"]) and _same(
            a["opt_states"]["mask"], b["opt_states"]["mask"]
        ), s
        for g in ("network", "head", "critic"):
            assert not _same(a["params"][g], b["params"][g]), (s, g)
        assert not _same(a["model_state"], b["model_state"])


def _batch(modality, seed=0):
    r = np.random.default_rng(seed)
    n = len(modality)
    return {
        "image": jnp.asarray(r.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)),
        "label": jnp.asarray(r.integers(0, 4, n), jnp.int32),
        "modality": jnp.asarray(modality, jnp.int32),
    }


@pytest.mark.slow
def test_one_modality_never_updates_the_other_modalitys_masks(afs_run):
    """Through the whole jitted mask step (Adam state fresh, so a zero gradient is a zero
    update), and through the gradient of the training loss (the loss of the joint modes'
    single step) including the critics' BatchNorm."""
    _, r = afs_run
    setup, state = r.setup, r.state
    opt = setup.optimizers["mask"]
    state = state.replace(
        opt_states={**state.opt_states, "mask": opt.tx.init({"masks": state.params["masks"]})}
    )
    state = jax.tree.map(jnp.copy, state)
    mask_step = step_lib.make_train_step(setup.steps["mask"], setup.optimizers, r.mesh)
    before = jax.device_get(state.params["masks"]["masks"])
    for only, other in ((0, 1), (1, 0)):  # vis = row 0, nir = row 1
        new, _ = mask_step(jax.tree.map(jnp.copy, state), {"search_val": _batch([only] * 8)})
        after = jax.device_get(new.params["masks"]["masks"])
        for block in before:
            assert np.array_equal(before[block][other], after[block][other]), (only, block)
            assert not np.array_equal(before[block][only], after[block][only]), (only, block)

    loss_fn = setup.steps["train"].loss_fn
    grad = jax.jit(
        jax.grad(
            lambda p, b: loss_fn(
                p, state.model_state, state.extra, {"train": b}, jax.random.key(1)
            )[0]
        )
    )
    mixed = _batch([0, 1] * 4, seed=1)
    g1 = grad(state.params, mixed)["masks"]["masks"]
    changed = dict(
        mixed,
        image=jnp.where(
            (mixed["modality"] == 0)[:, None, None, None], 255 - mixed["image"], mixed["image"]
        ),
    )
    g2 = grad(state.params, changed)["masks"]["masks"]
    for block in g1:
        np.testing.assert_allclose(g1[block][1], g2[block][1], rtol=1e-5, atol=1e-9, err_msg=block)
        assert not np.allclose(g1[block][0], g2[block][0]), block  # The VIS row did change.
    vis_only = grad(state.params, _batch([0] * 8, seed=2))["masks"]["masks"]
    assert all(not np.any(vis_only[b][1]) for b in vis_only)


@pytest.mark.slow
def test_embedder_gates_each_image_with_its_own_modalitys_masks(afs_run):
    _, r = afs_run
    params = jax.device_get(r.state.params)
    masks = dict(params["masks"]["masks"])
    masks["block4"] = masks["block4"].copy()
    masks["block4"][1] = -60.0  # σ ≈ 0: NIR images lose block 4's output entirely.
    closed = dict(params, masks={"masks": masks})
    embed = jax.jit(r.setup.embed, static_argnums=4)
    images = _batch([0] * 8)["image"]
    nir, vis = jnp.ones(8, jnp.int32), jnp.zeros(8, jnp.int32)
    e_nir = np.asarray(embed(closed, r.state.model_state, images, nir, False))
    bias = np.asarray(params["network"]["fc"]["bias"])
    np.testing.assert_allclose(e_nir, np.broadcast_to(bias, e_nir.shape), atol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(embed(closed, r.state.model_state, images, vis, False)),
        np.asarray(embed(params, r.state.model_state, images, vis, False)),
    )


def test_eval_occlusion_is_the_loops_and_reaches_the_protocol():
    """The configs' ``eval_occlusion`` argument sets the core's ``eval.occlusion`` (the
    protocol occludes the probes and records it in eval.json); the embedder itself does not
    occlude, so an exported SSN model sees what it is given."""
    from hfrjax.recipes.ssn.configs import ssn_config

    c = ssn_config("afs", scale="test", eval_occlusion="maskBottom")
    assert c.eval.occlusion == "maskBottom"
    assert "eval_occlusion" not in c


@pytest.mark.slow
def test_export_holds_network_and_masks_in_the_models_layout(afs_run):
    work, r = afs_run
    model, variables = load_weights(work)
    assert model["name"] == "lightcnn29v2_psb" and model["kwargs"]["saliency"] == "split"
    assert set(variables["params"]) == set(r.state.params["network"]) | {"masks"}
    assert variables["params"]["masks"]["block1"].shape[0] == 2


# ------------------------------------------------------------------------------------------
# The IB critics.


def test_modality_critic_equals_the_plain_critic_on_each_modalitys_subbatch():
    """Per-modality BN statistics: each modality's scores are those of SSN Fig. 4's critic
    (`JensenShannonCritic`, same parameters) run on that modality's images alone."""
    from hfrjax.losses.mutual_information import JensenShannonCritic
    from hfrjax.recipes.ssn.bottleneck import ModalityCritic

    kw = dict(p_features=(6,), q_features=(5,), head_features=(4,))
    r = np.random.default_rng(0)
    p = jnp.asarray(r.normal(size=(8, 3, 3, 2)), jnp.float32)
    q = jnp.asarray(r.normal(size=(8, 7)) * 3 + 1, jnp.float32)
    is_nir = jnp.asarray([0, 1, 1, 0, 1, 0, 0, 1], bool)
    nir, vis = np.flatnonzero(is_nir), np.flatnonzero(~is_nir)
    perm = np.arange(8)
    for rows in (nir, vis):  # A cyclic shift within each modality.
        perm[rows] = np.roll(rows, 1)
    critic = ModalityCritic(**kw)
    # Jitted: eager flax would compile every initialiser and op on its own (~15 s on CPU).
    variables = jax.jit(lambda key: critic.init(key, p, q, jnp.asarray(perm), is_nir, train=False))(
        jax.random.key(0)
    )
    apply_critic = jax.jit(
        lambda v, perm, is_nir: critic.apply(
            v, p, q, perm, is_nir, train=True, mutable=["batch_stats"]
        )[0]
    )
    joint, marginal = apply_critic(variables, jnp.asarray(perm), is_nir)
    plain = JensenShannonCritic(**kw)
    apply_plain = jax.jit(
        lambda v, p, q, perm: plain.apply(v, p, q, perm, train=True, mutable=["batch_stats"])[0]
    )
    for rows in (nir, vis):
        sub_perm = jnp.asarray(np.roll(np.arange(len(rows)), 1))
        j, m = apply_plain(variables, p[rows], q[rows], sub_perm)
        np.testing.assert_allclose(np.asarray(joint)[rows], j, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(marginal)[rows], m, rtol=1e-5, atol=1e-6)
    # A batch of one modality: the absent one's (unused) statistics stay finite.
    j1, m1 = apply_critic(variables, jnp.asarray(np.roll(np.arange(8), 1)), jnp.zeros(8, bool))
    assert np.isfinite(np.asarray(j1)).all() and np.isfinite(np.asarray(m1)).all()


def test_pool_features_is_the_block_mean():
    from hfrjax.recipes.ssn.bottleneck import pool_features

    x = np.random.default_rng(1).normal(size=(2, 8, 12, 3))
    want = x.reshape(2, 4, 2, 4, 3, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(pool_features(jnp.asarray(x, jnp.float32), 4), want, rtol=1e-5)
    assert pool_features(jnp.asarray(x), 0).shape == x.shape
    assert pool_features(jnp.asarray(x[:, :2, :2]), 4).shape == (2, 2, 2, 3)  # Already small.
    assert pool_features(jnp.zeros((2, 10, 10, 1)), 4).shape == (2, 4, 4, 1)  # Resized.


# ------------------------------------------------------------------------------------------
# Mask pictures.


def test_mask_pictures_are_sigmoid_channel_means_written_as_png(tmp_path):
    rng = np.random.default_rng(0)
    masks = {"block1": rng.normal(size=(2, 8, 6, 3)), "block2": rng.normal(size=(2, 4, 4, 5))}
    paths = write_mask_pictures(masks, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == [
        "masks.png",
        "nir_block1.png",
        "nir_block2.png",
        "vis_block1.png",
        "vis_block2.png",
    ]
    img = np.asarray(Image.open(tmp_path / "nir_block1.png"))
    assert img.shape == (8 * 22, 6 * 22, 3) and img.dtype == np.uint8  # ≥ 128 px a side.
    stats = json.loads((tmp_path / "masks.json").read_text())
    want = (1 / (1 + np.exp(-masks["block2"][0]))).mean(-1)  # float64 reference, vis row
    assert stats["vis/block2"]["mean"] == pytest.approx(want.mean(), rel=1e-12)
    np.testing.assert_allclose(mask_maps(masks)[("vis", "block2")], want, rtol=1e-12)
    assert list(mask_maps({"block1": np.zeros((1, 2, 2, 1))})) == [("shared", "block1")]
    with pytest.raises(ValueError, match="1 \\(shared\\) or 2"):
        mask_maps({"block1": np.zeros((3, 2, 2, 1))})


@pytest.mark.slow
def test_run_writes_mask_pictures_and_the_command_line_redraws_them(afs_run, tmp_path):
    work, _ = afs_run
    for mod in ("vis", "nir"):
        for b in range(1, 5):
            assert (work / "masks" / f"{mod}_block{b}.png").is_file()
    assert masks_main(["--workdir", str(work), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "masks.png").is_file() and (tmp_path / "nir_block4.png").is_file()


# ------------------------------------------------------------------------------------------
# Resume.


def _truncate(work, keep: int):
    """Emulates a kill after step ``keep``: later checkpoints and the completion mark gone."""
    for s in ckpt_lib.Checkpointer(Path(work) / "checkpoints", async_save=False).all_steps():
        if s > keep:
            shutil.rmtree(Path(work) / "checkpoints" / str(s))
    (Path(work) / trainer.DONE_FILE).unlink(missing_ok=True)


@pytest.mark.slow
def test_resume_mid_search_and_mid_train_gives_identical_losses(data, afs_run, tmp_path):
    ref_work, _ = afs_run
    want = _losses(ref_work)
    assert sorted(want) == list(range(1, 2 * SEARCH + TRAIN + 1))
    work = tmp_path / "resumed"
    shutil.copytree(ref_work, work)
    _truncate(work, 3)  # After mask, net, mask: the next step is a network step of the search.
    r = trainer.train(tiny_config(data), str(work))
    assert r.resumed_from == 3
    _truncate(work, 5)  # After the first train step.
    r = trainer.train(tiny_config(data), str(work))
    assert r.resumed_from == 5
    got = _losses(work)
    for s in range(4, 2 * SEARCH + TRAIN + 1):
        np.testing.assert_allclose(got[s], want[s], rtol=1e-6, err_msg=f"step {s}")


def test_bad_config_values_are_named(data, tmp_path):
    with pytest.raises(ValueError, match="mode must be one of"):
        trainer.train(tiny_config(data, mode="nas"), str(tmp_path / "a"))
    with pytest.raises(ValueError, match="occlusion must be one of"):
        trainer.train(tiny_config(data, **{"eval.occlusion": "maskLeft"}), str(tmp_path / "b"))
