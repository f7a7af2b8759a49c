"""The loop's evaluations: a dataset's HFR protocol, the task's own evaluations
(`TaskSetup.evaluators`: re-id on a benchmark, a hold-out set, a validation split), merged into
one ``eval.json``; and InsightFace verification packs (``verification.json``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from hfrjax.data import augment as augment_lib
from hfrjax.eval.embedding import MeshEmbedder
from hfrjax.fileio import write_text_atomic


def _as_folds(result: dict) -> dict:
    """A task evaluation's result as a protocol-shaped one: ``{"folds": [{"fold", "metrics"}],
    ...}`` as returned, or a flat ``{metric: value}`` as one fold-less entry."""
    if "folds" in result:
        return result
    flat = {k: float(v) for k, v in result.items() if np.ndim(v) == 0 and not isinstance(v, str)}
    return {"folds": [{"fold": None, "metrics": flat}], "metrics": list(flat)}


def merge_results(protocol: dict | None, tasks: dict[str, dict]) -> dict | None:
    """One result from the protocol's and the task evaluations' (``tasks``: name -> result).

    Each task result's per-fold metrics join the protocol's folds as ``<name>/<metric>``, folds
    matched by number, so that means and stds (and a sweep's pooling over folds) see them all.
    A task result over other folds (a fold-less hold-out beside a 10-fold protocol) cannot be
    matched: its mean and std are added to the merged ``mean`` / ``std`` only. Each task's
    whole result is kept under ``tasks``."""
    if not tasks:
        return protocol
    from hfrjax.eval import metrics

    tasks = {name: _as_folds(r) for name, r in tasks.items()}
    if protocol is None:
        first = next(iter(tasks.values()))
        protocol = {
            "metrics": [],
            "folds": [{"fold": f["fold"], "metrics": {}} for f in first["folds"]],
        }
        if first.get("direction"):  # A re-id-only run: its tables name the search direction.
            protocol["direction"] = first["direction"]
    merged = dict(protocol, folds=[dict(f, metrics=dict(f["metrics"])) for f in protocol["folds"]])
    names = list(merged.get("metrics") or list(merged["folds"][0]["metrics"]))
    by_fold = {f["fold"]: f for f in merged["folds"]}
    unmatched = {}
    for name, res in tasks.items():
        got = {f["fold"]: f["metrics"] for f in res["folds"]}
        if set(got) == set(by_fold):
            for k, fold in by_fold.items():
                fold["metrics"].update({f"{name}/{n}": float(v) for n, v in got[k].items()})
            names += [f"{name}/{n}" for n in next(iter(got.values()))]
        else:
            mean, std = metrics.aggregate(list(got.values()))
            unmatched.update({f"{name}/{n}": (mean[n], std[n]) for n in mean})
    merged["metrics"] = names
    merged["mean"], merged["std"] = metrics.aggregate([f["metrics"] for f in merged["folds"]])
    for n, (m, sd) in unmatched.items():
        merged["mean"][n], merged["std"][n] = m, sd
    merged["tasks"] = tasks
    return merged


def evaluate(
    eval_cfg, setup, state, mesh, step: int, writer, workdir: Path, say, hook_ctx=None
) -> dict | None:
    """Runs what ``eval_cfg`` and the task's evaluators ask for; returns the merged protocol +
    task results (or None when there is neither)."""
    packs = list(eval_cfg.verification_packs or ())
    evaluators = dict(getattr(setup, "evaluators", None) or {})
    if not (eval_cfg.data_dir or packs or evaluators):
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
            direction=eval_cfg.direction,
            occlusion=eval_cfg.occlusion,
            tar_method=eval_cfg.tar_method,
            ranks=tuple(eval_cfg.ranks),
            gallery_mode=eval_cfg.gallery_mode,
        )
    if evaluators:
        task_results = {}
        for name, fn in evaluators.items():
            t_task = time.perf_counter()
            task_results[name] = fn(hook_ctx, state, step)
            say(f"eval {name} at step {step}: {time.perf_counter() - t_task:.1f} s")
        results = merge_results(results, task_results)
    if results is not None:
        results["step"] = step
        if jax.process_index() == 0:
            text = json.dumps(results, indent=1, default=float) + "\n"
            write_text_atomic(workdir / "eval.json", text)
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
