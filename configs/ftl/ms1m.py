"""FTL at the paper's scale: MS-Celeb-1M (cleaned, 4.8M images of 76.5K classes) or one of the
Table 1 subsets built by `hfrjax.recipes.ftl.subsets`.

  python -m hfrjax.recipes.ftl.subsets --src=MS1M_DIR --out=MS1M_FTL --num_regular=10000 \
      --ur_multiples=1,3,5 --seed=0          # train_10K0K ... train_60K0K, holdout/
  python -m hfrjax.recipes.ftl.run train \
      --config=configs/ftl/ms1m.py:mode=ftl,data_dir=MS1M_FTL/train_10K30K \
      --set eval.verification_packs="('LFW/lfw.bin',)" --workdir=W/ftl_10K30K

Arguments: mode (softmax | ml2 | ftl), data_dir (a converted dataset: `hfrjax convert rec`
of the InsightFace MS1M RecordIO, or a subset), holdout_dir, gallery_dir.

The paper's settings (§3.2-§4): 100x100 crops; g, f ∈ R^320; Enc/Dec a CASIA-Net / DR-GAN
style encoder-decoder (here ``trunk="conv"``; ``trunk="iresnet"`` with 112 crops puts Enc on an
IResNet); R = linear, 2 deconvolutions, 2 convolutions, linear; Eq. 4 with α = 1, 1, 0.25;
Adam 2e-4 for pretraining, 1e-5 for stages 1 and 2, which alternate every 5K iterations;
Q = the top 150 eigenvectors of V (~95 % energy); a class with at most 20 images is UR.
Not given in the paper (our choices): batch 256, 10 epochs of pretraining, 20 in all, the yaw
bound of Eq. 5 (30°, where poses are known; MS1M records carry none, so no sample is dropped).

The paper's results (Table 1, MS1M subsets; LFW with f, IJB-A verification TAR at FAR 0.01 /
0.001, MS1M hold-out NN rank-1 Reg. / UR):
  10K50K sfmx 97.93, 72.87 / 49.04, 85.28 / 84.21; sfmx+m-L2 98.10, 78.52 / 53.44, 90.24 / 87.11;
         FTL 98.48, 82.60 / 62.60, 92.08 / 89.36
  60K0K  sfmx 98.30, 82.75 / 62.33, 90.43 / 89.54; sfmx+m-L2 98.85, 86.38 / 74.44, 93.68 / 93.46
Full MS1M (Tables 3, 4): LFW sfmx 98.60, sfmx+m-L2 99.18, FTL 99.55; IJB-A TAR@0.01 / 0.001
sfmx 91.5 / 77.4, sfmx+m-L2 92.5 / 80.2, FTL 93.5 / 82.9.
"""

from hfrjax.recipes.ftl import configs


def get_config(arg: str | None = None):
    a = configs.parse_arg(arg)
    config = configs.ftl_config(
        a.pop("mode", "ftl"),
        "paper",
        data_dir=a.pop("data_dir", ""),
        holdout_dir=a.pop("holdout_dir", ""),
        gallery_dir=a.pop("gallery_dir", ""),
    )
    if a:
        raise ValueError(f"unknown argument(s) {sorted(a)} for configs/ftl/ms1m.py")
    return config
