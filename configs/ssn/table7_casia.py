"""SSN's Table VII (ablation on CASIA NIR-VIS 2.0, maskBottom probes, 10 folds) as a sweep.

  python launch/sweep.py --config=configs/ssn/table7_casia.py:init_from=W/lightcnn29v2 \
      --out=W/ssn_table7 --data_dir=/data/hfrjax

Every row starts from the same converted LightCNN-29v2 (``init_from``, required); "lightcnn"
evaluates it unchanged. Each cell runs folds 1-10 (``folds=1-3`` for fewer) and is evaluated
on the fold's probes with the lower face blacked out. The paper's numbers: see
configs/ssn/table7_synthetic.py (same rows, same metrics).
"""

from configs.ssn.table7_synthetic import folds_of
from hfrjax.recipes.ssn import configs as ssn


def get_config(arg: str | None = None):
    a = ssn.parse_arg(arg)
    unknown = set(a) - {"folds", "init_from"}
    if unknown:
        raise ValueError(f"unknown argument(s) {sorted(unknown)}; known: folds, init_from")
    if not a.get("init_from"):
        raise ValueError("table7_casia needs init_from=<a LightCNN-29v2 export or workdir>")
    return ssn.table7_sweep(
        stage_config="configs/ssn/casia.py:mode={mode}",
        init_from=a["init_from"],
        train_dir="{data}/casia_nir_vis_2.0",
        folds=folds_of(a.get("folds", "1-10")),
        name="SSN Table VII: CASIA NIR-VIS 2.0, maskBottom probes",
        data_dir="/data/hfrjax",
    )
