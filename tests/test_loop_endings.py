"""How training ends, in the one loop: final hooks, a hook stopping training, early stopping on
an evaluated metric (with the best checkpoint put back), task evaluators merged into
eval.json, the restore hook, the evaluation options passed to the protocol, and RMSProp.

The task is tests/toy_task.py's, extended by config switches (``toy_end``)."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import toy_task

from hfrjax.config import ConfigError
from hfrjax.tasks import default_config, register_task
from hfrjax.train import optim, trainer
from hfrjax.train import task as T
from hfrjax.train.checkpoint import Checkpointer
from hfrjax.train.evaluation import merge_results

CALLS: dict[str, list] = {}


@dataclasses.dataclass(frozen=True)
class ToyEndConfig(toy_task.ToyConfig):
    stop_at: int = -1  # A hook calls ctx.stop at this boundary.
    final_hook: bool = False  # Adds 100 to extra["epochs"] at the end.
    curve: tuple[float, ...] = ()  # The evaluator's "score" at the k-th evaluation.


@register_task("toy_end")
class ToyEndTask:
    config_class = ToyEndConfig

    def setup(self, cfg, ctx):
        base = toy_task.ToyTask().setup(
            toy_task.ToyConfig(cfg.steps, cfg.k, cfg.steps_per_epoch), ctx
        )
        hooks = list(base.hooks)
        if cfg.stop_at >= 0:
            hooks.append(T.Hook("stop", T.at(cfg.stop_at), lambda h, s: (h.stop("enough"), s)[1]))
        if cfg.final_hook:

            def final(h, s):
                CALLS.setdefault("final", []).append(int(s.step))
                return s.replace(extra={**s.extra, "epochs": s.extra["epochs"] + 100})

            hooks.append(T.Hook("final", None, final, final=True))
        evaluators = {}
        if cfg.curve:

            def score(h, s, step):
                k = step // cfg.steps_per_epoch - 1
                return {
                    "score": cfg.curve[min(k, len(cfg.curve) - 1)],
                    "w0": float(s.params["w"]["w"][0]),
                }

            evaluators["toy"] = score
        return dataclasses.replace(
            base,
            hooks=hooks,
            evaluators=evaluators,
            on_restore=lambda s: CALLS.setdefault("restore", []).append(int(s.step)),
        )


def config(**over):
    c = default_config(
        "toy_end", log_every=1, checkpoint_every=4, keep_checkpoints=3, tensorboard=False
    )
    c.update_from_flattened_dict(over)
    return c


def _done(workdir):
    return json.loads((workdir / "complete.json").read_text())


def test_final_hook_runs_once_and_is_saved(tmp_path):
    CALLS.clear()
    r = trainer.train(config(steps=6, final_hook=True), str(tmp_path))
    assert CALLS["final"] == [6] and int(r.state.extra["epochs"]) == 101
    _, raw, meta = Checkpointer(tmp_path / "checkpoints").restore_untyped()
    assert int(raw["extra"]["epochs"]) == 101 and meta["finished"]["final_hooks"] is True
    r2 = trainer.train(config(steps=6, final_hook=True), str(tmp_path))  # Complete: nothing runs.
    assert CALLS["final"] == [6] and CALLS["restore"] == [6] and r2.resumed_from == 6


def test_sigterm_at_the_last_step_saves_after_the_final_hook(tmp_path, monkeypatch):
    CALLS.clear()
    monkeypatch.setenv("TOY_SIGTERM_AT", "5")  # SIGTERM during step 6, the last.
    with pytest.raises(SystemExit) as e:
        trainer.train(config(steps=6, final_hook=True), str(tmp_path))
    monkeypatch.delenv("TOY_SIGTERM_AT")
    assert e.value.code == 143 and CALLS["final"] == [6]
    r = trainer.train(config(steps=6, final_hook=True), str(tmp_path))  # Only evaluates.
    assert CALLS["final"] == [6] and int(r.state.extra["epochs"]) == 101
    assert _done(tmp_path)["step"] == 6


def test_a_hook_stops_training_and_a_rerun_does_not_train_on(tmp_path):
    CALLS.clear()
    r = trainer.train(config(steps=20, stop_at=8, final_hook=True), str(tmp_path))
    assert int(r.state.step) == 8 and CALLS["final"] == [8]
    assert _done(tmp_path)["stopped"] == "enough"
    # The checkpoint at 8 was saved in the loop before the stop; it is rewritten after the
    # final hook, so the stored state holds the hook's result.
    _, raw, meta = Checkpointer(tmp_path / "checkpoints").restore_untyped()
    assert int(raw["step"]) == 8 and int(raw["extra"]["epochs"]) == 101
    assert meta["finished"]["stopped"] == "enough"
    (tmp_path / "complete.json").unlink()  # Even without the marker, the run is finished:
    r2 = trainer.train(config(steps=20, stop_at=8, final_hook=True), str(tmp_path))
    assert int(r2.state.step) == 8 and CALLS["final"] == [8]


CURVE = (0.1, 0.5, 0.4, 0.3, 0.2, 0.9)  # Best at the 2nd evaluation (step 4), then worse.
PATIENT = {
    "steps": 40,
    "steps_per_epoch": 2,
    "curve": CURVE,
    "eval.every_epochs": 1.0,
    "eval.best_metric": "toy/score",
    "eval.patience": 3,
    "eval.restore_best": True,
}


def test_patience_stops_and_restore_best_puts_back_the_best_parameters(tmp_path):
    over = PATIENT
    r = trainer.train(config(**over), str(tmp_path / "run"))
    done = _done(tmp_path / "run")
    # Evaluations at steps 2, 4, 6, 8, 10: best 0.5 at 4, three worse ones -> stop at 10.
    assert int(r.state.step) == 10 and "early stop at step 10" in done["stopped"]
    ref = trainer.train(config(steps=4, steps_per_epoch=2), str(tmp_path / "ref"))
    np.testing.assert_array_equal(r.state.params["w"]["w"], ref.state.params["w"]["w"])
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert ev["mean"]["toy/w0"] == pytest.approx(float(ref.state.params["w"]["w"][0]))


def test_early_stopping_resumes_exactly(tmp_path, monkeypatch):
    over = PATIENT
    ref = trainer.train(config(**over), str(tmp_path / "ref"))
    # Pre-empted after step 8 and its evaluation (the 2nd without improvement): the resumed
    # run must count on from 2, else it would stop later than step 10.
    monkeypatch.setenv("TOY_SIGTERM_AT", "7")
    with pytest.raises(SystemExit):
        trainer.train(config(**over), str(tmp_path / "cut"))
    monkeypatch.delenv("TOY_SIGTERM_AT")
    r = trainer.train(config(**over), str(tmp_path / "cut"))
    assert int(r.state.step) == int(ref.state.step) == 10
    np.testing.assert_array_equal(r.state.params["w"]["w"], ref.state.params["w"]["w"])


def test_patience_needs_a_metric_and_periodic_evaluations():
    with pytest.raises(ConfigError, match="best_metric"):
        trainer.train(config(**{"eval.patience": 2}), "/tmp/unused-hfrjax")
    with pytest.raises(ConfigError, match="every_epochs"):
        trainer.train(config(**{"eval.patience": 2, "eval.best_metric": "x"}), "/tmp/unused-hfrjax")
    with pytest.raises(ConfigError, match="occlusion"):
        trainer.train(config(**{"eval.occlusion": "maskLeft"}), "/tmp/unused-hfrjax")


def test_merge_results_by_fold_and_fold_less():
    protocol = {
        "metrics": ["rank1"],
        "folds": [{"fold": 1, "metrics": {"rank1": 0.2}}, {"fold": 2, "metrics": {"rank1": 0.4}}],
    }
    reid = {"folds": [{"fold": 2, "metrics": {"mAP": 0.5}}, {"fold": 1, "metrics": {"mAP": 0.3}}]}
    m = merge_results(protocol, {"reid": reid, "holdout": {"acc": 0.9}})
    assert m["folds"][0]["metrics"] == {"rank1": 0.2, "reid/mAP": 0.3}
    assert m["mean"]["reid/mAP"] == pytest.approx(0.4) and m["std"]["reid/mAP"] == pytest.approx(
        0.1
    )
    assert m["mean"]["holdout/acc"] == 0.9 and "holdout/acc" not in m["folds"][0]["metrics"]
    alone = merge_results(None, {"holdout": {"acc": 0.9, "note": "x"}})
    assert alone["folds"] == [{"fold": None, "metrics": {"holdout/acc": 0.9}}]
    assert merge_results(protocol, {}) is protocol
    reid_only = merge_results(None, {"reid": dict(reid, direction="ir->vis")})
    assert reid_only["direction"] == "ir->vis"  # Sweep tables name the search direction.


def test_eval_options_reach_the_protocol(tmp_path):
    from hfrjax.data import synthetic
    from hfrjax.eval.embedding import MeshEmbedder
    from hfrjax.eval.protocols import evaluate_protocol

    synthetic.generate(tmp_path / "data", "tiny", seed=3, workers=1)
    target = str(tmp_path / "data" / "target")
    over = {
        "steps": 2,
        "eval.data_dir": target,
        "eval.folds": (1,),
        "eval.occlusion": "maskBottom",
        "eval.direction": "vis->nir",
        "eval.ranks": (1, 5),
    }
    r = trainer.train(config(**over), str(tmp_path / "run"))
    got = json.loads((tmp_path / "run" / "eval.json").read_text())
    emb = MeshEmbedder(r.setup.embed, r.state.params, r.state.model_state, r.mesh)
    want = evaluate_protocol(
        emb,
        target,
        folds=[1],
        occlusion="maskBottom",
        direction="vis->nir",
        ranks=(1, 5),
        batch_size=128,
    )
    assert got["direction"] == "vis->nir" and "Rank-5" in got["mean"]
    for k, v in want["mean"].items():
        assert got["mean"][k] == pytest.approx(v), k
    plain = evaluate_protocol(
        emb, target, folds=[1], direction="vis->nir", ranks=(1, 5), batch_size=128
    )
    assert plain["mean"] != want["mean"]  # The occlusion did something.


def test_rmsprop_matches_pytorch_formula_in_float64():
    """torch.optim.RMSprop: v = a·v + (1-a)·g², p -= lr·g / (sqrt(v) + eps); coupled decay."""
    cfg = {"name": "rmsprop", "weight_decay": 1e-2, "eps": 1e-3, "rms_decay": 0.9}
    tx = optim.make_optimizer(cfg, optax.constant_schedule(0.05))
    rng = np.random.default_rng(0)
    p = rng.normal(size=5)
    grads = rng.normal(size=(4, 5))
    params, state = jnp.asarray(p, jnp.float32), None
    state = tx.init(params)
    v, ref = np.zeros(5), p.copy()
    for g in grads:
        upd, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
        params = optax.apply_updates(params, upd)
        gg = g + 1e-2 * ref
        v = 0.9 * v + 0.1 * gg**2
        ref = ref - 0.05 * gg / (np.sqrt(v) + 1e-3)
    np.testing.assert_allclose(np.asarray(params), ref, rtol=1e-5, atol=1e-6)
    torch = pytest.importorskip("torch")
    t = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.RMSprop([t], lr=0.05, alpha=0.9, eps=1e-3, weight_decay=1e-2)
    for g in grads:
        t.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    np.testing.assert_allclose(t.detach().numpy(), ref, rtol=1e-12)


def test_a_finished_run_given_more_steps_trains_on(tmp_path):
    """Extending a finished run (a larger total) trains on; a stopped one stays stopped."""
    CALLS.clear()
    trainer.train(config(steps=6, final_hook=True), str(tmp_path / "a"))
    r = trainer.train(config(steps=10, final_hook=True), str(tmp_path / "a"))
    assert int(r.state.step) == 10 and CALLS["final"] == [6, 10]
    trainer.train(config(steps=20, stop_at=4), str(tmp_path / "b"))
    r = trainer.train(config(steps=30, stop_at=4), str(tmp_path / "b"))
    assert int(r.state.step) == 4
