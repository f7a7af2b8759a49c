"""ARL-VTF and other thermal-visible face sets, as lists of named image sets -> hfrjax datasets.

Their protocols are set-based: one fold per (probe set, gallery set) pair, named
"P_TB0|G_VB0-" (`hfrjax.data.protocol`).

`convert_arlvtf` reads ARL-VTF (DEVCOM Army Research Laboratory Visible-Thermal Face Dataset,
Poster et al., "A Large-Scale, Time-Synchronized Visible and Thermal Face Dataset", WACV 2021;
the evaluation used by CSAN §IV). Its evaluation is organised in named image sets: visible
galleries G_VB0- (the 100 test subjects, no eyewear) and G_VB0+ (the 30 test subjects who wear
glasses, wearing them), and thermal probes for the baseline condition P_TB0 (subjects without
glasses), P_TB- (subjects with glasses, not wearing them), P_TB+ (wearing them) and the
expression condition P_TE0, P_TE- (pose probes P_TP0, P_TP- are read when present). The name
says the role (G/P), the spectrum (V visible, T thermal), the condition (B baseline,
E expression, P pose) and the eyewear (0 none, - owns glasses but not wearing, + wearing;
the galleries' "0-" / "0+" read as without / with glasses).

The layout this converter assumes (the set lists as plain text files; adapt `ARLVTF_LISTS`,
`ARLVTF_TRAIN_LISTS` or pass ``list_template`` for a copy organised otherwise, or write the
generic CSV below)::

    root/<image tree>                    images anywhere under root, e.g. sub_0001/.../x.png
    root/protocols/G_VB0-.txt            one list per set, named <set>.txt
    root/protocols/G_VB0+.txt
    root/protocols/P_TB0.txt  P_TB-.txt  P_TB+.txt  P_TE0.txt  P_TE-.txt
    root/protocols/P_TP0.txt  P_TP-.txt  optional (pose)
    root/protocols/train_visible.txt     optional: the development (training) subjects' images
    root/protocols/train_thermal.txt

Each line is ``relative/path`` or ``relative/path identity`` (whitespace- or comma-separated);
without an identity column the identity is the first component of the path (the subject
folder). Folds: every probe set against every gallery set, probe sets in `ARLVTF_PROBE_SETS`
order; each fold's training lists are the optional train lists. Visible images are stored as
"vis", thermal ones as the library's thermal modality "thermal".

`convert_set_list` converts any other thermal-visible (or NIR-visible) set described by a CSV
with the header columns ``path,identity,modality,set``: ``modality`` as in
`hfrjax.data.convert.folders.MODALITY_ALIASES` (vis/visible/rgb, thermal/lwir, nir);
``set`` names the image's set, whose role is read from its name: "train..." (training),
"G_..." or "gallery..." (a gallery), "P_..." or "probe..." (a probe set), empty (converted, in
no list). An image in several sets takes one row per set. Folds: every probe set against every
gallery set, or the ``pairs`` given.

Keys are the image paths relative to ``root`` without extension; labels 0..C-1 over the
identities in natural order; images keep their bytes (`writing.write_dataset`). Missing or
undecodable files raise `ConversionError` or, with ``on_bad="skip"``, are counted and dropped
from the protocol with a warning.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hfrjax.data.convert.common import (
    ConversionError,
    ListedImages,
    add_io_arguments,
    add_output_arguments,
    check_on_bad,
    check_out_dir,
    converter_options,
    csv_rows,
    input_root,
    list_lines,
    relative_parts,
    run_converter,
    show_some,
    usage_error,
)
from hfrjax.data.convert.folders import map_modality
from hfrjax.data.convert.writing import Conversion, finish_conversion
from hfrjax.data.protocol import Fold, Protocol

ARLVTF_GALLERY_SETS = ("G_VB0-", "G_VB0+")
ARLVTF_PROBE_SETS = ("P_TB0", "P_TB-", "P_TB+", "P_TE0", "P_TE-")
ARLVTF_OPTIONAL_SETS = ("P_TP0", "P_TP-")
ARLVTF_LIST_TEMPLATE = "protocols/{set}.txt"
ARLVTF_TRAIN_LISTS = {"vis": "protocols/train_visible.txt", "thermal": "protocols/train_thermal.txt"}
ARLVTF_SPECTRUM = {"V": "vis", "T": "thermal"}
ARLVTF_EXPECTED = {
    "train_ids": 295,
    "test_ids": {"G_VB0-": 100},
    "gallery_ids": {"G_VB0-": 100, "G_VB0+": 30},
}
"""ARL-VTF counts from its paper: 395 subjects, 295 development and 100 test; G_VB0+ holds the
30 test subjects who wear glasses. Per fold (by the gallery set in the fold's name)."""

SET_NAME = re.compile(r"^([GP])_([VT])([A-Z])([0+\-]{1,2})$")
SET_LIST_COLUMNS = ("path", "identity", "modality", "set")
ROLES = ("train", "gallery", "probe")
PAIR_SEPARATOR = "|"


def arlvtf_set_modality(name: str) -> str:
    """The stored modality of an ARL-VTF set name (G_VB0- -> "vis", P_TB0 -> "thermal")."""
    m = SET_NAME.match(name)
    if m is None:
        raise ValueError(
            f"{name!r} is not an ARL-VTF set name <G|P>_<V|T><condition><eyewear: 0, +, -> "
            "such as P_TB0 or G_VB0-"
        )
    return ARLVTF_SPECTRUM[m.group(2)]


def set_role(name: str) -> str | None:
    """ "train" / "gallery" / "probe" from a set name (see the module docstring); None for ""."""
    low = name.strip().lower()
    if not low:
        return None
    if low.startswith("train"):
        return "train"
    if low.startswith(("g_", "gallery")):
        return "gallery"
    if low.startswith(("p_", "probe")):
        return "probe"
    raise ValueError(
        f"set {name!r}: cannot tell its role; name training sets 'train...', galleries "
        "'G_...' or 'gallery...', probe sets 'P_...' or 'probe...'"
    )


def _parse_pairs(pairs: Sequence[str] | None) -> list[tuple[str, str]] | None:
    if pairs is None:
        return None
    out = []
    for p in pairs:
        probe, sep, gallery = p.partition(PAIR_SEPARATOR)
        if not sep or not probe.strip() or not gallery.strip():
            raise ValueError(f"pair {p!r} must be 'probe_set{PAIR_SEPARATOR}gallery_set'")
        out.append((probe.strip(), gallery.strip()))
    return out


def set_protocol(
    name: str,
    sets: Mapping[str, Sequence[str]],
    roles: Mapping[str, str],
    modality_of: Mapping[str, str],
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    description: str = "",
) -> Protocol:
    """A protocol with one fold per (probe set, gallery set): ``sets`` maps a set name to its
    keys, ``roles`` a set name to "train"/"gallery"/"probe", ``modality_of`` a key to its
    modality. Training lists (the union of the train sets, by modality) repeat in every fold.
    Default pairs: every probe set against every gallery set, in the order of ``sets``."""
    gallery_sets = [s for s in sets if roles[s] == "gallery"]
    probe_sets = [s for s in sets if roles[s] == "probe"]
    if pairs is None:
        pairs = [(p, g) for p in probe_sets for g in gallery_sets]
    for p, g in pairs:
        if roles.get(p) != "probe" or roles.get(g) != "gallery":
            raise ValueError(
                f"pair {p}{PAIR_SEPARATOR}{g}: needs a probe set and a gallery set; probe sets "
                f"{probe_sets}, gallery sets {gallery_sets}"
            )
    if not pairs:
        raise ValueError(
            f"no (probe set, gallery set) pair: probe sets {probe_sets}, gallery sets "
            f"{gallery_sets}"
        )

    def one_modality(role: str) -> str:
        found = {modality_of[k] for s in sets if roles[s] == role for k in sets[s]}
        if len(found) != 1:
            raise ValueError(
                f"the {role} sets hold the modalities {sorted(found)}; a protocol needs one "
                f"{role} modality"
            )
        return found.pop()

    gallery_modality, probe_modality = one_modality("gallery"), one_modality("probe")
    train: dict[str, list[str]] = {}
    for s, keys in sets.items():
        if roles[s] == "train":
            for k in keys:
                train.setdefault(modality_of[k], []).append(k)
    train = {m: list(dict.fromkeys(v)) for m, v in sorted(train.items())}
    folds = [Fold(train=train, gallery=list(sets[g]), probe=list(sets[p])) for p, g in pairs]
    return Protocol(
        name,
        folds,
        gallery_modality,
        probe_modality,
        description,
        [f"{p}{PAIR_SEPARATOR}{g}" for p, g in pairs],
    )


class _SetImages(ListedImages):
    """The images of set lists, named by paths relative to the root (or absolute under it)."""

    def add_path(self, path: str, identity: str | None, modality: str, where: str) -> str:
        """The key of ``path``; identity None: the first path component."""
        full = Path(path)
        if full.is_absolute():
            try:
                path = full.resolve().relative_to(self.root.resolve()).as_posix()
            except ValueError:
                raise ConversionError(
                    f"{where}: {path} is not under the root {self.root}"
                ) from None
        parts = relative_parts(path)
        if parts is None:
            raise ConversionError(f"{where}: {path!r} is not a relative file path")
        if identity is None:
            if len(parts) < 2:
                raise ConversionError(
                    f"{where}: {path!r} has no folder to take the identity from; add an "
                    "identity column"
                )
            identity = parts[0]
        return self.add(parts, identity, modality, where, path)


# --------------------------------------------------------------------------------------------
# ARL-VTF.


def _set_list_tokens(line: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", line.strip()) if t]


def _read_set_list(path: Path, gathered: _SetImages, modality: str) -> list[str]:
    keys = []
    for where, line, tokens in list_lines(path, _set_list_tokens):
        if len(tokens) > 2:
            raise ConversionError(
                f"{where}: expected 'relative/path [identity]', got {line.strip()!r}"
            )
        identity = tokens[1] if len(tokens) == 2 else None
        keys.append(gathered.add_path(tokens[0], identity, modality, where))
    if not keys:
        raise ConversionError(f"{path} lists no images")
    return list(dict.fromkeys(keys))


def convert_arlvtf(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    list_template: str = ARLVTF_LIST_TEMPLATE,
    sets: Sequence[str] | None = None,
    num_shards: int = 8,
    on_bad: str = "raise",
    progress: bool = True,
    workers: int = 4,
) -> dict[str, Any]:
    """Converts ARL-VTF at ``root`` (assumed layout: module docstring) to an hfrjax dataset
    whose protocol has one fold per (probe set, gallery set).

    ``list_template`` locates a set's list relative to ``root`` ("{set}" is replaced by the
    name). ``sets`` restricts the sets read (default: the galleries and probe sets of the
    paper, which must all exist, plus the pose probes if present). Returns the summary also
    written to ``out_dir/conversion.json``.
    """
    check_on_bad(on_bad)
    root_p = input_root(root, "ARL-VTF")
    if "{set}" not in list_template:
        raise ValueError(f"list_template must contain '{{set}}', got {list_template!r}")
    check_out_dir(root_p, Path(out_dir), scans_root=False)
    wanted = list(sets) if sets is not None else [*ARLVTF_GALLERY_SETS, *ARLVTF_PROBE_SETS]
    for s in wanted:
        arlvtf_set_modality(s)
    optional = [] if sets is not None else list(ARLVTF_OPTIONAL_SETS)
    paths = {s: root_p / list_template.format(set=s) for s in [*wanted, *optional]}
    absent = [str(paths[s]) for s in wanted if not paths[s].is_file()]
    if absent:
        parent = paths[wanted[0]].parent
        found = sorted(p.name for p in parent.iterdir()) if parent.is_dir() else []
        raise ConversionError(
            f"ARL-VTF: set list(s) {show_some(absent)} do not exist ({parent} holds "
            f"{show_some(found) or 'nothing'}); pass sets= to read fewer, or list_template= for "
            "another layout"
        )
    present = [s for s in paths if paths[s].is_file()]
    # Galleries first, then probes in the paper's order.
    order = {s: i for i, s in enumerate([*ARLVTF_GALLERY_SETS, *ARLVTF_PROBE_SETS, *optional])}
    present.sort(key=lambda s: (s[0] != "G", order.get(s, len(order)), s))
    conv = Conversion(root_p, Path(out_dir), on_bad, num_shards, progress, workers)
    report, warnings = conv.report, conv.warnings
    gathered = _SetImages(root_p)
    lists: dict[str, list[str]] = {}
    roles: dict[str, str] = {}
    for s in present:
        lists[s] = _read_set_list(paths[s], gathered, arlvtf_set_modality(s))
        roles[s] = "gallery" if s.startswith("G") else "probe"
    for m, rel in ARLVTF_TRAIN_LISTS.items():
        if (root_p / rel).is_file():
            lists[f"train_{m}"] = _read_set_list(root_p / rel, gathered, m)
            roles[f"train_{m}"] = "train"
    dropped = gathered.drop_missing(f"the ARL-VTF lists under {root_p}", on_bad, report, warnings)
    kept = {s: [k for k in keys if k in gathered.images] for s, keys in lists.items()}
    protocol = set_protocol(
        "arl-vtf",
        lists,
        roles,
        {k: gathered.modality_of(k) for keys in lists.values() for k in keys},
        description="ARL-VTF set protocol: every thermal probe set against every visible "
        f"gallery set ({', '.join(s for s in present if roles[s] != 'train')})",
    )
    expected = dict(ARLVTF_EXPECTED)
    if not any(roles[s] == "train" for s in roles):
        expected.pop("train_ids")
    empty = [s for s, keys in kept.items() if not keys]
    if empty:
        warnings.append(f"set(s) {empty} lost every image to missing files")
    return finish_conversion(
        conv,
        "arl-vtf",
        list(gathered.images.values()),
        protocol,
        dropped,
        expected=expected,
        extra={"sets": {s: len(v) for s, v in lists.items()}, "list_template": list_template},
    )


# --------------------------------------------------------------------------------------------
# Generic set list (CSV).


def convert_set_list(
    root: str | os.PathLike,
    csv_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    pairs: Sequence[str] | None = None,
    num_shards: int = 8,
    on_bad: str = "raise",
    progress: bool = True,
    workers: int = 4,
) -> dict[str, Any]:
    """Converts the images a ``path,identity,modality,set`` CSV lists (paths relative to
    ``root``) to an hfrjax dataset with a set protocol (module docstring). ``pairs``:
    "probe_set|gallery_set" strings (default: every probe set against every gallery set)."""
    check_on_bad(on_bad)
    root_p, csv_p = input_root(root, "input"), Path(csv_path)
    if not csv_p.is_file():
        raise ConversionError(f"CSV file {csv_p} does not exist")
    check_out_dir(root_p, Path(out_dir), scans_root=False)
    pair_list = _parse_pairs(pairs)
    conv = Conversion(root_p, Path(out_dir), on_bad, num_shards, progress, workers)
    report, warnings = conv.report, conv.warnings
    gathered = _SetImages(root_p)
    sets: dict[str, list[str]] = {}
    roles: dict[str, str] = {}
    seen: dict[tuple[str, str], int] = {}
    rows = csv_rows(csv_p, SET_LIST_COLUMNS, required=("path", "identity", "modality"))
    for where, line_num, (path, identity, modality, set_name) in rows:
        modality = map_modality(modality, where)
        try:
            role = set_role(set_name)
        except ValueError as e:
            raise ConversionError(f"{where}: {e}") from None
        key = gathered.add_path(path, identity, modality, where)
        if (key, set_name) in seen:
            raise ConversionError(
                f"{where}: {path} is listed in set {set_name!r} again (first at line "
                f"{seen[(key, set_name)]})"
            )
        seen[(key, set_name)] = line_num
        if role is not None:
            sets.setdefault(set_name, []).append(key)
            roles[set_name] = role
    if not gathered.images and not gathered.missing:
        raise ConversionError(f"{csv_p} lists no images")
    dropped = gathered.drop_missing(str(csv_p), on_bad, report, warnings)
    modality_of = {k: gathered.modality_of(k) for keys in sets.values() for k in keys}
    try:
        protocol = set_protocol(
            name or root_p.resolve().name,
            sets,
            roles,
            modality_of,
            pairs=pair_list,
            description=f"set protocol read from {csv_p}",
        )
    except ValueError as e:
        raise ConversionError(f"{csv_p}: {e}") from None
    return finish_conversion(
        conv,
        name or root_p.resolve().name,
        list(gathered.images.values()),
        protocol,
        dropped,
        expected={},
        extra={"csv": str(csv_p), "sets": {s: len(v) for s, v in sets.items()}},
    )


# --------------------------------------------------------------------------------------------
# Command lines (``hfrjax convert arlvtf`` and ``hfrjax convert setlist``).


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hfrjax convert thermal``: ARL-VTF (--arlvtf) or a set CSV (--csv)."""
    add_io_arguments(parser, "folder the images (and lists) are under")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--arlvtf", action="store_true", help="read ARL-VTF's per-set lists")
    src.add_argument("--csv", default=None, help="CSV with columns path,identity,modality,set")
    parser.add_argument(
        "--list_template",
        default=ARLVTF_LIST_TEMPLATE,
        help="ARL-VTF: a set's list relative to --root ({set} = its name)",
    )
    parser.add_argument(
        "--sets", default=None, help="ARL-VTF: comma-separated sets to read (default: all)"
    )
    parser.add_argument(
        "--pairs",
        default=None,
        help="CSV: comma-separated probe_set|gallery_set folds (default: every pair)",
    )
    parser.add_argument("--name", default=None, help="CSV: dataset name (default: the root's)")
    add_output_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress lines or table")


def run(args: argparse.Namespace) -> int:
    """Runs ``hfrjax convert thermal``; 0 on success, 2 with a message on bad input."""
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None
    errors = (ConversionError, ValueError)
    if args.arlvtf:
        if args.pairs or args.name:
            return usage_error("--pairs and --name apply to --csv only")
        return run_converter(
            convert_arlvtf,
            args.root,
            args.out,
            list_template=args.list_template,
            sets=split(args.sets),
            errors=errors,
            **converter_options(args),
        )
    if args.sets or args.list_template != ARLVTF_LIST_TEMPLATE:
        return usage_error("--sets and --list_template apply to --arlvtf only")
    return run_converter(
        convert_set_list,
        args.root,
        args.csv,
        args.out,
        name=args.name,
        pairs=split(args.pairs),
        errors=errors,
        **converter_options(args),
    )
