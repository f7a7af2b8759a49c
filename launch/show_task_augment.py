"""Renders TOPLight's task-oriented augmentations on a synthetic face into a PNG grid.

  python launch/show_task_augment.py [--out=docs/task_augment.png] [--seed=0] [--scale=2]

Row 1: the input and the generic operations (both paths); row 2: the three colour operations
(Block1-1 path, one picked per sample) and two random colour-path samples; row 3: the texture
operations (Block1-2 path) and two random texture-path samples. The single operations use the
strongest setting of `TaskAugmentConfig`'s default range; the random samples use the default
configuration with `sample_rng(seed, t)` exactly as training does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hfrjax.data import synthetic  # noqa: E402
from hfrjax.data import task_augment as ta  # noqa: E402


def sample_face(seed: int, size: int = 112) -> np.ndarray:
    """The first VIS capture of identity 0 of the tiny preset's NIR-VIS set."""
    spec = synthetic.preset_config("tiny").target
    _, images = synthetic.render_identity_images(spec, seed, 1, 0, image_size=size)
    return next(img for modality, img in images if modality == "vis")


def tiles(face: np.ndarray, seed: int) -> list[list[tuple[str, np.ndarray]]]:
    cfg = ta.TaskAugmentConfig()
    h, w = face.shape[:2]
    lo = cfg.crop_scale[0]
    side = np.sqrt(lo)
    box = ((1 - side) * h / 2, (1 - side) * w / 2, side * h, side * w)
    warp = np.random.default_rng(seed).uniform(-1, 1, (cfg.deform_cells + 1,) * 2 + (2,))
    warp *= cfg.deform_magnitude * h
    pairs = [ta.task_augment_pair(face, ta.sample_rng(seed, t)) for t in range(2)]
    generic = ta.random_generic(face, np.random.default_rng([seed, 1]), cfg)
    jitter = dict(brightness=1 + cfg.brightness, contrast=1 - cfg.contrast,
                  saturation=1 + cfg.saturation, hue=cfg.hue)  # fmt: skip
    return [
        [
            ("input", face),
            (f"crop {lo:.0%} area", ta.resized_crop(face, box)),
            ("flip", ta.hflip(face)),
            ("deformation", ta.deform(face, warp)),
            ("generic (random)", generic),
        ],
        [
            ("colour jitter", ta.colour_jitter(face, jitter)),
            ("channel shuffle", ta.channel_shuffle(face, [2, 0, 1])),
            ("RGB shift", ta.rgb_shift(face, [cfg.rgb_shift, -cfg.rgb_shift, cfg.rgb_shift])),
            ("colour path #1", pairs[0][0]),
            ("colour path #2", pairs[1][0]),
        ],
        [
            (f"JPEG q={cfg.jpeg_quality[0]}", ta.jpeg_compress(face, cfg.jpeg_quality[0])),
            (
                f"defocus r={cfg.defocus_radius[1]}",
                ta.defocus(face, cfg.defocus_radius[1], cfg.defocus_alias[1]),
            ),
            (
                "sharpen + grey",
                ta.greyscale(ta.sharpen(face, cfg.sharpen_alpha[1], cfg.sharpen_lightness[0])),
            ),
            ("texture path #1", pairs[0][1]),
            ("texture path #2", pairs[1][1]),
        ],
    ]


def grid(rows: list[list[tuple[str, np.ndarray]]], scale: int) -> Image.Image:
    th, tw = rows[0][0][1].shape[0] * scale, rows[0][0][1].shape[1] * scale
    label, pad = 20, 6
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * (tw + pad) + pad, len(rows) * (th + label + pad) + pad),
                       "white")  # fmt: skip
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    for i, row in enumerate(rows):
        for j, (name, img) in enumerate(row):
            x, y = pad + j * (tw + pad), pad + i * (th + label + pad)
            big = np.repeat(
                np.repeat(img, scale, axis=0), scale, axis=1
            )  # nearest: artefacts stay visible
            canvas.paste(Image.fromarray(big), (x, y + label))
            draw.text((x, y + 2), name, fill="black", font=font)
    return canvas


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/task_augment.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=2, help="pixel repetition of each tile")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid(tiles(sample_face(args.seed), args.seed), args.scale).save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
