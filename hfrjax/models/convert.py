"""Generic PyTorch ``state_dict`` -> flax variables conversion.

The backbones name their flax submodules after the PyTorch attribute paths of the
reference implementations, with ``_<i>`` standing for a ``Sequential`` index
(``layer1_0`` <-> ``layer1.0``). Conversion is therefore mechanical: walk the flax variable
template, derive the torch key of every leaf, fetch it and fix the layout. Nothing here
imports torch; tensors are accepted as anything ``numpy.asarray`` (or ``.numpy()``) takes.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

# flax leaf name -> torch parameter/buffer name.
_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",  # BatchNorm gamma
    ("params", "alpha"): "weight",  # PReLU slope
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_INDEX = re.compile(r"^(.*)_(\d+)$")


def to_numpy(tensor: Any) -> np.ndarray:
    """torch tensor / jax array / numpy array -> float32 numpy *copy* (no torch import).

    The copy matters: ``Tensor.numpy()`` shares memory, and a torch model that keeps
    training (BN running stats update in place) would otherwise change converted weights.
    """
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu().float().numpy()
    return np.array(tensor, dtype=np.float32, copy=True)


def load_torch_state_dict(source: Any) -> Mapping[str, Any]:
    """A state_dict from a mapping, or from a ``.pth``/``.pt`` path loaded with
    ``torch.load(weights_only=True)`` (no pickled code runs). A checkpoint that wraps the
    weights (``{"state_dict": ...}`` or ``{"model": ...}``) is unwrapped; anything else is
    refused with a message naming the file."""
    import os

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            import torch
        except ImportError:
            raise ImportError(f"reading {path} needs PyTorch (pip install torch)") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} does not exist") from None
        except Exception as e:  # noqa: BLE001 - unpickling errors have many types.
            raise ValueError(
                f"{path} is not a weights-only PyTorch file ({type(e).__name__}: {e}); "
                "save it with torch.save(model.state_dict(), path)"
            ) from None
        for key in ("state_dict", "model"):
            if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
                obj = obj[key]
        if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
            raise ValueError(
                f"{path} holds a {type(obj).__name__}, not a state_dict (a mapping of parameter "
                "names to tensors)"
            )
        return obj
    if not isinstance(source, Mapping):
        raise TypeError(
            f"expected a state_dict (mapping of parameter names to tensors) or a path to a "
            f".pth file, got {type(source).__name__}"
        )
    return source


def strip_prefix(state_dict: Any, prefix: str = "module.") -> dict[str, Any]:
    """Drop a DataParallel-style ``module.`` prefix from every key that has it; ``state_dict``
    may also be a path to a ``.pth`` file (`load_torch_state_dict`)."""
    state_dict = load_torch_state_dict(state_dict)
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def torch_key(collection: str, path: tuple[str, ...]) -> str:
    """flax variable path -> torch state_dict key (``layer1_0/conv1/kernel`` ->
    ``layer1.0.conv1.weight``)."""
    *modules, leaf = path
    parts = []
    for name in modules:
        match = _INDEX.match(name)
        parts.extend([match.group(1), match.group(2)] if match else [name])
    try:
        parts.append(_LEAF_TO_TORCH[(collection, leaf)])
    except KeyError:
        raise KeyError(f"no torch equivalent for flax leaf {collection}/{'/'.join(path)}") from None
    return ".".join(parts)


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """torch conv weight OIHW -> flax HWIO (grouped convs: I is in_channels / groups in both)."""
    return np.transpose(weight, (2, 3, 1, 0))


def dense_kernel(weight: np.ndarray, chw: tuple[int, int, int] | None = None) -> np.ndarray:
    """torch Linear weight [out, in] -> flax kernel [in, out].

    ``chw``: the linear layer follows a flatten of a (C, H, W) feature map. torch flattens
    NCHW in C, H, W order, flax flattens NHWC in H, W, C order, so the input axis is permuted.
    """
    if chw is not None:
        c, h, w = chw
        out = weight.shape[0]
        weight = weight.reshape(out, c, h, w).transpose(0, 2, 3, 1).reshape(out, h * w * c)
    return weight.T


def convert_state_dict(
    template: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    *,
    flatten_chw: Mapping[str, tuple[int, int, int]] | None = None,
    ignore: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Fill the flax variable ``template`` (a pytree of arrays or ShapeDtypeStructs, e.g.
    from ``jax.eval_shape(model.init, ...)``) from a torch ``state_dict``.

    ``flatten_chw`` maps a torch Linear key (e.g. ``"fc.weight"``) to the (C, H, W) shape
    of the feature map flattened before it. Keys in ``ignore`` and ``num_batches_tracked``
    buffers may be absent from the template; any other leftover or missing key, or any
    shape mismatch, raises ``ValueError`` (a silent partial load is the worst outcome).
    """
    flatten_chw = dict(flatten_chw or {})
    state = {k: to_numpy(v) for k, v in strip_prefix(state_dict).items()}
    used: set[str] = set()
    flat_out = {}
    errors = []
    for path, leaf in traverse_util.flatten_dict(dict(template)).items():
        collection, *rest = path
        key = torch_key(collection, tuple(rest))
        if key not in state:
            errors.append(f"missing torch key {key!r} for flax {'/'.join(path)}")
            continue
        value = state[key]
        used.add(key)
        if rest[-1] == "kernel":
            value = (
                conv_kernel(value) if value.ndim == 4 else dense_kernel(value, flatten_chw.get(key))
            )
        if tuple(value.shape) != tuple(leaf.shape):
            errors.append(f"{key}: converted shape {value.shape} != flax {tuple(leaf.shape)}")
            continue
        flat_out[path] = jnp.asarray(value, dtype=leaf.dtype)
    leftover = sorted(
        k
        for k in state
        if k not in used and k not in ignore and not k.endswith("num_batches_tracked")
    )
    if leftover:
        errors.append(f"unexpected torch keys: {leftover}")
    if errors:
        raise ValueError("state_dict does not match the flax model:\n  " + "\n  ".join(errors))
    return traverse_util.unflatten_dict(flat_out)
