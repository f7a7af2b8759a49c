"""CSAN on RegDB (visible-thermal person re-id), one trial: 128x64 crops, batch 32, RMSProp
lr 1e-4, λ = 1e-3, early stopping on held-out training identities (CSAN §IV-C).

  python -c 'from hfrjax.data.convert.reid import convert_reid; \
      convert_reid("regdb", "/data/RegDB", "/data/regdb_hfr")'
  python -m hfrjax.recipes.csan.run train --config=configs/csan/regdb.py:trial=1 \
      --workdir=/tmp/csan/regdb_t1 --set input.data_dir=/data/regdb_hfr \
      --set eval.data_dir=/data/regdb_hfr [--set model.backbone_weights=vgg16.pth]

Arguments (comma-separated key=value): trial (1-10: trains on the trial's training
identities, tests its split), loss (ptl | ce), lam (PCS weight; 0 = off), data (dataset
directory), seed. Tests both directions: "probe->gallery" = thermal->visible (the paper's
Table I) and "gallery->probe" = visible->thermal (Table VI); the 10 trials together:
configs/csan/regdb_trials.py. The paper starts from an ImageNet VGG16
(``model.backbone_weights``: a torchvision state_dict file; none ships with the library).

Paper, RegDB infrared->visible (Table I), Rank-1 / Rank-10 / Rank-20 / mAP (%):
  CSAN (cross-entropy on pseudo-labels)  34.56 / 51.40 / 58.60 / 25.35
  CSAN + PTL                              76.84 / 90.38 / 93.39 / 54.76
  CSAN + PTL + PCS                        78.59 / 91.65 / 94.02 / 56.02
"""

from hfrjax.recipes.csan.configs import config_from_arg


def get_config(arg: str | None = None):
    return config_from_arg("regdb", arg, "configs/csan/regdb.py")
