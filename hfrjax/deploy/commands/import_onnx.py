"""Import an InsightFace model-zoo ONNX IResNet (arcface_torch) as an hfrjax export.

hfrjax import-onnx w600k_r50.onnx --out /tmp/ir50_webface600k
"""

from __future__ import annotations

import argparse

from hfrjax.deploy.commands import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx", help="ONNX recognition model (arcface_torch IResNet layout)")
    p.add_argument("--out", required=True, help="output hfrjax export directory")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip running the ONNX file with onnxruntime to check the converted weights",
    )


@common.friendly_errors
def run(args: argparse.Namespace) -> int:
    from hfrjax.deploy.onnx_import import import_onnx

    out, report = import_onnx(args.onnx, args.out, check=not args.no_check)
    parity = report.get("parity_max_abs")
    print(
        f"imported {args.onnx} -> {out} ({report['folded_batchnorms']} folded BatchNorms "
        f"rebuilt, opset {report['opset']}"
        + (f", max |ONNX - Flax| = {parity:.2e}" if parity is not None else "")
        + "); use it as init_from"
    )
    return 0
