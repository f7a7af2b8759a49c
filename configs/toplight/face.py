"""TOPLight's face variant (Table 8): TOP + FDR on Oulu-CASIA NIR-VIS and BUAA-VisNir.

  python launch/train.py --config=configs/toplight/face.py:dataset=oulu \
      --config.init_from=W/toplight/top_face --workdir=W/toplight/oulu
  # the TOP stage for faces: configs/toplight/top.py with 112 x 112 inputs
  #   (--config.input.image_size="(112,112)") on a generic face set.

VI training as §4.1 on the dataset's training identities (fold 1 of the converted protocol:
Oulu 20 train / 20 test subjects, BUAA 50 / 100), 112 x 112 faces, P x K = 6 x (6 NIR + 6 VIS);
evaluation is the face protocol (NIR probes, VIS gallery): Rank-1 and TAR at FAR 1 % and
0.1 % (the loop's ``eval``).

Backbone: the paper's Table 8 uses LightCNN-29 as the baseline network "B". This library has
no dual-path LightCNN-29 with the block structure TOP needs (per-path stems and pre-embedding
blocks, a Block4 map for FDR), so these configs run the same protocol and schedule with the
dual-path MobileNetV3-Large of the re-id experiments; the LightCNN numbers below are the
paper's, for reference, not what this backbone is expected to give.

Arguments: dataset (oulu | buaa), fdr (full | none: "B+TOP" vs "B+TOP+FDR"), init_from,
data_root ({data_root}/oulu_casia_nir_vis, {data_root}/buaa_visnir), seed.

Paper numbers (Table 8, LightCNN-29, %): r=1 / TAR@FAR=1% / TAR@FAR=0.1%
                 Oulu-CASIA              BUAA-VisNir
  B              100 / 97.9 / 87.0       98.0 / 97.7 / 93.7
  B+TOP          100 / 98.8 / 91.5       98.3 / 98.1 / 94.5
  B+TOP+FDR      100 / 98.9 / 91.7       98.3 / 98.2 / 94.6
"""

from hfrjax.recipes.toplight import configs as tl


def get_config(arg: str | None = None):
    a = tl.parse_arg(arg)
    root = a.pop("data_root", tl.DEFAULT_DATA_ROOT)
    dataset = a.pop("dataset", "oulu")
    if dataset not in ("oulu", "buaa"):
        raise ValueError(f"dataset must be oulu or buaa, got {dataset!r}")
    c = tl.vi_config(
        scale="paper",
        data_dir=tl.data_dir(root, dataset),
        fold=1,
        init_from=a.pop("init_from", ""),
        fdr=a.pop("fdr", "full"),
        face=True,
        eval_folds=(1,),
        reid_directions=(),
        seed=int(a.pop("seed", 0)),
    )
    if a:
        raise ValueError(f"unknown argument(s) {sorted(a)} for configs/toplight/face.py")
    return c
