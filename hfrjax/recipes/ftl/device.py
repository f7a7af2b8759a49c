"""Host functions over the mesh for FTL's host-side passes (UpdateStats, hold-out evaluation).

`MeshEmbedder` of the core normalises its output; FTL's statistics need the raw rich features g
(Eq. 5-7 work on unnormalised g), so this is the same padding and sharding without it.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from hfrjax.train import mesh as mesh_lib


class MeshFunction:
    """``fn(params, model_state, images) -> pytree of [B, ...]`` as a host function on the
    mesh: the batch is padded to a multiple of the data axis and sharded along it; outputs
    come back as numpy arrays with the padding removed."""

    def __init__(self, fn: Callable, params: Any, model_state: Any, mesh):
        self._n_data = mesh.shape[mesh_lib.DATA_AXIS]
        self._batch = mesh_lib.batch_sharding(mesh)
        rep = mesh_lib.replicated(mesh)
        # Placed once: a host copy would travel to the devices with every batch.
        self.params, self.model_state = jax.device_put((params, model_state), rep)
        self._run = jax.jit(fn, in_shardings=(rep, rep, self._batch), out_shardings=rep)

    def __call__(self, images: np.ndarray):
        images = np.asarray(images)
        n = len(images)
        pad = (-n) % self._n_data
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
        x = jax.make_array_from_callback(images.shape, self._batch, lambda i: images[i])
        out = self._run(self.params, self.model_state, x)
        return jax.tree.map(lambda a: np.asarray(a.addressable_data(0))[:n], out)
