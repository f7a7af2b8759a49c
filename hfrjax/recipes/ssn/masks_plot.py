"""Pictures of SSN's searched saliency indicators: σ(M_B^m) per modality and block as heat maps.

SSN's pixel selection blocks (§III-A, Eq. 4) gate block B's output with σ(M_B^m), one
indicator per modality m, shaped like the block output (H x W x C). Averaged over channels it
is a map of where the search keeps information, the picture users want (the paper's Fig. 2
shows feature maps; a searched map at the lower face tells that the network learned to
ignore the region that ``maskBottom`` hides).

Written to ``DIR``:
  ``<modality>_block<B>.png``   one heat map per indicator (inferno colour map, stretched
                                from its own minimum to its maximum, upscaled with nearest
                                neighbours to at least 128 pixels a side);
  ``masks.png``                 all of them in one figure (rows: modalities, columns: blocks),
                                each with its colour bar in σ units;
  ``masks.json``                min / mean / max of each map.
Modalities are "vis" and "nir" for split indicators, "shared" for a shared one.

  python -m hfrjax.recipes.ssn.masks_plot --workdir=W [--out=W/masks]

reads a training workdir's latest checkpoint (or an export). The task also writes them to
``<workdir>/masks/`` at every epoch end and at the end of the AFS search.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Mapping

import numpy as np

from hfrjax.fileio import atomic_output, write_text_atomic

MIN_SIDE = 128


def modality_names(rows: int) -> tuple[str, ...]:
    """Names of an indicator's rows: (vis, nir) when split (row 0 vis, row 1 nir), else shared."""
    if rows == 2:
        return ("vis", "nir")
    if rows == 1:
        return ("shared",)
    raise ValueError(f"a saliency indicator has 1 (shared) or 2 (vis, nir) rows, got {rows}")


def mask_maps(masks: Mapping[str, np.ndarray]) -> dict[tuple[str, str], np.ndarray]:
    """{(modality, block name): σ(M) averaged over channels, [H, W] float64}."""
    out = {}
    for block in sorted(masks, key=lambda b: (len(b), b)):
        m = np.asarray(masks[block], np.float64)
        if m.ndim != 4:
            raise ValueError(f"indicator {block!r} must be [rows, H, W, C], got shape {m.shape}")
        gate = 1.0 / (1.0 + np.exp(-m))
        for name, row in zip(modality_names(m.shape[0]), gate):
            out[(name, block)] = row.mean(axis=-1)
    return out


def _colour(values: np.ndarray) -> np.ndarray:
    """[H, W] -> [H', W', 3] uint8: min-max stretched, inferno, nearest-upscaled."""
    from matplotlib import colormaps

    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) if hi > lo else np.full_like(values, 0.5)
    rgb = (colormaps["inferno"](scaled)[..., :3] * 255).round().astype(np.uint8)
    k = max(1, -(-MIN_SIDE // min(values.shape)))
    return np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)


def write_mask_pictures(masks: Mapping[str, np.ndarray], out_dir: str | Path) -> list[Path]:
    """Writes the PNGs and ``masks.json`` of the module docstring; returns the PNG paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    maps = mask_maps(masks)
    if not maps:
        raise ValueError("no saliency indicators to draw (saliency 'none' has no masks)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, stats = [], {}
    for (mod, block), values in maps.items():
        p = out / f"{mod}_{block}.png"
        with atomic_output(p, "wb") as f:
            Image.fromarray(_colour(values)).save(f, format="PNG")
        paths.append(p)
        stats[f"{mod}/{block}"] = {
            "min": float(values.min()),
            "mean": float(values.mean()),
            "max": float(values.max()),
            "shape": list(values.shape),
        }
    mods = list(dict.fromkeys(m for m, _ in maps))
    blocks = list(dict.fromkeys(b for _, b in maps))
    fig = Figure(figsize=(3.2 * len(blocks), 2.8 * len(mods)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(mods), len(blocks), squeeze=False)
    for i, mod in enumerate(mods):
        for j, block in enumerate(blocks):
            ax = axes[i][j]
            im = ax.imshow(maps[(mod, block)], cmap="inferno", interpolation="nearest")
            ax.set_title(f"{mod} {block}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle("SSN saliency indicators σ(M), mean over channels")
    fig.tight_layout()
    overview = out / "masks.png"
    with atomic_output(overview, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    paths.append(overview)
    write_text_atomic(out / "masks.json", json.dumps(stats, indent=1) + "\n")
    return paths


def masks_of(path: str | Path) -> dict[str, np.ndarray]:
    """The indicators of a training workdir's latest checkpoint or of an export."""
    from hfrjax.train.export import load_weights

    _, variables = load_weights(path)
    params = variables.get("params", {})
    if "masks" not in params:
        raise ValueError(f"{path} holds no saliency indicators (params['masks']): saliency 'none'?")
    return {k: np.asarray(v) for k, v in params["masks"].items()}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="training workdir or export")
    parser.add_argument("--out", default=None, help="output directory (default: WORKDIR/masks)")
    args = parser.parse_args(argv)
    out = args.out or str(Path(args.workdir) / "masks")
    try:
        paths = write_mask_pictures(masks_of(args.workdir), out)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} pictures to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
