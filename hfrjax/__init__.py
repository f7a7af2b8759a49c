"""hfrjax: heterogeneous (NIR/thermal-VIS) face recognition in JAX/Flax."""

__version__ = "0.1.0"
