"""Evaluates a model on a dataset's k-fold HFR protocol and writes a report with plots.

  python launch/evaluate.py --workdir=/tmp/hfrjax_quickstart/finetune/fold_1 \
      [--data_dir=/tmp/hfrjax_quickstart/data/target] [--folds=1] \
      [--occlusions=none,maskTop,maskBottom] [--direction=nir->vis] [--flip] [--out=DIR]

``--workdir`` is a training workdir (its latest checkpoint) or an exported embedder
(launch/export.py); ``--model`` is an alias. ``--data_dir`` and ``--folds`` default to the
evaluation set the workdir was trained with (checkpoint / export metadata). Each entry of
``--occlusions`` is one evaluation: "none" (complete probes) or a partial-face probe occlusion
("maskTop": eye band, "maskBottom": lower face; the gallery stays complete).

Writes to --out (default: the workdir): ``eval.json`` (per-fold and mean ± std metrics and
curves, one entry per occlusion), ``eval.md`` (the papers' table layout) and ``roc.png``
(log-FAR axis), ``cmc.png``, ``scores.png`` (genuine / impostor histograms). Overlay several
runs with ``launch/compare.py``.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir or exported embedder")
_MODEL = flags.DEFINE_string("model", None, "alias of --workdir")
_DATA = flags.DEFINE_string("data_dir", None, "dataset directory with protocols/")
_FOLDS = flags.DEFINE_list("folds", [], "folds to evaluate (default: as trained, else all)")
_DIRECTION = flags.DEFINE_string("direction", "nir->vis", "probe->gallery modalities")
_OCCLUSIONS = flags.DEFINE_list("occlusions", ["none"], "none, maskTop, maskBottom (probes)")
_FARS = flags.DEFINE_list("fars", ["1e-4", "1e-3", "1e-2"], "FARs for TAR@FAR")
_RANKS = flags.DEFINE_list("ranks", ["1"], "ranks for the identification rate")
_GALLERY = flags.DEFINE_enum("gallery", "images", ["images", "template"], "gallery mode")
_FLIP = flags.DEFINE_bool("flip", False, "fuse embeddings of the image and its mirror")
_PAIRS = flags.DEFINE_enum(
    "pair_scores", "exact", ["exact", "histogram"], "histogram: bounded memory for huge sets"
)
_BATCH = flags.DEFINE_integer("batch_size", 128, "embedding batch size")
_OUT = flags.DEFINE_string("out", None, "output directory (default: the workdir)")


def load_model(path: str):
    """An Embedder from an export directory or from a training workdir's latest checkpoint."""
    from hfrjax.train import export

    p = Path(path)
    if not ((p / export.MODEL_JSON).exists() or (p / "checkpoints").is_dir()):
        raise app.UsageError(f"{p} is neither an exported embedder nor a training workdir")
    model, variables = export.load_weights(p)
    return export.Embedder({"model": model}, variables)


def main(argv):
    from hfrjax.train.cli_logging import quiet_unless_asked

    quiet_unless_asked()
    del argv
    from hfrjax.eval import protocols, report

    model_dir = _WORKDIR.value or _MODEL.value
    if not model_dir:
        raise app.UsageError("give --workdir (a training workdir or an exported embedder)")
    embedder = load_model(model_dir)
    trained_eval = embedder.meta.get("eval") or {}
    data_dir = _DATA.value or trained_eval.get("data_dir")
    if not data_dir:
        raise app.UsageError(f"{model_dir} records no evaluation set: give --data_dir")
    folds = [int(f) for f in _FOLDS.value] or trained_eval.get("folds") or None
    runs = {}
    for occlusion in _OCCLUSIONS.value:
        result = protocols.evaluate_protocol(
            embedder,
            data_dir,
            folds=folds,
            direction=_DIRECTION.value,
            batch_size=_BATCH.value,
            fars=tuple(float(f) for f in _FARS.value),
            ranks=tuple(int(r) for r in _RANKS.value),
            image_size=(embedder.input_size, embedder.input_size),
            channels=embedder.channels,
            flip_fuse=_FLIP.value,
            occlusion=occlusion,
            gallery_mode=_GALLERY.value,
            pair_scores=_PAIRS.value,
        )
        runs[report.run_label(result)] = result
    out = Path(_OUT.value or model_dir)
    paths = report.write_report(runs if len(runs) > 1 else next(iter(runs.values())), out)
    print(paths["md"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    app.run(main)
