"""Recipe: TOPLight — task-oriented pretraining of a lightweight dual-path network for
visible-infrared recognition (Yu, Cheng and Peng, CVPR 2023).

* `task` — the ``toplight_top`` task (Step 1: Eq. 4 = L_idc + L_fd^1 + L_fd^2 on a generic
  labelled set, two paths fed the colour- and texture-augmented copies of each image) and
  the ``toplight_vi`` task (Step 3: L_id + γ L_tri with P x K visible + infrared batches, FDR
  after Block4), started through the uniform soup (Step 2).
* `network` — the dual-path network with per-image modality routing (registered model
  ``toplight_dual_routed``), fast initialisation, and the weight surgery between stages
  (single path -> TOP copies, TOP -> souped average).
* `inputs` — the paired task-oriented augmentation input and the modality-split P x K input.
* `evaluation` — re-id mode (Rank-k, mAP, mINP) as the VI task's loop evaluators, next to
  the loop's face protocol.
* `configs` — builders of every setting of the paper and of the synthetic Table 3.
"""

from hfrjax.recipes.toplight import network  # noqa: F401 - registers toplight_dual_routed.
