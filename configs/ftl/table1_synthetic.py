"""The shape of FTL's Table 1 on the synthetic long-tailed VIS sets (preset ``longtail``).

  python -m hfrjax.recipes.ftl.run sweep --config=configs/ftl/table1_synthetic.py \
      --out=/tmp/hfrjax_ftl_table1 --data_dir=/tmp/hfrjax_ftl_table1/data \
      --synth=longtail --image_size=32

(``--synth`` generates the data first when DATA/synth.json is absent.) Rows: the training sets
10K0K (regular classes only), 10K10K / 10K30K / 10K50K (plus 1x, 3x, 5x as many faked UR
classes of 5 images), 60K0K (every class with all its images); methods: softmax (Eq. 4 with
α_reg = 0), softmax + m-L2 (α_reg = 0.25) and, on the rows with UR classes, FTL (Alg. 1).
Columns: verification accuracy on the hold-out pair list, nearest-centre rank-1 on the regular
and the UR hold-out classes, on f and on g. Re-running skips finished runs; the table is
OUT/tables.md. Arguments: scale (synthetic | quick | quick_epochs | tiny; quick_epochs gives
every row the epochs of quick's 10K10K row, its steps scaled with the set), seeds (e.g. seeds=0+1+2).

The paper's Table 1 (MS-Celeb-1M, f; LFW / MS1M NN rank-1 Reg. / UR):
  10K0K  sfmx 97.45 / 87.17 / 82.47;  sfmx+m-L2 97.88 / 90.21 / 84.68
  10K10K sfmx 97.85 / 85.87 / 85.25;  sfmx+m-L2 97.85 / 89.48 / 84.10;  FTL 98.33 / 92.27 / 88.16
  10K30K sfmx 97.80 / 86.14 / 85.47;  sfmx+m-L2 98.08 / 90.60 / 86.40;  FTL 98.42 / 91.76 / 88.72
  10K50K sfmx 97.93 / 85.28 / 84.21;  sfmx+m-L2 98.10 / 90.24 / 87.11;  FTL 98.48 / 92.08 / 89.36
  60K0K  sfmx 98.30 / 90.43 / 89.54;  sfmx+m-L2 98.85 / 93.68 / 93.46
"""

from hfrjax.recipes.ftl import configs


def get_config(arg: str | None = None):
    a = configs.parse_arg(arg)
    scale = a.pop("scale", "synthetic")
    seeds = tuple(int(s) for s in a.pop("seeds", "0").split("+"))
    if a:
        raise ValueError(f"unknown argument(s) {sorted(a)} for configs/ftl/table1_synthetic.py")
    return configs.table1_sweep(scale, seeds=seeds)
