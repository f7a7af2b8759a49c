"""The visible-infrared person re-identification benchmarks, as distributed -> hfrjax datasets.

`convert_reid` reads one of these layouts (``root`` is the folder the dataset unpacks to):

``sysu-mm01`` (SYSU-MM01, Wu et al., "RGB-Infrared Cross-Modality Person Re-Identification",
ICCV 2017)
    ``root/cam1`` ... ``root/cam6``, each holding one folder per identity named by its 4-digit
    number (``0001``) with that camera's ``.jpg`` frames; cam1, cam2, cam4, cam5 are visible
    and cam3, cam6 near infrared (`SYSU_CAMERA_MODALITY`). ``root/exp/train_id.txt``,
    ``val_id.txt``, ``test_id.txt`` (`SYSU_ID_LISTS`) hold comma-separated identity numbers
    (one line as distributed; every line is read). The camera of a record is part of its key
    (``cam3/0001/0005``): `parse_sysu_key` / `sysu_camera` read it back.

    The protocol (the evaluation code of AGW, Ye et al., TPAMI 2021, and DDAG, Ye et al., ECCV
    2020, that TOPLight §4.1 follows): training = every image of the train and val identities
    (as that code trains on both); queries = every infrared image (cams 3, 6) of the test
    identities; gallery = one visible image per test identity and camera, drawn per trial
    (`sysu_gallery`: Python's ``random`` seeded with the trial number, exactly as the standard
    ``process_gallery_sysu`` draws it, so a trial's gallery is the one that code draws from the
    same image files; that code also draws among stray non-image files in a folder, which are
    not candidates here), from cams 1, 2, 4, 5 ("all-search") or 1, 2 ("indoor-search")
    (`SYSU_SEARCH_MODES`). Both modes are one protocol of ``2 x trials`` folds named
    ``all-search/1`` ... ``indoor-search/10``; fold ``<mode>/k`` uses seed ``first_seed + k - 1``.
    The same-room rule (a cam3 query ignores cam2 gallery images) and the identity-level CMC
    belong to the evaluation: `hfrjax.eval.reid`.
``regdb`` (RegDB, Nguyen et al., "Person Recognition System Based on a Combination of Body
Images from Visible Light and Thermal Cameras", Sensors 2017)
    ``root/Visible/<id>/<file>.bmp`` and ``root/Thermal/<id>/<file>.bmp``;
    ``root/idx/{train,test}_{visible,thermal}_{k}.txt`` for trials k = 1..10 (`REGDB_LISTS`),
    lines ``relative/path label``. Identity = the folder holding the file (the lists' labels
    are checked to name one folder each within a list). Protocol: one fold per trial, training
    = the train lists, gallery = the visible test list, probes = the thermal test list; the
    evaluation runs it thermal->visible or, swapped, visible->thermal (`hfrjax.eval.reid`).

Thermal images are stored with the library's thermal modality name, "thermal"
(`hfrjax.data.tfrecord.MODALITIES`); SYSU's infrared cameras are near infrared, "nir".

Keys are paths relative to ``root`` with '/' separators and without extension; labels are
0..C-1 over the identity folder names in natural order; images keep their bytes (see
`hfrjax.data.convert.writing.write_dataset`, which also makes a re-run rewrite the directory
completely and dataset.json the last file written). Missing or undecodable files raise
`ConversionError` or, with ``on_bad="skip"``, are counted and dropped from the protocol with a
warning. Per-fold counts are compared with `EXPECTED` (warnings, not errors).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hfrjax.data.convert.common import (  # noqa: F401 - CaseResolver, show_some re-exported.
    CaseResolver,
    ConversionError,
    ConversionReport,
    ListedImages,
    SourceImage,
    add_io_arguments,
    add_output_arguments,
    check_on_bad,
    check_out_dir,
    converter_options,
    input_root,
    is_image_file,
    list_lines,
    natural_key,
    nested_root_hint,
    numbered_lists,
    protocol_from_lists,
    relative_key,
    relative_parts,
    run_converter,
    show_some,
    subdirs,
    usage_error,
)
from hfrjax.data.convert.writing import (  # noqa: F401 - count checks re-exported.
    APPROX_TOLERANCE,
    Conversion,
    compare_counts,
    count_matches,
    finish_conversion,
    named_fold_warnings,
)
from hfrjax.data.convert.writing import format_fold_table as format_table  # noqa: F401
from hfrjax.data.protocol import Fold, Protocol

DATASETS = ("sysu-mm01", "regdb")

SYSU_CAMERA_MODALITY = {1: "vis", 2: "vis", 3: "nir", 4: "vis", 5: "vis", 6: "nir"}
SYSU_ID_LISTS = {"train": "exp/train_id.txt", "val": "exp/val_id.txt", "test": "exp/test_id.txt"}
SYSU_TRAIN_SPLITS = ("train", "val")
SYSU_SEARCH_MODES = {"all-search": (1, 2, 4, 5), "indoor-search": (1, 2)}
SYSU_QUERY_CAMERAS = (3, 6)
SYSU_TRIALS = 10

REGDB_LISTS = {
    "train_vis": "idx/train_visible_{k}.txt",
    "train_ir": "idx/train_thermal_{k}.txt",
    "gallery": "idx/test_visible_{k}.txt",
    "probe": "idx/test_thermal_{k}.txt",
}
REGDB_ROLE_MODALITY = {"train_vis": "vis", "train_ir": "thermal", "gallery": "vis", "probe": "thermal"}
REGDB_MODALITY_DIRS = {"visible": "vis", "thermal": "thermal"}

EXPECTED: dict[str, dict[str, Any]] = {
    # Usual split: 395 train + val and 96 test identities; 3,803 infrared queries; single-shot
    # galleries of 301 (all-search) and 112 (indoor-search) images.
    "sysu-mm01": {
        "identities": 491,
        "num_folds": 2 * SYSU_TRIALS,
        "train_ids": 395,
        "train_vis": "~22258",
        "train_nir": "~11909",
        "test_ids": 96,
        "probes": 3803,
        "gallery": {"all-search": "~301", "indoor-search": "~112"},
    },
    "regdb": {
        "identities": 412,
        "vis_images": 4120,
        "ir_images": 4120,
        "num_folds": 10,
        "train_ids": 206,
        "train_vis": 2060,
        "train_ir": 2060,
        "test_ids": 206,
        "gallery": 2060,
        "probes": 2060,
    },
}
"""Counts the papers give (ints exact, "~N" approximate); per fold: train_ids ... probes."""


# --------------------------------------------------------------------------------------------
# SYSU-MM01 keys.

_SYSU_KEY = re.compile(r"^cam(\d+)/(\d+)/([^/]+)$")


@dataclasses.dataclass(frozen=True)
class SysuKey:
    """What a SYSU-MM01 sample key says: ``cam<camera>/<identity>/<frame>``."""

    camera: int
    identity: str  # The identity folder's name, e.g. "0001".
    frame: str  # The file name without extension.


def parse_sysu_key(key: str) -> SysuKey:
    """Camera, identity and frame of a SYSU-MM01 key; ValueError naming the key otherwise."""
    m = _SYSU_KEY.match(key)
    if m is None or int(m.group(1)) not in SYSU_CAMERA_MODALITY:
        raise ValueError(
            f"{key!r} is not a SYSU-MM01 key cam<1-6>/<identity>/<frame> (as "
            "hfrjax.data.convert.reid writes them)"
        )
    return SysuKey(int(m.group(1)), m.group(2), m.group(3))


def sysu_camera(key: str) -> int:
    """The camera number (1..6) of a SYSU-MM01 key."""
    return parse_sysu_key(key).camera


# --------------------------------------------------------------------------------------------
# SYSU-MM01.


def read_sysu_ids(path: Path, warnings: list[str] | None = None) -> list[int]:
    """Identity numbers of one ``exp/*_id.txt`` (comma- or space-separated), in file order."""
    if not path.is_file():
        raise ConversionError(f"SYSU-MM01 identity list {path} does not exist")
    ids: list[int] = []
    lines = 0
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        tokens = line.replace(",", " ").split()
        lines += bool(tokens)
        for tok in tokens:
            if not tok.isdigit():
                raise ConversionError(f"{path}:{lineno}: {tok!r} is not an identity number")
            ids.append(int(tok))
    if not ids:
        raise ConversionError(f"{path} lists no identities")
    dup = len(ids) - len(set(ids))
    if warnings is not None:
        if dup:
            warnings.append(f"{path}: {dup} repeated identity number(s) read once")
        if lines > 1:
            warnings.append(
                f"{path}: {lines} non-empty lines; all were read (the standard code reads the "
                "first line only)"
            )
    return list(dict.fromkeys(ids))


def sysu_gallery(
    candidates: Mapping[tuple[int, int], Sequence[str]],
    test_ids: Iterable[int],
    cameras: Sequence[int],
    trial: int,
) -> list[str]:
    """The single-shot gallery of one trial: one item per test identity and camera.

    Reproduces the standard ``process_gallery_sysu`` (AGW / DDAG): Python's ``random`` seeded
    with ``trial``, identities in increasing order (their 4-digit names sorted), for each the
    ``cameras`` in the given order, and where the identity has images in that camera one
    ``random.choice`` among them. ``candidates[(camera, identity)]`` must list the items in the
    order that code sorts the files, by file name; a pair without items draws nothing (and
    consumes no random number), as a missing folder does there.
    """
    rng = random.Random(trial)
    out = []
    for pid in sorted(set(test_ids)):
        for cam in cameras:
            items = candidates.get((cam, pid))
            if items:
                out.append(rng.choice(list(items)))
    return out


def _scan_sysu(
    root: Path, wanted: set[int], warnings: list[str]
) -> dict[tuple[int, int], list[tuple[Path, str]]]:
    """(camera, identity) -> [(file, folder name)] in file-name order, for wanted identities."""
    top = subdirs(root)
    absent = [f"cam{c}" for c in SYSU_CAMERA_MODALITY if f"cam{c}" not in top]
    if absent:
        hint = nested_root_hint(top, "cam1")
        raise ConversionError(
            f"SYSU-MM01: {root} lacks the camera folder(s) {absent}; expected root/cam1 ... "
            f"root/cam6 holding <4-digit identity>/<frame>.jpg{hint}"
        )
    files: dict[tuple[int, int], list[tuple[Path, str]]] = {}
    unlisted, odd, ignored = set(), [], []
    for cam in SYSU_CAMERA_MODALITY:
        for d in sorted(top[f"cam{cam}"].iterdir(), key=lambda p: p.name):
            if d.name.startswith("."):
                continue
            if not d.is_dir():
                ignored.append(str(d))
                continue
            if not d.name.isdigit():
                odd.append(str(d))
                continue
            pid = int(d.name)
            if pid not in wanted:
                unlisted.add(d.name)
                continue
            # The standard code sorts the file names (plain string order).
            for f in sorted(d.iterdir(), key=lambda p: p.name):
                if f.name.startswith("."):
                    continue
                if is_image_file(f):
                    files.setdefault((cam, pid), []).append((f, d.name))
                else:
                    ignored.append(str(f))
    if odd:
        warnings.append(f"ignored {len(odd)} folder(s) not named by a number: {show_some(odd)}")
    if unlisted:
        warnings.append(
            f"{len(unlisted)} identity folder(s) are in none of the exp/ lists and were not "
            f"converted: {show_some(sorted(unlisted, key=natural_key))}"
        )
    if ignored:
        warnings.append(f"ignored {len(ignored)} non-image file(s), e.g. {show_some(ignored)}")
    return files


def _sysu(
    root: Path, include_val: bool, trials: int, first_seed: int, warnings: list[str]
) -> tuple[list[SourceImage], Protocol, dict[str, Any]]:
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    splits = {s: read_sysu_ids(root / p, warnings) for s, p in SYSU_ID_LISTS.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(set(splits[a]) & set(splits[b]))
        if both:
            raise ConversionError(
                f"SYSU-MM01: identities {show_some([str(i) for i in both])} are in both "
                f"{SYSU_ID_LISTS[a]} and {SYSU_ID_LISTS[b]}"
            )
    train_ids = set(splits["train"]) | (set(splits["val"]) if include_val else set())
    test_ids = set(splits["test"])
    wanted = set(splits["train"]) | set(splits["val"]) | test_ids  # Val converted either way.
    files = _scan_sysu(root, wanted, warnings)
    present = {pid for _, pid in files}
    missing = sorted(wanted - present)
    if missing:
        warnings.append(
            f"{len(missing)} listed identities have no images in any camera: "
            f"{show_some([f'{i:04d}' for i in missing])}"
        )
    images: list[SourceImage] = []
    keys: dict[tuple[int, int], list[str]] = {}
    for (cam, pid), found in sorted(files.items()):
        for f, folder in found:
            rel = f.relative_to(root).as_posix()
            images.append(SourceImage(f, rel, relative_key(rel), folder, SYSU_CAMERA_MODALITY[cam]))
            keys.setdefault((cam, pid), []).append(images[-1].key)
    if not images:
        raise ConversionError(f"SYSU-MM01: no images of the listed identities under {root}")

    def of(ids: set[int], cams: Iterable[int]) -> list[str]:
        return [k for pid in sorted(ids) for c in cams for k in keys.get((c, pid), [])]

    vis_cams = [c for c, m in SYSU_CAMERA_MODALITY.items() if m == "vis"]
    nir_cams = [c for c, m in SYSU_CAMERA_MODALITY.items() if m == "nir"]
    train = {"vis": of(train_ids, vis_cams), "nir": of(train_ids, nir_cams)}
    probe = of(test_ids, SYSU_QUERY_CAMERAS)
    folds, names = [], []
    for mode, cams in SYSU_SEARCH_MODES.items():
        for t in range(trials):
            gallery = sysu_gallery(keys, test_ids, cams, first_seed + t)
            folds.append(Fold(train=train, gallery=gallery, probe=probe))
            names.append(f"{mode}/{t + 1}")
    protocol = Protocol(
        "sysu-mm01",
        folds,
        "vis",
        "nir",
        f"SYSU-MM01 standard protocol: train = the {'train + val' if include_val else 'train'} "
        f"identities; queries = every cam3/cam6 image of the {len(test_ids)} test identities; "
        f"single-shot visible gallery drawn per trial as the AGW/DDAG evaluation code draws it "
        f"(Python random seeded {first_seed}..{first_seed + trials - 1}); all-search gallery "
        "cams 1, 2, 4, 5, indoor-search cams 1, 2",
        names,
    )
    extra = {
        "splits": {s: [f"{i:04d}" for i in ids] for s, ids in splits.items()},
        "include_val": include_val,
        "trials": trials,
        "first_seed": first_seed,
        "camera_modality": {f"cam{c}": m for c, m in SYSU_CAMERA_MODALITY.items()},
        "key_format": "cam<camera>/<identity>/<frame> (hfrjax.data.convert.reid.parse_sysu_key)",
    }
    return images, protocol, extra


# --------------------------------------------------------------------------------------------
# RegDB.


REGDB_LIST_MESSAGES = {
    "partial": "RegDB trial {k}: list(s) {absent} are missing (the trial's other lists exist)",
    "none": "RegDB: no trial lists under {root}: expected {first} and its siblings ({where})",
    "gap": "RegDB: the lists of trial {k} are missing but trial {later}'s exist",
}


def _regdb(
    root: Path, on_bad: str, report: ConversionReport, warnings: list[str]
) -> tuple[list[SourceImage], Protocol, list[str], dict[str, Any]]:
    listed = ListedImages(root, strict=False)  # A file listed again keeps its first entry.
    folds = []
    label_clash = []
    for k, paths in enumerate(numbered_lists(root, REGDB_LISTS, REGDB_LIST_MESSAGES), start=1):
        lists: dict[str, list[str]] = {}
        label_of_list: dict[str, dict[str, str]] = {}
        for role, list_path in paths.items():
            modality = REGDB_ROLE_MODALITY[role]
            keys: list[str] = []
            folder_of_label: dict[str, tuple[str, str]] = {}
            label_of_folder: dict[str, tuple[str, str]] = {}
            for where, line, tokens in list_lines(list_path):
                if len(tokens) != 2:
                    raise ConversionError(f"{where}: expected 'relative/path label', got {line!r}")
                path, label = tokens
                parts = relative_parts(path)
                if parts is None or len(parts) < 2:
                    raise ConversionError(
                        f"{where}: {path!r} is not a relative path <Visible|Thermal>/<id>/<file>"
                    )
                top = REGDB_MODALITY_DIRS.get(parts[0].lower())
                if top is not None and top != modality:
                    raise ConversionError(
                        f"{where}: {path} lies under {parts[0]}/ but {list_path.name} lists "
                        f"{modality} images"
                    )
                identity = parts[-2]
                for table, a, b in (
                    (folder_of_label, label, identity),
                    (label_of_folder, identity, label),
                ):
                    old = table.setdefault(a, (b, where))
                    if old[0] != b:
                        raise ConversionError(
                            f"{where}: label {label} and identity folder {identity!r} disagree "
                            f"with {old[1]} (a label must name one folder within a list)"
                        )
                keys.append(listed.add(parts, identity, modality, where, path))
            lists[role] = listed.once(keys)
            label_of_list[role] = {lab: f for lab, (f, _) in folder_of_label.items()}
        for a, b in (("gallery", "probe"), ("train_vis", "train_ir")):
            x, y = label_of_list[a], label_of_list[b]
            clash = [lab for lab in x if lab in y and x[lab] != y[lab]]
            if clash:
                label_clash.append(f"trial {k} {a}/{b}: label {clash[0]}")
        folds.append(lists)
    if listed.repeated:
        warnings.append(f"{listed.repeated} repeated line(s) within a list were read once")
    if label_clash:
        warnings.append(
            "the same label names different identity folders in the visible and thermal lists "
            f"of {show_some(label_clash)}; identities here come from the folders, so evaluation by "
            "the lists' labels would differ"
        )
    dropped = listed.drop_missing(f"the RegDB lists under {root}", on_bad, report, warnings)
    protocol = protocol_from_lists(
        "regdb",
        folds,
        {"vis": "train_vis", "thermal": "train_ir"},
        ("vis", "thermal"),
        f"RegDB: {len(folds)} trials read from the dataset's idx/ lists; gallery = the visible "
        "test list, probes = the thermal test list (swap them for visible->thermal)",
    )
    return list(listed.images.values()), protocol, dropped, {"trials": len(folds)}


# --------------------------------------------------------------------------------------------
# Conversion.


def convert_reid(
    dataset: str,
    root: str,
    out_dir: str,
    *,
    num_shards: int = 8,
    on_bad: str = "raise",
    include_val: bool = True,
    trials: int = SYSU_TRIALS,
    first_seed: int = 0,
    progress: bool = True,
    workers: int = 4,
) -> dict[str, Any]:
    """Converts SYSU-MM01 or RegDB at ``root`` (layouts: module docstring) to an hfrjax dataset
    with its protocol in ``out_dir``.

    SYSU-MM01 only: ``include_val`` trains on the train + val identities (the standard code);
    ``trials`` single-shot galleries per search mode, fold k seeded ``first_seed + k - 1``.
    Returns a summary (per-fold counts, expected counts, skipped files, warnings), also written
    to ``out_dir/conversion.json``; with ``progress`` prints progress lines and the table.
    """
    check_on_bad(on_bad)
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    root_p = input_root(root, dataset)
    check_out_dir(root_p, Path(out_dir), scans_root=dataset == "sysu-mm01")
    conv = Conversion(root_p, Path(out_dir), on_bad, num_shards, progress, workers)
    dropped: list[str] = []
    if dataset == "sysu-mm01":
        images, protocol, extra = _sysu(root_p, include_val, trials, first_seed, conv.warnings)
    else:
        images, protocol, dropped, extra = _regdb(root_p, on_bad, conv.report, conv.warnings)
    return finish_conversion(
        conv,
        dataset,
        images,
        protocol,
        dropped,
        expected=EXPECTED[dataset],
        extra={"converter": f"{__name__}.convert_reid", **extra},
    )


# --------------------------------------------------------------------------------------------
# Command line (``hfrjax convert reid``).


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hfrjax convert reid``."""
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    add_io_arguments(parser, "folder the dataset unpacks to")
    add_output_arguments(parser)
    parser.add_argument(
        "--trials", type=int, default=SYSU_TRIALS, help="SYSU-MM01 gallery draws per mode"
    )
    parser.add_argument(
        "--first_seed", type=int, default=0, help="SYSU-MM01: seed of trial 1 (standard: 0)"
    )
    parser.add_argument(
        "--no_val",
        action="store_true",
        help="SYSU-MM01: train on exp/train_id.txt only (standard: train + val)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines or table")


def run(args: argparse.Namespace) -> int:
    """Runs ``hfrjax convert reid``; 0 on success, 2 with a message on bad input."""
    if args.dataset != "sysu-mm01" and (
        args.no_val or args.trials != SYSU_TRIALS or args.first_seed != 0
    ):
        return usage_error(
            "--trials, --first_seed and --no_val apply to sysu-mm01 only; RegDB's trials come "
            "from its idx/ lists"
        )
    return run_converter(
        convert_reid,
        args.dataset,
        args.root,
        args.out,
        include_val=not args.no_val,
        trials=args.trials,
        first_seed=args.first_seed,
        **converter_options(args),
    )
