"""hfrjax: heterogeneous (NIR/thermal-VIS) face recognition in JAX/Flax."""

__version__ = "0.1.0"

from hfrjax import xla_defaults as _xla_defaults

# Before any backend starts: XLA:CPU's faster convolutions (hfrjax/xla_defaults.py).
_xla_defaults.apply_cpu_defaults()


def load_embedder(path):
    """Loads an exported inference checkpoint; see hfrjax.train.export.load_embedder."""
    from hfrjax.train.export import load_embedder as _load

    return _load(path)
