"""Long-tailed visible face sets in the FTL paper's layout (FTL §4.3, Table 1).

FTL studies under-represented (UR) classes by building training sets from MS-Celeb-1M: the
10K classes with the most images are the regular classes shared by every set; the next 10K,
30K or 50K classes keep 5 randomly picked images each ("faked UR" classes), giving 10K10K,
10K30K and 10K50K; 10K0K (regular classes only) and 60K0K (all 60K classes with all their
images) are the lower and upper bounds. A hold-out test set has 5 further images of each
regular class and of each class of the first UR block (the one every UR set shares).

Here, scaled down, with ``R = num_regular``: the regular block has ``R`` identities with
``images_per_regular`` training images each; the UR blocks have ``m x R`` identities for each
``m`` in ``ur_multiples`` (default 1, 3, 5: the 10K / 30K / 50K blocks) with their first
``ur_images`` = 5 captures (independent draws, so a random pick); the upper bound gives all
``(1 + max m) x R`` identities ``images_per_regular`` images (FTL's 60K0K; here UR identities
have as many images as regular ones there). Variant names keep the paper's labels
(``10K0K``, ``10K10K``, ``10K30K``, ``10K50K``, ``60K0K``) for the layout, not the size.

Written under ``<out>/<directory>/`` as separate dataset directories:

* ``train_<variant>/``: one per variant. Identity ``i`` (regular first, then the UR blocks in
  order) has label ``i`` in every variant and in the hold-out set, so labels, centres and
  classifier rows line up across them. Keys ``<identity>/vis/<k>``, k < images_per_regular.
* ``holdout/``: ``holdout_images`` further captures of each regular identity and of each
  identity of the first UR block (keys continue the numbering: k >= images_per_regular), for
  FTL's nearest-centre rank-1 (gallery: the centre of a class's training images; for 10K0K,
  whose model never sees the UR classes, the centres of the UR classes come from their 5
  images in ``train_10K10K``). Its ``dataset.json`` lists which classes are regular and UR.
* ``holdout/pairs.txt`` and ``holdout/verification.bin``: a synthetic verification pair list
  from the hold-out images, LFW-style: ``num_pairs`` pairs in 10 contiguous folds, each fold
  half same-identity then half different-identity pairs. ``pairs.txt`` has one
  ``key_a<TAB>key_b<TAB>1|0`` line per pair; ``verification.bin`` is the same pairs as an
  InsightFace verification pack (a pickle of ``(images, issame)``: 2N encoded images, N bools),
  so ``eval.verification_packs`` / `hfrjax.eval.verification.evaluate_pack` run it like LFW.

Every record stores its head yaw in degrees (the float feature "yaw", also in the index
sidecar and `RecordTable.yaw`): FTL's class centres (Eq. 5) skip samples with large yaw.
Positive yaw turns the face towards the image's right (the nose moves right).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hfrjax.data import dataset as dataset_lib
from hfrjax.data import tfrecord
from hfrjax.data.synthetic.identity import IdentityParams, sample_identity
from hfrjax.data.synthetic.rendering import render
from hfrjax.data.synthetic.sensors import SENSORS
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

# Seed path of this kind of set (NIR-VIS presets: 0-2; thermal-visible: 3).
SET_INDEX = 4

HOLDOUT_DIR = "holdout"
PAIRS_FILE = "pairs.txt"
PACK_FILE = "verification.bin"

# Web-like variation with a wider spread of yaw than the NIR-VIS source set, so that a yaw
# bound (FTL Eq. 5) has samples to exclude; the renderer's faces hold up to ~40 degrees.
LONGTAIL_VARIATION = Variation(
    yaw_deg=16.0,
    pitch_deg=8.0,
    roll_deg=5.0,
    max_yaw_deg=40.0,
    expression_prob=0.6,
    light_spread=1.0,
    background_spread=1.0,
    blur_max=1.0,
)


@dataclasses.dataclass(frozen=True)
class LongTailSpec:
    """The FTL-layout family: regular block, UR blocks, hold-out set and pair list."""

    name: str
    directory: str
    id_prefix: str
    num_regular: int
    images_per_regular: int
    num_shards: int
    ur_multiples: tuple[int, ...] = (1, 3, 5)
    ur_images: int = 5
    holdout_images: int = 5
    upper_bound: bool = True  # Also write the 60K0K-style set.
    num_pairs: int = 600
    vis_sensor: str = "vis_web"
    variation: Variation = LONGTAIL_VARIATION
    description: str = ""

    def __post_init__(self) -> None:
        where = f"long-tailed set {self.name!r}"
        if self.num_regular < 1 or not self.ur_multiples or min(self.ur_multiples) < 1:
            raise ValueError(
                f"{where}: needs >= 1 regular identity and UR multiples >= 1, got "
                f"{self.num_regular} and {self.ur_multiples}"
            )
        if list(self.ur_multiples) != sorted(set(self.ur_multiples)):
            raise ValueError(f"{where}: ur_multiples {self.ur_multiples} must be increasing")
        if not 1 <= self.ur_images <= self.images_per_regular:
            raise ValueError(
                f"{where}: ur_images {self.ur_images} must be in [1, images_per_regular = "
                f"{self.images_per_regular}]"
            )
        if self.holdout_images < 2:
            raise ValueError(f"{where}: holdout_images must be >= 2 (same-identity pairs)")
        if self.num_pairs < 20 or self.num_pairs % 20:
            raise ValueError(
                f"{where}: num_pairs {self.num_pairs} must be a positive multiple of 20 "
                "(10 folds, each half same and half different pairs)"
            )

    @property
    def num_ur(self) -> int:
        """UR identities in all (the largest block)."""
        return self.num_regular * max(self.ur_multiples)

    @property
    def num_ids(self) -> int:
        return self.num_regular + self.num_ur

    @property
    def num_holdout_ids(self) -> int:
        """Regular identities plus those of the first (shared) UR block."""
        return self.num_regular * (1 + self.ur_multiples[0])

    def variants(self) -> list[tuple[str, int, int]]:
        """(name, UR identities, images per UR identity) of each training set."""
        r = self.num_regular
        out = [("10K0K", 0, 0)]
        out += [(f"10K{10 * m}K", m * r, self.ur_images) for m in self.ur_multiples]
        if self.upper_bound:
            out.append((f"{10 * (1 + max(self.ur_multiples))}K0K", self.num_ur, 0))
        return out

    def images_per_ur(self, variant: tuple[str, int, int]) -> int:
        _, n_ur, per = variant
        return self.images_per_regular if (n_ur and not per) else per

    @property
    def num_images(self) -> int:
        """Records written over all training sets and the hold-out set."""
        regular = self.num_regular * self.images_per_regular
        train = sum(regular + n * self.images_per_ur((v, n, p)) for v, n, p in self.variants())
        return train + self.num_holdout_ids * self.holdout_images


@dataclasses.dataclass(frozen=True)
class LongTailConfig:
    """A long-tailed preset: everything under ``<out>/<longtail.directory>/``."""

    longtail: LongTailSpec
    image_size: int = 112
    vis_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = 92

    @property
    def sets(self) -> tuple[LongTailSpec]:
        return (self.longtail,)

    def write(self, out_dir: Path, seed: int, preset: str, imap) -> dict[str, dict[str, Any]]:
        """Renders and writes all training sets, the hold-out set and the pair list."""
        return _write(Path(out_dir), self.longtail, self, seed, preset, imap)


def longtail_captures(
    spec: LongTailSpec, seed: int, identity_index: int
) -> tuple[IdentityParams, list[SampleParams], list[SampleParams]]:
    """The identity, its training captures (``images_per_regular``; a UR set keeps the first
    ``ur_images``) and its hold-out captures, exactly as `generate` draws them."""
    path = (seed, SET_INDEX, 0, identity_index)
    ident = sample_identity(np.random.default_rng(seed_sequence(*path, 0)))
    captures = []
    for kind, count in ((1, spec.images_per_regular), (2, spec.holdout_images)):
        rng = np.random.default_rng(seed_sequence(*path, kind))
        captures.append([sample_params(rng, "vis", spec.variation, ident, k) for k in range(count)])
    return ident, captures[0], captures[1]


def yaw_degrees(sample: SampleParams) -> float:
    """The head yaw of a capture in degrees, as stored in its record."""
    return math.degrees(sample.yaw)


@dataclasses.dataclass(frozen=True)
class _Task:
    identity_index: int
    holdout: bool
    seed: int
    spec: LongTailSpec
    image_size: int
    image_format: str
    jpeg_quality: int


def _render_task(task: _Task) -> tuple[list[tuple[bytes, float]], list[tuple[bytes, float]]]:
    """Worker: (training, hold-out) lists of (encoded image, yaw in degrees)."""
    spec = task.spec
    ident, train, holdout = longtail_captures(spec, task.seed, task.identity_index)

    def encode(params: SampleParams) -> tuple[bytes, float]:
        img = render(ident, params, "vis", spec.vis_sensor, task.image_size)
        return encode_image(img, task.image_format, task.jpeg_quality), yaw_degrees(params)

    return [encode(p) for p in train], [encode(p) for p in holdout] if task.holdout else []


def _write_images(
    writer: tfrecord.ShardedWriter,
    spec: LongTailSpec,
    set_name: str,
    identity: str,
    label: int,
    images: list[tuple[bytes, float]],
    first_key: int,
    image_format: str,
) -> int:
    """Writes one identity's (encoded image, yaw) list with keys numbered from first_key."""
    records = [
        Record("vis", sample_key(identity, "vis", first_key + k), data, yaw)
        for k, (data, yaw) in enumerate(images)
    ]
    dataset = f"{spec.name}_{set_name}"
    return write_identity(writer, dataset, label, identity, records, {"vis": image_format})


def verification_pairs(
    spec: LongTailSpec, seed: int
) -> list[tuple[tuple[int, int], tuple[int, int], bool]]:
    """The pair list: ((identity, hold-out capture), (identity, hold-out capture), same) in
    10 folds of ``num_pairs / 10``, each half same-identity then half different pairs; no
    pair repeats. Identities are drawn uniformly from the hold-out identities."""
    rng = np.random.default_rng(seed_sequence(seed, SET_INDEX, 3))
    n_ids, n_img = spec.num_holdout_ids, spec.holdout_images
    half = spec.num_pairs // 20
    same_pairs = n_ids * n_img * (n_img - 1) // 2
    different_pairs = n_ids * (n_ids - 1) // 2 * n_img**2
    if spec.num_pairs // 2 > min(same_pairs, different_pairs):
        raise ValueError(
            f"{spec.name}: {n_ids} hold-out identities x {n_img} images give {same_pairs} "
            f"same and {different_pairs} different pairs, fewer than {spec.num_pairs // 2}"
        )
    seen: set[tuple[tuple[int, int], tuple[int, int]]] = set()
    pairs = []

    def add(a: tuple[int, int], b: tuple[int, int], same: bool) -> bool:
        key = (min(a, b), max(a, b))
        if key in seen:
            return False
        seen.add(key)
        pairs.append((key[0], key[1], same))
        return True

    for _ in range(10):
        for same in (True, False):
            made = 0
            while made < half:
                if same:
                    i = int(rng.integers(n_ids))
                    j, k = (int(x) for x in rng.choice(n_img, 2, replace=False))
                    made += add((i, j), (i, k), True)
                else:
                    i, k = (int(x) for x in rng.choice(n_ids, 2, replace=False))
                    a = (i, int(rng.integers(n_img)))
                    made += add(a, (k, int(rng.integers(n_img))), False)
    return pairs


def _write(
    root: Path, spec: LongTailSpec, config: LongTailConfig, seed: int, preset: str, imap
) -> dict[str, dict[str, Any]]:
    base = root / spec.directory
    variants = spec.variants()
    directories = {v[0]: base / f"train_{v[0]}" for v in variants}
    directories[HOLDOUT_DIR] = base / HOLDOUT_DIR
    for d in directories.values():
        set_directory(d)
    names = identity_names(spec)
    n_holdout = spec.num_holdout_ids
    pairs = verification_pairs(spec, seed)
    pair_images = {x for a, b, _ in pairs for x in (a, b)}
    pack_bytes: dict[tuple[int, int], bytes] = {}
    tasks = [
        _Task(
            i, i < n_holdout, seed, spec, config.image_size, config.vis_format, config.jpeg_quality
        )
        for i in range(spec.num_ids)
    ]
    # Each set holds a prefix of the identities: (identities, images per UR identity).
    members = {v[0]: (spec.num_regular + v[1], spec.images_per_ur(v)) for v in variants}
    members[HOLDOUT_DIR] = (n_holdout, spec.holdout_images)
    counts = {name: 0 for name in directories}
    progress = Progress(spec.name, spec.num_images)
    with contextlib.ExitStack() as stack:  # Any error aborts every shard writer.
        writers = {
            name: stack.enter_context(tfrecord.ShardedWriter(d, "data", spec.num_shards))
            for name, d in directories.items()
        }
        for i, (train, holdout) in enumerate(imap(_render_task, tasks)):
            written = 0
            for set_name, (n_ids, per_ur) in members.items():
                if set_name == HOLDOUT_DIR or i >= n_ids:
                    continue
                per = spec.images_per_regular if i < spec.num_regular else per_ur
                written += _write_images(
                    writers[set_name],
                    spec,
                    set_name,
                    names[i],
                    i,
                    train[:per],
                    0,
                    config.vis_format,
                )
                counts[set_name] += per
            if holdout:
                first = spec.images_per_regular  # Hold-out keys continue the numbering.
                written += _write_images(
                    writers[HOLDOUT_DIR],
                    spec,
                    HOLDOUT_DIR,
                    names[i],
                    i,
                    holdout,
                    first,
                    config.vis_format,
                )
                counts[HOLDOUT_DIR] += len(holdout)
                pack_bytes.update(
                    {(i, k): data for k, (data, _) in enumerate(holdout) if (i, k) in pair_images}
                )
            progress.update(written)
    summaries = {}
    for set_name, directory in directories.items():
        n_ids, per_ur = members[set_name]
        holdout_set = set_name == HOLDOUT_DIR
        regular = names[: spec.num_regular]
        ur = names[spec.num_regular : n_ids]
        info = dataset_lib.DatasetInfo(
            name=f"{spec.name}_{set_name}",
            shards=[p.name for p in writers[set_name].paths],
            num_images=counts[set_name],
            class_names=names[:n_ids],
            modalities={"vis": counts[set_name]},
            image_size=(config.image_size, config.image_size),
            image_format=config.vis_format,
            description=(
                f"{spec.description} Hold-out set: {spec.holdout_images} images per regular "
                "and first-block UR identity; labels as in the training sets."
                if holdout_set
                else f"{spec.description} Training set {set_name}: {len(regular)} regular "
                f"identities x {spec.images_per_regular} images, {len(ur)} UR identities x "
                f"{per_ur} images."
            ),
            extra={
                **provenance(spec, preset, seed, SET_INDEX),
                "layout": "FTL Table 1 (scaled down); see hfrjax.data.synthetic.longtail",
                "variant": set_name,
                "regular_classes": len(regular),
                "ur_classes": len(ur),
                "images_per_regular": spec.holdout_images
                if holdout_set
                else spec.images_per_regular,
                "images_per_ur": spec.holdout_images if holdout_set else per_ur,
                "yaw": "per record, degrees (feature 'yaw', RecordTable.yaw); positive turns "
                "the face towards the image's right",
                "nuisance": "hfrjax.data.synthetic.longtail_captures(spec, seed, label) "
                "regenerates each capture's parameters",
                **({"pairs": PAIRS_FILE, "verification_pack": PACK_FILE} if holdout_set else {}),
                "sensor": dataclasses.asdict(SENSORS[spec.vis_sensor]),
                "variation": dataclasses.asdict(spec.variation),
            },
        )
        info.save(directory)
        summaries[f"{spec.directory}/{directory.name}"] = {
            "name": info.name,
            "directory": f"{spec.directory}/{directory.name}",
            "identities": n_ids,
            "regular_identities": len(regular),
            "ur_identities": len(ur),
            "images": {"vis": counts[set_name]},
            "shards": spec.num_shards,
        }
    _write_pairs(directories[HOLDOUT_DIR], spec, names, pairs, pack_bytes)
    summaries[f"{spec.directory}/{HOLDOUT_DIR}"]["pairs"] = len(pairs)
    summaries[f"{spec.directory}/{HOLDOUT_DIR}"]["seconds"] = round(progress.seconds, 3)
    return summaries


def _write_pairs(
    directory: Path,
    spec: LongTailSpec,
    names: list[str],
    pairs: list[tuple[tuple[int, int], tuple[int, int], bool]],
    images: dict[tuple[int, int], bytes],
) -> None:
    """``pairs.txt`` (keys) and ``verification.bin`` (InsightFace pack) of the pair list."""

    def key(x: tuple[int, int]) -> str:
        return sample_key(names[x[0]], "vis", spec.images_per_regular + x[1])

    lines = [f"{key(a)}\t{key(b)}\t{int(same)}\n" for a, b, same in pairs]
    (directory / PAIRS_FILE).write_text("".join(lines), encoding="utf-8")
    pack = ([images[x] for a, b, _ in pairs for x in (a, b)], [bool(s) for _, _, s in pairs])
    tmp = directory / (PACK_FILE + ".tmp")
    tmp.write_bytes(pickle.dumps(pack, protocol=4))
    tmp.replace(directory / PACK_FILE)


def read_pairs(path: str | Path) -> list[tuple[str, str, bool]]:
    """(key_a, key_b, same) of a ``pairs.txt``; a malformed line is an error naming it."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split("\t")
        if len(parts) != 3 or parts[2] not in ("0", "1"):
            raise ValueError(f"{path}:{n}: expected 'key_a<TAB>key_b<TAB>0|1', got {line!r}")
        out.append((parts[0], parts[1], parts[2] == "1"))
    return out


def longtail_config(
    regular: int, images: int, shards: int, pairs: int = 600, image_size: int = 112
) -> LongTailConfig:
    """A long-tailed preset: ``regular`` identities with ``images`` images, UR blocks of
    1x, 3x and 5x ``regular`` identities with 5 images."""
    return LongTailConfig(
        LongTailSpec(
            "synth_longtail",
            "longtail",
            "ltl",
            regular,
            images,
            shards,
            num_pairs=pairs,
            description="Synthetic long-tailed VIS faces in FTL's layout (Table 1, scaled "
            "down): regular identities with many images, faked UR identities with 5.",
        ),
        image_size=image_size,
    )
