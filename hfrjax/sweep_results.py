"""A sweep's results: each stage's ``done.json`` pooled per cell, ``results.json`` and the
mean ± std table ``tables.md`` (see `hfrjax.sweep`)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hfrjax.sweep import Plan, Run

from hfrjax.fileio import write_text_atomic

DONE_JSON = "done.json"
RESULTS_JSON = "results.json"
TABLES_MD = "tables.md"

def _read_done(run: Run) -> dict | None:
    path = run.workdir / DONE_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to re-run the stage") from e


def _pool(results: list[dict]) -> dict:
    """One result from several evaluated stages: their folds pooled, mean / std recomputed."""
    from hfrjax.eval import metrics, protocols

    folds = [f for r in results for f in r["folds"]]
    mean, std = metrics.aggregate([f["metrics"] for f in folds])
    merged = dict(results[0], folds=folds, mean=mean, std=std)
    merged.pop("curves", None)
    if all(f.get("curves") for f in folds):
        merged["curves"] = protocols.mean_curves([f["curves"] for f in folds])
    return merged


def collect_results(plan: Plan) -> dict[str, dict[str, dict]]:
    """{cell: {seed (str): result}} for every (cell, seed) whose evaluated stages are done."""
    out: dict[str, dict[str, dict]] = {}
    for cell in plan.cells:
        out[cell] = {}
        for seed in plan.seeds:
            runs = [plan.stages[(cell, seed)][n] for n in plan.evaluated[cell]]
            dones = [_read_done(r) for r in runs]
            if any(d is None for d in dones):
                continue
            evs = [d.get("eval") for d in dones]
            if any(not e for e in evs):
                continue
            out[cell][str(seed)] = evs[0] if len(evs) == 1 else _pool(evs)
    return out


def _ints(values) -> str:
    """[0, 1, 2, 5] -> "0–2, 5"."""
    values = sorted(set(values))
    parts, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{values[i]}–{values[j]}")
        else:
            parts.extend(str(v) for v in values[i : j + 1])
        i = j + 1
    return ", ".join(parts)


def _stat(values: list[float]) -> str:
    from hfrjax.eval import metrics

    if not values:
        return "–"
    mean, std = metrics.mean_std(values)
    return f"{100 * mean:.2f}" if len(values) == 1 else f"{100 * mean:.2f} ± {100 * std:.2f}"


def format_table(
    plan: Plan, results: Mapping[str, Mapping[str, dict]], failed: Mapping[str, str] | None = None
) -> str:
    """tables.md: one row per cell, mean ± std (population, in %) over all seed x fold values."""
    from hfrjax.eval import report

    failed = failed or {}
    have = [r for per_seed in results.values() for r in per_seed.values()]
    names = plan.table["metrics"] or report.order_metrics(
        n for r in have for n in (r.get("metrics") or list(r.get("mean", {})))
    )
    directions = dict.fromkeys(
        str(r.get("direction", "?")).upper().replace("->", "→") for r in have
    )
    methods = dict.fromkeys(str(r.get("tar_method", "nearest")) for r in have)
    n_done = sum(len(v) for v in results.values())
    n_all = len(plan.cells) * len(plan.seeds)
    note = (
        f"_Rows: cells; columns: mean ± std (population) over all seed × fold values, in %; "
        f"seeds {_ints(plan.seeds)}"
        + (f"; {' / '.join(directions)}, TAR method {' / '.join(methods)}" if have else "")
        + f". {n_done} of {n_all} cell × seed results in; updated "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}._"
    )
    lines = [
        f"# {plan.table['title'] or plan.name}",
        "",
        note,
        "",
        "| Cell | " + " | ".join(names) + " | Seeds; folds |",
        "|" + "---|" * (len(names) + 2),
    ]
    for cell in plan.table["rows"]:
        per_seed = results.get(cell, {})
        folds = [f for r in per_seed.values() for f in r.get("folds", [])]
        cells = [
            _stat([f["metrics"][n] for f in folds if n in f.get("metrics", {})]) for n in names
        ]
        missing = [s for s in plan.seeds if str(s) not in per_seed]
        if per_seed:
            fold_ids = [f.get("fold") for f in folds if isinstance(f.get("fold"), int)]
            runs = f"seed {_ints(int(s) for s in per_seed)}; fold {_ints(fold_ids) or '?'}"
            if missing:
                runs += f" (seed {_ints(missing)} {'failed' if cell in failed else 'pending'})"
        else:
            runs = "failed" if cell in failed else "pending"
        label = cell.replace("|", "\\|")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {runs} |")
    if failed:
        lines += ["", "Failed: " + "; ".join(f"{c}: {e}" for c, e in failed.items())]
    return "\n".join(lines) + "\n"


def write_results(plan: Plan, failed: Mapping[str, str] | None = None) -> dict:
    """Rewrites results.json and tables.md (atomically) from the done.json files on disk."""
    results = collect_results(plan)
    write_text_atomic(plan.out_dir / RESULTS_JSON, json.dumps(results, indent=1) + "\n")
    write_text_atomic(plan.out_dir / TABLES_MD, format_table(plan, results, failed))
    return results


