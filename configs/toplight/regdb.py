"""TOPLight Steps 2-3 on RegDB (one of the 10 trials): soup of a TOP run, VI training, FDR.

  for k in 1 2 3 4 5 6 7 8 9 10; do
    python launch/train.py --config=configs/toplight/regdb.py:trial=$k \
        --config.init_from=W/toplight/top --workdir=W/toplight/regdb_$k
  done

Training: trial k's 206 training identities (10 visible + 10 thermal images each), otherwise
as SYSU-MM01 (§4.1). Evaluation (re-id, `hfrjax.eval.reid`, RegDB rules: image-level CMC):
visible->thermal and thermal->visible on trial k's 206 test identities; the paper reports
the mean over the 10 trials (average the workdirs' eval.json means of
``reid[visible->thermal]/...`` and ``reid[thermal->visible]/...``).

Arguments: trial (1..10, default 1), fdr (full | h | v | sa | none), init_from,
data_root ({data_root}/regdb), seed.

Paper numbers (MobileNetV3-L, %):
  Table 3 visible->infrared  r=1 / r=10 / mAP / mINP
    No. 1 ImageNet only    71.26 / 89.94 / 65.66 / 48.50
    No. 5 TOP, no FDR      82.75 / 94.13 / 76.21 / 61.84
    No. 9 TOP + FDR        84.15 / 94.98 / 79.26 / 63.86
  Table 7 (full TOPLight): visible->infrared r=1 84.15, r=10 94.98, r=20 96.58, mAP 79.26,
    mINP 63.86; infrared->visible r=1 80.94, r=10 92.85, r=20 96.37, mAP 76.10, mINP 59.33.
"""

from hfrjax.recipes.toplight import configs as tl


def get_config(arg: str | None = None):
    a = tl.parse_arg(arg)
    root = a.pop("data_root", tl.DEFAULT_DATA_ROOT)
    trial = int(a.pop("trial", 1))
    if not 1 <= trial <= 10:
        raise ValueError(f"trial must be in 1..10, got {trial}")
    c = tl.vi_config(
        scale="paper",
        data_dir=tl.data_dir(root, "regdb"),
        fold=trial,
        init_from=a.pop("init_from", ""),
        fdr=a.pop("fdr", "full"),
        eval_folds=(trial,),
        reid_directions=("visible->thermal", "thermal->visible"),
        seed=int(a.pop("seed", 0)),
    )
    if a:
        raise ValueError(f"unknown argument(s) {sorted(a)} for configs/toplight/regdb.py")
    return c
