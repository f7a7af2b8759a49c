"""TOPLight's networks as the tasks use them, and the weight surgery between its stages.

TOPLight (Yu et al., CVPR 2023), §3.1: Step 1 trains a dual-path MobileNetV3-Large whose
Block1-4 exist once per path (``private_blocks=4``, `hfrjax.models.dual_path`), initialised
from a single-path (ImageNet) network by copying Block1-4 into both paths (§4.1). Step 2 is
the uniform soup: the two paths' Block2-4 are averaged into one shared group and the two
stems are kept (``private_blocks=1``). Step 3 trains that network, with FDR after Block4, on
the visible-infrared task.

`initial_network_variables` performs Steps 1-2 on whatever a stage starts from: a
single-path MobileNetV3 (an export or workdir of the ``classification`` task, or a
torchvision ``.pth``), a TOP network (souped when the target has one private block), or an
already souped network. The head (BN neck) and FDR are never carried over: they belong to the
new task and keep their fresh initialisation (FDR's zero-initialised attention then leaves the
pretrained function unchanged at the first step, `hfrjax.models.fdr`).

`RoutedDualPath` is the dual-path network with per-image modality routing (visible images
through path 1 = Block*-1, every other modality through path 2), registered as
``toplight_dual_routed`` so that exported TOPLight models work with `hfrjax.load_embedder`
(which passes each image's modality code to models that declare ``takes_modality``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
from flax import traverse_util

from hfrjax.data import tfrecord
from hfrjax.models.dual_path import (
    DualPathMobileNetV3,
    block_name,
    dual_path_mobilenetv3_large,
    dual_path_variables_from_single,
    uniform_soup,
)
from hfrjax.models.registry import register_model

VIS_CODE = tfrecord.MODALITIES.index("vis")
ROUTED_MODEL = "toplight_dual_routed"
FRESH_SUBTREES = ("head", "fdr")  # Always the new stage's own initialisation.
_CHEAP_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# Network layouts `network_kind` recognises from the top-level parameter names.
SINGLE, TOP, SOUPED = "single-path", "dual-path (Block1-4 per path)", "souped (two stems)"


class RoutedDualPath(DualPathMobileNetV3):
    """`DualPathMobileNetV3` that also accepts ``modality`` codes: each image goes through
    path 0 when its modality is visible, else path 1 (computed for the whole batch on both
    paths, then selected per image; evaluation only). Parameter names are the base model's."""

    takes_modality: ClassVar[bool] = True

    def __call__(
        self,
        x,
        train: bool = False,
        *,
        modality=None,
        path: int | None = None,
        return_intermediates: bool = False,
    ):
        if modality is None:
            return super().__call__(
                x, train, path=path, return_intermediates=return_intermediates
            )
        if path is not None or return_intermediates or isinstance(x, (tuple, list)):
            raise ValueError("modality routing takes one image array, without path=")
        visible = jnp.asarray(modality) == VIS_CODE
        colour = super().__call__(x, train, path=0)
        texture = super().__call__(x, train, path=1)
        return jnp.where(visible[:, None], colour, texture)


@register_model(ROUTED_MODEL)
def toplight_dual_routed(**kwargs: Any) -> RoutedDualPath:
    """``dual_path_mobilenetv3_large`` options (``private_blocks`` 4: TOP, 1: souped)."""
    base = dual_path_mobilenetv3_large(**kwargs)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    fields.pop("parent", None)
    fields.pop("name", None)
    return RoutedDualPath(**fields)


def init_variables(model: DualPathMobileNetV3, seed: int) -> dict:
    """Fresh variables of ``model`` (TOP or souped, with or without FDR), built as §4.1
    builds the TOP network: one single-path MobileNetV3 initialised once and its private
    blocks copied into both paths (identical paths), plus a separately initialised FDR.

    Same tree as ``model.init`` (checked against ``jax.eval_shape``) at a fraction of the
    compile time, which dominates a small run on CPU: half the network, and random bits from
    XLA's RngBitGenerator (``impl="rbg"``, deterministic for a seed on a given backend)
    instead of per-parameter threefry graphs.
    """
    from hfrjax.models.mobilenetv3 import MobileNetV3, input_hw, mobilenetv3_large_blocks
    from hfrjax.train import checkpoint as ckpt_lib

    h, w = input_hw(model.input_size)
    x = jnp.zeros((2, h, w, model.in_channels), jnp.float32)
    single = MobileNetV3(
        width_mult=model.width_mult,
        embedding_dim=model.embedding_dim,
        imagenet_head=model.imagenet_head,
        num_classes=model.num_classes,
        dropout=model.dropout,
        input_size=model.input_size,
        in_channels=model.in_channels,
        depthwise_impl=model.depthwise_impl,
        dtype=model.dtype,
        param_dtype=model.param_dtype,
    )
    key_net, key_fdr = jax.random.split(jax.random.key(int(seed), impl="rbg"))
    variables = dual_path_variables_from_single(
        dict(_compiled_init(single, (2, h, w, model.in_channels), train=False)(key_net)),
        model.private_blocks,
    )
    if model.fdr is not None:
        c4 = mobilenetv3_large_blocks(model.width_mult)[3].out_channels
        z_shape = (1, -(-h // 8), -(-w // 8), c4)  # The Block4 map (three stride-2 stages).
        fdr = model.fdr.clone(parent=None)
        variables["params"] = {
            **variables["params"],
            "fdr": _compiled_init(fdr, z_shape)(key_fdr)["params"],
        }
    want = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    bad = ckpt_lib.shape_problems(dict(want), variables)
    if bad:  # A change of the model's layout that this shortcut does not know.
        raise AssertionError("init_variables disagrees with model.init: " + "; ".join(bad[:5]))
    return variables


_INIT_CACHE: dict[tuple[str, tuple[int, ...]], Any] = {}


def _compiled_init(module, shape: tuple[int, ...], **call_kwargs):
    """``key -> module.init`` on zeros of ``shape``, compiled once per (module, shape) and
    cheaply (a one-off function: its run time is negligible)."""
    cache_key = (repr(module), tuple(shape), tuple(sorted(call_kwargs.items())))
    if cache_key not in _INIT_CACHE:
        x = jnp.zeros(shape, jnp.float32)

        def init(key):
            return module.init({"params": key, "dropout": key}, x, **call_kwargs)

        key = jax.random.key(0, impl="rbg")
        _INIT_CACHE[cache_key] = (
            jax.jit(init).lower(key).compile(compiler_options=_CHEAP_COMPILE)
        )
    return _INIT_CACHE[cache_key]


def network_kind(params: Mapping[str, Any]) -> str:
    """SINGLE, TOP or SOUPED from the top-level names of a MobileNetV3 params tree."""
    names = set(params)
    if "block1" in names and "block2" in names:
        return SINGLE
    if {"block1_1", "block1_2", "block2_1", "block2_2"} <= names:
        return TOP
    if {"block1_1", "block1_2", "block2"} <= names:
        return SOUPED
    raise ValueError(
        "the weights are not a MobileNetV3-Large of TOPLight (top-level names "
        f"{sorted(names)}); expected block1..block7 (single path), block1_1/block1_2 .. "
        "block4_1/block4_2 (TOP) or block1_1/block1_2 + block2 (souped)"
    )


def convert_network(variables: Mapping[str, Any], private_blocks: int, where: str) -> dict:
    """Full variables of any recognised layout -> the layout with ``private_blocks`` private
    blocks (1 or 4): copies for a single path (§4.1), the uniform soup for TOP -> 1 (§3.1)."""
    kind = network_kind(variables["params"])
    if private_blocks not in (1, 4):
        raise ValueError(f"private_blocks must be 1 (souped) or 4 (TOP), got {private_blocks}")
    if kind == SINGLE:
        return dual_path_variables_from_single(variables, private_blocks)
    if kind == TOP:
        return dict(variables) if private_blocks == 4 else uniform_soup(variables)
    if private_blocks == 4:
        raise ValueError(
            f"{where} holds a souped network (two stems, Block2-7 shared); a TOP network "
            "(Block1-4 per path) cannot be rebuilt from it"
        )
    return dict(variables)


def _drop_fresh(tree: Mapping[str, Any]) -> dict:
    return {k: v for k, v in tree.items() if k not in FRESH_SUBTREES}


def load_pretrained(path: str, single_path_model=None) -> dict:
    """{"params", "batch_stats"} of ``path``: an export or training workdir (any task whose
    export is a MobileNetV3), or a torchvision ``.pth`` / ``.pt`` state_dict (converted with
    ``single_path_model``, a `hfrjax.models.mobilenetv3.MobileNetV3` of the wanted width)."""
    if str(path).endswith((".pth", ".pt")):
        from hfrjax.models.convert import load_torch_state_dict
        from hfrjax.models.mobilenetv3 import mobilenetv3_params_from_torch_state_dict

        if single_path_model is None:
            raise ValueError(f"{path}: converting a torchvision state_dict needs the model")
        return dict(
            mobilenetv3_params_from_torch_state_dict(
                load_torch_state_dict(path), single_path_model
            )
        )
    from hfrjax.train.export import load_weights

    _, variables = load_weights(path)
    if "params" not in variables:
        raise ValueError(f"{path} holds no 'params' collection (has {sorted(variables)})")
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def initial_network_variables(
    path: str, template: Mapping[str, Any], private_blocks: int, single_path_model=None
) -> dict:
    """The starting variables of a TOPLight stage (module docstring): ``path``'s network
    converted to ``private_blocks`` private blocks, its head and FDR replaced by
    ``template``'s (the new model's fresh variables), every shape checked against it."""
    from hfrjax.train import checkpoint as ckpt_lib

    loaded = load_pretrained(path, single_path_model)
    converted = convert_network(loaded, private_blocks, path)
    out = {}
    for coll, fresh in template.items():
        got = _drop_fresh(converted.get(coll, {}))
        want = _drop_fresh(fresh)
        bad = ckpt_lib.shape_problems(want, got)
        if bad:
            raise ckpt_lib.CheckpointMismatchError(
                f"{coll} of {path} do not fit the configured network ({len(bad)} problem(s)): "
                + "; ".join(bad[:8])
            )
        merged = dict(fresh)
        merged.update(jax.tree.map(jnp.asarray, got))
        out[coll] = merged
    return out


def souped_blocks_equal_mean(top: Mapping[str, Any], souped: Mapping[str, Any]) -> float:
    """Largest |souped Block2-4 - mean of the TOP paths' Block2-4| (a diagnostic)."""
    worst = 0.0
    for b in (2, 3, 4):
        a = traverse_util.flatten_dict(top[block_name(b, 0)])
        c = traverse_util.flatten_dict(top[block_name(b, 1)])
        s = traverse_util.flatten_dict(souped[block_name(b, None)])
        for k in s:
            worst = max(worst, float(jnp.max(jnp.abs(s[k] - (a[k] + c[k]) / 2))))
    return worst
