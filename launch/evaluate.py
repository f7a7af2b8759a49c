"""Evaluates a model on a dataset's k-fold HFR protocol (NIR probes -> VIS gallery by default).

  python launch/evaluate.py --model=/tmp/hfrjax_quickstart/export \
      --data_dir=/tmp/hfrjax_quickstart/data/target [--folds=1,2] [--direction=nir->vis] \
      [--flip] [--out=DIR]

``--model`` is an exported embedder (launch/export.py) or a training workdir (its latest
checkpoint). Writes ``eval.json`` (per-fold and mean/std metrics) and ``eval.md`` (a table of
TAR@FAR, Rank-1, EER, AUC as mean ± std over folds) to --out (default: the model directory).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from absl import app, flags

_MODEL = flags.DEFINE_string("model", None, "exported embedder or training workdir")
_DATA = flags.DEFINE_string("data_dir", None, "dataset directory with protocols/")
_FOLDS = flags.DEFINE_list("folds", [], "folds to evaluate (default: all)")
_DIRECTION = flags.DEFINE_string("direction", "nir->vis", "probe->gallery modalities")
_FARS = flags.DEFINE_list("fars", ["1e-4", "1e-3", "1e-2"], "FARs for TAR@FAR")
_FLIP = flags.DEFINE_bool("flip", False, "fuse embeddings of the image and its mirror")
_BATCH = flags.DEFINE_integer("batch_size", 128, "embedding batch size")
_OUT = flags.DEFINE_string("out", None, "output directory (default: --model)")
flags.mark_flags_as_required(["model", "data_dir"])


def load_model(path: str):
    """An Embedder from an export directory or from a training workdir's latest checkpoint."""
    from hfrjax.train import export, trainer

    p = Path(path)
    if (p / export.MODEL_JSON).exists():
        return export.load_embedder(p)
    with tempfile.TemporaryDirectory() as tmp:
        return export.load_embedder(trainer.export_from_workdir(str(p), os.path.join(tmp, "e")))


def main(argv):
    from hfrjax.train.cli_logging import quiet_unless_asked

    quiet_unless_asked()
    del argv
    from hfrjax.eval import protocols

    embedder = load_model(_MODEL.value)
    results = protocols.evaluate_protocol(
        embedder,
        _DATA.value,
        folds=[int(f) for f in _FOLDS.value] or None,
        direction=_DIRECTION.value,
        batch_size=_BATCH.value,
        fars=tuple(float(f) for f in _FARS.value),
        image_size=(embedder.input_size, embedder.input_size),
        channels=embedder.channels,
        flip_fuse=_FLIP.value,
    )
    out = Path(_OUT.value or _MODEL.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    table = protocols.format_table(results)
    (out / "eval.md").write_text(table, encoding="utf-8")
    print(table)
    print(f"wrote {out / 'eval.json'} and {out / 'eval.md'}")


if __name__ == "__main__":
    app.run(main)
