"""Multi-host start-up through ``jax.distributed`` (JAX's own coordination service).

Every process of a multi-host job runs the same command. On TPU pods and SLURM clusters
``jax.distributed.initialize()`` discovers the coordinator itself; elsewhere pass
``--coordinator_address host:port --num_processes N --process_id i`` (or the matching
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables).
"""

from __future__ import annotations

import os

import jax
from absl import flags, logging

flags.DEFINE_bool(
    "multihost",
    False,
    "initialise jax.distributed (auto-detects TPU pods and "
    "SLURM; or give the coordinator flags below)",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host)")
flags.DEFINE_integer("num_processes", None, "number of processes (multi-host)")
flags.DEFINE_integer("process_id", None, "index of this process (multi-host)")


def maybe_initialize() -> None:
    """Initialises jax.distributed when the flags or environment ask for a multi-host run."""
    f = flags.FLAGS
    address = f.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not (f.multihost or address):
        return
    kwargs = {}
    if address:
        kwargs["coordinator_address"] = address
        n = f.num_processes or os.environ.get("JAX_NUM_PROCESSES")
        i = f.process_id if f.process_id is not None else os.environ.get("JAX_PROCESS_ID")
        if n is None or i is None:
            raise ValueError("--coordinator_address needs --num_processes and --process_id")
        kwargs.update(num_processes=int(n), process_id=int(i))
    jax.distributed.initialize(**kwargs)
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
