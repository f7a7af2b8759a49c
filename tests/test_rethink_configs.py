"""The real-data configs of the Rethinking paper (configs/rethink/{ms1m,casia,...}.py)."""

import importlib.util
import itertools
import re
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

from hfrjax.data.pipeline import InputConfig
from hfrjax.recipes import rethink

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "rethink"
ROOT = "/data/hfrjax"
SUBDIRS = {
    "ms1m": "ms1m",
    "casia": "casia_nir_vis_2.0",
    "lamp_hq": "lamp_hq",
    "oulu": "oulu_casia_nir_vis",
    "buaa": "buaa_visnir",
}
TARGETS = ("casia", "lamp_hq", "oulu", "buaa")
NUM_FOLDS = {"casia": 10, "lamp_hq": 10, "oulu": 1, "buaa": 1}
BACKBONES = sorted(rethink.BACKBONES["paper"])
PRE = rethink.PAPER["pretrain"]
FT = rethink.PAPER["finetune"]


def _load(name):
    spec = importlib.util.spec_from_file_location(
        f"rethink_config_{name}", CONFIG_DIR / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(name, arg=None):
    return _load(name).get_config(arg)


def _dir(name, root=ROOT):
    return f"{root}/{SUBDIRS[name]}"


def _check_input(input_dict):
    """`InputConfig.from_dict` accepts it; skips only if ``joint`` is not known there yet."""
    try:
        return InputConfig.from_dict(input_dict)
    except ValueError as e:
        if "joint" in str(e) and "unknown key" in str(e):
            pytest.skip(f"InputConfig does not know the 'joint' field yet: {e}")
        raise


# --------------------------------------------------------------------------------------------
# MS1M pretraining.

PRETRAIN_ARGS = (
    [
        f"variant={v},backbone={b},margin={m}"
        for v, b, m in itertools.product(("base", "red", "target"), BACKBONES, ("code", "arcface"))
    ]
    + [f"variant=target,target={t}" for t in TARGETS]
    + [f"variant=target,target={t},fold={NUM_FOLDS[t]}" for t in TARGETS]
    + [f"variant=red,eval={e}" for e in (*TARGETS, "none")]
    + ["", "variant=red,backbone=ir50,data_root=/elsewhere,seed=3", "margin=cosface"]
)


@pytest.mark.parametrize("arg", PRETRAIN_ARGS)
def test_ms1m_loads_with_paper_hyperparameters(arg):
    a = rethink.parse_arg(arg)
    root = a.get("data_root", ROOT)
    variant = a.get("variant", "base")
    c = get_config("ms1m", arg)
    assert c.input.data_dir == _dir("ms1m", root)
    assert c.input.batch_size == PRE["batch_size"]
    assert c.num_epochs == PRE["epochs"]
    assert c.schedule.lr == PRE["lr"]
    assert list(c.schedule.boundaries_epochs) == PRE["boundaries_epochs"]
    assert c.schedule.warmup_epochs == PRE["warmup_epochs"]
    assert c.optimizer.weight_decay == PRE["weight_decay"]
    assert c.seed == int(a.get("seed", 0))
    backbone = a.get("backbone", "ir18")
    assert c.model.name == rethink.BACKBONES["paper"][backbone]["name"]
    size = 128 if backbone.startswith("lightcnn") else rethink.PAPER["image_size"]
    assert list(c.input.image_size) == [size, size]
    assert c.margin.preset == rethink.PRETRAIN_MARGINS[a.get("margin", "code")]
    red = variant in ("red", "target")
    assert c.input.augment.get("channel_aug", "none") == ("red" if red else "none")
    target = a.get("target", "casia") if variant == "target" else None
    fold = int(a.get("fold", 1))
    if target:
        assert [dict(j) for j in c.input.joint] == [{"data_dir": _dir(target, root), "fold": fold}]
    else:
        assert not c.input.joint
    # Zero-shot evaluation: the "+target" dataset, else CASIA fold 1 by default.
    evaluate = a.get("eval", target or "casia")
    if evaluate == "none":
        assert c.eval.data_dir == ""
    else:
        assert c.eval.data_dir == _dir(evaluate, root)
        assert list(c.eval.folds) == [fold]
        assert list(c.eval.fars) == [1e-4, 1e-3]
    _check_input(c.input)


def test_ms1m_default_is_base_evaluated_on_casia_fold_1():
    c = get_config("ms1m")
    assert c.input.data_dir == _dir("ms1m") and not c.input.joint
    assert c.eval.data_dir == _dir("casia") and list(c.eval.folds) == [1]


def test_ms1m_cross_evaluation_of_a_target_pretraining_uses_fold_1():
    c = get_config("ms1m", "variant=target,target=casia,fold=4,eval=lamp_hq")
    assert c.input.joint[0]["fold"] == 4
    assert c.eval.data_dir == _dir("lamp_hq") and list(c.eval.folds) == [1]


@pytest.mark.parametrize(
    "arg",
    [
        "variant=red,bogus=1",
        "scale=synthetic",  # Real-data configs are paper scale only.
        "source_dir=/x",
        "variant=nope",
        "backbone=small",
        "margin=sphere",
        "variant=red,target=casia",  # target= only with variant=target.
        "variant=target,target=ms1m",
        "variant=target,target=casia,fold=11",
        "variant=target,target=oulu,fold=2",
        "eval=ms1m",
        "fold=0",
        "variant",
    ],
)
def test_ms1m_rejects_bad_args(arg):
    with pytest.raises(ValueError):
        get_config("ms1m", arg)


# --------------------------------------------------------------------------------------------
# Fine-tuning on each NIR-VIS dataset.

FINETUNE_ARGS = [
    f"method={m},reg={r},backbone={b}"
    for m, r, b in itertools.product(("naive", "mec", "ssc"), ("none", "rct", "source"), BACKBONES)
] + [
    "",
    "reg=source,lam=0",
    "reg=source,lam=0.5",
    "method=mec,class_means_bn=eval",
    "init_from=/w/pretrain,data_root=/elsewhere,seed=2",
]


@pytest.mark.parametrize("dataset", TARGETS)
@pytest.mark.parametrize("arg", FINETUNE_ARGS)
def test_finetune_loads_with_paper_hyperparameters(dataset, arg):
    a = rethink.parse_arg(arg)
    root = a.get("data_root", ROOT)
    c = get_config(dataset, arg)
    assert c.input.data_dir == _dir(dataset, root)
    assert c.input.fold == 1
    assert c.input.batch_size == FT["batch_size"]
    assert c.num_epochs == FT["epochs"]
    assert c.schedule.lr == FT["lr"]
    assert list(c.schedule.boundaries_epochs) == FT["boundaries_epochs"]
    assert c.optimizer.weight_decay == FT["weight_decay"]
    assert c.init_from == a.get("init_from", "")
    assert c.seed == int(a.get("seed", 0))
    method = a.get("method", "mec")
    init = {"naive": "random", "mec": "class_means", "ssc": "pretrained_rows"}[method]
    assert c.head.init == init and c.head.freeze == (method != "naive")
    if method == "mec":
        assert c.head.class_means_bn == a.get("class_means_bn", "train")
    reg, lam = a.get("reg", "none"), float(a.get("lam", 1.0))
    assert c.rct.weight == (rethink.PAPER["rct_weight"] if reg == "rct" else 0.0)
    if reg == "source" and lam > 0:
        assert c.source_reg.weight == lam
        assert c.source_reg.input.data_dir == _dir("ms1m", root)
        assert c.source_reg.input.batch_size == FT["source_batch_size"]
        assert list(c.source_reg.input.image_size) == list(c.input.image_size)
        _check_input(c.source_reg.input)
    else:
        assert c.source_reg.weight == 0.0
    assert c.eval.data_dir == _dir(dataset, root)
    assert list(c.eval.folds) == [1]
    assert list(c.eval.fars) == [1e-4, 1e-3]
    _check_input(c.input)


@pytest.mark.parametrize("dataset", TARGETS)
def test_finetune_every_protocol_fold(dataset):
    for k in range(1, NUM_FOLDS[dataset] + 1):
        c = get_config(dataset, f"fold={k}")
        assert c.input.fold == k and list(c.eval.folds) == [k]
        assert InputConfig.from_dict(c.input).fold == k
    with pytest.raises(ValueError):
        get_config(dataset, f"fold={NUM_FOLDS[dataset] + 1}")
    with pytest.raises(ValueError):
        get_config(dataset, "fold=0")


@pytest.mark.parametrize("dataset", TARGETS)
@pytest.mark.parametrize("evaluate", TARGETS)
def test_finetune_cross_dataset_evaluation(dataset, evaluate):
    """Table 7: train on one dataset (fold 1), evaluate on another's fold 1."""
    c = get_config(dataset, f"backbone=mobilefacenet,reg=source,lam=1,eval={evaluate}")
    assert c.input.data_dir == _dir(dataset)
    assert c.eval.data_dir == _dir(evaluate)
    assert list(c.eval.folds) == [1]


def test_cross_dataset_evaluation_of_a_later_fold_uses_fold_1_of_the_other_set():
    c = get_config("casia", "fold=5,eval=lamp_hq")
    assert c.input.fold == 5 and list(c.eval.folds) == [1]
    assert list(get_config("casia", "fold=5,eval=casia").eval.folds) == [5]


@pytest.mark.parametrize("dataset", TARGETS)
@pytest.mark.parametrize(
    "arg",
    [
        "bogus=1",
        "method=mec,typo_lam=1",
        "scale=synthetic",
        "target_dir=/x",
        "method=nope",
        "reg=l2",
        "backbone=small",
        "eval=ms1m",
        "fold=x",
        "lam",
    ],
)
def test_finetune_rejects_bad_args(dataset, arg):
    with pytest.raises(ValueError):
        get_config(dataset, arg)


# --------------------------------------------------------------------------------------------
# The documented commands.


def _documented_args():
    """(config name, arg) for every ``configs/rethink/NAME.py:ARG`` in the docstrings."""
    out = set()
    for name in ("ms1m", *TARGETS):
        doc = _load(name).__doc__
        for m in re.finditer(r"configs/rethink/(\w+)\.py:([\w=.,/-]+)", doc):
            out.add((m.group(1), m.group(2).rstrip(".")))
    return sorted(out)


DOCUMENTED = _documented_args()


def test_every_config_documents_commands():
    names = {n for n, _ in DOCUMENTED}
    assert names == {"ms1m", *TARGETS}
    for name in ("ms1m", *TARGETS):
        doc = _load(name).__doc__
        launcher = "launch/pretrain.py" if name == "ms1m" else "launch/finetune.py"
        assert f"python {launcher}" in doc and "--workdir=" in doc
        assert "Table" in doc


@pytest.mark.parametrize("name,arg", DOCUMENTED)
def test_documented_commands_load(name, arg):
    c = get_config(name, arg)
    _check_input(c.input)


@pytest.mark.parametrize("name", ["ms1m", *TARGETS])
def test_loads_through_config_flags_like_the_launchers(name):
    """The launchers load configs by path with ml_collections.config_flags (plus overrides)."""
    arg = "variant=red,backbone=ir50" if name == "ms1m" else "method=mec,reg=source,lam=1"
    argv = ["prog", f"--config={CONFIG_DIR / name}.py:{arg}", "--config.init_from=/w/pre"]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, sys_argv=argv)
    fv(argv)
    assert fv.config.init_from == "/w/pre"
    assert fv.config.model.name == ("ir50" if name == "ms1m" else "ir18")
