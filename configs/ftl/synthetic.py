"""FTL on the synthetic long-tailed VIS sets (preset ``longtail``), one method, one row.

  python -c "from hfrjax.data import synthetic; synthetic.generate('DATA', preset='longtail', image_size=32)"
  python -m hfrjax.recipes.ftl.run train \
      --config=configs/ftl/synthetic.py:mode=ftl,variant=10K30K,data=DATA --workdir=W/ftl_10K30K

Arguments (comma-separated key=value): mode (softmax | ml2 | ftl: Table 1's methods),
variant (10K0K | 10K10K | 10K30K | 10K50K | 60K0K: the training set), data (the directory
``synthetic.generate(..., preset="longtail")`` wrote; without it the sweep,
configs/ftl/table1_synthetic.py, sets the paths), scale (synthetic | quick | quick_epochs | tiny).
Synthetic scale: 32x32 crops, 64-d g and f, Q of 32 columns, 1000 steps of Eq. 4 pretraining at
1e-3 then 600 steps (stages of 100 for FTL) at 1e-4, batch 64, UR = at most 20 images (the
preset's UR classes have 5, regular ones 30). Quick: batch 32, 600 + 300 steps, stages of 75.
The paper's numbers: configs/ftl/ms1m.py.
"""

from hfrjax.recipes.ftl import configs


def get_config(arg: str | None = None):
    a = configs.parse_arg(arg)
    mode, scale = a.pop("mode", "ftl"), a.pop("scale", "synthetic")
    variant, data = a.pop("variant", "10K30K"), a.pop("data", "")
    if a:
        raise ValueError(f"unknown argument(s) {sorted(a)} for configs/ftl/synthetic.py")
    if variant not in configs.ROWS:
        raise ValueError(f"variant must be one of {configs.ROWS}, got {variant!r}")
    root = f"{data}/longtail" if data else ""
    return configs.ftl_config(
        mode,
        scale,
        data_dir=f"{root}/train_{variant}" if root else "",
        holdout_dir=f"{root}/holdout" if root else "",
        gallery_dir=f"{root}/train_10K10K" if root else "",
    )
