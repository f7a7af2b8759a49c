"""``hfrjax export | import-onnx | embed | verify | search``: each module has
``add_arguments(parser)`` and ``run(args) -> int`` (see ``hfrjax/cli.py``). Imports of jax,
onnx and the models happen inside ``run`` so that ``hfrjax --help`` stays fast."""
