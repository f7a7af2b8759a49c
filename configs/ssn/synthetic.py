"""SSN on the embedded synthetic NIR-VIS data (one run; Table VII's sweep: table7_synthetic.py).

  # Data (VIS source for the LightCNN pretraining, NIR-VIS target with a 10-fold protocol):
  hfrjax synth --out /tmp/hfrjax_ssn/data --preset quickstart
  # The plain LightCNN the SSN rows start from (softmax on the source identities):
  python launch/train.py --config=configs/ssn/synthetic.py:stage=pretrain \
      --workdir=/tmp/hfrjax_ssn/pretrain
  # One row of Table VII on fold 1 (mode: baseline | si | si_split | si_split_ib | afs):
  python launch/train.py --config=configs/ssn/synthetic.py:mode=afs,fold=1 \
      --workdir=/tmp/hfrjax_ssn/afs_fold1 --config.init_from=/tmp/hfrjax_ssn/pretrain
  python launch/evaluate.py --workdir=/tmp/hfrjax_ssn/afs_fold1 \
      --occlusions=none,maskTop,maskBottom
  python -m hfrjax.recipes.ssn.masks_plot --workdir=/tmp/hfrjax_ssn/afs_fold1

Arguments (comma-separated key=value):
  stage           train (default) | pretrain
  mode            afs (default) | si_split_ib | si_split | si | baseline
  fold            1..10 (default 1): trains on the fold's training identities, evaluates it
  data            default /tmp/hfrjax_ssn/data (source/ and target/ below it)
  eval_occlusion  none (default) | maskTop | maskBottom: sets eval.occlusion
                  (NIR probes of the final evaluation)
  partial         1 (default): a random rectangle on every NIR training image; 0: none
  scale           synthetic (default) | test (16x16, two steps per phase: the test suite's)
  seed            default 0
The synthetic scale (`hfrjax.recipes.ssn.configs.SYNTHETIC`): 32x32 grey, LightCNN-29v2 with
one res-block per stage and widths 16-48, 128-d, batch 64; AFS search 4 epochs of S_train,
then 12 epochs; network AdamW lr 1e-3 (SGD leaves this BN-free network's initial plateau only
after hundreds of steps, see the module `hfrjax.recipes.ssn.configs`), masks Adam lr 1e-2;
λ_ib = 0.001, β = 1 as the paper. Pretraining: 15 epochs of the source set, AdamW lr 1e-3,
x0.1 at epoch 12.
"""

from hfrjax.recipes.ssn import configs as ssn

KEYS = {"stage", "mode", "fold", "data", "eval_occlusion", "partial", "scale", "seed"}


def get_config(arg: str | None = None):
    a = ssn.parse_arg(arg)
    unknown = set(a) - KEYS
    if unknown:
        raise ValueError(f"unknown argument(s) {sorted(unknown)}; known: {sorted(KEYS)}")
    data = a.get("data", "/tmp/hfrjax_ssn/data")
    scale = a.get("scale", "synthetic")
    seed = int(a.get("seed", 0))
    stage = a.get("stage", "train")
    if stage == "pretrain":
        return ssn.pretrain_config(scale=scale, data_dir=f"{data}/source", seed=seed)
    if stage != "train":
        raise ValueError(f"stage must be 'train' or 'pretrain', got {stage!r}")
    fold = int(a.get("fold", 1))
    return ssn.ssn_config(
        a.get("mode", "afs"),
        scale=scale,
        data_dir=f"{data}/target",
        fold=fold,
        eval_dir=f"{data}/target",
        eval_folds=[fold],
        partial=a.get("partial", "1") != "0",
        eval_occlusion=a.get("eval_occlusion", "none"),
        seed=seed,
    )
