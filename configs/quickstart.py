"""Quickstart: the main job on the embedded synthetic NIR-VIS data.

Everything at once (data, pretraining, zero-shot and fine-tuned 10-fold evaluation, export):

  python launch/quickstart.py --workdir /tmp/hfrjax_quickstart

Or stage by stage, with W=/tmp/hfrjax_quickstart and the data from `hfrjax synth --out W/data`:

  python launch/pretrain.py --config=configs/quickstart.py:pretrain --workdir=W/pretrain \
      --config.input.data_dir=W/data/source
  python launch/finetune.py --config=configs/quickstart.py:finetune \
      --workdir=W/finetune/fold_1 --config.init_from=W/pretrain \
      --config.input.data_dir=W/data/target --config.input.fold=1

Model: a small IResNet ([1, 1, 1, 1] blocks, width 16, 128-d) at 32x32 (the stored 112x112
crops are resized on decode), CosFace margin (s = 64, m = 0.4, as the Rethinking paper's
code), SGD. Fine-tuning follows the Rethinking paper's MEC recipe in miniature: the classifier
rows are the normalised mean embeddings of each target-train identity, frozen; only the
backbone trains, at a small learning rate.

Expected result (2-core x86_64 CPU, seed 0, 10 folds, NIR->VIS, mean ± std %), in about
4.5 minutes (launch/quickstart.py, everything included):
  zero-shot (VIS pretraining):  TAR@FAR=1e-3 3.47 ± 0.65, TAR@FAR=1e-2 9.80 ± 1.75,
                                Rank-1 12.43 ± 2.60
  fine-tuned (MEC, frozen):     TAR@FAR=1e-3 10.47 ± 3.45, TAR@FAR=1e-2 30.40 ± 4.49,
                                Rank-1 38.17 ± 3.95
"""

import ml_collections

IMAGE_SIZE = 32


def _common() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = dict(
        name="iresnet",
        kwargs=dict(layers=[1, 1, 1, 1], base_width=16, embedding_dim=128, input_size=IMAGE_SIZE),
    )
    c.compute_dtype = "float32"
    c.mesh = dict(data=-1, model=1)
    c.log_every = 20
    c.checkpoint_every = 200
    c.keep_checkpoints = 2
    c.init_from = ""
    c.tensorboard = True
    c.total_steps = 0
    c.eval = dict(
        data_dir="",
        folds=None,
        every_epochs=0,
        batch_size=128,
        best_metric="",
        fars=[1e-3, 1e-2],
        flip=False,
    )
    return c


def get_config(arg: str = "pretrain") -> ml_collections.ConfigDict:
    c = _common()
    if arg == "pretrain":
        c.num_epochs = 12
        c.input = dict(
            data_dir="",
            batch_size=128,
            image_size=[IMAGE_SIZE, IMAGE_SIZE],
            num_threads=2,
            seed=0,
            augment=dict(hflip=True, channel_aug="red", channel_aug_p=0.5),
        )
        c.margin = dict(preset="cosface")
        c.head = dict(init="random", freeze=False)
        c.optimizer = dict(name="sgd", momentum=0.9, weight_decay=5e-4)
        c.schedule = dict(
            name="piecewise", lr=0.1, boundaries_epochs=[8, 11], factor=0.1, warmup_epochs=0.5
        )
    elif arg == "finetune":
        c.num_epochs = 2
        c.input = dict(
            data_dir="",
            batch_size=64,
            fold=1,
            image_size=[IMAGE_SIZE, IMAGE_SIZE],
            num_threads=2,
            seed=0,
            augment=dict(hflip=True),
        )
        c.margin = dict(s=64.0, m1=1.0, m2=0.0, m3=0.6)  # Rethinking fine-tuning margin.
        c.head = dict(init="class_means", freeze=True, class_means_flip=True)
        c.optimizer = dict(name="sgd", momentum=0.9, weight_decay=5e-4)
        c.schedule = dict(name="piecewise", lr=0.01, boundaries_epochs=[1.5], factor=0.1)
    else:
        raise ValueError(f"configs/quickstart.py takes 'pretrain' or 'finetune', got {arg!r}")
    return c
