"""The synthetic scale's stand-in for CSAN's ImageNet VGG16: the truncated VGG (half width,
48x48) with a pooled linear embedding, trained with CosFace on the synthetic VIS-only *source*
set (identities and spectrum disjoint from the RGB-IR sets CSAN then trains on without labels).

  python launch/train.py --config=configs/csan/pretrain_synthetic.py \
      --workdir=/tmp/hfrjax_csan/pretrain \
      --config.input.data_dir=/tmp/hfrjax_csan/data/nirvis/source

CSAN then takes its VGG frozen: ``--set model.backbone_weights=/tmp/hfrjax_csan/pretrain``.
Argument: epochs (default 4).
"""

from hfrjax.recipes.csan.configs import parse_arg, pretrain_config


def get_config(arg: str | None = None):
    a = parse_arg(arg)
    epochs = float(a.pop("epochs", 4))
    if a:
        raise ValueError(f"unknown argument(s) {sorted(a)} for configs/csan/pretrain_synthetic.py")
    return pretrain_config(epochs=epochs)
