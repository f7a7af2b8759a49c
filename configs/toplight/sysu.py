"""TOPLight Steps 2-3 on SYSU-MM01: uniform soup of a TOP run, then VI training with FDR.

  python launch/train.py --config=configs/toplight/sysu.py:fdr=full \
      --config.init_from=W/toplight/top --workdir=W/toplight/sysu
  # (the loop then runs the task's re-id evaluators: all-search and indoor-search, 10
  #  trials each, in WORKDIR/eval.json as reid[all-search]/..., reid[indoor-search]/...)

Training (§4.1, Table 2(a)): every image of the 395 train + val identities (the converter's
protocol, fold 1), 6 identities x (6 visible + 6 infrared) per batch, 288 x 144, random
erasing + channel augmentation + flips, AdamW lr 1e-3 wd 1e-2, 5 warm-up epochs, x0.1 at
epochs 20 and 40, 70 epochs; L = L_id + 0.5 L_tri. Evaluation: infrared queries against
single-shot visible galleries (`hfrjax.eval.reid`, SYSU rules: identity-level CMC, cam3
queries ignore cam2), Rank-1/10/20, mAP, mINP.

Arguments: fdr (full | h | v | sa | none: Table 3 rows 9 / 7 / 8 / 6 / 5), init_from (the TOP
workdir; a single-path network gives Table 3 row 1), data_root ({data_root}/sysu_mm01), seed.

Paper numbers (MobileNetV3-L, %):
  Table 3 all-search  r=1 / r=10 / mAP / mINP
    No. 5 TOP, no FDR      62.41 / 94.12 / 59.06 / 45.13
    No. 6 + SA             62.89 / 94.26 / 59.79 / 45.84
    No. 7 + H_s + SA       63.95 / 95.28 / 60.09 / 46.80
    No. 8 + V_s + SA       64.04 / 95.41 / 61.12 / 46.92
    No. 9 + H_s + V_s + SA 66.14 / 96.03 / 63.80 / 49.76
  Table 6 (full TOPLight): all-search  r=1 66.14, r=10 96.03, r=20 97.68, mAP 63.80,
    mINP 49.76; indoor-search r=1 72.41, r=10 97.54, r=20 99.23, mAP 76.11, mINP 71.43.
"""

from hfrjax.recipes.toplight import configs as tl


def get_config(arg: str | None = None):
    a = tl.parse_arg(arg)
    root = a.pop("data_root", tl.DEFAULT_DATA_ROOT)
    data = tl.data_dir(root, "sysu")
    c = tl.vi_config(
        scale="paper",
        data_dir=data,
        fold=1,
        init_from=a.pop("init_from", ""),
        fdr=a.pop("fdr", "full"),
        eval_folds=None,
        reid_modes=("all-search", "indoor-search"),
        reid_directions=("probe->gallery",),
        seed=int(a.pop("seed", 0)),
    )
    if a:
        raise ValueError(f"unknown argument(s) {sorted(a)} for configs/toplight/sysu.py")
    return c
