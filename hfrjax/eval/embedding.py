"""The one embedding loop: batches padded to one shape, flip fusion, modality, normalisation.

Used by the trainer (evaluation, statistics hooks), protocol evaluation, verification packs and
exported embedders. An embedding function is ``fn(images)`` or ``fn(images, modality)``
(uint8 [B, H, W, C] and int32 [B] codes of `hfrjax.data.tfrecord.MODALITIES`) returning
[B, D]; models that treat modalities differently (SSN's per-modality saliency masks) take the
second argument.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Sequence

import jax
import numpy as np

from hfrjax.data import tfrecord


def l2_normalize(x: np.ndarray, eps: float = 1e-12, dtype=np.float32) -> np.ndarray:
    """Rows scaled to unit norm (all-zero rows stay zero), on the host (numpy); the jax
    version for traced code is `hfrjax.losses.l2_normalize`."""
    x = np.asarray(x, dtype)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def modality_codes(modality: Any, n: int) -> np.ndarray:
    """int32 [n] codes from None (all "vis"), a modality name, or per-image codes/names."""
    if modality is None:
        return np.zeros(n, np.int32)
    if isinstance(modality, str):
        if modality not in tfrecord.MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; known: {tfrecord.MODALITIES}")
        return np.full(n, tfrecord.MODALITIES.index(modality), np.int32)
    m = np.asarray(modality)
    if m.dtype.kind in "US":
        return np.asarray([modality_codes(str(x), 1)[0] for x in m], np.int32)
    if m.shape != (n,):
        raise ValueError(f"modality must be a name or [{n}] codes, got shape {m.shape}")
    return m.astype(np.int32)


def takes_modality(fn: Callable) -> bool:
    """Whether ``fn`` accepts a second positional (modality) argument."""
    if getattr(fn, "takes_modality", None) is not None:
        return bool(fn.takes_modality)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def call_embed(fn: Callable, images: np.ndarray, modality: Any = None, what: str = "images"):
    """``fn`` on one batch, with the modality when it takes one; checks shape and finiteness."""
    if takes_modality(fn):
        out = fn(images, modality_codes(modality, len(images)))
    else:
        out = fn(images)
    out = np.asarray(out, np.float32)
    if out.ndim != 2 or out.shape[0] != len(images):
        raise ValueError(
            f"the embedding function returned embeddings of shape {out.shape} for a batch of {len(images)} "
            f"{what}; expected [{len(images)}, D]"
        )
    return out


def embed_batches(
    fn: Callable,
    batches,
    *,
    flip: bool = False,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """L2-normalised embeddings of the valid rows of ``batches``, in order.

    ``batches`` yields dicts with "image" (uint8, full batches: padding keeps one shape for
    jit), optional "modality" and "valid". ``transform`` (e.g. an occlusion) is applied to the
    images first; ``flip`` adds the mirrored images' embeddings before normalising (the usual
    test-time augmentation). ``names`` (keys of the rows) make error messages name the image.
    """
    parts, done = [], 0
    for batch in batches:
        images = np.asarray(batch["image"])
        if transform is not None:
            t = np.asarray(transform(images))
            if t.shape != images.shape:
                raise ValueError(f"transform changed the batch shape {images.shape} to {t.shape}")
            images = t
        modality = batch.get("modality")
        emb = call_embed(fn, images, modality)
        if flip:
            emb = emb + call_embed(fn, np.ascontiguousarray(images[:, :, ::-1]), modality)
        valid = np.asarray(batch.get("valid", np.ones(len(images), bool)), bool)
        emb = emb[valid]
        if not np.isfinite(emb).all():
            bad = done + int(np.nonzero(~np.isfinite(emb).all(axis=1))[0][0])
            at = f"key {names[bad]!r}" if names is not None else f"row {bad}"
            raise ValueError(f"the embedding function returned non-finite values for {at}")
        done += len(emb)
        parts.append(emb)
    if not parts:
        raise ValueError("nothing to embed")
    return l2_normalize(np.concatenate(parts))


def array_batches(images: np.ndarray, batch_size: int, modality: Any = None):
    """Full batches of an in-memory image array (the last padded with zeros, "valid" False)."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    codes = modality_codes(modality, len(images))
    for start in range(0, len(images), batch_size):
        x, m = images[start : start + batch_size], codes[start : start + batch_size]
        b = len(x)
        if b < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - b, *x.shape[1:]), x.dtype)])
            m = np.concatenate([m, np.zeros(batch_size - b, np.int32)])
        yield {"image": x, "modality": m, "valid": np.arange(batch_size) < b}


def embed_records(
    fn: Callable,
    dataset,
    keys: Sequence[str],
    batch_size: int,
    *,
    image_size=None,
    channels: int = 3,
    flip: bool = False,
    transform=None,
    num_threads: int = 2,
) -> np.ndarray:
    """L2-normalised embeddings [N, D] of a dataset's ``keys``, in order."""
    from hfrjax.data import pipeline

    keys = list(keys)
    if not keys:
        raise ValueError("embed_records got no keys")
    batches = pipeline.iter_eval_batches(
        dataset, keys, batch_size, image_size=image_size, channels=channels, num_threads=num_threads
    )
    out = embed_batches(fn, batches, flip=flip, transform=transform, names=keys)
    if out.shape[0] != len(keys):
        raise RuntimeError(f"embedded {out.shape[0]} images for {len(keys)} keys")
    return out


class MeshEmbedder:
    """A task's pure ``embed(params, model_state, images, modality)`` as a host function over
    all devices of ``mesh``: pads the batch to a multiple of the data axis, jits once per shape.

    ``train_bn``: BN normalises each batch with its own statistics (the updated running
    statistics are discarded; dropout stays off through a fixed key).
    """

    takes_modality = True

    def __init__(self, embed, params, model_state, mesh, *, train_bn: bool = False):
        from hfrjax.train import mesh as mesh_lib

        self.params, self.model_state, self.mesh = params, model_state, mesh
        self._n_data = mesh.shape[mesh_lib.DATA_AXIS]
        self._batch = mesh_lib.batch_sharding(mesh)
        try:
            self._run = _jitted_embed(embed, train_bn, mesh)
        except TypeError:  # An unhashable callable: compiled for this embedder only.
            self._run = _jitted_embed.__wrapped__(embed, train_bn, mesh)

    def __call__(self, images: np.ndarray, modality: Any = None) -> np.ndarray:
        images = np.asarray(images)
        n = len(images)
        codes = modality_codes(modality, n)
        pad = (-n) % self._n_data
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
            codes = np.concatenate([codes, np.repeat(codes[-1:], pad)])
        x = jax.make_array_from_callback(images.shape, self._batch, lambda i: images[i])
        m = jax.make_array_from_callback(codes.shape, self._batch, lambda i: codes[i])
        out = self._run(self.params, self.model_state, x, m)
        return l2_normalize(np.asarray(out.addressable_data(0))[:n])


@functools.lru_cache(maxsize=16)
def _jitted_embed(embed: Callable, train_bn: bool, mesh) -> Callable:
    """`MeshEmbedder`'s compiled function, one per (embed, train_bn, mesh): embedders built
    again for the same function (a new fold, a new evaluation) are not traced again."""
    from hfrjax.train import mesh as mesh_lib

    batch, rep = mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)

    def run(params, model_state, images, modality):
        return embed(params, model_state, images, modality, train_bn)

    return jax.jit(run, in_shardings=(rep, rep, batch, batch), out_shardings=rep)
