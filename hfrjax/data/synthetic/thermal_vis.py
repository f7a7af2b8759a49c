"""A thermal-visible face set with an ARL-VTF-style protocol (CSAN §IV-A, ARL-VTF).

ARL-VTF records time-synchronised visible and thermal video of each subject under baseline
(frontal, neutral), expression and pose conditions, with and without glasses. Its evaluation
matches thermal probe sets to visible gallery sets whose names encode the condition::

    G_VB0-  visible baseline gallery; glasses wearers without their glasses
    G_VB0+  visible baseline gallery; glasses wearers with their glasses on
    P_TB0   thermal baseline probes of subjects who do not wear glasses
    P_TB-   thermal baseline probes of glasses wearers, glasses off
    P_TB+   thermal baseline probes of glasses wearers, glasses on
    P_TE0   thermal expression probes of subjects who do not wear glasses
    P_TE-   thermal expression probes of glasses wearers, glasses off

Here each identity has captures by condition: a subject without glasses ``B0`` x
``baseline_per_condition`` and ``E0`` x ``expression_per_condition``; a glasses wearer ``B-``,
``B+`` (``baseline_per_condition`` each) and ``E-``. Every capture is rendered in both
modalities from the same `SampleParams`, a time-synchronised pair: keys
``<identity>/vis/<k>`` and ``<identity>/thermal/<k>`` share ``k``. Identities are split into
``num_train_ids`` training and ``num_test_ids`` test subjects (disjoint, as ARL-VTF's 295/100);
a seeded ``glasses_fraction`` of each part wears glasses (ARL-VTF: 30 of the 100 test subjects).

The protocol (`hfrjax.data.protocol.Protocol`, gallery modality "vis", probe modality
"thermal") has one fold per (probe set, gallery set) pair, named ``"P_TB0|G_VB0-"`` etc.
Every fold trains on all visible and thermal images of the training identities. A gallery
holds one visible image per test subject: the first baseline capture without glasses
(G_VB0-), or with glasses for wearers (G_VB0+). Probe sets hold the thermal images of their
condition, except the thermal twins of gallery images (a probe is never the gallery's own
frame).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hfrjax.data import dataset as dataset_lib
from hfrjax.data import protocol as protocol_lib
from hfrjax.data import tfrecord
from hfrjax.data.synthetic.identity import IdentityParams, sample_identity
from hfrjax.data.synthetic.rendering import render
from hfrjax.data.synthetic.sensors import SENSORS
from hfrjax.data.synthetic.thermal import (
    THERMAL_MODALITY,
    THERMAL_SENSORS,
    ThermalConditions,
    ThermalTraits,
    render_thermal,
    sample_thermal_conditions,
    sample_thermal_traits,
)
from hfrjax.data.synthetic.variation import SampleParams, Variation, sample_params
from hfrjax.data.synthetic.writing import (
    Progress,
    Record,
    encode_image,
    identity_names,
    provenance,
    sample_key,
    seed_sequence,
    set_directory,
    write_identity,
)

# Seed path of this kind of set (the NIR-VIS presets use 0, 1, 2 for their three sets).
SET_INDEX = 3

GALLERY_SETS = ("G_VB0-", "G_VB0+")
PROBE_SETS = ("P_TB0", "P_TB-", "P_TB+", "P_TE0", "P_TE-")

Condition = Literal["B", "E"]  # Baseline, expression.
Eyewear = Literal["0", "-", "+"]  # No glasses owned, glasses off, glasses on.

# ARL-VTF's baseline: frontal, neutral, studio light; its expression condition adds faces.
BASELINE_VARIATION = Variation(
    yaw_deg=3.0,
    pitch_deg=2.0,
    roll_deg=2.0,
    max_yaw_deg=8.0,
    align_scale=0.02,
    align_shift=0.04,
    expression_prob=0.0,
    eye_closure_prob=0.0,
    light_spread=0.3,
    background_spread=0.2,
    glasses=False,
    blur_max=0.4,
)
EXPRESSION_VARIATION = dataclasses.replace(BASELINE_VARIATION, expression_prob=1.0)


@dataclasses.dataclass(frozen=True)
class ThermalVisSpec:
    """One thermal-visible set: identities, captures per condition, cameras, shards."""

    name: str
    directory: str
    id_prefix: str
    num_train_ids: int
    num_test_ids: int
    baseline_per_condition: int  # >= 2: the first one of a condition is a gallery image.
    expression_per_condition: int
    num_shards: int
    glasses_fraction: float = 0.3
    vis_sensor: str = "vis_lab"
    thermal_sensor: str = "lwir"
    baseline: Variation = BASELINE_VARIATION
    expression: Variation = EXPRESSION_VARIATION
    description: str = ""

    def __post_init__(self) -> None:
        if self.num_train_ids < 1 or self.num_test_ids < 2:
            raise ValueError(
                f"thermal-visible set {self.name!r}: needs >= 1 training and >= 2 test "
                f"identities, got {self.num_train_ids} and {self.num_test_ids}"
            )
        if self.baseline_per_condition < 2 or self.expression_per_condition < 1:
            raise ValueError(
                f"thermal-visible set {self.name!r}: baseline_per_condition must be >= 2 (the "
                "first is the gallery image) and expression_per_condition >= 1, got "
                f"{self.baseline_per_condition} and {self.expression_per_condition}"
            )
        if not 0.0 <= self.glasses_fraction <= 1.0:
            raise ValueError(f"glasses_fraction {self.glasses_fraction} is not in [0, 1]")

    @property
    def num_ids(self) -> int:
        return self.num_train_ids + self.num_test_ids

    def num_wearers(self) -> tuple[int, int]:
        """Glasses wearers among (training, test) identities; the test part always has at
        least one wearer and one non-wearer, so that every probe set is populated."""
        train = round(self.glasses_fraction * self.num_train_ids)
        test = min(max(round(self.glasses_fraction * self.num_test_ids), 1), self.num_test_ids - 1)
        return train, test

    @property
    def num_images(self) -> int:
        wearers = sum(self.num_wearers())
        b, e = self.baseline_per_condition, self.expression_per_condition
        captures = (self.num_ids - wearers) * (b + e) + wearers * (2 * b + e)
        return 2 * captures  # A visible and a thermal image per capture.


@dataclasses.dataclass(frozen=True)
class ThermalVisConfig:
    """A thermal-visible preset: one set, written to ``<out>/<spec.directory>/``."""

    thermal_vis: ThermalVisSpec
    image_size: int = 112
    vis_format: Literal["jpeg", "png"] = "jpeg"
    thermal_format: Literal["jpeg", "png"] = "png"
    jpeg_quality: int = 92

    @property
    def sets(self) -> tuple[ThermalVisSpec]:
        return (self.thermal_vis,)

    def write(self, out_dir: Path, seed: int, preset: str, imap) -> dict[str, dict[str, Any]]:
        """Renders and writes the set (called by `generate`); returns its summary."""
        spec = self.thermal_vis
        return {spec.directory: _write(out_dir, spec, self, seed, preset, imap)}


def glasses_wearers(spec: ThermalVisSpec, seed: int) -> frozenset[int]:
    """Indices of the identities who wear glasses (a seeded choice within each part)."""
    rng = np.random.default_rng(seed_sequence(seed, SET_INDEX, 2))
    n_train, n_test = spec.num_wearers()
    train = rng.choice(spec.num_train_ids, n_train, replace=False)
    test = spec.num_train_ids + rng.choice(spec.num_test_ids, n_test, replace=False)
    return frozenset(int(i) for i in (*train, *test))


def capture_plan(spec: ThermalVisSpec, wearer: bool) -> list[tuple[Condition, Eyewear]]:
    """(condition, eyewear) of each capture k of an identity."""
    b, e = spec.baseline_per_condition, spec.expression_per_condition
    if wearer:
        return [("B", "-")] * b + [("B", "+")] * b + [("E", "-")] * e
    return [("B", "0")] * b + [("E", "0")] * e


@dataclasses.dataclass(frozen=True)
class ThermalVisCapture:
    condition: Condition
    eyewear: Eyewear
    sample: SampleParams  # Shared by the visible and the thermal image.
    thermal: ThermalConditions


def thermal_vis_captures(
    spec: ThermalVisSpec, seed: int, identity_index: int, wearer: bool
) -> tuple[IdentityParams, ThermalTraits, list[ThermalVisCapture]]:
    """The identity, its heat signature and its captures exactly as `generate` draws them."""
    path = (seed, SET_INDEX, 0, identity_index)
    ident = sample_identity(np.random.default_rng(seed_sequence(*path, 0)))
    traits = sample_thermal_traits(np.random.default_rng(seed_sequence(*path, 2)))
    rng = np.random.default_rng(seed_sequence(*path, 1))
    captures = []
    for k, (condition, eyewear) in enumerate(capture_plan(spec, wearer)):
        variation = spec.baseline if condition == "B" else spec.expression
        params = sample_params(rng, "vis", variation, ident, k)
        params = dataclasses.replace(params, glasses=eyewear == "+")
        captures.append(
            ThermalVisCapture(condition, eyewear, params, sample_thermal_conditions(rng))
        )
    return ident, traits, captures


def render_thermal_vis_images(
    spec: ThermalVisSpec, seed: int, identity_index: int, wearer: bool, image_size: int = 112
) -> list[tuple[str, np.ndarray]]:
    """[(modality, uint8 image)] of one identity as `generate` renders them: per capture the
    visible image, then the thermal one."""
    ident, traits, captures = thermal_vis_captures(spec, seed, identity_index, wearer)
    out = []
    for c in captures:
        out.append(("vis", render(ident, c.sample, "vis", spec.vis_sensor, image_size)))
        thermal = render_thermal(
            ident, traits, c.sample, c.thermal, spec.thermal_sensor, image_size
        )
        out.append((THERMAL_MODALITY, thermal))
    return out


@dataclasses.dataclass(frozen=True)
class _Task:
    identity_index: int
    wearer: bool
    seed: int
    spec: ThermalVisSpec
    image_size: int
    formats: tuple[tuple[str, str], ...]
    jpeg_quality: int


def _render_task(task: _Task) -> list[tuple[str, bytes]]:
    """Worker: renders and encodes all images of one identity -> [(modality, bytes)]."""
    images = render_thermal_vis_images(
        task.spec, task.seed, task.identity_index, task.wearer, task.image_size
    )
    fmt = dict(task.formats)
    return [(m, encode_image(img, fmt[m], task.jpeg_quality)) for m, img in images]


def make_arlvtf_protocol(
    name: str,
    train: list[str],
    test: list[str],
    plans: dict[str, list[tuple[Condition, Eyewear]]],
) -> protocol_lib.Protocol:
    """The ARL-VTF-style protocol (module docstring) from each identity's capture plan; capture
    k of identity ``i`` has keys ``i/vis/k`` and ``i/thermal/k``."""
    overlap = set(train) & set(test)
    if overlap:
        raise ValueError(f"identities both in training and test: {sorted(overlap)[:5]}")

    def key(identity: str, modality: str, k: int) -> str:
        return sample_key(identity, modality, k)

    def first(identity: str, condition: str, eyewear: set[str]) -> int:
        return next(
            k for k, (c, e) in enumerate(plans[identity]) if c == condition and e in eyewear
        )

    gallery_captures = {
        "G_VB0-": {i: first(i, "B", {"0", "-"}) for i in test},
        "G_VB0+": {i: first(i, "B", {"0", "+"}) for i in test},
    }
    galleries = {g: [key(i, "vis", k) for i, k in c.items()] for g, c in gallery_captures.items()}
    twins = {(i, k) for c in gallery_captures.values() for i, k in c.items()}
    probes = {}
    for probe in PROBE_SETS:
        condition, eyewear = probe[3], probe[4]
        probes[probe] = [
            key(i, THERMAL_MODALITY, k)
            for i in test
            for k, (c, e) in enumerate(plans[i])
            if c == condition and e == eyewear and (i, k) not in twins
        ]
    train_keys = {
        m: [key(i, m, k) for i in train for k in range(len(plans[i]))]
        for m in ("vis", THERMAL_MODALITY)
    }
    folds, names = [], []
    for probe in PROBE_SETS:
        for gallery in GALLERY_SETS:
            folds.append(
                protocol_lib.Fold(
                    train={m: list(keys) for m, keys in train_keys.items()},
                    gallery=list(galleries[gallery]),
                    probe=list(probes[probe]),
                )
            )
            names.append(f"{probe}|{gallery}")
    return protocol_lib.Protocol(
        name,
        folds,
        "vis",
        THERMAL_MODALITY,
        description="ARL-VTF-style sets: one fold per (thermal probe set, visible gallery set); "
        "training on all images of the disjoint training identities; galleries one visible "
        "baseline image per test identity without (G_VB0-) or with (G_VB0+) the wearers' "
        "glasses; probes the thermal images of baseline (B) or expression (E) captures of "
        "non-wearers (0), wearers without (-) or with (+) glasses, gallery twins excluded",
        fold_names=names,
    )


def _write(
    out_dir: Path, spec: ThermalVisSpec, config: ThermalVisConfig, seed: int, preset: str, imap
) -> dict[str, Any]:
    directory = set_directory(Path(out_dir) / spec.directory)
    wearers = glasses_wearers(spec, seed)
    formats = {"vis": config.vis_format, THERMAL_MODALITY: config.thermal_format}
    tasks = [
        _Task(
            i,
            i in wearers,
            seed,
            spec,
            config.image_size,
            tuple(formats.items()),
            config.jpeg_quality,
        )
        for i in range(spec.num_ids)
    ]
    names = identity_names(spec)
    plans = {n: capture_plan(spec, i in wearers) for i, n in enumerate(names)}
    counts = {"vis": 0, THERMAL_MODALITY: 0}
    progress = Progress(spec.name, spec.num_images)
    with tfrecord.ShardedWriter(directory, "data", spec.num_shards) as writer:
        for label, (name, encoded) in enumerate(zip(names, imap(_render_task, tasks))):
            # Capture k is the pair of images 2k (visible) and 2k + 1 (thermal).
            records = [
                Record(m, sample_key(name, m, j // 2), data) for j, (m, data) in enumerate(encoded)
            ]
            progress.update(write_identity(writer, spec.name, label, name, records, formats))
            for r in records:
                counts[r.modality] += 1
    train, test = names[: spec.num_train_ids], names[spec.num_train_ids :]
    dataset_lib.DatasetInfo(
        name=spec.name,
        shards=[p.name for p in writer.paths],
        num_images=sum(counts.values()),
        class_names=names,
        modalities=counts,
        image_size=(config.image_size, config.image_size),
        image_format="mixed" if len(set(formats.values())) > 1 else config.vis_format,
        description=spec.description,
        extra={
            **provenance(spec, preset, seed, SET_INDEX),
            "train_identities": train,
            "test_identities": test,
            "glasses_wearers": [names[i] for i in sorted(wearers)],
            "captures": "per identity, capture k is a time-synchronised pair <id>/vis/k, "
            "<id>/thermal/k; non-wearers: baseline_per_condition x B0 then "
            "expression_per_condition x E0; wearers: B-, B+ (baseline_per_condition each), "
            "then E-; hfrjax.data.synthetic.thermal_vis_captures(spec, seed, label, wearer) "
            "regenerates each capture's parameters",
            "image_formats": formats,
            "jpeg_quality": config.jpeg_quality,
            "sensors": {
                "vis": dataclasses.asdict(SENSORS[spec.vis_sensor]),
                THERMAL_MODALITY: dataclasses.asdict(THERMAL_SENSORS[spec.thermal_sensor]),
            },
        },
    ).save(directory)
    make_arlvtf_protocol(f"{spec.name}_arlvtf", train, test, plans).save(directory)
    return {
        "name": spec.name,
        "directory": spec.directory,
        "identities": spec.num_ids,
        "train_identities": spec.num_train_ids,
        "test_identities": spec.num_test_ids,
        "glasses_wearers": len(wearers),
        "images": counts,
        "shards": spec.num_shards,
        "seconds": round(progress.seconds, 3),
    }


def thermal_vis_config(
    train_ids: int,
    test_ids: int,
    baseline: int,
    expression: int,
    shards: int,
) -> ThermalVisConfig:
    """A thermal-visible preset of the given size."""
    return ThermalVisConfig(
        ThermalVisSpec(
            "synth_thermal_vis",
            "thermal_vis",
            "tvf",
            train_ids,
            test_ids,
            baseline,
            expression,
            shards,
            description="Synthetic thermal (LWIR) and visible faces, time-synchronised "
            "pairs; ARL-VTF-style protocol: visible galleries G_VB0-/G_VB0+, thermal probe "
            "sets P_TB0, P_TB-, P_TB+, P_TE0, P_TE-.",
        )
    )
