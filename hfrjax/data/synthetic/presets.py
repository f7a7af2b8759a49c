"""What `generate` writes: the NIR-VIS set specifications and all named presets.

A NIR-VIS preset has three sets with disjoint identities, as in the Rethinking paper's
setting: a VIS-only source set for pretraining, a CASIA NIR-VIS 2.0-like target set (850 nm
active-NIR camera, 10-fold View 2 protocol) and a cross-sensor set (940 nm-like camera, low
diversity, neutral frontal gallery like BUAA-VisNir). Thermal-visible presets are defined in
`thermal_vis`, long-tailed ones in `longtail`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from hfrjax.data.synthetic.longtail import longtail_config
from hfrjax.data.synthetic.thermal_vis import thermal_vis_config
from hfrjax.data.synthetic.variation import (
    LAB_VARIATION,
    LOW_DIVERSITY_VARIATION,
    WEB_VARIATION,
    Variation,
)


@dataclasses.dataclass(frozen=True)
class SetSpec:
    """One generated dataset: identities, images per identity, cameras, variation, shards."""

    name: str  # Dataset name in dataset.json.
    directory: str  # Sub-directory of the output directory.
    id_prefix: str  # Identity names are f"{id_prefix}{i:05d}".
    num_ids: int
    vis_per_id: int
    nir_per_id: int
    vis_sensor: str
    nir_sensor: str
    variation: Variation
    num_shards: int
    num_folds: int = 10  # 0: no protocol.
    gallery: Literal["random", "first"] = "random"  # Which VIS image of a test identity.
    description: str = ""

    @property
    def num_images(self) -> int:
        return self.num_ids * (self.vis_per_id + self.nir_per_id)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """What `generate` writes: the source, target and cross-sensor sets and the encoding."""

    source: SetSpec
    target: SetSpec
    cross: SetSpec
    image_size: int = 112
    vis_format: Literal["jpeg", "png"] = "jpeg"
    nir_format: Literal["jpeg", "png"] = "png"
    jpeg_quality: int = 92

    @property
    def sets(self) -> tuple[SetSpec, SetSpec, SetSpec]:
        return (self.source, self.target, self.cross)


def _config(
    source: tuple[int, int, int],
    target: tuple[int, int, int, int],
    cross: tuple[int, int, int, int],
) -> SynthConfig:
    """A preset from (ids, VIS per id, shards) for the source and (ids, VIS per id, NIR per
    id, shards) for the two NIR-VIS sets."""
    return SynthConfig(
        source=SetSpec(
            "synth_source",
            "source",
            "src",
            source[0],
            source[1],
            0,
            "vis_web",
            "nir850",
            WEB_VARIATION,
            source[2],
            num_folds=0,
            description="Synthetic VIS faces for pretraining (web-like pose, expression and "
            "lighting).",
        ),
        target=SetSpec(
            "synth_nirvis",
            "target",
            "tgt",
            target[0],
            target[1],
            target[2],
            "vis_lab",
            "nir850",
            LAB_VARIATION,
            target[3],
            description="Synthetic NIR-VIS faces, 850 nm active-illumination NIR camera; "
            "10-fold protocol like CASIA NIR-VIS 2.0 View 2.",
        ),
        cross=SetSpec(
            "synth_nirvis_cross",
            "target_cross",
            "crs",
            cross[0],
            cross[1],
            cross[2],
            "vis_webcam",
            "nir940",
            LOW_DIVERSITY_VARIATION,
            cross[3],
            gallery="first",
            description="Synthetic NIR-VIS faces, 940 nm-like NIR sensor (lower contrast, more "
            "noise, stronger vignetting), few fixed poses/expressions/lights like "
            "Oulu-CASIA/BUAA; 10-fold protocol, neutral frontal VIS gallery.",
        ),
    )


PRESETS: dict[str, Any] = {
    # For unit tests of code that needs a dataset on disk: a second or two.
    "tiny": _config((12, 4, 2), (10, 2, 2, 2), (6, 2, 2, 1)),
    # The default training job's data: ~6.5k images, ~25 s on 2 otherwise idle cores.
    "quickstart": _config((300, 16, 4), (100, 6, 6, 4), (60, 4, 4, 4)),
    # 3k source identities (~48k images), 360 target identities, a BUAA-sized cross set.
    "small": _config((3000, 16, 16), (360, 6, 10, 8), (150, 9, 9, 4)),
    # 30k source identities (~720k images), a CASIA-sized target (725 identities); for big
    # hosts.
    "large": _config((30000, 24, 256), (725, 8, 12, 16), (150, 9, 9, 4)),
    # Thermal-visible, ARL-VTF-style sets (thermal_vis.py): (train ids, test ids, captures per
    # baseline condition, per expression condition, shards). Tiny: 72 images, for tests.
    "thermal_tiny": thermal_vis_config(6, 4, 2, 1, 2),
    # ARL-VTF's 295 training and 100 test subjects, 4,658 images.
    "thermal_vis": thermal_vis_config(295, 100, 3, 2, 4),
    # Long-tailed VIS sets in FTL's Table 1 layout (longtail.py): (regular identities, images
    # per regular identity, shards); UR blocks of 1x, 3x, 5x the regular identities with 5
    # images. Tiny: 405 records, for tests.
    "longtail_tiny": longtail_config(3, 8, 1, pairs=40),
    # 100 regular identities x 30 images, 500 UR identities; 35,500 records (19k renders).
    "longtail": longtail_config(100, 30, 4, pairs=600),
}


def preset_config(preset: str, image_size: int | None = None):
    """The config of a named preset (`SynthConfig`, `ThermalVisConfig`, ...), optionally at
    another crop size."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose from {sorted(PRESETS)}")
    config = PRESETS[preset]
    return config if image_size is None else dataclasses.replace(config, image_size=image_size)
