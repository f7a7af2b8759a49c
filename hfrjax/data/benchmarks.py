"""Where the converted real benchmarks live, and their standard fold counts: one table for
every recipe's real-data configs (``{data_root}/{DATASETS[name]}``, as the converters of
`hfrjax.data.convert` write them; each dataset's ``protocols/`` holds its folds)."""

from __future__ import annotations

import os

DEFAULT_DATA_ROOT = "/data/hfrjax"

# Short name -> directory under data_root.
DATASETS = {
    "ms1m": "ms1m",
    "casia": "casia_nir_vis_2.0",
    "lamp_hq": "lamp_hq",
    "oulu": "oulu_casia_nir_vis",
    "buaa": "buaa_visnir",
    "sysu": "sysu_mm01",
    "regdb": "regdb",
    "imagenet_mini": "imagenet_mini",
    "imagenet": "imagenet",
}

# Folds of each NIR-VIS benchmark's protocol. CASIA NIR-VIS 2.0 View 2 and LAMP-HQ: 10 folds;
# Oulu-CASIA and BUAA-VisNir: one fixed train/test split (no official lists; the split commonly
# used with these sets), stored as fold 1.
NUM_FOLDS = {"casia": 10, "lamp_hq": 10, "oulu": 1, "buaa": 1}


def data_dir(data_root: str, name: str) -> str:
    """``{data_root}/{DATASETS[name]}``; an unknown name is an error listing the known ones."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return os.path.join(data_root, DATASETS[name])
