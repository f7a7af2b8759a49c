"""XLA:CPU options the library sets by default, before any JAX backend starts.

On jax/jaxlib 0.10, XLA:CPU hands 2-D float32 convolutions to YNNPACK, whose kernel-gradient
convolution is 5-10x slower than PyTorch's (oneDNN) on face-recognition trunk shapes
(``launch/repro_conv_backward.py`` reproduces it standalone). Excluding single convolutions
from YNNPACK fusions sends them to XLA's own Eigen convolutions, which are on par with PyTorch:
the whole CPU training step gets 1.2-1.9x faster (README, "Benchmarks").

XLA reads ``XLA_FLAGS`` when the first backend starts, not when jax is imported, so appending
here works as long as no computation ran before ``import hfrjax``. It is skipped when:

* ``HFRJAX_XLA_DEFAULTS=0`` is set, or the user's ``XLA_FLAGS`` already names the option;
* the installed jaxlib is not a version this was measured on (XLA aborts on a flag it does
  not know, so an unknown version gets nothing);
* an accelerator plugin (CUDA, ROCm, TPU) is installed: the option only concerns the CPU.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

YNN_CONV_OPTION = "--xla_cpu_experimental_ynn_fusion_type"
CPU_DEFAULTS = (f"{YNN_CONV_OPTION}=-individual_convolution",)
# jaxlib (major, minor) releases the options were measured on and are known to.
TESTED_JAXLIB = ((0, 10),)
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "libtpu")


def _jaxlib_version() -> tuple[int, int] | None:
    try:
        major, minor = importlib.metadata.version("jaxlib").split(".")[:2]
        return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def cpu_defaults_apply(environ: dict | None = None) -> bool:
    """Whether `apply_cpu_defaults` would add the options (see the module docstring)."""
    env = os.environ if environ is None else environ
    if env.get("HFRJAX_XLA_DEFAULTS", "1") == "0":
        return False
    if YNN_CONV_OPTION in env.get("XLA_FLAGS", ""):
        return False
    if _jaxlib_version() not in TESTED_JAXLIB:
        return False
    return not any(importlib.util.find_spec(p) for p in _ACCELERATOR_PLUGINS)


def apply_cpu_defaults() -> bool:
    """Appends `CPU_DEFAULTS` to ``XLA_FLAGS`` when they apply; returns whether it did."""
    if not cpu_defaults_apply():
        return False
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *CPU_DEFAULTS]).strip()
    return True
