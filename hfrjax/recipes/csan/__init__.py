"""Recipe: CSAN — cross-spectral attention for unsupervised RGB-IR matching (Nikhal et al.).

Host-side pseudo-label machinery (pure numpy/scipy functions, state as arrays):

* `distances` — blockwise Euclidean distances (one GEMM per pass, bounded blocks), exact
  float64 nearest neighbours from a float32 product.
* `clustering` — intra-domain bottom-up agglomerative clustering, single linkage (§III-B).
* `filtering` — silhouette (Eq. 7) and size filtering (Alg. 1 lines 4-15).
* `voting` — cross-spectral voting (Alg. 1 lines 20-31).
* `diagnostics` — cluster counts, purity, link accuracy, NMI/ARI and their per-epoch plot.
* `pseudo_labels` — those steps composed on whole-set features, as the task's hook runs them.

The training task ``csan`` (Alg. 1 on the core loop):

* `task` — config sections, the losses (memory-bank CE, PTL / CE + λ·PCS) and the setup;
* `hooks` — the pseudo-label hook: merge stages, filtering, per-epoch votes, diagnostics,
  held-out early stopping;
* `inputs` — unlabelled samples and the resumable index-carrying batch sampler;
* `network` — the ``csan`` model and its head on cached frozen-backbone features;
* `pretrain` — a VGG pretrained on synthetic VIS faces (ImageNet's stand-in);
* `configs`, `run` — run configs; train-then-test in the paper's directions, sweeps;
* `benchmark` — speed and memory of the host steps at RegDB / SYSU sizes.
"""
