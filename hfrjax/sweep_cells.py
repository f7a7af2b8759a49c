"""Building a sweep's cells: `stage` dicts and the cartesian `grid` of override axes, for
sweep config files (``configs/*/tables_*.py``); planning and running are `hfrjax.sweep`."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def stage(
    name: str,
    config: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    evaluate: bool | None = None,
) -> dict[str, Any]:
    """A stage dict (``evaluate`` None: only a cell's last stage is evaluated)."""
    s: dict[str, Any] = {"name": name, "config": config, "overrides": dict(overrides or {})}
    if evaluate is not None:
        s["evaluate"] = bool(evaluate)
    return s


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One combination of a `grid`: its cell name, {axis: label} and {axis: overrides}."""

    name: str
    labels: dict[str, str]
    axis_overrides: dict[str, dict[str, Any]]

    def overrides(self, *axes: str) -> dict[str, Any]:
        """The overrides of ``axes`` (default: all) merged; a key set differently raises."""
        unknown = [a for a in axes if a not in self.axis_overrides]
        if unknown:
            raise ValueError(f"unknown grid axis(es) {unknown}; axes: {list(self.axis_overrides)}")
        merged: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for axis in axes or tuple(self.axis_overrides):
            for key, value in self.axis_overrides[axis].items():
                if key in merged and merged[key] != value:
                    raise ValueError(
                        f"grid cell {self.name!r}: override {key!r} is {merged[key]!r} on axis "
                        f"{origin[key]!r} but {value!r} on axis {axis!r}"
                    )
                merged[key], origin[key] = value, axis
        return merged


def grid(
    axes: Mapping[str, Sequence[tuple[str, Mapping[str, Any]]]],
    make_stages: Callable[[GridPoint], list[dict[str, Any]]],
    *,
    sep: str = "-",
) -> list[dict[str, Any]]:
    """Cells of the cartesian product of ``axes`` ({axis: [(label, overrides), ...]}).

    Axes vary slowest first; a cell's name is its labels joined by ``sep`` and its stages are
    ``make_stages(point)``, so a table of N x M cells is one call (see `GridPoint.overrides`).
    """
    if not axes:
        raise ValueError("grid needs at least one axis")
    options = []
    for axis, choices in axes.items():
        if not choices:
            raise ValueError(f"grid axis {axis!r} has no choices")
        for choice in choices:
            if (
                not isinstance(choice, (tuple, list))
                or len(choice) != 2
                or not isinstance(choice[0], str)
                or not isinstance(choice[1], Mapping)
            ):
                raise ValueError(
                    f"grid axis {axis!r}: each choice must be (label, overrides dict), "
                    f"got {choice!r}"
                )
        options.append([(axis, label, dict(ov)) for label, ov in choices])
    cells = []
    for combo in itertools.product(*options):
        point = GridPoint(
            name=sep.join(label for _, label, _ in combo),
            labels={axis: label for axis, label, _ in combo},
            axis_overrides={axis: ov for axis, _, ov in combo},
        )
        cells.append({"name": point.name, "stages": list(make_stages(point))})
    return cells
