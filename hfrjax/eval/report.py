"""Evaluation reports: paper-style tables and ROC / CMC / score plots from `eval.json` files.

An `eval.json` holds one `protocols.evaluate_protocol` result or a mapping {label: result}
(several settings of one model, e.g. "nir->vis", "nir->vis maskTop"). Everything here works on
"runs", the normalised form {label: result} (`as_runs`), so one model, several settings of one
model and several models (`compare`) share the same table and plots.

Plots use matplotlib's Agg backend through `matplotlib.figure.Figure` + `FigureCanvasAgg`,
never pyplot, so making a report neither needs a display nor changes a user's pyplot state.
The plot functions build and return the Figure (tests and notebooks can inspect it) and save
it only when given a path.

Results without curve data (eval.json written before curves were recorded) still make
tables; plot functions skip such runs with a warning naming them and raise ValueError when no
run has the curve, and `write_report` / `compare` then leave that PNG out (with a warning).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from hfrjax.fileio import atomic_output, write_text_atomic

EVAL_JSON = "eval.json"
PLOTS = ("roc", "cmc", "scores")
_TAR_PREFIX = "TAR@FAR="
_RANK_PREFIX = "Rank-"
_TAR_METHOD_NOTES = {
    "nearest": "TAR at the nearest ROC point",
    "strict": "TAR at the best threshold with FAR ≤ target",
}

Runs = dict[str, dict[str, Any]]


# --------------------------------------------------------------------------------------------
# Runs: one result or {label: result}, normalised.


def _is_result(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "folds" in obj


def run_label(result: Mapping[str, Any]) -> str:
    """Direction, plus the occlusion when there is one: "nir->vis maskTop"."""
    label = str(result.get("direction", "result"))
    occlusion = result.get("occlusion", "none")
    if occlusion and occlusion != "none":
        label += f" {occlusion}"
    return label


def as_runs(obj: Any, default_label: str | None = None) -> Runs:
    """{label: result} from one `evaluate_protocol` result or a mapping {label: result}.

    A result is recognised by its "folds" key. A single result is labelled ``default_label``,
    else by its direction (plus " <occlusion>" when occluded).
    """
    if _is_result(obj):
        return {default_label or run_label(obj): dict(obj)}
    if not isinstance(obj, Mapping):
        raise TypeError(
            f"expected an evaluation result (a dict with 'folds') or a mapping "
            f"{{label: result}}, got {type(obj).__name__}"
        )
    if not obj:
        raise ValueError("expected at least one evaluation result, got an empty mapping")
    bad = [str(k) for k, v in obj.items() if not _is_result(v)]
    if bad:
        raise ValueError(
            f"not evaluation results (dicts with 'folds'): the values of key(s) {bad}; "
            "expected one result or a mapping {label: result}"
        )
    return {str(k): dict(v) for k, v in obj.items()}


# --------------------------------------------------------------------------------------------
# Table.


def _far_of(name: str) -> float | None:
    if not name.startswith(_TAR_PREFIX):
        return None
    try:
        return float(name[len(_TAR_PREFIX) :])
    except ValueError:
        return None


def _rank_of(name: str) -> int | None:
    if not name.startswith(_RANK_PREFIX):
        return None
    try:
        return int(name[len(_RANK_PREFIX) :])
    except ValueError:
        return None


def order_metrics(names: Iterable[str]) -> list[str]:
    """The papers' column order: TAR@FAR (ascending FAR), Rank-k (ascending k), EER, AUC, rest."""
    names = list(dict.fromkeys(names))

    def key(item: tuple[int, str]) -> tuple:
        i, n = item
        if (far := _far_of(n)) is not None:
            return (0, far, i)
        if (rank := _rank_of(n)) is not None:
            return (1, rank, i)
        if n in ("EER", "AUC"):
            return (2, ("EER", "AUC").index(n), i)
        return (3, 0, i)

    return [n for _, n in sorted(enumerate(names), key=key)]


def _num_folds(result: Mapping[str, Any]) -> int:
    return len(result.get("folds", ()))


def _cell(result: Mapping[str, Any], name: str) -> str:
    if name not in result.get("mean", {}):
        return "–"
    mean = 100 * float(result["mean"][name])
    std = result.get("std", {}).get(name)
    if _num_folds(result) <= 1 or std is None:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * float(std):.2f}"


def _pretty_direction(direction: str) -> str:
    return direction.upper().replace("->", "→")


def table_note(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """One line saying how the numbers were made: "10 folds, NIR→VIS, TAR at the nearest ROC
    point; mean ± std over folds, in %." (differing values joined)."""
    runs = as_runs(runs)
    folds = sorted({_num_folds(r) for r in runs.values()})
    fold_note = " and ".join(map(str, folds)) + (" fold" if folds == [1] else " folds")
    directions = dict.fromkeys(
        _pretty_direction(str(r.get("direction", "?"))) for r in runs.values()
    )
    methods = dict.fromkeys(str(r.get("tar_method", "nearest")) for r in runs.values())
    tar_note = " / ".join(_TAR_METHOD_NOTES.get(m, f"TAR method {m!r}") for m in methods)
    stat = "in %" if folds == [1] else "mean ± std over folds, in %"
    return f"{fold_note}, {' / '.join(directions)}, {tar_note}; {stat}."


def paper_table(
    runs: Mapping[str, Any], metric_names: Sequence[str] | None = None, *, note: bool = True
) -> str:
    """Markdown table in the papers' layout, one row per run: cells "mean ± std" in percent.

    ``runs`` is anything `as_runs` takes. Columns default to every metric of any run in the
    papers' order (`order_metrics`); ``metric_names`` picks and orders them explicitly.
    Single-fold results show the value alone (a "± 0.00" would claim a spread never measured);
    a metric a run lacks shows "–". ``note`` puts `table_note` above the table.
    """
    runs = as_runs(runs)
    if metric_names is None:
        names = order_metrics(
            n for r in runs.values() for n in (r.get("metrics") or list(r.get("mean", {})))
        )
    else:
        names = list(metric_names)
    lines = ["| Method | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for label, r in runs.items():
        label = label.replace("|", "\\|")  # A "|" in a label would split the row.
        lines.append(f"| {label} | " + " | ".join(_cell(r, n) for n in names) + " |")
    table = "\n".join(lines) + "\n"
    return f"_{table_note(runs)}_\n\n{table}" if note else table


# --------------------------------------------------------------------------------------------
# Plots.


def _new_figure(figsize: tuple[float, float] = (6.0, 4.5)) -> tuple[Figure, Any]:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)  # Attaches itself to fig: Agg rendering without pyplot.
    return fig, fig.add_subplot()


def _with_curve(runs: Mapping[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """{label: curves[kind]} for the runs that have it; warns about the others."""
    runs = as_runs(runs)
    have, missing = {}, []
    for label, r in runs.items():
        curve = (r.get("curves") or {}).get(kind)
        if curve:
            have[label] = curve
        else:
            missing.append(label)
    if not have:
        raise ValueError(
            f"no run has curves[{kind!r}] (runs {list(runs)}); eval.json files written before "
            "curves were recorded only make tables: re-run the evaluation for plots"
        )
    if missing:
        warnings.warn(
            f"{kind} plot: skipping run(s) {missing}, which have no curves[{kind!r}] "
            "(an older eval.json?)",
            stacklevel=3,
        )
    return have


def _array(curve: Mapping[str, Any], key: str, kind: str, label: str) -> np.ndarray:
    if key not in curve:
        raise ValueError(f"run {label!r}: curves[{kind!r}] has no {key!r} (keys {list(curve)})")
    return np.asarray(curve[key], np.float64)


def _xy(c: Mapping[str, Any], kind: str, x: str, y: str, label: str) -> tuple:
    """The x and y arrays of a curve, checked to have one y per x."""
    xs, ys = _array(c, x, kind, label), _array(c, y, kind, label)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(
            f"run {label!r}: curves[{kind!r}] {x!r} and {y!r} differ in shape "
            f"({xs.shape} vs {ys.shape})"
        )
    return xs, ys


def _band(ax, x, y, c: Mapping[str, Any], std_key: str, color, label: str) -> None:
    """Shaded mean ± std (clipped to [0, 1]) when the curve carries a std."""
    if c.get(std_key) is None:
        return
    std = np.asarray(c[std_key], np.float64)
    if std.shape != y.shape:
        raise ValueError(f"run {label!r}: {std_key!r} has shape {std.shape}, its curve {y.shape}")
    ax.fill_between(x, np.clip(y - std, 0, 1), np.clip(y + std, 0, 1), color=color, alpha=0.2)


def _title(runs: Mapping[str, Any], what: str) -> str:
    protocols = dict.fromkeys(str(r.get("protocol", "")) for r in runs.values())
    protocols.pop("", None)
    return f"{what} — {' / '.join(protocols)}" if protocols else what


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Writes ``fig`` as PNG atomically (tmp file + rename: no half-written images)."""
    with atomic_output(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    return Path(path)


def _finish(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_roc(
    runs: Mapping[str, Any], path: str | os.PathLike | None = None, *, mark_fars: bool = True
) -> Figure:
    """ROC (TAR vs FAR, log FAR axis), one line per run (``ax.lines[i]`` is run i), ±std band.

    ``mark_fars`` adds dotted vertical lines (after the runs' lines) at the FARs the table
    reports. Saved as PNG when ``path`` is given.
    """
    runs = as_runs(runs)
    curves = _with_curve(runs, "roc")
    fig, ax = _new_figure()
    plotted = []
    for label, c in curves.items():
        far, tar = _xy(c, "roc", "far", "tar", label)
        (line,) = ax.plot(far, tar, label=label, lw=1.5)
        _band(ax, far, tar, c, "tar_std", line.get_color(), label)
        plotted.append(far[far > 0])
    ax.set_xscale("log")
    plotted = np.concatenate(plotted)
    if mark_fars and plotted.size:  # Only FARs inside the curves' range: no stretched axis.
        names = {n for r in runs.values() for n in r.get("metrics", ())}
        for f in sorted({f for n in names if (f := _far_of(n)) is not None}):
            if plotted.min() <= f <= plotted.max():
                ax.axvline(f, color="0.5", ls=":", lw=1)
    ax.set_xlabel("FAR")
    ax.set_ylabel("TAR")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylim(top=1.01)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(_title(runs, "ROC"))
    ax.legend(loc="lower right")
    return _finish(fig, path)


def plot_cmc(runs: Mapping[str, Any], path: str | os.PathLike | None = None) -> Figure:
    """CMC (identification rate vs rank), one line per run (``ax.lines[i]``), ±std band."""
    runs = as_runs(runs)
    curves = _with_curve(runs, "cmc")
    fig, ax = _new_figure()
    for label, c in curves.items():
        rank, rate = _xy(c, "cmc", "rank", "rate", label)
        (line,) = ax.plot(rank, rate, label=label, lw=1.5, marker="o", ms=3)
        _band(ax, rank, rate, c, "rate_std", line.get_color(), label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Rank")
    ax.set_ylabel("Identification rate")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylim(top=1.01)
    ax.grid(True, alpha=0.3)
    ax.set_title(_title(runs, "CMC"))
    ax.legend(loc="lower right")
    return _finish(fig, path)


def _density(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / (total * np.diff(edges)) if total > 0 else np.zeros_like(counts)


def plot_scores(runs: Mapping[str, Any], path: str | os.PathLike | None = None) -> Figure:
    """Genuine vs impostor cosine-score densities, all runs on one axes so models compare
    directly: one colour per run, genuine solid, impostor dashed; a single run is also filled.
    """
    runs = as_runs(runs)
    curves = _with_curve(runs, "scores")
    fig, ax = _new_figure()
    single = len(curves) == 1
    for i, (label, c) in enumerate(curves.items()):
        edges = _array(c, "edges", "scores", label)
        for kind, style in (("genuine", "-"), ("impostor", "--")):
            counts = _array(c, kind, "scores", label)
            if counts.shape != (edges.size - 1,):
                raise ValueError(
                    f"run {label!r}: curves['scores'][{kind!r}] has {counts.size} counts for "
                    f"{edges.size} edges (want one count per bin, {edges.size - 1})"
                )
            density = _density(counts, edges)
            color = ("C0" if kind == "genuine" else "C3") if single else f"C{i % 10}"
            name = kind if single else f"{label} {kind}"
            ax.stairs(density, edges, label=name, color=color, ls=style, lw=1.5)
            if single:
                ax.stairs(density, edges, color=color, alpha=0.2, fill=True)
    ax.set_xlabel("Cosine similarity")
    ax.set_ylabel("Density")
    ax.grid(True, alpha=0.3)
    ax.set_title(_title(runs, "Scores") + (f" ({next(iter(curves))})" if single else ""))
    ax.legend(loc="upper left", fontsize="small")
    return _finish(fig, path)


_PLOTTERS = {"roc": plot_roc, "cmc": plot_cmc, "scores": plot_scores}
_PLOT_NAMES = {"roc": "ROC", "cmc": "CMC", "scores": "Genuine vs impostor scores"}


# --------------------------------------------------------------------------------------------
# Files.


def _write_bundle(obj: Any, runs: Runs, out: Path, stem: str, title: str, prefix: str) -> dict:
    """JSON, plots and a Markdown page (title, note, table, images) for ``runs`` in ``out``.

    Figures are built before anything is written, so a malformed curve leaves no partial
    report; runs lacking curves are warned about once, not once per plot.
    """
    lacking = [k for k, r in runs.items() if not all((r.get("curves") or {}).get(p) for p in PLOTS)]
    if lacking:
        warnings.warn(
            f"run(s) {lacking} lack some of curves {list(PLOTS)} (an older eval.json?): "
            f"they are left out of those plots in {out}",
            stacklevel=3,
        )
    figures = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".* plot: skipping run")
        for kind in PLOTS:
            if any((r.get("curves") or {}).get(kind) for r in runs.values()):
                figures[kind] = _PLOTTERS[kind](runs)
    paths: dict[str, Path] = {
        "json": write_text_atomic(out / f"{stem}.json", json.dumps(obj, indent=1) + "\n")
    }
    images = []
    for kind, fig in figures.items():
        paths[kind] = save_figure(fig, out / f"{prefix}{kind}.png")
        images.append(f"![{_PLOT_NAMES[kind]}]({paths[kind].name})")
    md = f"# {title}\n\n{paper_table(runs)}"
    if images:
        md += "\n" + "\n\n".join(images) + "\n"
    paths["md"] = write_text_atomic(out / f"{stem}.md", md)
    return paths


def _default_title(runs: Runs, what: str) -> str:
    protocols = dict.fromkeys(str(r.get("protocol", "")) for r in runs.values())
    protocols.pop("", None)
    return f"{what}: {' / '.join(protocols)}" if protocols else what


def write_report(
    results_or_runs: Mapping[str, Any], out_dir: str | os.PathLike, title: str | None = None
) -> dict[str, Path]:
    """Writes eval.json (as given: one result or {label: result}; atomically), eval.md (title,
    table, images) and roc.png / cmc.png / scores.png to ``out_dir``.

    Returns {"json", "md", "roc", "cmc", "scores": path}; a plot no run has data for is left
    out with a warning.
    """
    runs = as_runs(results_or_runs)
    obj = dict(results_or_runs) if _is_result(results_or_runs) else runs
    title = title or _default_title(runs, "Evaluation")
    return _write_bundle(obj, runs, Path(out_dir), "eval", title, "")


def _json_path(path_or_dir: str | os.PathLike) -> Path:
    p = Path(path_or_dir)
    return p / EVAL_JSON if p.is_dir() else p


def load_runs(path_or_dir: str | os.PathLike) -> Runs:
    """{label: result} from an eval.json file, or from the eval.json in a directory."""
    path = _json_path(path_or_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation results at {path} (want an eval.json or its dir)")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    try:
        return as_runs(obj)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def _source_name(path_or_dir: str | os.PathLike) -> str:
    p = Path(path_or_dir)
    if p.is_dir():
        return p.resolve().name
    return p.resolve().parent.name if p.name == EVAL_JSON else p.stem


def compare(
    dirs_or_files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    labels: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Overlays the runs of several eval.json files: compare.json, compare.md (one table) and
    compare_roc.png / compare_cmc.png / compare_scores.png in ``out_dir``.

    A source's label is ``labels[i]`` or its directory name; a file holding several runs gives
    "<label>: <run label>" each. Duplicate labels raise (pass ``labels``). The PNGs carry a
    "compare_" prefix so comparing into a model directory keeps its own roc.png etc.
    """
    sources = list(dirs_or_files)
    if not sources:
        raise ValueError("compare needs at least one eval.json or directory")
    if labels is not None and len(labels) != len(sources):
        raise ValueError(
            f"got {len(labels)} labels {list(labels)} for {len(sources)} sources "
            f"{[str(s) for s in sources]}: give one label per source"
        )
    runs: Runs = {}
    origin: dict[str, list[str]] = {}
    for i, src in enumerate(sources):
        name = labels[i] if labels is not None else _source_name(src)
        loaded = load_runs(src)
        for run_label, result in loaded.items():
            label = name if len(loaded) == 1 else f"{name}: {run_label}"
            origin.setdefault(label, []).append(str(_json_path(src)))
            runs[label] = result
    dups = {k: v for k, v in origin.items() if len(v) > 1}
    if dups:
        raise ValueError(
            f"duplicate run labels {dups} (label: sources); pass distinct labels "
            "(compare(..., labels=[...]) or --labels=a,b)"
        )
    title = _default_title(runs, "Comparison")
    return _write_bundle(runs, runs, Path(out_dir), "compare", title, "compare_")
