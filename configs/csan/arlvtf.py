"""CSAN on ARL-VTF (thermal-to-visible face verification): 224x224 crops, batch 32, RMSProp
lr 1e-4, λ = 1e-5 (CSAN Alg. 1 / §IV-C); thermal probe sets against the visible galleries.

  python -c 'from hfrjax.data.convert.thermal import convert_arlvtf; \
      convert_arlvtf("/data/arl-vtf", "/data/arlvtf_hfr")'
  python -m hfrjax.recipes.csan.run train --config=configs/csan/arlvtf.py \
      --workdir=/tmp/csan/arlvtf --set input.data_dir=/data/arlvtf_hfr \
      --set eval.data_dir=/data/arlvtf_hfr [--set model.backbone_weights=vgg16.pth]

Arguments: loss (ptl | ce), lam (default 1e-5), data, seed. One test fold per (probe set,
gallery set), named "P_TB0|G_VB0-" etc.; TAR at FAR 1 % and 5 %, EER, AUC. At 224x224 an
embedding has 28·28·128 = 100,352 values, so the memory bank of the clustering phase (one row
per image) is left out (``clustering.bank_epochs = 0``: the initial features are agglomerated
directly); ARL-VTF's 500k frames also call for a subset (``input.keys``) on modest hosts.

Paper (Table II, P_TB0 probes), AUC / EER / TAR@FAR=1% / TAR@FAR=5% (%):
  gallery G_VB0-:  CSAN 97.58 / 7.58 / 83.60 / 93.32;  +PTL 99.55 / 2.00 / 96.78 / 98.43;
                   +PTL+PCS 99.56 / 2.00 / 97.14 / 98.43
  gallery G_VB0+:  CSAN 98.48 / 5.83 / 83.61 / 93.19;  +PTL 99.58 / 1.82 / 97.25 / 98.43;
                   +PTL+PCS 99.59 / 1.80 / 97.55 / 98.43
"""

from hfrjax.recipes.csan.configs import config_from_arg


def get_config(arg: str | None = None):
    return config_from_arg("arlvtf", arg, "configs/csan/arlvtf.py")
