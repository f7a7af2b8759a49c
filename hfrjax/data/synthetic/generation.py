"""`generate`, and the writer of the NIR-VIS sets: captures, shards, dataset.json, protocols.

Each identity is rendered from its own child of ``np.random.SeedSequence(seed)`` (see
`writing.seed_sequence`), so the output is byte-identical for any number of worker processes,
growing a set only appends identities, and per-sample nuisance parameters need not be stored:
`identity_captures` regenerates them. Other kinds of preset (thermal-visible, long-tailed) bring
their own writer (their config's ``write`` method); `generate` runs any of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from absl import logging

from hfrjax.data import dataset as dataset_lib
from hfrjax.data import protocol as protocol_lib
from hfrjax.data import tfrecord
from hfrjax.data.synthetic.identity import IdentityParams, sample_identity
from hfrjax.data.synthetic.presets import SetSpec, SynthConfig, preset_config
from hfrjax.data.synthetic.rendering import render
from hfrjax.data.synthetic.sensors import SENSORS
from hfrjax.data.synthetic.variation import Modality, SampleParams, sample_params
from hfrjax.data.synthetic.writing import (  # noqa: F401 - identity_name re-exported.
    Mapper,
    Progress,
    Record,
    default_workers,
    encode_image,
    identity_name,
    identity_names,
    provenance,
    sample_key,
    seed_sequence,
    set_directory,
    write_identity,
)


@dataclasses.dataclass(frozen=True)
class _IdentityTask:
    set_index: int
    identity_index: int
    seed: int
    spec: SetSpec
    image_size: int
    vis_format: str
    nir_format: str
    jpeg_quality: int


def identity_captures(
    spec: SetSpec, seed: int, set_index: int, identity_index: int
) -> tuple[IdentityParams, list[tuple[Modality, SampleParams]]]:
    """The identity and the nuisance parameters of each of its captures, exactly as
    `generate` draws them (VIS captures first, then NIR; capture k of a modality is sample
    key ``.../<modality>/<k>``). Cheap: recovers per-sample pose, expression, light etc.
    without storing them in the dataset."""
    ident = sample_identity(
        np.random.default_rng(seed_sequence(seed, set_index, 0, identity_index, 0))
    )
    captures: list[tuple[Modality, SampleParams]] = []
    for kind, (modality, count) in enumerate((("vis", spec.vis_per_id), ("nir", spec.nir_per_id))):
        rng = np.random.default_rng(seed_sequence(seed, set_index, 0, identity_index, 1 + kind))
        captures += [
            (modality, sample_params(rng, modality, spec.variation, ident, i)) for i in range(count)
        ]
    return ident, captures


def render_identity_images(
    spec: SetSpec, seed: int, set_index: int, identity_index: int, image_size: int = 112
) -> tuple[IdentityParams, list[tuple[Modality, np.ndarray]]]:
    """The identity and its (modality, uint8 image) list exactly as `generate` renders them."""
    ident, captures = identity_captures(spec, seed, set_index, identity_index)
    sensors = {"vis": spec.vis_sensor, "nir": spec.nir_sensor}
    return ident, [(m, render(ident, params, m, sensors[m], image_size)) for m, params in captures]


def _render_task(task: _IdentityTask) -> list[tuple[str, bytes]]:
    """Worker: renders and encodes all images of one identity -> [(modality, bytes)]."""
    _, images = render_identity_images(
        task.spec, task.seed, task.set_index, task.identity_index, task.image_size
    )
    fmt = {"vis": task.vis_format, "nir": task.nir_format}
    return [(m, encode_image(img, fmt[m], task.jpeg_quality)) for m, img in images]


def make_protocol(
    name: str,
    identities: Sequence[str],
    vis_keys: dict[str, list[str]],
    nir_keys: dict[str, list[str]],
    num_folds: int,
    rng: np.random.Generator,
    gallery: Literal["random", "first"] = "random",
) -> protocol_lib.Protocol:
    """A CASIA NIR-VIS 2.0 View 2-style k-fold protocol.

    Per fold the identities are split at random into disjoint train and test halves; train
    lists hold every VIS and NIR key of the train identities, the gallery one VIS key per
    test identity (random or the first), the probes every NIR key of the test identities.
    """
    n = len(identities)
    if n < 2:
        raise ValueError(f"a protocol needs at least 2 identities, got {n}")
    folds = []
    for _ in range(num_folds):
        perm = rng.permutation(n)
        train = [identities[i] for i in sorted(perm[: n // 2])]
        test = [identities[i] for i in sorted(perm[n // 2 :])]
        if gallery == "first":
            picks = [0] * len(test)
        else:
            picks = [int(rng.integers(len(vis_keys[t]))) for t in test]
        folds.append(
            protocol_lib.Fold(
                train={
                    "vis": [k for t in train for k in vis_keys[t]],
                    "nir": [k for t in train for k in nir_keys[t]],
                },
                gallery=[vis_keys[t][p] for t, p in zip(test, picks)],
                probe=[k for t in test for k in nir_keys[t]],
            )
        )
    return protocol_lib.Protocol(
        name,
        folds,
        "vis",
        "nir",
        description=f"{num_folds} folds; per fold disjoint random train/test identity halves; "
        f"gallery one VIS image per test identity ({gallery}); probes all NIR images of the "
        "test identities (CASIA NIR-VIS 2.0 View 2 layout)",
    )


def _write_set(
    out_dir: Path, set_index: int, spec: SetSpec, config: SynthConfig, seed: int, preset: str, imap
) -> dict[str, Any]:
    """Renders one set (identities through ``imap``, in order) and writes its shards,
    dataset.json and protocol; returns its summary."""
    directory = set_directory(out_dir / spec.directory)
    formats = {"vis": config.vis_format, "nir": config.nir_format}
    tasks = [
        _IdentityTask(
            set_index,
            i,
            seed,
            spec,
            config.image_size,
            config.vis_format,
            config.nir_format,
            config.jpeg_quality,
        )
        for i in range(spec.num_ids)
    ]
    names = identity_names(spec)
    keys: dict[str, dict[str, list[str]]] = {"vis": {}, "nir": {}}
    progress = Progress(spec.name, spec.num_images)
    with tfrecord.ShardedWriter(directory, "data", spec.num_shards) as writer:
        for label, (name, encoded) in enumerate(zip(names, imap(_render_task, tasks))):
            keys["vis"][name], keys["nir"][name] = [], []
            records = []
            for modality, data in encoded:
                key = sample_key(name, modality, len(keys[modality][name]))
                keys[modality][name].append(key)
                records.append(Record(modality, key, data))
            progress.update(write_identity(writer, spec.name, label, name, records, formats))
    counts = {m: sum(map(len, keys[m].values())) for m in ("vis", "nir")}
    modalities = {m: n for m, n in counts.items() if n}
    _dataset_info(
        spec, set_index, config, seed, preset, [p.name for p in writer.paths], names, modalities
    ).save(directory)
    if spec.num_folds and "vis" in modalities and "nir" in modalities:
        rng = np.random.default_rng(seed_sequence(seed, set_index, 1))
        make_protocol(
            f"{spec.name}_{spec.num_folds}fold",
            names,
            keys["vis"],
            keys["nir"],
            spec.num_folds,
            rng,
            spec.gallery,
        ).save(directory)
    return {
        "name": spec.name,
        "directory": spec.directory,
        "identities": spec.num_ids,
        "images": modalities,
        "shards": spec.num_shards,
        "seconds": round(progress.seconds, 3),
    }


def _dataset_info(
    spec: SetSpec,
    set_index: int,
    config: SynthConfig,
    seed: int,
    preset: str,
    shards: list[str],
    names: list[str],
    modalities: dict[str, int],
) -> dataset_lib.DatasetInfo:
    """dataset.json of a generated set: counts, formats, and how it was made (kept small)."""
    formats = {m: config.vis_format if m == "vis" else config.nir_format for m in modalities}
    sensors = {"vis": spec.vis_sensor, "nir": spec.nir_sensor}
    return dataset_lib.DatasetInfo(
        name=spec.name,
        shards=shards,
        num_images=sum(modalities.values()),
        class_names=names,
        modalities=modalities,
        image_size=(config.image_size, config.image_size),
        image_format=next(iter(formats.values())) if len(set(formats.values())) == 1 else "mixed",
        description=spec.description,
        extra={
            **provenance(spec, preset, seed, set_index),
            "nuisance": "not stored; hfrjax.data.synthetic.identity_captures(spec, seed, "
            "set_index, label) regenerates each sample's parameters",
            "images_per_identity": {"vis": spec.vis_per_id, "nir": spec.nir_per_id},
            "image_formats": formats,
            "jpeg_quality": config.jpeg_quality,
            "sensors": {m: dataclasses.asdict(SENSORS[sensors[m]]) for m in modalities},
            "variation": dataclasses.asdict(spec.variation),
        },
    )


def generate(
    out_dir: str | os.PathLike,
    preset: str = "quickstart",
    seed: int = 0,
    workers: int | None = None,
    *,
    config: Any = None,
    image_size: int | None = None,
) -> dict[str, Any]:
    """Writes the datasets of a preset and ``synth.json``: for the NIR-VIS presets
    ``source/``, ``target/`` and ``target_cross/``; for the others see their config classes
    (`ThermalVisConfig`, `LongTailConfig`).

    ``config`` replaces the preset (``synth.json`` then records preset "custom");
    ``image_size`` overrides the crop size. Identities are rendered in parallel by
    ``workers`` processes (default: all CPUs; spawned, so scripts calling this need an
    ``if __name__ == "__main__"`` guard); the output is byte-identical for any ``workers``.
    Returns the summary also saved as ``synth.json``.
    """
    if config is None:
        config = preset_config(preset)
    else:
        preset = "custom"
    if image_size is not None:
        config = dataclasses.replace(config, image_size=image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = default_workers() if workers is None else max(1, int(workers))
    total = sum(s.num_images for s in config.sets)
    logging.info(
        "synth: preset %s, seed %d, %d images of %dx%d, %d worker(s) -> %s",
        preset,
        seed,
        total,
        config.image_size,
        config.image_size,
        workers,
        out,
    )
    start = time.perf_counter()
    with Mapper(workers) as imap:
        if isinstance(config, SynthConfig):
            sets = {
                spec.directory: _write_set(out, k, spec, config, seed, preset, imap)
                for k, spec in enumerate(config.sets)
            }
        else:
            sets = config.write(out, seed, preset, imap)
    seconds = time.perf_counter() - start
    summary = {
        "preset": preset,
        "seed": seed,
        "image_size": config.image_size,
        "workers": workers,
        "images": total,
        "seconds": round(seconds, 3),
        "images_per_second": round(total / max(seconds, 1e-9), 1),
        "sets": sets,
        "config": dataclasses.asdict(config),
    }
    (out / "synth.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    logging.info(
        "synth: wrote %d images in %.1f s (%.0f images/s)",
        total,
        seconds,
        total / max(seconds, 1e-9),
    )
    return summary
