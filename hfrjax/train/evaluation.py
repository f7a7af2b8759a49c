"""The loop's evaluations: a dataset's HFR protocol (``eval.json``) and InsightFace
verification packs (``verification.json``), through the task's embedder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from hfrjax.data import augment as augment_lib
from hfrjax.eval.embedding import MeshEmbedder
from hfrjax.fileio import write_text_atomic


def evaluate(eval_cfg, setup, state, mesh, step: int, writer, workdir: Path, say) -> dict | None:
    """Runs what ``eval_cfg`` asks for; returns the protocol results (or None)."""
    packs = list(eval_cfg.verification_packs or ())
    if not (eval_cfg.data_dir or packs):
        return None
    embed_fn = MeshEmbedder(setup.embed, state.params, state.model_state, mesh)
    image_size = setup.eval_input.get("image_size")
    channels = int(setup.eval_input.get("channels", 3))
    t = time.perf_counter()
    flat, results = {}, None
    if eval_cfg.data_dir:
        from hfrjax.eval.protocols import evaluate_protocol

        results = evaluate_protocol(
            embed_fn,
            eval_cfg.data_dir,
            folds=list(eval_cfg.folds) if eval_cfg.folds else None,
            batch_size=eval_cfg.batch_size,
            fars=tuple(eval_cfg.fars),
            image_size=image_size,
            channels=channels,
            flip_fuse=eval_cfg.flip,
        )
        results["step"] = step
        if jax.process_index() == 0:
            write_text_atomic(workdir / "eval.json", json.dumps(results, indent=1) + "\n")
        flat.update({f"eval/{k}": v for k, v in results["mean"].items()})
    if packs:
        from hfrjax.eval.verification import evaluate_pack

        def rgb_embed(images: np.ndarray, modality=None) -> np.ndarray:
            if channels == 1:  # Packs are RGB; grey models see the luminance.
                images = augment_lib.luminance(images.astype(np.float32))[..., None]
                images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
            return embed_fn(images, modality)

        size = tuple(image_size) if image_size else (112, 112)
        verification = {"step": step}
        for path in packs:
            name = Path(path).stem
            r = evaluate_pack(rgb_embed, path, eval_cfg.batch_size, size, flip=True)
            verification[name] = r
            flat[f"verify/{name}/accuracy"] = r["accuracy"]
        if jax.process_index() == 0:
            write_text_atomic(
                workdir / "verification.json", json.dumps(verification, indent=1, default=float)
            )
    writer.write(step, flat)
    say(
        f"eval at step {step} ({time.perf_counter() - t:.1f} s): "
        + ", ".join(f"{k} {v:.4f}" for k, v in flat.items())
    )
    return results
