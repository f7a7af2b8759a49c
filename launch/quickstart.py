"""The main job on the embedded default data, end to end, in a few minutes on a laptop CPU.

  python launch/quickstart.py --workdir /tmp/hfrjax_quickstart

1. generates the synthetic NIR-VIS face sets into WORKDIR/data (if absent), 64x64 crops;
2. pretrains a small IResNet on the VIS-only source set (configs/quickstart.py:pretrain);
3. evaluates it zero-shot, NIR probes -> VIS gallery, on the 10 folds of the target set;
4. fine-tunes it on each fold's training split (MEC: frozen class-mean classifier) and
   evaluates each fold again;
5. exports the fold-1 fine-tuned backbone to WORKDIR/export (load it with
   ``hfrjax.load_embedder``) and evaluates it on fold 1 with complete, "maskTop" (eye band)
   and "maskBottom" (lower face) NIR probes;
6. prints a table (TAR@FAR = 1e-3, 1e-2, Rank-1: mean +- std over folds, zero-shot vs
   fine-tuned; then the partial-face rows), writes WORKDIR/results.json and results.md, and
   reports with plots (eval.md, roc.png, cmc.png, scores.png) to WORKDIR/report and
   WORKDIR/report_partial.

Every stage keeps its state in WORKDIR: re-running resumes where it stopped and skips what is
done. Expected result and wall time: README, "Quickstart".
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "where data, checkpoints and results go")
_FOLDS = flags.DEFINE_integer("folds", 10, "fine-tune and evaluate folds 1..N")
_PRESET = flags.DEFINE_string("preset", "quickstart", "synthetic data preset")
# The model trains at 32x32: rendering the crops at 64x64 (2x, then a bilinear resize on
# decode) instead of the field's 112x112 halves the data stage; results are within the folds'
# spread of a 112x112 run (README, "Quickstart").
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "crop size the synthetic sets are rendered at")
_PRETRAIN_EPOCHS = flags.DEFINE_integer("pretrain_epochs", None, "override (tests use 1)")
_FINETUNE_EPOCHS = flags.DEFINE_integer("finetune_epochs", None, "override (tests use 1)")
_SET_PRE = flags.DEFINE_list("set_pretrain", [], "config overrides, e.g. input.batch_size=16")
_SET_FT = flags.DEFINE_list("set_finetune", [], "config overrides, e.g. schedule.lr=0.02")
flags.mark_flag_as_required("workdir")

METRICS = ("TAR@FAR=1e-3", "TAR@FAR=1e-2", "Rank-1")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _load_config(stage: str):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from configs import quickstart as qs

    return qs.get_config(stage)


def _apply_overrides(config, items: list[str]):
    """``dotted.key=value`` strings (values parsed as Python literals) onto ``config``."""
    import ast

    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise app.UsageError(f"override {item!r} is not of the form key=value")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        config.update_from_flattened_dict({key: parsed})
    return config


def _write_json(path: Path, obj) -> None:
    from hfrjax.fileio import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def main(argv):
    from hfrjax.train.cli_logging import quiet_unless_asked

    quiet_unless_asked()
    del argv
    import jax

    from hfrjax.data import occlusion as occlusion_lib
    from hfrjax.data import synthetic
    from hfrjax.eval import metrics, protocols, report
    from hfrjax.train import export, trainer

    t0 = time.perf_counter()
    work = Path(_WORKDIR.value).absolute()
    work.mkdir(parents=True, exist_ok=True)
    # Fine-tuning folds share shapes: the persistent cache compiles their functions once (all
    # of them: the small ones too add up over ten folds).
    jax.config.update("jax_compilation_cache_dir", str(work / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    stages: dict[str, float] = {}

    def lap(name: str) -> None:  # Where the wall time goes (timing.json), per stage.
        stages[name] = round(time.perf_counter() - t0 - sum(stages.values()), 2)

    lap("startup")
    data = work / "data"
    if not (data / "synth.json").exists():
        _say(f"[1/5] generating synthetic NIR-VIS faces ({_PRESET.value}) into {data}")
        synthetic.generate(data, preset=_PRESET.value, seed=0, image_size=_IMAGE_SIZE.value)
    else:
        _say(f"[1/5] synthetic data present in {data}")
    lap("data")
    target = str(data / "target")
    folds = list(range(1, _FOLDS.value + 1))

    _say("[2/5] pretraining on the VIS source set")
    pre = _load_config("pretrain")
    pre.input.data_dir = str(data / "source")
    if _PRETRAIN_EPOCHS.value:
        pre.num_epochs = _PRETRAIN_EPOCHS.value
    _apply_overrides(pre, _SET_PRE.value)
    pre_result = trainer.train(pre, str(work / "pretrain"))
    lap("pretrain")

    zero_path = work / "zero_shot.json"
    if zero_path.exists():
        zero = json.loads(zero_path.read_text())
        _say(f"[3/5] zero-shot evaluation present in {zero_path}")
    else:
        _say(f"[3/5] zero-shot NIR->VIS evaluation on folds {folds[0]}..{folds[-1]}")
        embed_fn = pre_result.embedder
        zero = protocols.evaluate_protocol(
            embed_fn,
            target,
            folds=folds,
            batch_size=128,
            fars=(1e-3, 1e-2),
            image_size=tuple(pre.input.image_size),
        )
        _write_json(zero_path, zero)
    lap("zero_shot_eval")

    _say("[4/5] fine-tuning on each fold's training split (MEC, frozen classifier)")
    per_fold = []
    for k in folds:
        ft = _load_config("finetune")
        ft.input.data_dir = target
        ft.input.fold = k
        ft.init_from = str(work / "pretrain")
        ft.eval.data_dir = target
        ft.eval.folds = (k,)
        if _FINETUNE_EPOCHS.value:
            ft.num_epochs = _FINETUNE_EPOCHS.value
        _apply_overrides(ft, _SET_FT.value)
        fold_dir = work / "finetune" / f"fold_{k}"
        if not (fold_dir / "eval.json").exists():
            _say(f"  fold {k}")
            trainer.train(ft, str(fold_dir))
        per_fold += json.loads((fold_dir / "eval.json").read_text())["folds"]
    mean, std = metrics.aggregate([f["metrics"] for f in per_fold])
    curves = protocols.mean_curves([f["curves"] for f in per_fold])
    lap("finetune_folds")
    tuned = dict(zero, folds=per_fold, mean=mean, std=std, curves=curves)

    _say("[5/5] exporting the fold-1 fine-tuned backbone; partial-face probes; reports")
    export.export_from_workdir(str(work / "finetune" / "fold_1"), str(work / "export"))
    runs = {"zero-shot (VIS pretraining)": zero, "fine-tuned (MEC, frozen classifier)": tuned}
    report.write_report(runs, work / "report", title="Quickstart: NIR->VIS, synthetic target set")
    embedder = export.load_embedder(work / "export")
    partial = {}
    for occlusion in ("none", *occlusion_lib.OCCLUSIONS):
        r = protocols.evaluate_protocol(
            embedder,
            target,
            folds=[1],
            batch_size=128,
            fars=(1e-3, 1e-2),
            image_size=(embedder.input_size, embedder.input_size),
            occlusion=occlusion,
        )
        partial[f"fold-1 model, probes {'complete' if occlusion == 'none' else occlusion}"] = r
    report.write_report(
        partial, work / "report_partial", title="Quickstart: partial-face NIR probes, fold 1"
    )
    lap("export_partial_reports")
    table = report.paper_table(runs, metric_names=list(METRICS))
    elapsed = time.perf_counter() - t0
    _write_json(
        work / "results.json",
        {
            "zero_shot": zero,
            "fine_tuned": tuned,
            "partial_fold1": partial,
        },
    )
    _write_json(work / "timing.json", {"wall_seconds_this_run": elapsed, "stages_seconds": stages})
    header = (
        f"NIR->VIS on synthetic target set, {len(folds)} folds, mean ± std (%); "
        f"this run took {elapsed:.0f} s\n\n"
    )
    partial_table = report.paper_table(partial, metric_names=list(METRICS))
    text = header + table + "\nPartial-face probes (gallery complete):\n\n" + partial_table
    (work / "results.md").write_text(text, encoding="utf-8")
    _say("\n" + text)
    _say(
        f"results: {work / 'results.json'}; reports with plots: {work / 'report'}, "
        f"{work / 'report_partial'}; exported embedder: {work / 'export'}"
    )


if __name__ == "__main__":
    app.run(main)
