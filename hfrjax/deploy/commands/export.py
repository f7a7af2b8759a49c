"""Export an hfrjax model to ONNX (InsightFace conventions) or a serialized JAX artifact.

hfrjax export EXPORT_DIR --format onnx --out model.onnx [--opset N]
hfrjax export EXPORT_DIR --format jax --out model.jaxexport
"""

from __future__ import annotations

import argparse
import sys

from hfrjax.deploy.commands import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="hfrjax export directory (model.json + weights)")
    p.add_argument("--format", required=True, choices=["onnx", "jax"])
    p.add_argument("--out", required=True, help="output file (.onnx / .jaxexport)")
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset (default: the lowest of 13, 17, 18, 21 that the graph validates against)",
    )
    p.add_argument(
        "--platforms",
        default="cpu,cuda,tpu",
        help="jax: platforms to lower for (comma-separated)",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the parity check of the written file against the Flax model",
    )


@common.friendly_errors
def run(args: argparse.Namespace) -> int:
    from hfrjax.deploy.exporting import export_artifact

    report = export_artifact(
        args.source,
        args.out,
        fmt=args.format,
        opset=args.opset,
        platforms=tuple(s for s in args.platforms.split(",") if s),
        check=not args.no_check,
    )
    print(f"wrote {report['path']}", file=sys.stderr)
    for line in report["lines"]:
        print(line)
    return 0
