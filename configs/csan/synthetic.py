"""CSAN at the synthetic scale: 64x64 faces of the library's synthetic NIR-VIS ("nirvis",
the quickstart target set, fold 1: 50 training identities) or thermal-visible ("thermal", 60
training identities, ARL-VTF-style probe sets) data; full-width network, 20 epochs with early
stopping on 10 % held-out training identities.

  python -m hfrjax.recipes.csan.run synth --out=/tmp/hfrjax_csan/data
  python -m hfrjax.recipes.csan.run train --config=configs/csan/synthetic.py:set=thermal \
      --workdir=/tmp/csan/synth_thermal \
      --set input.data_dir=/tmp/hfrjax_csan/data/thermal/thermal_vis \
      --set eval.data_dir=/tmp/hfrjax_csan/data/thermal/thermal_vis

Arguments: set (nirvis | thermal), loss (ptl | ce), lam (default 1e-3), data, seed. The
tables of the paper in this layout: configs/csan/tables_synthetic.py.
"""

from hfrjax.recipes.csan.configs import config_from_arg


def get_config(arg: str | None = None):
    return config_from_arg("synthetic", arg, "configs/csan/synthetic.py")
