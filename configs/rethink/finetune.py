"""Rethinking the domain gap: NIR-VIS fine-tuning (naive / MEC / SSC; RCT or source reg.).

  python launch/finetune.py \
      --config=configs/rethink/finetune.py:method=mec,reg=source,lam=1,scale=synthetic \
      --config.init_from=W/rethink/pretrain_red_ir18 --config.input.data_dir=W/data/target \
      --config.source_reg.input.data_dir=W/data/source --config.eval.data_dir=W/data/target \
      --workdir=W/rethink/ft_mec_l1_fold1

Arguments (comma-separated key=value): method (naive | mec | ssc), reg (none | rct | source),
lam (λ of source regularisation; 0 = none), backbone, scale (paper | synthetic), fold,
target_dir, source_dir, init_from, class_means_bn (train | eval), seed. SSC needs init_from
to be a "+target" pretraining workdir. Built by `hfrjax.recipes.rethink.finetune_config`.
"""

from hfrjax.recipes import rethink


def get_config(arg: str | None = None):
    a = rethink.parse_arg(arg)
    config = rethink.finetune_config(
        method=a.pop("method", "mec"),
        reg=a.pop("reg", "none"),
        lam=float(a.pop("lam", 1.0)),
        backbone=a.pop("backbone", "ir18"),
        scale=a.pop("scale", "paper"),
        fold=int(a.pop("fold", 1)),
        target_dir=a.pop("target_dir", ""),
        source_dir=a.pop("source_dir", ""),
        init_from=a.pop("init_from", ""),
        class_means_bn=a.pop("class_means_bn", "train"),
        seed=int(a.pop("seed", 0)),
    )
    if a:
        raise ValueError(f"unknown argument(s) {sorted(a)} for configs/rethink/finetune.py")
    return config
