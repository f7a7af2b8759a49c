"""TOPLight Step 1: task-oriented pretraining (TOP) of the dual-path MobileNetV3-Large.

  # Paper scale (Table 2(a) "On ImageNet-mini": 50 epochs, 36 images x 2 paths, 224 x 224,
  # SGD lr 0.1 cosine, wd 5e-5), from torchvision's ImageNet weights:
  python launch/train.py --config=configs/toplight/top.py:data_root=/data/hfrjax \
      --config.init_from=W/mobilenet_v3_large-8738ca79.pth --workdir=W/toplight/top
  # A Table 3 row's TOP stage (rows 2-5; rows 6-9 use row 5's):
  python launch/train.py --config=configs/toplight/top.py:row=3,scale=synthetic \
      --config.input.data_dir=W/data/source --config.init_from=W/toplight/sp \
      --workdir=W/toplight/top_row3

Loss (Eq. 4): L = L_idc + L_fd^1 + L_fd^2. Each image feeds both paths: the colour path
(Block1-1..4-1) one of colour jitter / channel shuffle / RGB shift, the texture path JPEG
(p 0.2), defocus (p 0.2), sharpen + grey (p 1); both paths crop & flip (p 0.5) and deform
(p 0.2) (Table 2(b)). Then `launch/train.py` on configs/toplight/sysu.py (or regdb.py,
face.py) with init_from = this workdir: the uniform soup (Step 2) happens there.

Arguments: scale (paper | synthetic), data_root ({data_root}/imagenet_mini), data_dir,
init_from (single-path MobileNetV3: export, workdir or torchvision .pth), row (Table 3 row
2..9: sets the next four), augs (gct | g), identity (idc | id), fd (1 | 0), seed.

Paper numbers (Table 3, MobileNetV3-L, VI training without FDR after each TOP variant;
SYSU-MM01 all-search Rank-1 / mAP, RegDB visible->infrared Rank-1 / mAP, %):
  No. 1 no TOP (ImageNet only)      47.81 / 47.06   71.26 / 65.66
  No. 2 G, L_id                     43.28 / 45.56   70.73 / 65.65
  No. 3 G + C + T, L_id             49.85 / 47.56   71.32 / 65.67
  No. 4 G + C + T, L_idc            54.28 / 52.94   75.31 / 68.78
  No. 5 G + C + T, L_idc + L_fd     62.41 / 59.06   82.75 / 76.21
"""

from hfrjax.recipes.toplight import configs as tl


def get_config(arg: str | None = None):
    a = tl.parse_arg(arg)
    scale = a.pop("scale", "paper")
    root = a.pop("data_root", tl.DEFAULT_DATA_ROOT)
    switches = dict(generic=True, colour_texture=True, identity="idc", fake_domain=True)
    if "row" in a:
        top = tl.table3_row(int(a.pop("row")))["top"]
        if top is None:
            raise ValueError("Table 3 row 1 has no TOP stage (train VI from the SP run)")
        switches.update(top)
    if "augs" in a:
        augs = a.pop("augs")
        if augs not in ("g", "gct"):
            raise ValueError(f"augs must be g or gct, got {augs!r}")
        switches["colour_texture"] = augs == "gct"
    switches["identity"] = a.pop("identity", switches["identity"])
    if "fd" in a:
        switches["fake_domain"] = bool(int(a.pop("fd")))
    c = tl.top_config(
        scale=scale,
        data_dir=a.pop("data_dir", tl.data_dir(root, "imagenet_mini") if scale == "paper" else ""),
        init_from=a.pop("init_from", ""),
        seed=int(a.pop("seed", 0)),
        **switches,
    )
    if a:
        raise ValueError(f"unknown argument(s) {sorted(a)} for configs/toplight/top.py")
    return c
