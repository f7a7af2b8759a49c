"""The four NIR-VIS benchmarks, as distributed, -> hfrjax datasets with their protocols.

`convert_nirvis` reads one of these layouts (``root`` is the folder the dataset unpacks to):

``casia-nirvis2`` (CASIA NIR-VIS 2.0, View 2)
    ``root/protocols/{vis_train_k,nir_train_k,vis_gallery_k,nir_probe_k}.txt``, k = 1..10
    (`CASIA_LISTS`; dev lists ignored), one path per line relative to ``root`` with Windows
    separators (``s2\\NIR\\10153\\001.bmp``); identity = the folder holding the file. The lists'
    extensions are unreliable (VIS files are .jpg, NIR .bmp whatever a list says), so a listed
    file is looked for as listed, then with the other `LIST_EXTENSIONS`, then matching the
    path case-insensitively (the lists were written on Windows).
``lamp-hq`` (LAMP-HQ)
    ``root/Protocols/train/train_{vis,nir}{k}.txt``, ``root/Protocols/test/gallery_vis{k}.txt``,
    ``probe_nir{k}.txt`` (`LAMP_LISTS`), lines ``relative_path label``; identity = the label
    (`LAMP_IDENTITY_FROM`; set it to "folder" if a copy's labels are renumbered per list, which
    shows as identities shared by the train and test lists of a fold in the warnings).
``oulu-casia`` (Oulu-CASIA NIR-VIS), no official lists
    ``root/<NI|VL>/<Strong|Weak|Dark>/<subject>/<expression>/<frame>.<jpeg|jpg|png|bmp>``
    (`OULU_DOMAIN_DIRS`, `OULU_ILLUMINATION_DIRS`, `OULU_EXPRESSION_DIRS`; folder names match
    case-insensitively), as in the distribution's ``OriginalImg/`` folder. The protocol
    (`OuluSpec`): of the subjects with at least ``per_expression`` frames of each of the six
    expressions in both domains under the spec's illuminations (default the normal indoor
    "Strong" light), ``num_subjects`` (40) are drawn, and ``per_expression`` (8) frames per
    expression and domain (96 images per subject); per fold 20 subjects train, 20 test; the
    gallery is every VIS image of the test subjects, the probes every NIR image.
``buaa`` (BUAA-VisNir), no official lists
    ``root/<subject>/<n>.<ext>`` with n = 1..18, odd n VIS and even n NIR, pose (n + 1) // 2
    (`BUAA_VIS_NUMBERS_ODD`), pose 1 the neutral frontal one (`BUAA_NEUTRAL_POSE`); or
    ``root/<subject>/<VIS|NIR>/<pose>.<ext>`` (`BUAA_MODALITY_DIRS`). The protocol (`BuaaSpec`):
    per fold 50 train / 100 test subjects; gallery the neutral frontal VIS image of each test
    subject; probes every NIR image of the test subjects.

Real copies vary (re-packed archives, renamed folders, pre-cropped sets): adapt by editing the
module constants above (or passing an `OuluSpec` / `BuaaSpec`), or convert the images with
`hfrjax.data.convert.folders.convert_folder` and a protocol of your own.

The generated Oulu/BUAA protocols are a deterministic function of ``seed`` and the sorted file
lists (subject selection uses its own random stream, each fold another, so adding folds leaves
the earlier ones unchanged) and are written out like every protocol (``out/protocols/*.txt``,
keys = source paths without extension), so they can be audited and reused.

Every dataset holds exactly the images its protocol lists name (CASIA, LAMP-HQ: every image
in any fold's lists; Oulu: the drawn 40 x 96; BUAA: every image of the drawn subjects). Keys are
paths relative to ``root`` with '/' separators and without extension; labels are 0..C-1 over
the identity names in natural sort order; images keep their original bytes (BMP as BMP: see
`hfrjax.data.convert.writing`). Files named by a list but missing, and undecodable images,
raise `ConversionError` (count and first few) or, with ``on_bad="skip"``, are counted and
removed from the protocol with a warning. Per-fold counts are reported next to `EXPECTED`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hfrjax.data.convert.common import (
    ConversionError,
    ConversionReport,
    ListedImages,
    SourceImage,
    add_io_arguments,
    add_output_arguments,
    check_on_bad,
    check_out_dir,
    converter_options,
    files_in,
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
from hfrjax.data.convert.writing import (  # noqa: F401 - APPROX_TOLERANCE re-exported.
    APPROX_TOLERANCE,
    Conversion,
    finish_conversion,
    modality_counts,
    text_table,
)
from hfrjax.data.protocol import Fold, Protocol

DATASETS = ("casia-nirvis2", "lamp-hq", "oulu-casia", "buaa")

# Protocol list files; roles: train_vis/train_nir (training), gallery (VIS), probe (NIR).
CASIA_LISTS = {
    "train_vis": "protocols/vis_train_{k}.txt",
    "train_nir": "protocols/nir_train_{k}.txt",
    "gallery": "protocols/vis_gallery_{k}.txt",
    "probe": "protocols/nir_probe_{k}.txt",
}
LAMP_LISTS = {
    "train_vis": "Protocols/train/train_vis{k}.txt",
    "train_nir": "Protocols/train/train_nir{k}.txt",
    "gallery": "Protocols/test/gallery_vis{k}.txt",
    "probe": "Protocols/test/probe_nir{k}.txt",
}
ROLE_MODALITY = {"train_vis": "vis", "train_nir": "nir", "gallery": "vis", "probe": "nir"}
LIST_EXTENSIONS = (".jpg", ".bmp", ".jpeg", ".png")
"""Tried, in order, after a listed file's own extension."""
LAMP_IDENTITY_FROM = "label"
"""LAMP-HQ identity: "label" (the list's second column) or "folder" (the file's folder)."""

OULU_DOMAIN_DIRS = {"nir": "NI", "vis": "VL"}
OULU_ILLUMINATION_DIRS = ("Strong", "Weak", "Dark")
OULU_EXPRESSION_DIRS = ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")

BUAA_MODALITY_DIRS = {"vis": "VIS", "nir": "NIR"}
BUAA_VIS_NUMBERS_ODD = True
"""Numbered layout: files 1, 3, ..., 17 are VIS and 2, 4, ..., 18 NIR (pose (n + 1) // 2)."""
BUAA_NEUTRAL_POSE = 1
BUAA_POSES = 9


@dataclasses.dataclass(frozen=True)
class OuluSpec:
    """How the Oulu-CASIA NIR-VIS protocol is drawn (defaults: the common protocol)."""

    num_subjects: int = 40
    num_train: int = 20
    per_expression: int = 8  # Frames per expression and domain.
    illuminations: tuple[str, ...] = ("Strong",)  # Normal indoor light.
    num_folds: int = 1


@dataclasses.dataclass(frozen=True)
class BuaaSpec:
    """How the BUAA-VisNir protocol is drawn (defaults: the common protocol)."""

    num_train: int = 50
    num_test: int = 100
    num_folds: int = 1


OULU_SPEC = OuluSpec()
BUAA_SPEC = BuaaSpec()


def expected_counts(dataset: str, spec: OuluSpec | BuaaSpec | None = None) -> dict[str, Any]:
    """Counts the datasets' papers give for a dataset (ints exact, "~N" approximate); for the
    generated protocols they follow from ``spec``."""
    if dataset == "casia-nirvis2":
        return {
            "identities": "~725",
            "num_folds": 10,
            "train_ids": "~357",
            "test_ids": 358,
            "gallery": 358,
            "probes": "~6200",
        }
    if dataset == "lamp-hq":
        return {
            "identities": 573,
            "vis_images": 16828,
            "nir_images": 56788,
            "num_folds": 10,
            "train_ids": "~300",
            "test_ids": "~273",
        }
    if dataset == "oulu-casia":
        s = spec or OULU_SPEC
        per_subject = len(OULU_EXPRESSION_DIRS) * s.per_expression
        test = s.num_subjects - s.num_train
        return {
            "identities": s.num_subjects,
            "num_folds": s.num_folds,
            "train_ids": s.num_train,
            "train_vis": s.num_train * per_subject,
            "train_nir": s.num_train * per_subject,
            "test_ids": test,
            "gallery": test * per_subject,
            "probes": test * per_subject,
        }
    if dataset == "buaa":
        s = spec or BUAA_SPEC
        return {
            "identities": s.num_train + s.num_test,
            "num_folds": s.num_folds,
            "train_ids": s.num_train,
            "train_vis": s.num_train * BUAA_POSES,
            "train_nir": s.num_train * BUAA_POSES,
            "test_ids": s.num_test,
            "gallery": s.num_test,
            "probes": s.num_test * BUAA_POSES,
        }
    raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")


EXPECTED = {d: expected_counts(d) for d in DATASETS}
"""Expected counts per dataset (per fold: train_ids, train_vis, ..., probes)."""


# --------------------------------------------------------------------------------------------
# Small helpers.


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _protocol(
    name: str,
    description: str,
    train: list[tuple[list[str], list[str]]],
    keys: Mapping[str, Mapping[str, list[str]]],
    gallery: Callable[[str], list[str]],
) -> Protocol:
    """Folds from (train subjects, test subjects) pairs: train = all their VIS/NIR keys,
    gallery = ``gallery(subject)`` per test subject, probes = all NIR keys of the test ones."""
    folds = [
        Fold(
            train={m: [x for s in tr for x in keys[s].get(m, [])] for m in ("vis", "nir")},
            gallery=[x for s in te for x in gallery(s)],
            probe=[x for s in te for x in keys[s].get("nir", [])],
        )
        for tr, te in train
    ]
    return Protocol(name, folds, "vis", "nir", description)


def _split(subjects: list[str], num_train: int, seed: int, num_folds: int):
    """Per fold (train, test) subject lists from that fold's own random stream."""
    out = []
    for k in range(1, num_folds + 1):
        perm = _rng(seed, k).permutation(len(subjects))
        out.append(
            (
                sorted((subjects[i] for i in perm[:num_train]), key=natural_key),
                sorted((subjects[i] for i in perm[num_train:]), key=natural_key),
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# List-based datasets: CASIA NIR-VIS 2.0, LAMP-HQ.


LIST_MESSAGES = {
    "partial": "fold {k}: protocol list(s) {absent} are missing (the fold's other lists exist)",
    "none": "no protocol lists under {root}: expected {first} and its siblings ({where})",
    "gap": "the lists of fold {k} are missing but fold {later}'s exist ({later_path})",
}


def _read_lists(
    dataset: str,
    root: Path,
    on_bad: str,
    report: ConversionReport,
    warnings: list[str],
) -> tuple[list[SourceImage], Protocol, list[str]]:
    """Images, protocol and dropped (missing) keys of CASIA NIR-VIS 2.0 or LAMP-HQ."""
    casia = dataset == "casia-nirvis2"
    templates = CASIA_LISTS if casia else LAMP_LISTS
    listed = ListedImages(root, LIST_EXTENSIONS)
    folds = []
    for paths in numbered_lists(root, templates, LIST_MESSAGES):
        lists: dict[str, list[str]] = {}
        for role, list_path in paths.items():
            modality = ROLE_MODALITY[role]
            keys: list[str] = []
            for where, line, tokens in list_lines(list_path):
                if len(tokens) not in ((1, 2) if casia else (2,)):
                    raise ConversionError(
                        f"{where}: expected {'a path' if casia else 'relative_path label'}, "
                        f"got {line.strip()!r}"
                    )
                parts = relative_parts(tokens[0])
                if parts is None or len(parts) < 2:
                    raise ConversionError(
                        f"{where}: {tokens[0]!r} is not a relative path <folder>/<file>"
                    )
                if not casia and LAMP_IDENTITY_FROM == "label":
                    identity = tokens[1]
                else:
                    identity = parts[-2]
                keys.append(listed.add(parts, identity, modality, where, tokens[0]))
            lists[role] = listed.once(keys)
        folds.append(lists)
    if listed.repeated:
        warnings.append(f"{listed.repeated} repeated line(s) within a list were read once")
    dropped = listed.drop_missing(
        f"the {dataset} protocol lists under {root}",
        on_bad,
        report,
        warnings,
        tried=f"also tried {'/'.join(LIST_EXTENSIONS)} and case-insensitive matches; ",
    )
    protocol = protocol_from_lists(
        "casia-nirvis2-view2" if casia else "lamp-hq",
        folds,
        {"vis": "train_vis", "nir": "train_nir"},
        ("vis", "nir"),
        f"{len(folds)} folds read from the dataset's own lists ({', '.join(templates.values())})",
    )
    return list(listed.images.values()), protocol, dropped


# --------------------------------------------------------------------------------------------
# Generated protocols: Oulu-CASIA NIR-VIS, BUAA-VisNir.


def _oulu(
    root: Path, spec: OuluSpec, seed: int, warnings: list[str]
) -> tuple[list[SourceImage], Protocol]:
    if not 0 < spec.num_train < spec.num_subjects:
        raise ValueError(f"OuluSpec needs 0 < num_train < num_subjects, got {spec}")
    layout = "root/<NI|VL>/<illumination>/<subject>/<expression>/<frame>.<ext>"
    top = subdirs(root)
    expressions = {e.lower(): e for e in OULU_EXPRESSION_DIRS}
    files: dict[tuple[str, str, str], list[Path]] = {}
    subjects: set[str] = set()
    unknown, ignored = [], []
    for modality, name in OULU_DOMAIN_DIRS.items():
        domain = top.get(name.lower())
        if domain is None:
            hint = nested_root_hint(top, name)
            raise ConversionError(
                f"Oulu-CASIA: {root} has no {name}/ folder ({modality} images); expected "
                f"{layout}; {root} holds {show_some(sorted(p.name for p in root.iterdir()))}{hint}"
            )
        for illum in spec.illuminations:
            idir = subdirs(domain).get(illum.lower())
            if idir is None:
                raise ConversionError(
                    f"Oulu-CASIA: {domain} has no {illum}/ folder (illuminations asked for: "
                    f"{spec.illuminations}; found {sorted(subdirs(domain))})"
                )
            for sdir in subdirs(idir).values():
                subjects.add(sdir.name)
                for edir in subdirs(sdir).values():
                    expr = expressions.get(edir.name.lower())
                    if expr is None:
                        unknown.append(str(edir))
                        continue
                    for f in files_in(edir):
                        if is_image_file(f):
                            files.setdefault((sdir.name, expr, modality), []).append(f)
                        else:
                            ignored.append(str(f))
    if unknown:
        warnings.append(
            f"ignored {len(unknown)} folder(s) that are not one of the expressions "
            f"{OULU_EXPRESSION_DIRS}, e.g. {show_some(unknown)}"
        )
    if ignored:
        warnings.append(f"ignored {len(ignored)} non-image file(s), e.g. {show_some(ignored)}")
    eligible, lacking = [], []
    for s in sorted(subjects, key=natural_key):
        short = [
            f"{OULU_DOMAIN_DIRS[m]}/{e} ({len(files.get((s, e, m), []))})"
            for m in ("vis", "nir")
            for e in OULU_EXPRESSION_DIRS
            if len(files.get((s, e, m), [])) < spec.per_expression
        ]
        if short:
            lacking.append(f"{s}: {', '.join(short[:3])}")
        else:
            eligible.append(s)
    if lacking:
        warnings.append(
            f"{len(lacking)} subject(s) have fewer than {spec.per_expression} frames of some "
            f"expression and cannot be drawn: {show_some(lacking)}"
        )
    if len(eligible) < spec.num_subjects:
        raise ConversionError(
            f"Oulu-CASIA: only {len(eligible)} subject(s) under {root} have at least "
            f"{spec.per_expression} frames of each expression in both NI and VL (illuminations "
            f"{spec.illuminations}); the protocol needs {spec.num_subjects}; lacking: "
            f"{show_some(lacking)}"
        )
    rng = _rng(seed, 0)
    chosen = sorted(
        (eligible[i] for i in rng.choice(len(eligible), spec.num_subjects, replace=False)),
        key=natural_key,
    )
    images, keys = [], {}
    for s in chosen:
        keys[s] = {"vis": [], "nir": []}
        for e in OULU_EXPRESSION_DIRS:
            for m in ("vis", "nir"):
                cand = files[(s, e, m)]
                for i in sorted(rng.choice(len(cand), spec.per_expression, replace=False)):
                    rel = cand[i].relative_to(root).as_posix()
                    images.append(SourceImage(cand[i], rel, relative_key(rel), s, m))
                    keys[s][m].append(images[-1].key)
    protocol = _protocol(
        f"oulu-casia-seed{seed}",
        f"generated from seed {seed}: {spec.num_subjects} subjects drawn from those with "
        f">= {spec.per_expression} frames per expression and domain under "
        f"{'/'.join(spec.illuminations)} light, {spec.per_expression} frames per expression "
        f"and domain; per fold {spec.num_train} train / {spec.num_subjects - spec.num_train} "
        "test subjects; gallery all VIS images of the test subjects, probes all their NIR",
        _split(chosen, spec.num_train, seed, spec.num_folds),
        keys,
        lambda s: keys[s]["vis"],
    )
    return images, protocol


def _buaa(
    root: Path, spec: BuaaSpec, seed: int, warnings: list[str]
) -> tuple[list[SourceImage], Protocol]:
    if spec.num_train < 1 or spec.num_test < 1:
        raise ValueError(f"BuaaSpec needs num_train >= 1 and num_test >= 1, got {spec}")
    per_subject: dict[str, list[tuple[Path, str, int]]] = {}
    odd, ignored = [], []

    def numbered(d: Path) -> list[tuple[Path, int]]:
        """The images of ``d`` named by a number; the other files are noted."""
        out = []
        for f in files_in(d):
            if not is_image_file(f):
                ignored.append(str(f))
            elif not f.stem.isdigit():
                odd.append(str(f))
            else:
                out.append((f, int(f.stem)))
        return out

    for sdir in subdirs(root).values():
        sub = subdirs(sdir)
        moddirs = {m: sub.get(n.lower()) for m, n in BUAA_MODALITY_DIRS.items()}
        found: list[tuple[Path, str, int]] = []
        if any(moddirs.values()):
            for m, d in moddirs.items():
                if d is not None:
                    found += [(f, m, n) for f, n in numbered(d)]
        else:
            for f, n in numbered(sdir):
                vis = (n % 2 == 1) == BUAA_VIS_NUMBERS_ODD
                found.append((f, "vis" if vis else "nir", (n + 1) // 2))
        if found:
            per_subject[sdir.name] = found
    stray = [str(f) for f in files_in(root) if is_image_file(f)]
    if stray:
        warnings.append(
            f"ignored {len(stray)} image(s) outside subject folders: {show_some(stray)}"
        )
    if odd:
        warnings.append(
            f"ignored {len(odd)} image(s) whose names are not numbers: {show_some(odd)}"
        )
    if ignored:
        warnings.append(f"ignored {len(ignored)} non-image file(s), e.g. {show_some(ignored)}")
    eligible, lacking = [], []
    for s in sorted(per_subject, key=natural_key):
        has_gallery = any(m == "vis" and p == BUAA_NEUTRAL_POSE for _, m, p in per_subject[s])
        has_probe = any(m == "nir" for _, m, _ in per_subject[s])
        if has_gallery and has_probe:
            eligible.append(s)
        else:
            lacking.append(s)
    if lacking:
        warnings.append(
            f"{len(lacking)} subject(s) lack the neutral frontal VIS image (pose "
            f"{BUAA_NEUTRAL_POSE}) or any NIR image and were left out: {show_some(lacking)}"
        )
    need = spec.num_train + spec.num_test
    if len(eligible) < need:
        raise ConversionError(
            f"BUAA-VisNir: {len(eligible)} usable subject folder(s) under {root} (each needs "
            f"the neutral frontal VIS image and NIR images in the layout root/<subject>/<n>.<ext> "
            f"or root/<subject>/<VIS|NIR>/<pose>.<ext>); the protocol needs {need}"
        )
    if len(eligible) > need:
        warnings.append(f"{len(eligible)} usable subjects; drew {need} of them (seed {seed})")
    rng = _rng(seed, 0)
    chosen = sorted(
        (eligible[i] for i in rng.choice(len(eligible), need, replace=False)), key=natural_key
    )
    images, keys, neutral = [], {}, {}
    for s in chosen:
        keys[s] = {"vis": [], "nir": []}
        for f, m, pose in sorted(per_subject[s], key=lambda t: (t[1] != "vis", t[2], t[0].name)):
            rel = f.relative_to(root).as_posix()
            images.append(SourceImage(f, rel, relative_key(rel), s, m))
            keys[s][m].append(images[-1].key)
            if m == "vis" and pose == BUAA_NEUTRAL_POSE:
                neutral.setdefault(s, []).append(images[-1].key)
    protocol = _protocol(
        f"buaa-seed{seed}",
        f"generated from seed {seed}: per fold {spec.num_train} train / {spec.num_test} test "
        f"subjects; gallery the neutral frontal VIS image (pose {BUAA_NEUTRAL_POSE}) of each "
        "test subject, probes all NIR images of the test subjects",
        _split(chosen, spec.num_train, seed, spec.num_folds),
        keys,
        lambda s: neutral[s],
    )
    return images, protocol


# --------------------------------------------------------------------------------------------
# Conversion.


TABLE_COLUMNS = ("train_ids", "train_vis", "train_nir", "test_ids", "gallery", "probes")


def format_table(result: Mapping[str, Any]) -> str:
    """Per-fold counts of a `convert_nirvis` result under the expected ones, as text."""
    exp = result["expected"]
    rows = [("fold", *TABLE_COLUMNS), ("expected", *(str(exp.get(c, "-")) for c in TABLE_COLUMNS))]
    for f in result["folds"]:
        rows.append((str(f["fold"]), *(str(f["counts"].get(c, "-")) for c in TABLE_COLUMNS)))
    head = (
        f"{result['dataset']}: {result['num_images']} images ({modality_counts(result)}), "
        f"{result['identities']} identities (expected {exp.get('identities', '-')}), "
        f"{len(result['folds'])} fold(s) (expected {exp.get('num_folds', '-')})"
    )
    return text_table(head, rows)


def convert_nirvis(
    dataset: str,
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_shards: int = 8,
    on_bad: str = "raise",
    seed: int = 0,
    progress: bool = True,
    spec: OuluSpec | BuaaSpec | None = None,
    workers: int = 4,
) -> dict[str, Any]:
    """Converts one NIR-VIS benchmark at ``root`` (layouts: module docstring) to an hfrjax
    dataset with its protocol in ``out_dir``.

    ``seed`` and ``spec`` (`OuluSpec` / `BuaaSpec`, default the common protocol) only matter
    for the generated protocols (oulu-casia, buaa). Returns a summary (counts per fold next to
    the expected ones, skipped files, warnings), also written to ``out_dir/conversion.json``;
    with ``progress`` prints progress lines and the table (`format_table`).
    """
    check_on_bad(on_bad)
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    want = {"oulu-casia": OuluSpec, "buaa": BuaaSpec}.get(dataset)
    if spec is not None and (want is None or not isinstance(spec, want)):
        raise ValueError(
            f"spec {spec!r} does not apply to {dataset!r}"
            + (f" (expected an {want.__name__})" if want else " (its protocol is read, not drawn)")
        )
    root = input_root(root, dataset)
    generated = want is not None
    if spec is not None and spec.num_folds < 1:
        raise ValueError(f"spec.num_folds must be >= 1, got {spec}")
    check_out_dir(root, Path(out_dir), scans_root=generated)
    conv = Conversion(root, Path(out_dir), on_bad, num_shards, progress, workers)
    dropped: list[str] = []
    if dataset == "oulu-casia":
        spec = spec or OULU_SPEC
        images, protocol = _oulu(root, spec, seed, conv.warnings)
    elif dataset == "buaa":
        spec = spec or BUAA_SPEC
        images, protocol = _buaa(root, spec, seed, conv.warnings)
    else:
        images, protocol, dropped = _read_lists(dataset, root, on_bad, conv.report, conv.warnings)
    settings = {
        "seed": seed if generated else None,
        "spec": dataclasses.asdict(spec) if spec is not None else None,
    }
    return finish_conversion(
        conv,
        dataset,
        images,
        protocol,
        dropped,
        expected=expected_counts(dataset, spec),
        extra=settings,
        settings=settings,
        named_folds=False,
        table=format_table,
    )


# --------------------------------------------------------------------------------------------
# Command line (wired by hfrjax.cli as ``hfrjax convert nirvis``).


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hfrjax convert nirvis``."""
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    add_io_arguments(parser, "folder the dataset unpacks to")
    add_output_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="draws the oulu-casia / buaa protocol")
    parser.add_argument(
        "--num_folds",
        type=int,
        default=None,
        help="folds of the generated oulu-casia / buaa protocol (default 1)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines or table")


def run(args: argparse.Namespace) -> int:
    """Runs ``hfrjax convert nirvis``; 0 on success, 2 with a message on bad input."""
    spec = None
    if args.num_folds is not None:
        if args.dataset not in ("oulu-casia", "buaa"):
            return usage_error(
                f"--num_folds applies to oulu-casia and buaa only; {args.dataset} has its own lists"
            )
        base = OULU_SPEC if args.dataset == "oulu-casia" else BUAA_SPEC
        spec = dataclasses.replace(base, num_folds=args.num_folds)
    return run_converter(
        convert_nirvis,
        args.dataset,
        args.root,
        args.out,
        seed=args.seed,
        spec=spec,
        **converter_options(args),
    )
