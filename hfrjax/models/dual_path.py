"""TOPLight's dual-path MobileNetV3-Large and the uniform soup (Yu et al., CVPR 2023, §3.1-3.3).

Two paths share one network except for the first ``private_blocks`` of Block1..7 (Table 1),
which exist once per path: path 0 is Block*-1, the colour / visible path, path 1 is Block*-2,
the texture / infrared path.
* ``private_blocks=4``: the task-oriented pretraining (TOP) network (§3.2): Block1-4
  duplicated, Block5-7 shared. The fake-domain loss (Eq. 1-2) reads each path's Block4
  output x_i (``intermediates['block4']``) and its final feature x^_i (``'block7'``: the
  1280-d pooled pre-logits, or the head output) - both per path.
* ``private_blocks=1``: the network after the uniform soup (§3.1 Step 2, §3.3): two stems
  (Block1-1, Block1-2), Block2-7 shared; FDR (``models.fdr``) goes after Block4.

Batching: given both paths' images, the private blocks run per path and the shared blocks
run once on the concatenation (visible first), so BatchNorm statistics in the shared blocks
cover both modalities, as the paper's "concatenate x1 and x2 and feed them into Block5".

Parameter names: private blocks ``block{b}_{1|2}``, shared blocks ``block{b}``, the head
``head`` and FDR ``fdr``; inside each block the names of ``mobilenetv3.MobileNetV3``.
``dual_path_variables_from_single`` builds the TOP network from a single-path (e.g. ImageNet)
MobileNetV3 ("initialize the first four blocks twice", §4.1); ``uniform_soup`` turns a TOP
network's variables into the souped network's.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hfrjax.models.fdr import FDR
from hfrjax.models.layers import Dtype
from hfrjax.models.mobilenetv3 import (
    NUM_BLOCKS,
    MobileNetV3Block,
    MobileNetV3Head,
    check_head_options,
    input_hw,
    mobilenetv3_large_blocks,
)
from hfrjax.models.registry import register_model

VISIBLE, INFRARED = 0, 1  # path indices: Block*-1 (colour / visible), Block*-2 (texture / IR)
NUM_PATHS = 2
FDR_AFTER_BLOCK = 4  # TOPLight §3.3: FDR refines the Block4 output.
SOUPED_BLOCKS = (2, 3, 4)  # §3.1 Step 2: the pre-embedding block group averaged by the soup.


def block_name(block: int, path: int | None) -> str:
    """Submodule name of Block``block`` (1-based); ``path`` None for a shared block."""
    return f"block{block}" if path is None else f"block{block}_{path + 1}"


class DualPathMobileNetV3(nn.Module):
    """Dual-path MobileNetV3-Large (module docstring).

    ``model.apply(variables, x, train=False, *, path=None, return_intermediates=False)``
    (``train`` second, as every backbone here; ``path`` keyword-only):
    * ``x`` an array and ``path`` 0 / 1: that path only; returns one output array;
    * ``x`` a pair ``(x_visible, x_infrared)`` (same spatial size, any batch sizes): each
      through its path, the shared blocks on the concatenation; returns a pair;
    * ``x`` an array and ``path=None``: the same images through both paths (``init`` this
      way, e.g. with ``registry.dummy_input``, so that both paths get parameters).
    ``path`` selects Python control flow: keep it static under ``jax.jit``.
    With ``return_intermediates`` the result is ``(output, intermediates)``, intermediates
    mapping ``'block1'..'block7'``, ``'fdr'`` (when present) and ``'pre_neck'`` to per-path
    pairs (or single arrays for a one-path call). ``'block4'`` is taken before FDR.
    """

    private_blocks: int = 4
    fdr: FDR | None = None
    width_mult: float = 1.0
    embedding_dim: int | None = None
    imagenet_head: bool = False
    num_classes: int = 1000
    dropout: float = 0.2
    input_size: int | tuple[int, int] = 224
    in_channels: int = 3
    depthwise_impl: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray | Sequence[jnp.ndarray],
        train: bool = False,
        *,
        path: int | None = None,
        return_intermediates: bool = False,
    ):
        if not 1 <= self.private_blocks < NUM_BLOCKS:
            raise ValueError(
                f"private_blocks must be in 1..{NUM_BLOCKS - 1}, got {self.private_blocks}"
            )
        inputs, paths = self._route(x, path)
        for image in inputs:
            chex.assert_shape(image, (None, *input_hw(self.input_size), self.in_channels))
        sizes = [image.shape[0] for image in inputs]

        def per_path(value):
            """Shared-stage array -> per-path list (split along the batch)."""
            return list(jnp.split(value, np.cumsum(sizes)[:-1])) if len(sizes) > 1 else [value]

        intermediates: dict[str, list[jnp.ndarray]] = {}
        feats: list[jnp.ndarray] = list(inputs)  # per path while private
        shared: jnp.ndarray | None = None  # the concatenation once shared
        for b, spec in enumerate(mobilenetv3_large_blocks(self.width_mult), start=1):

            def make(name, spec=spec):
                return MobileNetV3Block(
                    spec, self.depthwise_impl, self.dtype, self.param_dtype, name=name
                )

            if b <= self.private_blocks:
                feats = [make(block_name(b, p))(f, train) for f, p in zip(feats, paths)]
                intermediates[f"block{b}"] = feats
            else:
                if shared is None:
                    shared = jnp.concatenate(feats) if len(feats) > 1 else feats[0]
                shared = make(block_name(b, None))(shared, train)
                intermediates[f"block{b}"] = per_path(shared)
            if b == FDR_AFTER_BLOCK and self.fdr is not None:
                if shared is None:  # Block4 private: one FDR module serves both paths
                    feats = [self.fdr(f) for f in feats]
                    intermediates["fdr"] = feats
                else:
                    shared = self.fdr(shared)
                    intermediates["fdr"] = per_path(shared)
        out, pre_neck = MobileNetV3Head(
            self.embedding_dim,
            self.imagenet_head,
            self.num_classes,
            self.dropout,
            self.param_dtype,
            name="head",
        )(shared, train)
        intermediates["pre_neck"] = per_path(pre_neck)
        outputs = per_path(out.astype(jnp.float32))
        if path is not None:
            result = outputs[0]
            inter = {k: v[0] for k, v in intermediates.items()}
        else:
            result = tuple(outputs)
            inter = {k: tuple(v) for k, v in intermediates.items()}
        return (result, inter) if return_intermediates else result

    @staticmethod
    def _route(x, path) -> tuple[tuple[jnp.ndarray, ...], tuple[int, ...]]:
        if path is not None:
            if isinstance(x, (tuple, list)):
                raise ValueError("give one image array with path=..., or a pair with path=None")
            if isinstance(path, bool) or path not in range(NUM_PATHS):
                raise ValueError(f"path must be 0 (visible) or 1 (infrared), got {path!r}")
            return (x,), (int(path),)
        if isinstance(x, (tuple, list)):
            if len(x) != NUM_PATHS:
                raise ValueError(f"expected {NUM_PATHS} inputs (visible, infrared), got {len(x)}")
            return tuple(x), tuple(range(NUM_PATHS))
        return (x,) * NUM_PATHS, tuple(range(NUM_PATHS))


def _make_fdr(fdr: bool | Mapping[str, Any] | FDR | None, dtype, param_dtype) -> FDR | None:
    if fdr is None or fdr is False:
        return None
    if isinstance(fdr, FDR):
        return fdr
    options = {} if fdr is True else dict(fdr)
    return FDR(**{"dtype": dtype, "param_dtype": param_dtype, **options})


@register_model("mobilenetv3_large_dual")
def dual_path_mobilenetv3_large(
    *,
    private_blocks: int = 4,
    fdr: bool | Mapping[str, Any] | FDR | None = False,
    width_mult: float = 1.0,
    embedding_dim: int | None = None,
    imagenet_head: bool = False,
    num_classes: int = 1000,
    dropout: float = 0.2,
    input_size: int | tuple[int, int] = 224,
    in_channels: int = 3,
    depthwise_impl: str = "auto",
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> DualPathMobileNetV3:
    """TOPLight's dual-path MobileNetV3-Large (Block1-4 per path by default).

    ``fdr``: False / None (none), True (FDR with the paper's sigma = 2, mu = 3), a mapping
    of ``FDR`` options (e.g. ``{"vertical": False}`` for Table 3's H_s + SA) or an ``FDR``.
    Head options as ``mobilenetv3_large``.
    """
    check_head_options(embedding_dim, num_classes, dropout)
    if not 1 <= private_blocks < NUM_BLOCKS:
        raise ValueError(f"private_blocks must be in 1..{NUM_BLOCKS - 1}, got {private_blocks}")
    mobilenetv3_large_blocks(width_mult)  # validates width_mult
    size = input_hw(input_size)
    return DualPathMobileNetV3(
        private_blocks=private_blocks,
        fdr=_make_fdr(fdr, dtype, param_dtype),
        width_mult=width_mult,
        embedding_dim=embedding_dim,
        imagenet_head=imagenet_head,
        num_classes=num_classes,
        dropout=dropout,
        input_size=size[0] if size[0] == size[1] else size,
        in_channels=in_channels,
        depthwise_impl=depthwise_impl,
        dtype=dtype,
        param_dtype=param_dtype,
    )


@register_model("mobilenetv3_large_souped")
def souped_mobilenetv3_large(**kwargs: Any) -> DualPathMobileNetV3:
    """The network after the uniform soup: two stems, Block2-7 shared (``private_blocks=1``);
    other options as ``dual_path_mobilenetv3_large`` (add ``fdr=True`` for VI training)."""
    if "private_blocks" in kwargs:
        raise ValueError("the souped network has exactly one private block (the stem)")
    return dual_path_mobilenetv3_large(private_blocks=1, **kwargs)


# --------------------------------------------------------------- variable transforms


def _collections(variables: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """A full ``{'params': ..., 'batch_stats': ...}`` dict, or a bare params tree."""
    if "params" in variables:
        return dict(variables), True
    return {"params": dict(variables)}, False


def uniform_soup(
    variables: Mapping[str, Any], blocks: Sequence[int] = SOUPED_BLOCKS
) -> dict[str, Any]:
    """Uniform soup (TOPLight §3.1 Step 2, after Wortsman et al., ICML 2022): average the
    two paths' Block2-4 (``block{b}_1`` and ``block{b}_2`` -> ``block{b}``), keep the two
    stems and everything else unchanged.

    Accepts a full variables dict (every collection is averaged: parameters and the BN
    running statistics alike, as averaging the two state_dicts would) or a bare params
    tree; returns the same kind, ready for ``souped_mobilenetv3_large`` (with FDR, add the
    freshly initialised ``fdr`` parameters, which TOP does not train).
    """
    trees, full = _collections(variables)
    out = {}
    for collection, tree in trees.items():
        tree = dict(tree)
        for b in blocks:
            first, second, merged = (block_name(b, 0), block_name(b, 1), block_name(b, None))
            has_blocks = any(k.startswith("block") for k in tree)
            if first not in tree and second not in tree and not has_blocks:
                continue  # a collection without block variables
            if first not in tree or second not in tree:
                raise KeyError(
                    f"uniform_soup: {collection!r} needs both {first!r} and {second!r}; "
                    f"has {sorted(tree)}"
                )
            if merged in tree:
                raise KeyError(f"uniform_soup: {collection!r} already has a shared {merged!r}")
            a, c = tree.pop(first), tree.pop(second)
            if jax.tree.structure(a) != jax.tree.structure(c):
                raise ValueError(f"uniform_soup: {first} and {second} have different structures")

            def mean(u, v, name=first):
                if u.shape != v.shape:
                    raise ValueError(f"uniform_soup: shape {u.shape} != {v.shape} in {name}")
                avg = (jnp.asarray(u, jnp.float32) + jnp.asarray(v, jnp.float32)) / 2
                return avg.astype(u.dtype)

            tree[merged] = jax.tree.map(mean, a, c)
        out[collection] = tree
    return out if full else out["params"]


def dual_path_variables_from_single(
    variables: Mapping[str, Any], private_blocks: int = 4
) -> dict[str, Any]:
    """Variables of a single-path ``MobileNetV3`` (e.g. converted ImageNet weights) ->
    variables of ``DualPathMobileNetV3(private_blocks)``: Block1..``private_blocks`` copied
    into both paths, the rest shared ("initialize the first four blocks twice", TOPLight
    §4.1). Same kind as the input (full variables dict or bare params)."""
    if not 1 <= private_blocks < NUM_BLOCKS:
        raise ValueError(f"private_blocks must be in 1..{NUM_BLOCKS - 1}, got {private_blocks}")
    trees, full = _collections(variables)
    out = {}
    for collection, tree in trees.items():
        tree = dict(tree)
        for b in range(1, private_blocks + 1):
            name = block_name(b, None)
            if name not in tree:
                if any(k.startswith("block") for k in tree):
                    raise KeyError(f"{collection!r} has no {name!r}; has {sorted(tree)}")
                continue
            value = tree.pop(name)
            for p in range(NUM_PATHS):
                tree[block_name(b, p)] = jax.tree.map(jnp.array, value)  # independent copies
        out[collection] = tree
    return out if full else out["params"]
