"""TOPLight Step 0: standard single-path pretraining ("SP") of MobileNetV3-Large.

  # Synthetic stand-in for ImageNet-1k (the synthetic VIS source set):
  python launch/train.py --config=configs/toplight/standard.py:scale=synthetic \
      --config.input.data_dir=W/data/source --workdir=W/toplight/sp

  # Paper scale (Table 2(a) "On ImageNet-1K": 150 epochs, batch 512, 224 x 224, SGD lr 0.2
  # cosine, 5 warm-up epochs, wd 5e-4) on a converted ImageNet-1k:
  python launch/train.py --config=configs/toplight/standard.py:data_root=/data/hfrjax \
      --workdir=W/toplight/sp_imagenet

In practice the TOP stage starts from torchvision's ImageNet weights instead
(``configs/toplight/top.py:init_from=.../mobilenet_v3_large-8738ca79.pth``; the converter is
`hfrjax.models.mobilenetv3.mobilenetv3_params_from_torch_state_dict`). The classifier here is
a normalised softmax (s = 16, no margin), the closest of the core's heads to the paper's
plain cross-entropy.

Arguments (comma-separated key=value): scale (paper | synthetic), data_root (paper scale:
trains on {data_root}/imagenet), data_dir (overrides), eval_dir (optional face protocol to
evaluate at the end), seed. Paper number for this stage: MobileNetV3-L straight from it
fine-tuned on SYSU-MM01 all-search gives Rank-1 47.81 %, mAP 47.06 % (Table 3 No. 1).
"""

from hfrjax.recipes.toplight import configs as tl


def get_config(arg: str | None = None):
    a = tl.parse_arg(arg)
    scale = a.pop("scale", "paper")
    root = a.pop("data_root", tl.DEFAULT_DATA_ROOT)
    data = a.pop("data_dir", tl.data_dir(root, "imagenet") if scale == "paper" else "")
    c = tl.standard_config(
        scale=scale, data_dir=data, eval_dir=a.pop("eval_dir", ""), seed=int(a.pop("seed", 0))
    )
    if a:
        raise ValueError(f"unknown argument(s) {sorted(a)} for configs/toplight/standard.py")
    return c
