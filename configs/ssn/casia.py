"""SSN on CASIA NIR-VIS 2.0 (View 2, 10 folds), the paper's main setting (§IV-A, IV-B).

  # Partial-face model of fold k (AFS: 12 search epochs + 40 training epochs), from a
  # converted LightCNN-29v2 (the paper's starting point):
  python launch/train.py --config=configs/ssn/casia.py:fold=1,init_from=W/lightcnn29v2 \
      --workdir=W/ssn/casia_fold1
  # Complete, maskTop and maskBottom probes (Tables II, IV), and the searched masks:
  python launch/evaluate.py --workdir=W/ssn/casia_fold1 --occlusions=none,maskTop,maskBottom \
      --fars=1e-3,1e-2 --ranks=1,2,3,4,5
  python -m hfrjax.recipes.ssn.masks_plot --workdir=W/ssn/casia_fold1
  # All 10 folds: repeat with fold=1..10 (or configs/ssn/table7_casia.py for the ablation).

Arguments (comma-separated key=value):
  mode            afs (default, "Ours") | si_split_ib | si_split | si | baseline (Table VII)
  fold            1..10 (default 1)
  partial         1 (default): random rectangles on every NIR training image (Tables IV-VII);
                  0: the complete-face model (Table II; the paper trains them separately)
  init_from       a LightCNN-29v2 export or workdir (indicators start at 1, a new classifier)
  eval_occlusion  none (default) | maskTop | maskBottom: sets eval.occlusion
                  (the NIR probes of the loop's evaluation)
  data_root       default /data/hfrjax (reads casia_nir_vis_2.0, converted with its View 2 lists)
  eval            casia (default) | lamp_hq | oulu | buaa; seed (default 0)

Settings (SSN §IV-B): 128x128 grey crops, batch 128; masks Adam lr 1e-3, network and critics
SGD lr 1e-4 (momentum 0.9, weight decay 5e-4: not stated in the paper); λ_ib = 0.001, β = 1;
S_T split 50/50 for the search (identity-preserving, written to W/afs_split/).

The paper's numbers (%, mean ± std over the 10 folds):
  Table II (complete probes): SSN Rank-1 99.9±0.1, VR@FAR=1% 100.0±0.0, VR@FAR=0.1%
    99.8±0.0 (LightCNN: 96.7±0.2, 98.5±0.6, 94.8±0.4).
  Table IV, maskBottom: AUC 99.8±0.0, EER 2.1±0.3, TPR@FPR=1% 96.6±0.6, TPR@FPR=0.1%
    86.5±0.7, Rank-1..4 90.8±1.0, 94.9±0.7, 96.3±0.7, 97.1±0.5 (LightCNN Rank-1 57.7±2.2).
  Table IV, maskTop: AUC 100.0±0.0, EER 0.6±0.0, TPR@1% 99.7±0.1, TPR@0.1% 97.2±0.7,
    Rank-1..4 98.4±0.3, 99.4±0.2, 99.7±0.1, 99.8±0.1 (LightCNN Rank-1 85.6±1.1).
  Table VII (ablation, maskBottom): see configs/ssn/table7_synthetic.py.
"""

from hfrjax.recipes.ssn import configs as ssn


def get_config(arg: str | None = None):
    return ssn.real_config("casia", arg)
