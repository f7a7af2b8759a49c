"""Compares evaluations: one table and overlaid ROC / CMC / score plots from several eval.json.

  python launch/compare.py RUN_DIR1 RUN_DIR2 [...] [--labels=a,b] [--out=DIR]

Each argument is a directory holding an eval.json (as written by launch/evaluate.py) or an
eval.json file itself. Rows are labelled by directory name (``--labels``: one per argument),
"<name>: <setting>" when a file holds several settings. Writes compare.md, compare.json and
compare_roc.png / compare_cmc.png / compare_scores.png to --out (default: the current
directory) and prints the table.
"""

from __future__ import annotations

from absl import app, flags

_LABELS = flags.DEFINE_list("labels", None, "one row label per eval.json / directory")
_OUT = flags.DEFINE_string("out", ".", "output directory")


def main(argv):
    from hfrjax.train.cli_logging import quiet_unless_asked

    quiet_unless_asked()
    sources = argv[1:]
    if not sources:
        raise app.UsageError("give the eval.json files or their directories to compare")
    from hfrjax.eval import report

    paths = report.compare(sources, _OUT.value, labels=_LABELS.value)
    print(report.paper_table(report.load_runs(paths["json"])))
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    app.run(main)
