"""Checks that the README's quickstart tables are what the quickstart prints now.

  python launch/quickstart.py --workdir=/tmp/qs && python launch/check_readme.py /tmp/qs

Every row of ``W/results.md`` (the quickstart's printed tables) must appear verbatim in
README.md; CI runs this after a fresh quickstart, so the README cannot drift from the code.
Exit status 1 lists the rows that differ.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def table_rows(text: str) -> list[str]:
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip().startswith("|") and not set(line.strip()) <= set("|-: ")
    ]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    results = Path(argv[1]) / "results.md"
    readme = set(table_rows((REPO / "README.md").read_text(encoding="utf-8")))
    missing = [r for r in table_rows(results.read_text(encoding="utf-8")) if r not in readme]
    if missing:
        print(f"README.md does not show these rows of {results}:", *missing, sep="\n  ")
        return 1
    print(f"README.md shows every row of {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
