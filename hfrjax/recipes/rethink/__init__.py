"""Recipe: "Rethinking the domain gap in near-infrared face recognition" (paper 1).

* `task` — the ``rethink`` task: the classification task plus the paper's fine-tuning pieces:
  classifier rows from class means (MEC) or from a "+target" pretraining's classifier (SSC),
  source regularisation (§3.3: L = L_cls(target) + λ L_cls(source)) and the RCT anchor.
* `configs` — builders of every setting of the paper (pretraining variants, fine-tuning
  methods, regularisers) at the paper's and at synthetic scale.
* `real` — what the configs for the real datasets (configs/rethink/*.py) share.
"""

from hfrjax.recipes.rethink.configs import (  # noqa: F401
    BACKBONES,
    FINETUNE_METHODS,
    PAPER,
    PRETRAIN_MARGINS,
    PRETRAIN_VARIANTS,
    REGULARISERS,
    SCALES,
    SYNTHETIC,
    finetune_config,
    parse_arg,
    pretrain_config,
)
