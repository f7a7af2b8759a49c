"""The Rethinking recipe on real data: what configs/rethink/{ms1m,casia,lamp_hq,oulu,buaa}.py share.

Everything is built with `hfrjax.recipes.rethink`; this module only adds what real data needs:

* where the converted datasets live and their folds (`hfrjax.data.benchmarks`, shared with the
  other recipes' real-data configs);
* the paper's evaluation operating points (``PAPER_FARS``).
"""

from __future__ import annotations

import ml_collections

from hfrjax.data.benchmarks import DATASETS, DEFAULT_DATA_ROOT, NUM_FOLDS, data_dir  # noqa: F401
from hfrjax.recipes.rethink import configs as rethink

SOURCE = "ms1m"
TARGETS = ("casia", "lamp_hq", "oulu", "buaa")

# The paper reports TAR@FAR=1e-4 (Tables 3, 4, 5, 7; Table 6 for CASIA / LAMP-HQ) and
# TAR@FAR=1e-3 and Rank-1 (Table 6); Rank-1 is always computed by the evaluator.
PAPER_FARS = [1e-4, 1e-3]


def check_target(name: str, what: str) -> str:
    if name not in TARGETS:
        raise ValueError(f"{what} must be one of {list(TARGETS)}, got {name!r}")
    return name


def check_fold(dataset: str, fold: str | int) -> int:
    """A fold number of ``dataset``'s protocol (1-based)."""
    k = int(fold)
    if not 1 <= k <= NUM_FOLDS[dataset]:
        raise ValueError(
            f"{dataset} has protocol folds 1..{NUM_FOLDS[dataset]} as the paper uses it, "
            f"got fold={fold!r}"
        )
    return k


def _reject_unknown(a: dict, config_file: str) -> None:
    if a:
        raise ValueError(f"unknown argument(s) {sorted(a)} for {config_file}")


def pretrain(arg: str | None, config_file: str) -> ml_collections.ConfigDict:
    """MS1M pretraining; see configs/rethink/ms1m.py for the arguments."""
    a = rethink.parse_arg(arg)
    variant = a.pop("variant", "base")
    data_root = a.pop("data_root", DEFAULT_DATA_ROOT)
    target = a.pop("target", None)
    if target is not None and variant != "target":
        raise ValueError(f"target={target} only applies to variant=target, got variant={variant}")
    if variant == "target":
        target = check_target(target or "casia", "target")
    # Zero-shot evaluation: the "+target" dataset's, else CASIA NIR-VIS 2.0 (fold 1, Table 3).
    evaluate = a.pop("eval", target or "casia")
    fold = a.pop("fold", "1")
    target_fold = check_fold(target, fold) if target else 1
    if evaluate != "none":
        check_target(evaluate, "eval")
        # The evaluated dataset's fold ``fold``; another dataset than the "+target" one: fold 1
        # (Table 3 evaluates LAMP-HQ and CASIA on fold 1).
        eval_fold = check_fold(evaluate, fold) if target in (None, evaluate) else 1
    config = rethink.pretrain_config(
        variant=variant,
        backbone=a.pop("backbone", "ir18"),
        margin=a.pop("margin", "code"),
        scale="paper",
        source_dir=data_dir(data_root, SOURCE),
        target_dir=data_dir(data_root, target) if target else "",
        target_fold=target_fold,
        eval_dir=data_dir(data_root, evaluate) if evaluate != "none" else "",
        eval_folds=(eval_fold,) if evaluate != "none" else (),
        seed=int(a.pop("seed", 0)),
    )
    _reject_unknown(a, config_file)
    config.eval.fars = list(PAPER_FARS)  # The paper's operating points (Tables 3-7).
    return config


def finetune(dataset: str, arg: str | None, config_file: str) -> ml_collections.ConfigDict:
    """Fine-tuning on ``dataset``'s fold; see configs/rethink/casia.py for the arguments."""
    check_target(dataset, "dataset")
    a = rethink.parse_arg(arg)
    data_root = a.pop("data_root", DEFAULT_DATA_ROOT)
    fold = check_fold(dataset, a.pop("fold", "1"))
    # Cross-dataset evaluation (Table 7): fine-tune on this dataset, evaluate another one.
    evaluate = check_target(a.pop("eval", dataset), "eval")
    config = rethink.finetune_config(
        method=a.pop("method", "mec"),
        reg=a.pop("reg", "none"),
        lam=float(a.pop("lam", 1.0)),
        backbone=a.pop("backbone", "ir18"),
        scale="paper",
        init_from=a.pop("init_from", ""),
        target_dir=data_dir(data_root, dataset),
        fold=fold,
        source_dir=data_dir(data_root, SOURCE),
        eval_dir=data_dir(data_root, evaluate),
        class_means_bn=a.pop("class_means_bn", "train"),
        seed=int(a.pop("seed", 0)),
    )
    _reject_unknown(a, config_file)
    if evaluate != dataset:
        # Table 7 evaluates the other datasets on their fold 1 ("† Fold 1").
        config.eval.folds = [1]
    config.eval.fars = list(PAPER_FARS)  # The paper's operating points (Tables 3-7).
    return config
