"""Evaluation reports: run normalisation, the paper table, plots (as Figures and PNGs), compare."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from hfrjax.eval import report

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMES = ["TAR@FAR=1e-4", "TAR@FAR=1e-3", "TAR@FAR=1e-2", "Rank-1", "EER", "AUC"]


def _curves(shift: float, with_std: bool) -> dict:
    far = np.logspace(-4, 0, 9)
    tar = np.clip(0.6 + shift + 0.1 * np.log10(far) / 4 + 0.3 * far, 0, 1)
    rate = np.minimum(1.0, 0.7 + shift + 0.02 * np.arange(10))
    edges = np.linspace(-1, 1, 21)
    curves = {
        "roc": {"far": far.tolist(), "tar": tar.tolist()},
        "cmc": {"rank": list(range(1, 11)), "rate": rate.tolist()},
        "scores": {
            "edges": edges.tolist(),
            "genuine": [0] * 12 + [1, 3, 6, 9, 6, 3, 1, 1],
            "impostor": [0, 1, 3, 8, 20, 40, 60, 70, 60, 40, 20, 8, 3, 1, 0, 0, 0, 0, 0, 0],
        },
    }
    if with_std:
        curves["roc"]["tar_std"] = [0.02] * far.size
        curves["cmc"]["rate_std"] = [0.01] * 10
    return curves


def make_result(*, num_folds=2, shift=0.0, occlusion="none", curves=True, names=NAMES) -> dict:
    """A synthetic `evaluate_protocol` result in the documented schema."""
    folds = []
    for k in range(1, num_folds + 1):
        m = {n: min(1.0, 0.5 + shift + 0.01 * i + 0.001 * k) for i, n in enumerate(names)}
        fold = {
            "fold": k,
            "num_probes": 30,
            "num_gallery": 10,
            "num_unmatched_probes": 0,
            "num_genuine": 30,
            "num_impostor": 270,
            "metrics": m,
        }
        if curves:
            fold["curves"] = _curves(shift, with_std=False)
        folds.append(fold)
    mean = {n: float(np.mean([f["metrics"][n] for f in folds])) for n in names}
    std = {n: float(np.std([f["metrics"][n] for f in folds])) for n in names}
    r = {
        "protocol": "tiny",
        "dataset": "/data/tiny",
        "direction": "nir->vis",
        "occlusion": occlusion,
        "tar_method": "nearest",
        "metrics": list(names),
        "folds": folds,
        "mean": mean,
        "std": std,
    }
    if curves:
        r["curves"] = _curves(shift, with_std=num_folds > 1)
    return r


# --------------------------------------------------------------------------------------------
# as_runs.


def test_as_runs_single_result_labels():
    assert list(report.as_runs(make_result())) == ["nir->vis"]
    assert list(report.as_runs(make_result(occlusion="maskTop"))) == ["nir->vis maskTop"]
    assert list(report.as_runs(make_result(), default_label="mine")) == ["mine"]
    old = make_result()
    del old["occlusion"]  # Older results have no occlusion key.
    assert list(report.as_runs(old)) == ["nir->vis"]


def test_as_runs_mapping_kept_in_order():
    runs = report.as_runs({"b": make_result(), "a": make_result(occlusion="maskTop")})
    assert list(runs) == ["b", "a"] and runs["a"]["occlusion"] == "maskTop"


@pytest.mark.parametrize(
    "bad, err, match",
    [
        ({}, ValueError, "empty"),
        ({"ok": make_result(), "broken": {"mean": {}}}, ValueError, "broken"),
        ([make_result()], TypeError, "list"),
        ("eval.json", TypeError, "str"),
    ],
)
def test_as_runs_errors(bad, err, match):
    with pytest.raises(err, match=match):
        report.as_runs(bad)


# --------------------------------------------------------------------------------------------
# Table.


def _table_lines(table: str) -> list[str]:
    return [ln for ln in table.splitlines() if ln.startswith("|")]


def test_paper_table_column_order_and_percent():
    shuffled = ["AUC", "Rank-5", "mAP", "TAR@FAR=1e-2", "EER", "Rank-1", "TAR@FAR=1e-4"]
    r = make_result(num_folds=2, names=shuffled)
    r["mean"] = {n: 0.5 for n in shuffled} | {"TAR@FAR=1e-2": 0.98765, "EER": 0.0123}
    r["std"] = {n: 0.0 for n in shuffled} | {"TAR@FAR=1e-2": 0.004321}
    header, sep, row = _table_lines(report.paper_table(r))
    assert header == (
        "| Method | TAR@FAR=1e-4 | TAR@FAR=1e-2 | Rank-1 | Rank-5 | EER | AUC | mAP |"
    )
    assert sep == "|---|---|---|---|---|---|---|---|"
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "nir->vis"
    assert cells[2] == "98.77 ± 0.43" and cells[5] == "1.23 ± 0.00"


def test_paper_table_single_fold_has_no_plus_minus_and_missing_is_dash():
    one = make_result(num_folds=1)
    other = make_result(num_folds=1, names=["Rank-1", "EER"])
    table = report.paper_table({"one": one, "other": other})
    assert "±" not in table
    rows = _table_lines(table)
    assert rows[2].startswith(f"| one | {100 * one['mean']['TAR@FAR=1e-4']:.2f} |")
    assert rows[3].startswith("| other | – | – | – | ")
    assert "1 fold, NIR→VIS, TAR at the nearest ROC point" in table


def test_paper_table_note_and_explicit_metrics():
    r = make_result(num_folds=10)
    table = report.paper_table(r)
    assert table.startswith("_10 folds, NIR→VIS, TAR at the nearest ROC point; mean ± std")
    bare = report.paper_table(r, ["EER", "Rank-1"], note=False)
    lines = bare.strip().splitlines()
    assert len(lines) == 3 and lines[0] == "| Method | EER | Rank-1 |"
    assert " ± " in lines[2]


# --------------------------------------------------------------------------------------------
# Plots and files.


def test_plot_roc_lines_are_the_curves_on_log_axis():
    runs = {"a": make_result(), "b": make_result(shift=0.1, num_folds=1)}
    fig = report.plot_roc(runs)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    for i, label in enumerate(runs):
        roc = runs[label]["curves"]["roc"]
        np.testing.assert_allclose(ax.lines[i].get_xdata(), roc["far"])
        np.testing.assert_allclose(ax.lines[i].get_ydata(), roc["tar"])
        assert ax.lines[i].get_label() == label
    # Reported FARs inside the curve's range are marked after the runs' lines.
    marks = sorted(ln.get_xdata()[0] for ln in ax.lines[2:])
    np.testing.assert_allclose(marks, [1e-4, 1e-3, 1e-2])
    assert len(ax.collections) == 1  # Std band only for the run that has tar_std.


def test_plot_cmc_and_scores_content():
    r = make_result()
    ax = report.plot_cmc(r).axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), r["curves"]["cmc"]["rate"])
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), np.arange(1, 11))
    ax = report.plot_scores({"a": r, "b": make_result(shift=0.1)}).axes[0]
    steps = [p for p in ax.patches if p.get_label() == "a genuine"]
    assert len(steps) == 1
    values, edges = steps[0].get_data()[:2]
    np.testing.assert_allclose(np.sum(values * np.diff(edges)), 1.0)  # A density.


def test_plots_skip_runs_without_curves_and_fail_when_none_has_them():
    with pytest.warns(UserWarning, match="old"):
        fig = report.plot_roc({"new": make_result(), "old": make_result(curves=False)})
    assert [ln.get_label() for ln in fig.axes[0].lines[:1]] == ["new"]
    with pytest.raises(ValueError, match="no run has curves"):
        report.plot_cmc(make_result(curves=False))


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.shape[2] in (3, 4)


def test_write_report_files_and_round_trip(tmp_path):
    runs = {"nir->vis": make_result(), "nir->vis maskTop": make_result(occlusion="maskTop")}
    paths = report.write_report(runs, tmp_path / "out", title="My model")
    assert set(paths) == {"json", "md", "roc", "cmc", "scores"}
    for kind in ("roc", "cmc", "scores"):
        assert paths[kind] == tmp_path / "out" / f"{kind}.png"
        _check_png(paths[kind])
    assert report.load_runs(tmp_path / "out") == runs
    assert report.load_runs(paths["json"]) == runs
    md = paths["md"].read_text()
    assert md.startswith("# My model\n") and "| nir->vis maskTop |" in md
    assert "(roc.png)" in md and "(cmc.png)" in md and "(scores.png)" in md
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # No tmp.
    # One result is written as given (launch/evaluate.py's format) and labelled on loading.
    report.write_report(make_result(occlusion="maskBottom"), tmp_path / "one")
    assert "folds" in json.loads((tmp_path / "one" / "eval.json").read_text())
    assert list(report.load_runs(tmp_path / "one")) == ["nir->vis maskBottom"]


def test_write_report_without_curves_writes_table_only(tmp_path):
    with pytest.warns(UserWarning, match="left out of those plots"):
        paths = report.write_report(make_result(curves=False), tmp_path)
    assert set(paths) == {"json", "md"} and "png" not in paths["md"].read_text()


def test_load_runs_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "eval.json")):
        report.load_runs(tmp_path)
    (tmp_path / "eval.json").write_text("{not json")
    with pytest.raises(ValueError, match="eval.json is not valid JSON"):
        report.load_runs(tmp_path)
    (tmp_path / "eval.json").write_text(json.dumps({"x": {"mean": {}}}))
    with pytest.raises(ValueError, match=r"eval\.json: .*'x'"):
        report.load_runs(tmp_path)


def _two_model_dirs(tmp_path) -> tuple[Path, Path]:
    a, b = tmp_path / "model_a", tmp_path / "model_b"
    report.write_report(make_result(), a)
    report.write_report(
        {"nir->vis": make_result(shift=0.1), "nir->vis maskTop": make_result(shift=0.2)}, b
    )
    return a, b


def test_compare_overlays_and_labels(tmp_path):
    a, b = _two_model_dirs(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = report.compare([a, b / "eval.json"], tmp_path / "cmp")
    labels = ["model_a", "model_b: nir->vis", "model_b: nir->vis maskTop"]
    assert list(json.loads(paths["json"].read_text())) == labels
    for kind in ("roc", "cmc", "scores"):
        assert paths[kind].name == f"compare_{kind}.png"
        _check_png(paths[kind])
    md = paths["md"].read_text()
    assert all(f"| {label} |" in md for label in labels)
    runs = report.load_runs(paths["json"])
    for kind, plot in (("roc", report.plot_roc), ("cmc", report.plot_cmc)):
        ax = plot(runs).axes[0]
        assert [ln.get_label() for ln in ax.lines[: len(labels)]] == labels
        assert all(not ln.get_label().startswith("model") for ln in ax.lines[len(labels) :])
    custom = report.compare([a, b], tmp_path / "cmp2", labels=["A", "B"])
    assert list(report.load_runs(custom["json"]))[:2] == ["A", "B: nir->vis"]


def test_compare_rejects_duplicate_and_miscounted_labels(tmp_path):
    a, b = _two_model_dirs(tmp_path)
    with pytest.raises(ValueError, match="duplicate run labels"):
        report.compare([a, a], tmp_path / "cmp")
    with pytest.raises(ValueError, match="duplicate run labels"):
        report.compare([b, b], tmp_path / "cmp", labels=["x", "x"])
    with pytest.raises(ValueError, match="one label per source"):
        report.compare([a, b], tmp_path / "cmp", labels=["x"])
    assert not (tmp_path / "cmp").exists()


def test_launch_compare_subprocess(tmp_path):
    a, b = _two_model_dirs(tmp_path)
    out = tmp_path / "cmp"
    cmd = [sys.executable, str(REPO / "launch" / "compare.py"), str(a), str(b)]
    cmd += ["--labels=first,second", f"--out={out}"]
    res = subprocess.run(
        cmd, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert "| first |" in res.stdout and "| second: nir->vis maskTop |" in res.stdout
    assert str(out / "compare.md") in res.stdout
    assert "| second: nir->vis |" in (out / "compare.md").read_text()
    _check_png(out / "compare_roc.png")


def test_write_report_partial_curves_warns_once_and_plots_the_rest(tmp_path):
    runs = {"new": make_result(), "old": make_result(curves=False)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = report.write_report(runs, tmp_path)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "['old']" in messages[0], messages
    assert {"roc", "cmc", "scores"} <= set(paths)


def test_paper_table_escapes_pipes_in_labels():
    rows = _table_lines(report.paper_table({"a|b": make_result()}))
    assert rows[2].startswith("| a\\|b | ")
