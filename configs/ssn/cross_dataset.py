"""SSN across datasets: the CASIA NIR-VIS 2.0 fold-1 model on BUAA-VisNir and Oulu-CASIA,
without fine-tuning (SSN §IV-D, Tables III and VI).

  # Train on CASIA fold 1; the loop's final evaluation is on BUAA (its fold 1 = its test split):
  python launch/train.py --config=configs/ssn/cross_dataset.py:init_from=W/lightcnn29v2 \
      --workdir=W/ssn/casia_fold1_cross
  # Both targets, complete and occluded probes, from the same workdir:
  python launch/evaluate.py --workdir=W/ssn/casia_fold1_cross \
      --data_dir=/data/hfrjax/buaa_visnir --folds=1 --occlusions=none,maskTop,maskBottom
  python launch/evaluate.py --workdir=W/ssn/casia_fold1_cross \
      --data_dir=/data/hfrjax/oulu_casia_nir_vis --folds=1 --occlusions=none,maskTop,maskBottom
(A workdir of configs/ssn/casia.py:fold=1 evaluates the same way.)

Arguments: as configs/ssn/casia.py, plus eval = buaa (default) | oulu for the loop's
evaluation; fold is CASIA's training fold (default 1, the paper's).

The paper's numbers (%):
  Table III (complete): BUAA Rank-1 99.9, VR@1% 99.9, VR@0.1% 99.5; Oulu 100.0, 99.7, 98.1.
  Table VI, maskBottom (AUC, TPR@1%, TPR@0.1%, Rank-1): BUAA 99.3, 92.1, 84.0, 93.6;
    Oulu 98.5, 74.7, 45.5, 92.9 (LightCNN: BUAA 97.9, 80.3, 59.1, 79.4; Oulu 96.4, 60.0,
    30.4, 84.6).
  Table VI, maskTop: BUAA 99.8, 96.5, 89.7, 97.3; Oulu 98.8, 83.8, 68.0, 97.7.
"""

from hfrjax.recipes.ssn import configs as ssn


def get_config(arg: str | None = None):
    return ssn.real_config("casia", arg, default_eval="buaa")
