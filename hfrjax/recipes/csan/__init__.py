"""Recipe: CSAN — cross-spectral attention for unsupervised RGB-IR matching (Nikhal et al.).

Host-side pseudo-label machinery (pure numpy/scipy functions, state as arrays):

* `clustering` — intra-domain bottom-up agglomerative clustering, single linkage (§III-B).
* `voting` — silhouette filtering (Eq. 7) and cross-spectral voting (Alg. 1 lines 4-31).
* `diagnostics` — cluster counts, purity, link accuracy, NMI/ARI and their per-epoch plot.
"""
