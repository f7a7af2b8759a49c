"""Converters from distributed dataset formats to the library's TFRecord datasets.

`common` holds what every converter shares (image checks with a skip-or-fail policy, missing
file reports, progress lines); each format has its own module.
"""
