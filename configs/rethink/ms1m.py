"""Rethinking the domain gap, real data: VIS pretraining on MS1M (base / +red / +target).

  python launch/pretrain.py \
      --config=configs/rethink/ms1m.py:variant=red,backbone=ir50 \
      --workdir=W/rethink/ms1m_red_ir50
  python launch/pretrain.py \
      --config=configs/rethink/ms1m.py:variant=target,target=casia,fold=1,backbone=ir50 \
      --workdir=W/rethink/ms1m_target_casia1_ir50

Arguments (comma-separated key=value):
  variant   base | red (+ red-channel augmentation) | target (+red and the target dataset's
            training identities of fold ``fold`` in the same classifier; Table 3 "+target*").
  backbone  mobilefacenet | ir18 (default) | ir50 | ir100 | lightcnn29v2 (128x128 grey).
  margin    code (CosFace s=64 m=0.4, the authors' code; default) | arcface (the paper's text,
            section 4.1) | cosface.
  data_root root of the converted datasets (default /data/hfrjax): MS1M is read from
            {data_root}/ms1m, the target / evaluation sets from {data_root}/casia_nir_vis_2.0,
            lamp_hq, oulu_casia_nir_vis, buaa_visnir.
  target    casia (default) | lamp_hq | oulu | buaa: the "+target" dataset (variant=target only;
            Table 3 has a "+target*" column for each of the four).
  eval      the zero-shot evaluation run at the end: casia | lamp_hq | oulu | buaa | none;
            default the "+target" dataset, else casia.
  fold      protocol fold (default 1): the "+target" training identities and the evaluated
            fold (CASIA, LAMP-HQ: 1..10; Oulu-CASIA, BUAA: their single split, 1). Another
            dataset than the "+target" one is evaluated on fold 1.
  seed      default 0.
Hyperparameters are the recipe's (`hfrjax.recipes.rethink.PAPER["pretrain"]`, paper section
4.1: 24 epochs, batch 512, lr 0.1 x0.1 at epochs 10, 18, 22, weight decay 5e-4); the evaluation
reports TAR@FAR 1e-4 and 1e-3 and Rank-1. Evaluate the result on the other datasets with
launch/evaluate.py.

Paper numbers to expect (zero-shot after pretraining on MS1Mv3; the paper's Table 3,
TAR@FAR=10^-4 in %; † LAMP-HQ and CASIA 2.0 on fold 1; "+target*" = with target train data):

                 LAMP-HQ †              CASIA 2.0 †            Oulu-CASIA             BUAA
  Model   base   +red   +target  base   +red   +target  base   +red   +target  base   +red  +target
  MFN     87.91  88.68  96.90    95.05  95.75  98.26    84.60  88.36  92.75    96.70  96.73  98.44
  LC29    84.93  86.37  98.17    95.84  95.97  99.49    89.09  89.41  93.51    96.19  96.24  99.03
  IR18    93.04  93.23  98.92    97.88  98.76  99.51    92.72  94.80  95.74    98.05  98.45  99.37
  IR50    99.03  99.16  99.84    99.89  99.90  99.97    99.52  98.76  99.61    99.84  99.61  100.0
  IR100   99.60  99.65  99.89    99.93  99.97  99.98    99.82  99.87  99.75    99.92  99.81  100.0

(MFN = mobilefacenet, LC29 = lightcnn29v2, IR18/50/100 = ir18/ir50/ir100.) The "base" column
reappears as the "pre-trained, not fine-tuned" column of Table 4, and the MFN "+red" column as
the "no fine-tune" row of Table 7. The paper pretrains on MS1Mv3 (93k identities, 5.1M images,
Table 1); this config reads whatever MS1M version was converted to {data_root}/ms1m.
"""

from hfrjax.recipes.rethink import real as rethink_real


def get_config(arg: str | None = None):
    return rethink_real.pretrain(arg, "configs/rethink/ms1m.py")
