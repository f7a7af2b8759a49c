"""SSN on LAMP-HQ (10 folds of random ~50/50 identity splits, as the dataset's paper).

  python launch/train.py --config=configs/ssn/lamp_hq.py:fold=1,init_from=W/lightcnn29v2 \
      --workdir=W/ssn/lamp_fold1
  python launch/evaluate.py --workdir=W/ssn/lamp_fold1 --occlusions=none,maskTop,maskBottom \
      --fars=1e-3,1e-2 --ranks=1,2,3,4

Arguments: as configs/ssn/casia.py (mode, fold 1..10, partial, init_from, eval_occlusion,
data_root: reads {data_root}/lamp_hq, seed). Settings as configs/ssn/casia.py: the paper trains
and tests on LAMP-HQ "individually following the settings given in" the dataset's paper.

The paper's numbers (%, mean ± std over 10 folds):
  Table I (complete probes): SSN Rank-1 98.6±0.2, VR@FAR=1% 99.1±0.2, VR@FAR=0.1% 97.5±0.3
    (LightCNN 94.6±0.3, 92.5±0.6, 75.6±1.9).
  Table V, maskBottom: AUC 99.7±0.0, EER 2.3±0.2, TPR@FPR=1% 95.6±0.6, TPR@FPR=0.1%
    83.8±1.2, Rank-1..4 91.7±0.9, 95.5±0.6, 96.8±0.5, 97.5±0.3 (LightCNN Rank-1 58.0±1.3).
  Table V, maskTop: AUC 99.7±0.1, EER 1.7±0.2, TPR@1% 97.4±0.5, TPR@0.1% 89.1±1.1,
    Rank-1..4 94.5±0.6, 97.2±0.4, 98.1±0.4, 98.5±0.3 (LightCNN Rank-1 61.7±1.2).
"""

from hfrjax.recipes.ssn import configs as ssn


def get_config(arg: str | None = None):
    return ssn.real_config("lamp_hq", arg)
