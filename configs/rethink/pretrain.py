"""Rethinking the domain gap: VIS pretraining (base / +red / +target), any scale.

  python launch/pretrain.py \
      --config=configs/rethink/pretrain.py:variant=red,backbone=ir18,scale=synthetic \
      --config.input.data_dir=W/data/source --config.eval.data_dir=W/data/target \
      --workdir=W/rethink/pretrain_red_ir18

Arguments (comma-separated key=value): variant (base | red | target), backbone (paper scale:
mobilefacenet, ir18, ir50, ir100, lightcnn29v2; synthetic: mobilefacenet, ir18, small),
margin (code: CosFace s=64 m=0.4 as the authors' code | arcface as the paper's text | cosface),
scale (paper | synthetic), source_dir, target_dir, target_fold (the fold whose training
identities "+target" adds), seed. Everything is built by `hfrjax.recipes.rethink.pretrain_config`.
"""

from hfrjax.recipes import rethink


def get_config(arg: str | None = None):
    a = rethink.parse_arg(arg)
    config = rethink.pretrain_config(
        variant=a.pop("variant", "base"),
        backbone=a.pop("backbone", "ir18"),
        margin=a.pop("margin", "code"),
        scale=a.pop("scale", "paper"),
        source_dir=a.pop("source_dir", ""),
        target_dir=a.pop("target_dir", ""),
        target_fold=int(a.pop("target_fold", 1)),
        seed=int(a.pop("seed", 0)),
    )
    if a:
        raise ValueError(f"unknown argument(s) {sorted(a)} for configs/rethink/pretrain.py")
    return config
