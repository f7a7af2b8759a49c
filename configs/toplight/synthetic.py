"""TOPLight's three stages at synthetic scale (the stages of configs/toplight/tables_synthetic.py).

  python launch/train.py --config=configs/toplight/synthetic.py:stage=standard \
      --config.input.data_dir=W/data/source --workdir=W/tl/sp
  python launch/train.py --config=configs/toplight/synthetic.py:stage=top,row=9 \
      --config.input.data_dir=W/data/source --config.init_from=W/tl/sp --workdir=W/tl/top
  python launch/train.py --config=configs/toplight/synthetic.py:stage=vi,row=9 \
      --config.input.data_dir=W/data/target --config.init_from=W/tl/top \
      --config.eval.data_dir=W/data/target --config.reid_eval.data_dir=W/data/target \
      --workdir=W/tl/vi

The synthetic VIS source set stands in for both ImageNet-1k (stage "standard") and
ImageNet-mini (stage "top"); the synthetic NIR-VIS set (fold 1: train identities, NIR probes,
VIS gallery) is the VI task, evaluated in face mode (TAR@FAR, Rank-1; ``eval``) and in re-id
mode (Rank-1/10/20, mAP, mINP with every VIS image of the test identities as the gallery;
``reid_eval``). Sizes: `hfrjax.recipes.toplight.configs.SYNTHETIC` (32 x 32, width 0.35).

Arguments: stage (standard | top | vi), row (Table 3 row 1..9: the TOP switches for "top",
the FDR parts for "vi"), seed.
"""

from hfrjax.recipes.toplight import configs as tl


def get_config(arg: str | None = None):
    a = tl.parse_arg(arg)
    stage = a.pop("stage", "vi")
    row = tl.table3_row(int(a.pop("row", 9)))
    seed = int(a.pop("seed", 0))
    if stage == "standard":
        c = tl.standard_config(scale="synthetic", seed=seed)
    elif stage == "top":
        if row["top"] is None:
            raise ValueError("Table 3 row 1 has no TOP stage")
        c = tl.top_config(scale="synthetic", seed=seed, **row["top"])
    elif stage == "vi":
        c = tl.vi_config(
            scale="synthetic", fdr=row["fdr"], face=True, eval_folds=(1,),
            reid_directions=("probe->gallery",), reid_gallery="all", seed=seed,
        )
    else:
        raise ValueError(f"stage must be standard, top or vi, got {stage!r}")
    if a:
        raise ValueError(f"unknown argument(s) {sorted(a)} for configs/toplight/synthetic.py")
    return c
