"""Input conventions of the portable formats (ONNX, serialized JAX) and their metadata.

Both portable formats follow InsightFace's recognition-model convention, so tools written for
its model zoo (the ``insightface`` package's ``ArcFaceONNX``) run them unchanged:

* one input, float32 NCHW ``[N, C, H, W]``, ``N`` dynamic, RGB channel order;
* pixels normalised *outside* the graph as ``(x - mean) / std``: ``mean = std = 127.5`` for
  InsightFace-family backbones (IResNet, MobileFaceNet, ...), i.e. [-1, 1];
  LightCNN models take one grey channel in [0, 1] (``mean = 0, std = 255``), the input range
  of the official LightCNN release; the graph maps it to the [-1, 1] the hfrjax model was
  trained on (``2 x - 1``, identical to ``(255 x - 127.5) / 127.5``);
* one output ``[N, D]``: the *un-normalised* embedding, as the model zoo's files return it
  (cosine similarity / L2 normalisation is the caller's job).

The convention travels with the artifact as JSON (ONNX ``metadata_props["hfrjax"]``, or the
``.json`` sidecar of a serialized JAX export), so `hfrjax embed` needs no flags; files without
it (model-zoo downloads) get InsightFace's rules (`infer_convention`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

METADATA_KEY = "hfrjax"
"""ONNX ``metadata_props`` key (and sidecar top-level) holding `ArtifactInfo` as JSON."""

INSIGHTFACE = "insightface"  # (x - 127.5) / 127.5 -> [-1, 1]
UNIT = "unit"  # x / 255 -> [0, 1] (LightCNN)
RAW = "raw"  # x, 0..255 (MXNet-converted model-zoo files normalise inside their graph)

PIXEL_SCALES: dict[str, tuple[float, float]] = {
    INSIGHTFACE: (127.5, 127.5),
    UNIT: (0.0, 255.0),
    RAW: (0.0, 1.0),
}


@dataclasses.dataclass(frozen=True)
class InputConvention:
    """How uint8 face crops become the artifact's input: ``(x - mean) / std``, NCHW."""

    channels: int
    size: int
    pixel_scale: str = INSIGHTFACE

    def __post_init__(self) -> None:
        if self.pixel_scale not in PIXEL_SCALES:
            raise ValueError(
                f"pixel_scale must be one of {sorted(PIXEL_SCALES)}, got {self.pixel_scale!r}"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")

    @property
    def mean(self) -> float:
        return PIXEL_SCALES[self.pixel_scale][0]

    @property
    def std(self) -> float:
        return PIXEL_SCALES[self.pixel_scale][1]

    def describe(self) -> str:
        rng = {INSIGHTFACE: "[-1, 1]", UNIT: "[0, 1]", RAW: "[0, 255]"}[self.pixel_scale]
        return (
            f"float32 NCHW [N, {self.channels}, {self.size}, {self.size}], "
            f"{'RGB' if self.channels == 3 else 'grey'}, (x - {self.mean:g}) / {self.std:g} "
            f"-> {rng}"
        )

    def to_input(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, C] -> float32 [N, C, H, W] normalised by this convention."""
        x = np.asarray(images)
        want = (self.size, self.size, self.channels)
        if x.ndim != 4 or x.shape[1:] != want:
            raise ValueError(
                f"expected images of shape [N, {want[0]}, {want[1]}, {want[2]}], got {x.shape}"
            )
        if x.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (0..255), got {x.dtype}")
        x = (x.astype(np.float32) - np.float32(self.mean)) / np.float32(self.std)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def to_json(self) -> dict[str, Any]:
        return {
            "layout": "NCHW",
            "channels": self.channels,
            "size": self.size,
            "pixel_scale": self.pixel_scale,
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "InputConvention":
        return cls(int(d["channels"]), int(d["size"]), str(d["pixel_scale"]))


def is_lightcnn(model_name: str) -> bool:
    """LightCNN-family backbones take [0, 1] grey input in the portable formats."""
    return model_name.lower().startswith("lightcnn")


def convention_for_model(model_name: str, channels: int, size: int) -> InputConvention:
    """The portable-format convention of an hfrjax backbone (module docstring)."""
    return InputConvention(channels, size, UNIT if is_lightcnn(model_name) else INSIGHTFACE)


def infer_convention(
    channels: int, size: int, first_node_names: list[str] | None = None
) -> InputConvention:
    """The convention of an artifact without hfrjax metadata, by InsightFace's rules: grey
    input -> [0, 1] (LightCNN's release); colour -> (x - 127.5) / 127.5, unless the first
    nodes are named ``Sub*``/``_minus*`` *and* ``Mul*``/``_mul*`` (an MXNet-converted model
    that normalises inside its graph: raw pixels), as ``insightface``'s ``ArcFaceONNX``
    decides."""
    if channels == 1:
        return InputConvention(1, size, UNIT)
    names = first_node_names or []
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return InputConvention(channels, size, RAW if has_sub and has_mul else INSIGHTFACE)


def insightface_task(num_inputs: int, num_outputs: int, height: int, width: int) -> str | None:
    """The model class ``insightface.model_zoo.get_model(path)`` picks for an ONNX file from
    its interface alone (``ModelRouter`` in insightface 0.7.3 through 2.1): five or more
    outputs -> detection (SCRFD), a 192x192 input -> landmarks, 96x96 -> attributes, two
    inputs at 128x128 -> face swapper, any other square input of at least 112 pixels and a
    multiple of 16 -> recognition (``ArcFaceONNX``); anything else -> None (not loaded)."""
    if num_outputs >= 5:
        return "detection"
    if (height, width) == (192, 192):
        return "landmark"
    if (height, width) == (96, 96):
        return "genderage"
    if num_inputs == 2 and (height, width) == (128, 128):
        return "inswapper"
    if height == width and height >= 112 and height % 16 == 0:
        return "recognition"
    return None
