"""The Rethinking recipe on the core: +target pretraining, SSC, source regularisation, RCT."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import write_tiny_dataset

from hfrjax.data.protocol import Fold, Protocol
from hfrjax.losses import MarginConfig
from hfrjax.recipes import rethink
from hfrjax.recipes.rethink.task import load_pretrained_head
from hfrjax.train import state as state_lib
from hfrjax.train import trainer

TINY_MODEL = {
    "name": "iresnet",
    "kwargs": {"layers": [1, 1, 1, 1], "base_width": 4, "input_size": 16, "embedding_dim": 16},
}


def _keys(ids, mod, n=4):
    return [f"id{i:03d}/{mod}/{j:03d}" for i in ids for j in range(n)]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rethink")
    source, target = root / "source", root / "target"
    write_tiny_dataset(source, num_ids=5, per_modality=4, size=16, seed=1)
    write_tiny_dataset(target, num_ids=8, per_modality=4, size=16, seed=2)
    folds = []
    for test in ([0, 1, 2, 3], [4, 5, 6, 7]):
        train = [i for i in range(8) if i not in test]
        folds.append(
            Fold(
                train={"vis": _keys(train, "vis"), "nir": _keys(train, "nir")},
                gallery=[f"id{i:03d}/vis/000" for i in test],
                probe=_keys(test, "nir"),
            )
        )
    Protocol("tiny-2fold", folds).save(target)
    return source, target


def _shrink(c, batch=8, epochs=1):
    """A recipe config at test size: tiny model, 16 px, a few steps."""
    c.model = TINY_MODEL
    c.input.image_size = [16, 16]
    c.input.batch_size = batch
    c.input.num_threads = 1
    c.num_epochs = epochs
    c.log_every = 1
    c.eval.batch_size = 8
    if c.get("source_reg") and c.source_reg.weight:
        c.source_reg.input.image_size = [16, 16]
        c.source_reg.input.batch_size = 16
        c.source_reg.input.num_threads = 1
    return c


@pytest.fixture(scope="module")
def pretrained(dirs, tmp_path_factory):
    """'+target' pretraining: source ids and fold-1 target-train ids in one classifier."""
    source, target = dirs
    c = rethink.pretrain_config(
        variant="target", scale="synthetic", source_dir=str(source), target_dir=str(target)
    )
    work = tmp_path_factory.mktemp("pre")
    result = trainer.train(_shrink(c, batch=16, epochs=2), str(work))
    return work, result


def _pretrained_head(work):
    weight, ranges = load_pretrained_head(str(work))
    return weight, {str(r.data_dir): r for r in ranges}


def test_target_pretraining_records_class_ranges(dirs, pretrained):
    source, target = dirs
    work, result = pretrained
    weight, ranges = _pretrained_head(work)
    assert weight.shape == (5 + 4, 16)
    src, tgt = ranges[str(source.resolve())], ranges[str(target.resolve())]
    assert (src.start, src.stop, list(src.labels)) == (0, 5, [0, 1, 2, 3, 4])
    assert (tgt.start, tgt.stop, list(tgt.labels)) == (5, 9, [4, 5, 6, 7])  # Fold-1 train ids.
    assert tgt.fold == 1


def _finetune(dirs, pretrained, tmp_path, **kw):
    source, target = dirs
    work, _ = pretrained
    c = rethink.finetune_config(
        scale="synthetic",
        init_from=str(work),
        target_dir=str(target),
        source_dir=str(source),
        fold=1,
        **kw,
    )
    c.eval.data_dir = ""  # Evaluation is tested elsewhere; keep these runs short.
    return trainer.train(_shrink(c), str(tmp_path))


def test_ssc_rows_are_the_target_slice_and_stay_frozen(dirs, pretrained, tmp_path):
    weight, _ = _pretrained_head(pretrained[0])
    result = _finetune(dirs, pretrained, tmp_path, method="ssc")
    # Fold-1 training identities are raw labels 4..7 = pretrained rows 5..8, in label order.
    want = weight[5:9] / np.linalg.norm(weight[5:9], axis=1, keepdims=True)
    head = np.asarray(result.state.params["head"]["weight"])
    np.testing.assert_array_equal(result.setup.meta["class_labels"], [4, 5, 6, 7])
    np.testing.assert_allclose(head, want, rtol=1e-6)
    assert int(result.state.step) > 0


def test_ssc_needs_the_identities_in_the_pretrained_classifier(dirs, pretrained, tmp_path):
    # The classifier holds fold-1 training identities (4..7); fold 2 trains on 0..3.
    source, target = dirs
    c = rethink.finetune_config(
        scale="synthetic",
        method="ssc",
        init_from=str(pretrained[0]),
        target_dir=str(target),
        fold=2,
    )
    with pytest.raises(ValueError, match=r"label\(s\) of dataset .*target have no class"):
        trainer.train(_shrink(c), str(tmp_path))


def test_source_regularisation_keeps_the_source_head_frozen(dirs, pretrained, tmp_path):
    weight, _ = _pretrained_head(pretrained[0])
    result = _finetune(dirs, pretrained, tmp_path, method="mec", reg="source", lam=1.0)
    src = np.asarray(result.state.params["source_head"]["weight"])
    want = weight[:5] / np.linalg.norm(weight[:5], axis=1, keepdims=True)
    np.testing.assert_allclose(src, want, rtol=1e-6)  # Frozen through the steps.
    rows = trainer.reporting.read_metrics(tmp_path)
    assert any("loss/source" in r for r in rows)
    # Combined loss = target loss + λ · source loss, as logged.
    r = next(r for r in rows if "loss/source" in r)
    assert r["loss"] == pytest.approx(r["loss/cls"] + r["loss/source"], rel=1e-5)


@pytest.mark.slow  # Two or more training runs; CI runs it with -m slow.
def test_lambda_zero_is_plain_mec(dirs, pretrained, tmp_path):
    a = _finetune(dirs, pretrained, tmp_path / "l0", method="mec", reg="source", lam=0.0)
    b = _finetune(dirs, pretrained, tmp_path / "mec", method="mec", reg="none")
    assert "source_head" not in a.state.params
    for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow  # Two or more training runs; CI runs it with -m slow.
def test_rct_anchor_is_the_pretrained_backbone_and_frozen(dirs, pretrained, tmp_path):
    _, pre = pretrained
    result = _finetune(dirs, pretrained, tmp_path, method="mec", reg="rct", rct_weight=0.5)
    anchor = result.state.extra["anchor"]
    for x, y in zip(jax.tree.leaves(anchor), jax.tree.leaves(pre.state.params["backbone"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    moved = [
        not np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(anchor), jax.tree.leaves(result.state.params["backbone"]))
    ]
    assert any(moved)


def test_rct_penalty_and_gradient_against_numpy():
    backbone = state_lib.build_backbone(TINY_MODEL)
    params, bs = state_lib.init_backbone(backbone, jax.random.key(0))
    rng = np.random.default_rng(0)
    anchor = jax.tree.map(lambda p: p + 0.01 * rng.normal(size=p.shape).astype(np.float32), params)
    head = {"weight": jnp.asarray(rng.normal(size=(3, 16)), jnp.float32)}
    batch = {
        "image": jnp.asarray(rng.integers(0, 256, (4, 16, 16, 3)), jnp.uint8),
        "label": jnp.asarray([0, 1, 2, 0]),
    }
    margin = MarginConfig(s=16.0, m1=1.0, m2=0.0, m3=0.2)
    mu = 0.3
    from hfrjax.recipes.rethink.task import RethinkConfig, RethinkTask
    from hfrjax.tasks.classification import classification_step

    cfg = RethinkConfig.from_config({"rct": {"weight": mu}})

    def terms(p, ms, ex, b, r, m):
        return RethinkTask().loss_terms(cfg, {"backbone": backbone}, p, ms, ex, b, r, m)

    plain = classification_step(backbone, margin).loss_fn
    rct = classification_step(backbone, margin, more_terms=terms).loss_fn
    p_plain = {"backbone": params, "head": head}
    key = jax.random.key(1)
    ms, args = {"batch_stats": bs}, ({"train": batch}, key)

    def f0(p):
        return plain(p, ms, {}, *args)

    def f1(p):
        return rct(p, ms, {"anchor": anchor}, *args)

    (l0, _), g0 = jax.jit(jax.value_and_grad(f0, has_aux=True))(p_plain)
    (l1, (m1, _, _)), g1 = jax.jit(jax.value_and_grad(f1, has_aux=True))(p_plain)
    diffs = jax.tree.map(
        lambda p, a: np.asarray(p, np.float64) - np.asarray(a, np.float64), params, anchor
    )
    penalty = sum(float(np.sum(d * d)) for d in jax.tree.leaves(diffs))
    assert float(m1["loss/anchor_l2"]) == pytest.approx(penalty, rel=1e-5)
    assert float(l1) == pytest.approx(float(l0) + mu * penalty, rel=1e-5)
    # d/dθ μ||θ − θ0||² = 2μ(θ − θ0); the anchor gets no gradient.
    for ga, gb, d in zip(
        jax.tree.leaves(g1["backbone"]), jax.tree.leaves(g0["backbone"]), jax.tree.leaves(diffs)
    ):
        np.testing.assert_allclose(np.asarray(ga) - np.asarray(gb), 2 * mu * d, atol=2e-5)


def test_tiny_pretrain_mec_finetune_evaluate(dirs, pretrained, tmp_path):
    """The recipe end to end: '+target' pretraining -> MEC fine-tuning -> fold-1 evaluation."""
    source, target = dirs
    c = rethink.finetune_config(
        scale="synthetic",
        method="mec",
        init_from=str(pretrained[0]),
        target_dir=str(target),
        fold=2,
    )
    result = trainer.train(_shrink(c), str(tmp_path))
    ev = result.eval_results
    assert [f["fold"] for f in ev["folds"]] == [2]
    assert ev["folds"][0]["num_probes"] == 16 and 0.0 <= ev["mean"]["Rank-1"] <= 1.0
    assert (tmp_path / "eval.json").exists()


def test_recipe_argument_errors():
    with pytest.raises(ValueError, match="variant"):
        rethink.pretrain_config(variant="blue")
    with pytest.raises(ValueError, match="backbone"):
        rethink.finetune_config(backbone="vgg", scale="synthetic")
    with pytest.raises(ValueError, match="method"):
        rethink.finetune_config(method="frozen")
    with pytest.raises(ValueError, match="key=value"):
        rethink.parse_arg("variant=red,ir18")
    assert rethink.parse_arg("variant=red, backbone=ir18") == {
        "variant": "red",
        "backbone": "ir18",
    }
