"""The shape of TOPLight's Table 3 on the synthetic data: TOP variants x FDR variants.

  python launch/sweep.py --config=configs/toplight/tables_synthetic.py \
      --out=/tmp/hfrjax_toplight_tables --data_dir=/tmp/hfrjax_toplight_tables/data \
      --synth=quickstart [--seeds=0,1,2]

(``--synth`` generates the synthetic sets first if absent; the VI stages' re-id evaluation is
the ``toplight_vi`` task's loop evaluators, merged into each eval.json.) Every cell is a pipeline of stages sharing
workdirs where identical: "sp" (standard single-path pretraining on the VIS source set, the
ImageNet-1k stand-in, shared by all cells), "top" (task-oriented pretraining on the source
set from sp, the ImageNet-mini stand-in; rows 5-9 share one) and "vi" (uniform soup, then VI
training on fold 1 of the synthetic NIR-VIS set with FDR as the row says). Evaluated: fold
1, face mode (TAR@FAR, Rank-1: NIR probes vs the one-image VIS gallery) and re-id mode
(reid/Rank-k, reid/mAP, reid/mINP: NIR queries vs every VIS image of the test identities).

Rows (Table 3): G = generic augs, C+T = colour/texture augs, FDR parts H_s / V_s / SA.
  no1-sp         VI straight from SP (no TOP)
  no2-g-id       TOP with G, per-path identity loss (L_id)
  no3-gct-id     TOP with G+C+T, L_id
  no4-gct-idc    TOP with G+C+T, L_idc (one shared classifier)
  no5-gct-idc-fd TOP with G+C+T, L_idc + L_fd
  no6-sa .. no9-hvsa   row 5's TOP, VI with FDR: SA / H_s+SA / V_s+SA / H_s+V_s+SA
Paper (MobileNetV3-L, SYSU all-search Rank-1): 47.81, 43.28, 49.85, 54.28, 62.41, 62.89,
63.95, 64.04, 66.14 (configs/toplight/top.py and sysu.py list every metric).
"""

from hfrjax import sweep

SYN = "configs/toplight/synthetic.py:stage={stage},row={row}"
NAMES = {
    1: "no1-sp", 2: "no2-g-id", 3: "no3-gct-id", 4: "no4-gct-idc", 5: "no5-gct-idc-fd",
    6: "no6-sa", 7: "no7-hsa", 8: "no8-vsa", 9: "no9-hvsa",
}
TOP_ROW = {2: 2, 3: 3, 4: 4, 5: 5, 6: 5, 7: 5, 8: 5, 9: 5}  # rows 6-9 reuse row 5's TOP


def cell(row: int) -> dict:
    sp = sweep.stage("sp", SYN.format(stage="standard", row=1), {"input.data_dir": "{data}/source"})
    stages = [sp]
    init = "{stage:sp}"
    if row in TOP_ROW:
        top = sweep.stage(
            "top", SYN.format(stage="top", row=TOP_ROW[row]),
            {"input.data_dir": "{data}/source", "init_from": "{stage:sp}"},
        )
        stages.append(top)
        init = "{stage:top}"
    vi = sweep.stage(
        "vi", SYN.format(stage="vi", row=row),
        {
            "input.data_dir": "{data}/target",
            "init_from": init,
            "eval.data_dir": "{data}/target",
            "reid_eval.data_dir": "{data}/target",
        },
    )
    return {"name": NAMES[row], "stages": [*stages, vi]}


def get_config(arg=None):
    rows = [int(r) for r in arg.split("+")] if arg else list(NAMES)
    return {
        "name": "toplight-table3-synthetic",
        "cells": [cell(r) for r in rows],
        "seeds": [0],
        "data_dir": "/tmp/hfrjax_toplight_tables/data",
        "table": {
            "title": "TOPLight Table 3 (synthetic NIR-VIS; fold 1; face and re-id modes)",
            "metrics": ["Rank-1", "TAR@FAR=1e-2", "TAR@FAR=1e-3", "AUC", "reid/Rank-1",
                        "reid/Rank-10", "reid/mAP", "reid/mINP"],
        },
    }
