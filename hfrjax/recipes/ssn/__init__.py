"""SSN: "Partial NIR-VIS Heterogeneous Face Recognition With Automatic Saliency Search" (Luo et
al., IEEE TIFS 2021) as the ``ssn`` task of the core loop.

  task.py        config sections and the task: modes baseline / si / si_split / si_split_ib /
                 afs (Table VII's rows), L = L_id + λ_ib L_ib (Eq. 14);
  bottleneck.py  the information bottleneck's critics and terms (Eq. 5, 9-12, Fig. 4);
  search.py      AFS (Alg. 1): the identity-preserving S_train / S_val split and the plan;
  masks_plot.py  σ(M) heat maps per modality and block (PNG), also a command line;
  configs.py     the paper's settings and the synthetic scale (configs/ssn/*.py use them).
"""
