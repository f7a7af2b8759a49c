"""CSAN at test size (16x16, widths 4/8/8, dim 8, 2 epochs): the mechanics, in seconds.

  python -m hfrjax.recipes.csan.run train --config=configs/csan/tiny.py \
      --workdir=/tmp/csan_tiny --set input.data_dir=DIR --set eval.data_dir=DIR

Arguments: loss (ptl | ce), lam, data, seed.
"""

from hfrjax.recipes.csan.configs import config_from_arg


def get_config(arg: str | None = None):
    return config_from_arg("tiny", arg, "configs/csan/tiny.py")
