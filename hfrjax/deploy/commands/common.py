"""Arguments and helpers shared by the embed / verify / search commands."""

from __future__ import annotations

import argparse


def add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="hfrjax export directory (Flax), .onnx file (onnxruntime) or .jaxexport file",
    )


def add_reading_arguments(p: argparse.ArgumentParser, *, landmarks: bool = True) -> None:
    p.add_argument("--batch-size", type=int, default=64, help="images per model call")
    if landmarks:
        p.add_argument(
            "--landmarks",
            default=None,
            help="CSV/JSON 5-point landmarks of unaligned images (see `hfrjax align`); "
            "images are aligned to the model's crop",
        )
    p.add_argument(
        "--resize",
        action="store_true",
        help="rescale aligned crops of another size to the model's input size",
    )
    p.add_argument(
        "--modality", default=None, help="dataset inputs: only this modality (e.g. nir, vis)"
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip (and list) unreadable images instead of stopping at the first one",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def load(model_path: str):
    from hfrjax.deploy.backends import load_model

    return load_model(model_path)


def reader_for(model, args, images):
    from hfrjax.deploy.inputs import FaceReader, load_landmark_file

    lm = getattr(args, "landmarks", None)
    return FaceReader(
        model.input_size,
        model.channels,
        landmarks=load_landmark_file(lm, images) if lm else None,
        resize=args.resize,
    )


def friendly_errors(run):
    """Prints the library's input errors as one line (exit status 2) instead of a traceback:
    the messages already name the file, record or value at fault."""
    import functools
    import sys

    @functools.wraps(run)
    def wrapper(args) -> int:
        from hfrjax.deploy.backends import ModelFormatError
        from hfrjax.deploy.inputs import ImageReadError

        try:
            return run(args)
        except (ModelFormatError, ImageReadError, OSError, ValueError) as e:
            print(f"hfrjax {args.command}: error: {e}", file=sys.stderr)
            return 2

    return wrapper
