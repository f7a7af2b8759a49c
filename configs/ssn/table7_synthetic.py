"""SSN's Table VII (ablation, maskBottom NIR probes) in shape, on the synthetic NIR-VIS data.

  python launch/sweep.py --config=configs/ssn/table7_synthetic.py \
      --out=/tmp/hfrjax_ssn_table7 --data_dir=/tmp/hfrjax_ssn_table7/data --synth=quickstart

(``--synth`` generates the data first if absent.) One pretraining of the plain LightCNN on the
VIS source set is shared by every cell; each cell then trains one run per fold on the NIR-VIS
target set (folds pooled: mean ± std over folds) and is evaluated on the fold's test
identities with the lower face of every NIR probe blacked out (``eval.occlusion=maskBottom``,
the gallery stays complete). Re-running skips finished runs and resumes an interrupted one.

Rows (cells), as the paper's:
  lightcnn      the pretrained LightCNN, not fine-tuned         "Light CNN"
  lightcnn-ft   fine-tuned (mode baseline, partial-face input)  "Light CNN Finetune"
  si            + one saliency indicator for both modalities    "w/ SI"
  si-split      + one indicator per modality                    "w/ SI (split)"
  si-split-ib   + the information bottleneck                    "w/ SI (split) + IB"
  afs           + the automatic feature search (Alg. 1)         "Ours"

Arguments (comma-separated key=value): folds (default 1-3; "1-10" is the paper's protocol),
scale (synthetic, default; test: 16x16 and two steps per phase, what the test suite runs).

The paper's Table VII (CASIA NIR-VIS 2.0, 10 folds, %), AUC / EER / TPR@FPR=1% /
TPR@FPR=0.1% / Rank-1:
  Light CNN            97.7±0.1  7.9±0.3  72.3±1.1  44.7±2.3  57.7±2.2
  Light CNN Finetune   98.8±0.2  5.4±0.3  79.6±3.8  47.6±7.1  65.7±3.3
  w/ SI                99.6±0.1  3.0±0.5  93.3±2.1  79.9±4.4  86.6±1.6
  w/ SI (split)        99.6±0.1  2.9±0.5  93.5±1.0  81.0±2.1  86.9±1.2
  w/ SI (split) + IB   99.6±0.1  2.8±0.3  94.1±0.9  81.4±1.4  87.5±1.1
  Ours                 99.8±0.0  2.1±0.3  96.6±0.6  86.5±0.7  90.8±1.0
"""

from hfrjax.recipes.ssn import configs as ssn


def folds_of(text: str) -> list[int]:
    """ "1-3" -> [1, 2, 3]; "1;4" -> [1, 4]."""
    out = []
    for part in text.replace(";", " ").split():
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    if not out or any(not 1 <= k <= 10 for k in out):
        raise ValueError(f"folds must lie in 1..10, got {text!r}")
    return out


def get_config(arg: str | None = None):
    a = ssn.parse_arg(arg)
    unknown = set(a) - {"folds", "scale"}
    if unknown:
        raise ValueError(f"unknown argument(s) {sorted(unknown)}; known: folds, scale")
    scale = a.get("scale", "synthetic")
    return ssn.table7_sweep(
        stage_config=f"configs/ssn/synthetic.py:scale={scale},mode={{mode}}",
        pretrain_config=f"configs/ssn/synthetic.py:scale={scale},stage=pretrain",
        pretrain_dir="{data}/source",
        train_dir="{data}/target",
        folds=folds_of(a.get("folds", "1-3")),
        name="SSN Table VII in shape: synthetic NIR-VIS, maskBottom probes",
        data_dir="/tmp/hfrjax_ssn_table7/data",
    )
