"""Device mesh and shardings. One code path for 1 CPU, 8 fake CPU devices, a GPU or a TPU slice.

The mesh has a ``data`` axis (batch sharding) and a ``model`` axis (class-sharded
classifiers). Batches are sharded over ``data``; parameters are replicated unless a recipe
shards them.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(data: int = -1, model: int = 1, *, devices=None) -> Mesh:
    """A (data, model) mesh over ``devices`` (default: all); ``data=-1`` takes what ``model``
    leaves."""
    n = len(devices) if devices is not None else jax.device_count()
    if data == -1:
        if n % model:
            raise ValueError(f"{n} devices cannot be split into model={model} groups")
        data = n // model
    if data * model != n:
        raise ValueError(f"mesh data={data} x model={model} != {n} devices")
    # Auto axes: the compiler propagates shardings from the annotated inputs and outputs.
    return jax.make_mesh(
        (data, model),
        (DATA_AXIS, MODEL_AXIS),
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=devices,
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def state_sharding(state, mesh: Mesh, *, shard_head: bool, head_path=("head", "weight")):
    """Shardings for a train state: replicated, except (``shard_head``) the classifier rows at
    ``head_path`` and every optimizer-state leaf mirroring them (same path suffix and shape),
    which are split by rows over the ``model`` axis."""
    head_path = tuple(head_path)
    rep = replicated(mesh)
    if not shard_head:
        return jax.tree.map(lambda _: rep, state)
    rows = NamedSharding(mesh, PartitionSpec(MODEL_AXIS, None))
    head = state.params
    for k in head_path:
        head = head[k]
    shape = head.shape

    def pick(path, leaf):
        names = tuple(getattr(p, "key", getattr(p, "name", getattr(p, "idx", None))) for p in path)
        if names[-len(head_path) :] == head_path and getattr(leaf, "shape", None) == shape:
            return rows
        return rep

    return jax.tree_util.tree_map_with_path(pick, state)
