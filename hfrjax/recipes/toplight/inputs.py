"""TOPLight's two training inputs, built on the core pipeline (`hfrjax.data.pipeline`).

* `PairedAugmentInput` (task-oriented pretraining, TOPLight §3.2, Table 2(b)): every image of
  a plain, un-augmented stream becomes a (colour-path, texture-path) pair with the
  task-oriented augmentations of `hfrjax.data.task_augment`. Each sample's generator is
  ``task_augment.sample_rng(seed, global position)``, so the pairs are a pure function of the
  seed and the position: a resumed run (the wrapper checkpoints the batch count with the
  inner pipeline's state) replays exactly the same pairs.
* `ModalitySplitInput` (VI training, §4.1: "6 identities with 6 visible and 6 infrared
  images per identity"): a P x K batch of the "pk" sampler, split into its visible half and
  its infrared half (any non-visible modality) for the two stems.

Both read the inner pipeline with ``mesh=None`` (numpy batches on this process) and place
their own batches on the mesh (`pipeline.to_global`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from hfrjax.config import Section
from hfrjax.data import pipeline
from hfrjax.data import task_augment as ta
from hfrjax.recipes.toplight.network import VIS_CODE


@dataclasses.dataclass(frozen=True)
class TaskAugmentSection(Section):
    """Which task-oriented augmentations run (Table 3's "Augs." columns) and their settings.

    ``generic`` (G): crop, flip, deformation on both paths; ``colour_texture`` (C+T): the
    colour path's random pick and the texture path's JPEG / defocus / sharpen-grey. Off, a
    path gets the image as it is (after G when on). ``options`` are
    `task_augment.TaskAugmentConfig`'s fields (probabilities and strengths).
    """

    generic: bool = True
    colour_texture: bool = True
    options: ta.TaskAugmentConfig = ta.TaskAugmentConfig()


def augment_pair(
    img: np.ndarray, rng: np.random.Generator, cfg: TaskAugmentSection
) -> tuple[np.ndarray, np.ndarray]:
    """(colour-path, texture-path) images of one uint8 RGB image: `ta.task_augment_pair`
    with G and C+T switchable. With both on this is exactly ``task_augment_pair``; switching
    one off leaves the other's random draws unchanged (same child streams)."""
    opts = cfg.options
    if cfg.generic and cfg.colour_texture:
        return ta.task_augment_pair(img, rng, opts)
    img = ta.check_image(img, colour=True)
    generic_rng, colour_rng, texture_rng = rng.spawn(3)

    def generic(r):
        return ta.random_generic(img, r, opts) if cfg.generic else img.copy()

    if opts.share_generic:
        colour = texture = generic(generic_rng)
    else:
        colour, texture = generic(colour_rng), generic(texture_rng)
    if cfg.colour_texture:
        colour = ta.random_colour(colour, colour_rng, opts)
        texture = ta.random_texture(texture, texture_rng, opts)
    return np.ascontiguousarray(colour), np.ascontiguousarray(texture)


class _Wrapper:
    """Shared plumbing: the inner `pipeline.TrainInput` (read with mesh=None), the mesh, and
    the ``iterator`` attribute the loop uses to start prefetching and to close."""

    def __init__(self, inner: pipeline.TrainInput, mesh, data_axis: str = "data"):
        if inner.mesh is not None:
            raise ValueError("the inner pipeline must be built with mesh=None")
        self.inner, self.mesh, self.data_axis = inner, mesh, data_axis
        self.iterator = inner.iterator
        self.num_classes = inner.num_classes
        self.class_labels = inner.class_labels
        self.class_ranges = inner.class_ranges
        self.steps_per_epoch = inner.steps_per_epoch
        self.num_records = inner.num_records

    def __iter__(self):
        return self

    def _place(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.mesh is None:
            return batch
        return pipeline.to_global(batch, self.mesh, self.data_axis)


class PairedAugmentInput(_Wrapper):
    """Batches {"colour", "texture" (uint8 [B, H, W, 3]), "label"} (module docstring)."""

    def __init__(
        self,
        inner: pipeline.TrainInput,
        augment: TaskAugmentSection,
        *,
        seed: int,
        global_batch: int,
        mesh=None,
        process_index: int | None = None,
    ):
        super().__init__(inner, mesh)
        self.augment, self.seed, self.global_batch = augment, int(seed), int(global_batch)
        self.process_index = jax.process_index() if process_index is None else process_index
        self.batches = 0

    def __next__(self) -> dict[str, Any]:
        batch = next(self.inner)
        images = np.asarray(batch["image"])
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"task-oriented augmentation needs RGB batches [B, H, W, 3], got {images.shape} "
                "(set input.channels=3)"
            )
        start = self.batches * self.global_batch + self.process_index * len(images)
        pairs = [
            augment_pair(img, ta.sample_rng(self.seed, start + j), self.augment)
            for j, img in enumerate(images)
        ]
        self.batches += 1
        return self._place(
            {
                "colour": np.stack([p[0] for p in pairs]),
                "texture": np.stack([p[1] for p in pairs]),
                "label": np.asarray(batch["label"]),
            }
        )

    def get_state(self) -> dict[str, Any]:
        return {"inner": self.inner.get_state(), "batches": self.batches}

    def set_state(self, state: dict[str, Any]) -> None:
        self.inner.set_state(state["inner"])
        self.batches = int(state["batches"])


class ModalitySplitInput(_Wrapper):
    """Batches {"vis_image", "vis_label", "ir_image", "ir_label", "ir_modality"}: the visible
    and the non-visible halves of a P x K x 2-modality batch, in batch order."""

    def __next__(self) -> dict[str, Any]:
        batch = next(self.inner)
        modality = np.asarray(batch["modality"])
        visible = modality == VIS_CODE
        n = len(modality)
        if 2 * int(visible.sum()) != n:
            raise ValueError(
                f"VI training needs batches of equal visible and infrared halves; got "
                f"{int(visible.sum())} visible of {n} (use input.sampler='pk' over two "
                "modalities, one of them 'vis')"
            )
        images, labels = np.asarray(batch["image"]), np.asarray(batch["label"])
        return self._place(
            {
                "vis_image": images[visible],
                "vis_label": labels[visible],
                "ir_image": images[~visible],
                "ir_label": labels[~visible],
                "ir_modality": modality[~visible],
            }
        )

    def get_state(self) -> dict[str, Any]:
        return self.inner.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.inner.set_state(state)
