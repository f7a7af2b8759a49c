"""Converters from distributed dataset formats to the library's TFRecord datasets.

`common` holds what every converter shares (bad-input policy and reports, progress lines,
finding the input images, command-line plumbing), `writing` the writing stage (shards,
dataset.json, protocol, per-fold counts); each format has its own module.
"""
