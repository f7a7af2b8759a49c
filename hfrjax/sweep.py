"""Ablation sweeps: cells x seeds of staged training runs, resumable, ending in a results table.

A paper table is a list of *cells* (rows), each a short pipeline of *stages* (e.g. pretrain,
then fine-tune), every cell run once per seed. A sweep config is a Python file whose
``get_config(arg=None)`` returns a ConfigDict (or dict) with:

  name      str, the table's title.
  cells     [{"name": str, "stages": [stage, ...]}, ...]; names unique, filesystem-safe.
  seeds     [int, ...] (default [0]); set as ``seed`` and ``input.seed`` of every stage unless
            its overrides set them (a stage overriding both is shared by all seeds).
  data_dir  str, what "{data}" stands for (the command line may replace it).
  table     {"metrics": [names], "rows": [cell names], "title": str}, all optional.

  stage = {"name": str,
           "config": "configs/x.py[:arg]" (relative to the repo root, or absolute),
           "overrides": {"dotted.key": value}  (keys must exist; "+key" may add a new one),
           "evaluate": bool (default: only the last stage)}

String override values may hold placeholders: "{data}" (data_dir), "{workdir}" (the cell's
own directory, ``cells/<cell>/seed_<seed>``), "{stage:NAME}" (the workdir of an earlier stage
of the same cell), "{cell:CELL/STAGE}" (a stage of another cell, same seed); "{{" and "}}"
are literal braces.

Every stage runs in ``<out>/runs/<stage>-<hash12>``, the hash being that of its config path,
arg, resolved overrides and seed: identical stages (the same pretraining under several
fine-tuning cells) share one workdir and run once. A stage is done when its ``done.json``
exists (written after training returns); re-running a sweep skips done stages and re-runs an
interrupted one, whose trainer resumes from its checkpoints. Editing a config *file* does not
change the hashes: delete the affected ``runs/`` directories to re-run them.

A cell's result is the eval result of its evaluated stage (the loop's ``eval.json``: the
protocol of ``eval.data_dir`` and the task's own evaluators; a stage needs ``eval.data_dir``
unless its task declares evaluators for its config, `task_evaluator_names`); several evaluated
stages (one per fold, say) must each name disjoint ``eval.folds``, and their folds are pooled. ``results.json``
({cell: {seed: result}}) and ``tables.md`` (mean ± std over all seed x fold values) are
rewritten after every finished stage, so an unfinished sweep has a partial table.

Runs go seed-major (every cell at seed 0, then seed 1, ...): a complete, single-seed table
comes first. One process runs the sweep; several processes may share ``<out>`` when they run
disjoint ``only`` cell sets (the tables are rebuilt from the ``done.json`` files on disk).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import importlib.util
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hfrjax.fileio import write_text_atomic

# Re-exported: sweep configs call sweep.stage / sweep.grid (hfrjax/sweep_cells.py).
from hfrjax.sweep_cells import GridPoint, grid, stage  # noqa: F401
from hfrjax.sweep_results import DONE_JSON, RESULTS_JSON, TABLES_MD  # noqa: F401 - re-exported

REPO = Path(__file__).resolve().parents[1]
STAGE_JSON = "stage.json"
PLAN_JSON = "plan.json"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]*\Z")
_PLACEHOLDER_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_SWEEP_KEYS = {"name", "cells", "seeds", "data_dir", "table"}
_CELL_KEYS = {"name", "stages"}
_STAGE_KEYS = {"name", "config", "overrides", "evaluate"}
_TABLE_KEYS = {"metrics", "rows", "title"}
_PLACEHOLDERS_HELP = "{data}, {workdir}, {stage:NAME}, {cell:CELL/STAGE}"


# --------------------------------------------------------------------------------------------
# Config files.


def split_config_spec(spec: str) -> tuple[str, str | None]:
    """ "configs/x.py:arg" -> ("configs/x.py", "arg"); no ":" -> arg None."""
    m = re.fullmatch(r"(.+?\.py)(?::(.*))?", str(spec).strip())
    if not m:
        raise ValueError(f"config {spec!r} is not of the form path/to/file.py[:arg]")
    return m.group(1), m.group(2)


def resolve_config_path(path: str, base: str | os.PathLike | None = None) -> Path:
    """An absolute ``path``, or ``path`` under ``base`` (default: the repo root)."""
    p = Path(path).expanduser()
    full = p if p.is_absolute() else Path(base or REPO) / p
    if not full.is_file():
        raise ValueError(f"config file {path!r} not found (looked for {full})")
    return full.resolve()


_MODULES: dict[tuple[Path, float], Any] = {}


def _load_module(path: Path):
    key = (path, path.stat().st_mtime)
    if key not in _MODULES:
        if str(REPO) not in sys.path:  # Lets config files import configs.* helpers.
            sys.path.insert(0, str(REPO))
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(f"_hfrjax_config_{digest}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise ValueError(f"config file {path} has no get_config function")
        _MODULES[key] = module
    return _MODULES[key]


def load_config(spec: str, base: str | os.PathLike | None = None) -> Any:
    """``get_config(arg)`` (``get_config()`` without ":arg") of the file named by ``spec``."""
    path, arg = split_config_spec(spec)
    module = _load_module(resolve_config_path(path, base))
    return module.get_config() if arg is None else module.get_config(arg)


def _plain(obj: Any) -> Any:
    """ConfigDicts (anywhere in lists/dicts) as plain dicts and lists."""
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        obj = obj.to_dict()
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# Planning.


@dataclasses.dataclass(eq=False)
class Run:
    """One distinct stage run: a workdir, its built config and the (cell, seed, stage) users."""

    stage: str
    workdir: Path
    config: Any
    spec: dict[str, Any]
    deps: list[Run]
    users: list[tuple[str, int, str]]
    cell_dirs: list[Path]
    evaluate: bool = False

    @property
    def done(self) -> bool:
        return (self.workdir / DONE_JSON).is_file()


@dataclasses.dataclass
class Plan:
    """What a sweep will run: distinct runs in order, and each (cell, seed)'s stage runs."""

    name: str
    out_dir: Path
    seeds: list[int]
    data_dir: str
    cells: list[str]
    selected: list[str]
    runs: list[Run]
    stages: dict[tuple[str, int], dict[str, Run]]
    evaluated: dict[str, list[str]]
    table: dict[str, Any]


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"{what} name {name!r} is not filesystem-safe: use letters, digits and . _ = + - "
            "(not starting with . _ = + -)"
        )
    return name


def _check_keys(obj: Any, allowed: set[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what} must be a dict, got {type(obj).__name__}: {obj!r}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return dict(obj)


def _substitute(value: Any, lookup: Callable[[str], str]) -> Any:
    """``value`` with every "{token}" in its strings replaced by ``lookup(token)``."""
    if isinstance(value, str):

        def repl(m: re.Match) -> str:
            if m.group(0) in ("{{", "}}"):
                return m.group(0)[0]
            return lookup(m.group(1))

        return _PLACEHOLDER_RE.sub(repl, value)
    if isinstance(value, Mapping):
        return {k: _substitute(v, lookup) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_substitute(v, lookup) for v in value)
    return value


def _apply_override(config: Any, key: str, value: Any, where: str) -> None:
    """Sets ``config[dotted key]``; the key must exist unless written "+key"."""
    may_add = key.startswith("+")
    key = key[1:] if may_add else key
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        child = node.get(part, None) if hasattr(node, "get") else None
        if not hasattr(child, "update_from_flattened_dict"):
            raise ValueError(
                f"{where}: override {key!r}: {'.'.join(parts[: i + 1])!r} is not a config "
                f"section of this config"
            )
        node = child
    if not may_add and parts[-1] not in node:
        raise ValueError(
            f"{where}: override {key!r} names no field of this config (a typo? write "
            f"'+{key}' to add a new field)"
        )
    try:
        config.update_from_flattened_dict({key: value})
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"{where}: override {key}={value!r} failed: {e}") from e


def task_evaluator_names(config: Any, where: str = "stage") -> list[str]:
    """The evaluations a stage's task runs by itself (`TaskSetup.evaluators`: re-id, a hold-out
    set), so a stage evaluated without ``eval.data_dir`` still has results; declared, without
    building the task, by its optional ``evaluator_names(task_cfg) -> [name, ...]``. [] for a
    config naming no ``task`` or a task without that method."""
    task_name = config.get("task", None) if hasattr(config, "get") else None
    if not task_name:
        return []
    from hfrjax.tasks import get_task, parse_config

    try:
        task = get_task(str(task_name))
        declare = getattr(task, "evaluator_names", None)
        if not callable(declare):
            return []
        _, _, task_cfg = parse_config(config)
        return [str(n) for n in declare(task_cfg)]
    except ValueError as e:  # ConfigError: an unknown task or key, a bad value.
        raise ValueError(f"{where}: task {task_name!r}: {e}") from e


def _json_key(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=repr, separators=(",", ":"))


class _Planner:
    def __init__(self, cfg: dict, out_dir: Path, seeds: list[int], data_dir: str):
        self.out = out_dir
        self.seeds = seeds
        self.data_dir = data_dir
        self.cells: dict[str, list[dict]] = {}
        for i, raw in enumerate(cfg["cells"]):
            c = _check_keys(raw, _CELL_KEYS, f"cells[{i}]")
            name = _check_name(c.get("name"), f"cells[{i}]")
            if name in self.cells:
                raise ValueError(f"duplicate cell name {name!r} (cells[{i}] and an earlier cell)")
            self.cells[name] = self._stages(name, c.get("stages"))
        self.memo: dict[tuple[str, int, str], Run] = {}
        self.by_dir: dict[Path, Run] = {}

    def _stages(self, cell: str, raw: Any) -> list[dict]:
        if not isinstance(raw, (list, tuple)) or not raw:
            raise ValueError(f"cell {cell!r}: stages must be a non-empty list, got {raw!r}")
        stages, seen = [], set()
        for j, s in enumerate(raw):
            s = _check_keys(s, _STAGE_KEYS, f"cell {cell!r} stages[{j}]")
            name = _check_name(s.get("name"), f"cell {cell!r} stages[{j}]")
            if name in seen:
                raise ValueError(f"cell {cell!r}: duplicate stage name {name!r}")
            seen.add(name)
            if not isinstance(s.get("config"), str):
                raise ValueError(f"cell {cell!r} stage {name!r}: config must be 'path.py[:arg]'")
            overrides = s.get("overrides") or {}
            if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
                raise ValueError(
                    f"cell {cell!r} stage {name!r}: overrides must be a dict "
                    f"{{'dotted.key': value}}, got {overrides!r}"
                )
            evaluate = s.get("evaluate", None)
            if evaluate is None:
                evaluate = j == len(raw) - 1
            elif not isinstance(evaluate, bool):
                raise ValueError(f"cell {cell!r} stage {name!r}: evaluate must be a bool")
            stages.append(
                {
                    "name": name,
                    "config": s["config"],
                    "overrides": dict(overrides),
                    "evaluate": evaluate,
                }
            )
        return stages

    def cell_dir(self, cell: str, seed: int) -> Path:
        return self.out / "cells" / cell / f"seed_{seed}"

    def resolve(self, cell: str, seed: int, name: str, stack: tuple = ()) -> Run:
        key = (cell, seed, name)
        if key in self.memo:
            return self.memo[key]
        if key in stack:
            chain = " -> ".join(f"{c}/{s}" for c, _, s in (*stack, key))
            raise ValueError(f"circular stage references: {chain}")
        stages = self.cells[cell]
        index = next(i for i, s in enumerate(stages) if s["name"] == name)
        s = stages[index]
        where = f"cell {cell!r} stage {name!r}"
        deps: list[Run] = []
        cell_dirs: list[Path] = []

        def target(token: str) -> tuple[str, str]:
            """(value for the hash, real value) of one placeholder."""
            if token == "data":
                if not self.data_dir:
                    raise ValueError(
                        f"{where}: placeholder {{data}} but no data_dir (set the sweep's "
                        "data_dir or pass --data_dir)"
                    )
                return self.data_dir, self.data_dir
            if token == "workdir":
                d = self.cell_dir(cell, seed)
                cell_dirs.append(d)
                return f"<sweep>/{d.relative_to(self.out).as_posix()}", str(d)
            if token.startswith("stage:"):
                other = token[len("stage:") :]
                earlier = [t["name"] for t in stages[:index]]
                if other not in earlier:
                    raise ValueError(
                        f"{where}: placeholder {{{token}}} names no earlier stage of cell "
                        f"{cell!r} (earlier stages: {earlier})"
                    )
                dep = self.resolve(cell, seed, other, (*stack, key))
            elif token.startswith("cell:"):
                ref_cell, _, ref_stage = token[len("cell:") :].partition("/")
                if ref_cell not in self.cells:
                    raise ValueError(
                        f"{where}: placeholder {{{token}}} names an unknown cell {ref_cell!r}"
                    )
                names = [t["name"] for t in self.cells[ref_cell]]
                if ref_stage not in names:
                    raise ValueError(
                        f"{where}: placeholder {{{token}}}: cell {ref_cell!r} has no stage "
                        f"{ref_stage!r} (stages: {names})"
                    )
                dep = self.resolve(ref_cell, seed, ref_stage, (*stack, key))
            else:
                raise ValueError(
                    f"{where}: unknown placeholder {{{token}}}; known: {_PLACEHOLDERS_HELP} "
                    "(write {{ and }} for literal braces)"
                )
            deps.append(dep)
            return f"<sweep>/{dep.workdir.relative_to(self.out).as_posix()}", str(dep.workdir)

        hashed = _substitute(s["overrides"], lambda t: target(t)[0])
        real = _substitute(s["overrides"], lambda t: target(t)[1])
        path, arg = split_config_spec(s["config"])
        try:
            full = resolve_config_path(path)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        canonical = full.relative_to(REPO).as_posix() if full.is_relative_to(REPO) else str(full)
        try:
            config = load_config(str(full) + ("" if arg is None else f":{arg}"))
        except ValueError as e:
            raise ValueError(f"{where}: config {s['config']!r}: {e}") from e
        applied = {}
        if "seed" not in real and "+seed" not in real:
            config.seed = seed
            applied["seed"] = seed
        inp = config.get("input", None)
        if hasattr(inp, "update_from_flattened_dict") and not {"input.seed", "+input.seed"} & set(
            real
        ):
            inp.seed = seed
            applied["input.seed"] = seed
        for k, v in real.items():
            _apply_override(config, k, v, where)
        spec = {"config": canonical, "arg": arg, "overrides": hashed, "seeds": applied}
        digest = hashlib.sha256(_json_key(spec).encode()).hexdigest()[:12]
        workdir = self.out / "runs" / f"{name}-{digest}"
        run = self.by_dir.get(workdir)
        if run is None:
            run = Run(name, workdir, config, spec, list(dict.fromkeys(deps)), [], [])
            self.by_dir[workdir] = run
        run.users.append(key)
        run.cell_dirs = list(dict.fromkeys(run.cell_dirs + cell_dirs))
        if s["evaluate"]:
            ev = config.get("eval", None)
            if not (ev and ev.get("data_dir", "")) and not task_evaluator_names(config, where):
                raise ValueError(
                    f"{where} is evaluated but its config sets no eval.data_dir and its task "
                    f"declares no evaluators of its own for it (add an override "
                    "'eval.data_dir', or set evaluate=False)"
                )
            run.evaluate = True
        self.memo[key] = run
        return run

    def evaluated(self, cell: str) -> list[str]:
        names = [s["name"] for s in self.cells[cell] if s["evaluate"]]
        if not names:
            raise ValueError(f"cell {cell!r} evaluates no stage (set evaluate=True on one)")
        for seed in self.seeds if len(names) > 1 else ():
            seen: dict[int, str] = {}
            for n in names:
                folds = self.memo[(cell, seed, n)].config.eval.get("folds", None)
                if not folds:
                    raise ValueError(
                        f"cell {cell!r} evaluates stages {names}: each must set "
                        f"eval.folds (stage {n!r} evaluates all folds)"
                    )
                for f in folds:
                    if f in seen:
                        raise ValueError(
                            f"cell {cell!r}: stages {seen[f]!r} and {n!r} both evaluate "
                            f"fold {f}; their folds are pooled, so they must be disjoint"
                        )
                    seen[f] = n
        return names


def _select(cells: list[str], only: str | Sequence[str] | None) -> list[str]:
    if not only:
        return list(cells)
    patterns = [p.strip() for p in (only.split(",") if isinstance(only, str) else only)]
    patterns = [p for p in patterns if p]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(c, p) for c in cells):
            raise ValueError(f"--only pattern {p!r} matches no cell; cells: {cells}")
    return [c for c in cells if any(fnmatch.fnmatchcase(c, p) for p in patterns)]


def plan_sweep(
    sweep_cfg: Any,
    out_dir: str | os.PathLike,
    *,
    only: str | Sequence[str] | None = None,
    data_dir: str | None = None,
    seeds: Sequence[int] | None = None,
) -> Plan:
    """Validates the sweep and builds every stage's config (so a typo fails before training).

    ``only`` (glob patterns, or one comma-separated string) selects cells to run; runs they
    reference in other cells are included. ``data_dir`` / ``seeds`` replace the config's.
    """
    cfg = _plain(sweep_cfg)
    if isinstance(cfg, Mapping) and "cells" not in cfg and isinstance(cfg.get("sweep"), Mapping):
        cfg = cfg["sweep"]
    cfg = _check_keys(cfg, _SWEEP_KEYS, "sweep config")
    if not isinstance(cfg.get("cells"), list) or not cfg["cells"]:
        raise ValueError("sweep config: cells must be a non-empty list of {name, stages}")
    seeds = list(seeds if seeds is not None else cfg.get("seeds") or [0])
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"sweep config: seeds must be a non-empty list of ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"sweep config: duplicate seeds in {seeds}")
    data = data_dir if data_dir is not None else cfg.get("data_dir") or ""
    data = str(Path(data).expanduser().absolute()) if data else ""
    out = Path(out_dir).expanduser().absolute()
    table = _check_keys(cfg.get("table") or {}, _TABLE_KEYS, "sweep config table")

    planner = _Planner(cfg, out, seeds, data)
    cells = list(planner.cells)
    selected = _select(cells, only)
    stages: dict[tuple[str, int], dict[str, Run]] = {}
    runs: dict[Run, None] = {}

    def emit(run: Run) -> None:
        for d in run.deps:
            emit(d)
        runs.setdefault(run)

    for seed in seeds:  # Every cell is resolved (for the table); only the selected ones run.
        for cell in cells:
            stages[(cell, seed)] = {
                s["name"]: planner.resolve(cell, seed, s["name"]) for s in planner.cells[cell]
            }
            if cell in selected:
                for run in stages[(cell, seed)].values():
                    emit(run)
    evaluated = {cell: planner.evaluated(cell) for cell in cells}
    rows = table.get("rows") or cells
    unknown = [r for r in rows if r not in planner.cells]
    if unknown:
        raise ValueError(f"sweep config table.rows: unknown cell(s) {unknown}; cells: {cells}")
    metrics = table.get("metrics") or []
    if isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics):
        raise ValueError(f"sweep config table.metrics must be a list of names, got {metrics!r}")
    return Plan(
        name=str(cfg.get("name") or "sweep"),
        out_dir=out,
        seeds=seeds,
        data_dir=data,
        cells=cells,
        selected=selected,
        runs=list(runs),
        stages=stages,
        evaluated=evaluated,
        table={"rows": list(rows), "metrics": list(metrics), "title": table.get("title")},
    )


def _rel(plan: Plan, path: Path) -> str:
    return path.relative_to(plan.out_dir).as_posix()


def _users(run: Run) -> str:
    return ", ".join(f"{c}/seed={s}/{n}" for c, s, n in run.users)


def format_plan(plan: Plan) -> str:
    """The dry-run listing: every distinct run in order, its users, and what is done."""
    done = sum(r.done for r in plan.runs)
    uses = sum(len(r.users) for r in plan.runs)
    shared = [r for r in plan.runs if len(r.users) > 1]
    lines = [
        f"sweep {plan.name!r}: {len(plan.selected)} of {len(plan.cells)} cells x "
        f"{len(plan.seeds)} seed(s) {plan.seeds}; {uses} stage uses -> {len(plan.runs)} "
        f"distinct runs ({done} done, {len(plan.runs) - done} to train)",
        f"out: {plan.out_dir}   data_dir: {plan.data_dir or '(none)'}",
    ]
    for k, run in enumerate(plan.runs, 1):
        cell, seed, name = run.users[0]
        state = "done" if run.done else "to train"
        flags = " evaluate" if run.evaluate else ""
        lines.append(
            f"[{k}/{len(plan.runs)}] cell={cell} seed={seed} stage={name} -> "
            f"{_rel(plan, run.workdir)} ({state}){flags}"
        )
        if run.deps:
            lines.append("      after: " + ", ".join(_rel(plan, d.workdir) for d in run.deps))
    lines.append(f"shared workdirs: {len(shared)}")
    for run in shared:
        lines.append(f"  {_rel(plan, run.workdir)}: {_users(run)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Results: hfrjax/sweep_results.py.

from hfrjax.sweep_results import (  # noqa: E402,F401
    _pool,
    _read_done,
    _stat,
    collect_results,
    format_table,
    write_results,
)

# --------------------------------------------------------------------------------------------
# Running.


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _eval_of(result: Any, workdir: Path) -> dict | None:
    """The trainer's eval results, else the workdir's eval.json (a resumed, finished run
    returns none)."""
    ev = getattr(result, "eval_results", None)
    if ev is None and isinstance(result, Mapping):
        ev = result.get("eval_results")
    if ev is None and (workdir / "eval.json").is_file():
        ev = json.loads((workdir / "eval.json").read_text(encoding="utf-8"))
    return ev


def _final_step(result: Any) -> int | None:
    try:
        return int(result.state.step)
    except (AttributeError, TypeError, ValueError):
        return None


def _plan_json(plan: Plan) -> dict:
    return {
        "name": plan.name,
        "seeds": plan.seeds,
        "data_dir": plan.data_dir,
        "cells": {
            cell: {
                str(seed): {
                    n: {"workdir": _rel(plan, r.workdir), "evaluate": n in plan.evaluated[cell]}
                    for n, r in plan.stages[(cell, seed)].items()
                }
                for seed in plan.seeds
            }
            for cell in plan.cells
        },
    }


def run_sweep(
    sweep_cfg: Any,
    out_dir: str | os.PathLike,
    *,
    only: str | Sequence[str] | None = None,
    dry_run: bool = False,
    train_fn: Callable[[Any, str], Any] | None = None,
    data_dir: str | None = None,
    seeds: Sequence[int] | None = None,
    keep_going: bool = False,
    say: Callable[[str], None] | None = None,
) -> dict[str, dict[str, dict]]:
    """Runs (or resumes) a sweep into ``out_dir``; returns {cell: {seed: result}}.

    ``train_fn(config, workdir)`` defaults to `hfrjax.train.trainer.train` and must resume
    from ``workdir`` by itself. ``dry_run`` prints the plan and writes nothing.
    ``keep_going``: a failing stage (an Exception) skips what depends on it, the sweep goes
    on, and a RuntimeError naming the failures is raised at the end; otherwise (and always
    for KeyboardInterrupt / SystemExit) the error propagates at once.
    """
    say = say or (lambda msg: print(msg, flush=True))
    plan = plan_sweep(sweep_cfg, out_dir, only=only, data_dir=data_dir, seeds=seeds)
    if dry_run:
        say(format_plan(plan))
        return collect_results(plan)
    if train_fn is None:
        from hfrjax.train.trainer import train as train_fn

    plan.out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(plan.out_dir / PLAN_JSON, json.dumps(_plan_json(plan), indent=1) + "\n")
    failed: dict[str, str] = {}  # cell -> error
    broken: dict[Run, str] = {}  # run -> why it did not run
    write_results(plan, failed)
    # ETA: mean wall time of finished stages, including those finished by earlier invocations.
    durations = [
        d["wall_seconds"] for r in plan.runs if (d := _read_done(r)) and "wall_seconds" in d
    ]
    remaining = sum(not r.done for r in plan.runs)
    t0 = time.perf_counter()
    n = len(plan.runs)
    trained = skipped = 0
    for k, run in enumerate(plan.runs, 1):
        cell, seed, name = run.users[0]
        head = f"[{k}/{n}] cell={cell} seed={seed} stage={name}"
        if len(run.users) > 1:
            head += f" (shared by {len(run.users)})"
        if run.done:
            say(f"{head} (skipped: done)")
            skipped += 1
            continue
        bad = next((d for d in run.deps if d in broken), None)
        if bad is not None:
            broken[run] = f"depends on {_rel(plan, bad.workdir)}"
            for c, _, _ in run.users:
                failed.setdefault(c, f"stage {name} not run: {broken[run]}, which failed")
            say(f"{head} (skipped: {broken[run]}, which failed)")
            remaining -= 1
            continue
        eta = _hms(sum(durations) / len(durations) * remaining) if durations else "?"
        say(
            f"{head} (running) {_rel(plan, run.workdir)}; elapsed "
            f"{_hms(time.perf_counter() - t0)}, ETA {eta}"
        )
        for d in run.cell_dirs:
            d.mkdir(parents=True, exist_ok=True)
        run.workdir.mkdir(parents=True, exist_ok=True)
        stage_info = dict(run.spec, users=[list(u) for u in run.users])
        stage_info["full_config"] = _plain(run.config)
        write_text_atomic(
            run.workdir / STAGE_JSON, json.dumps(stage_info, indent=1, default=repr) + "\n"
        )
        t = time.perf_counter()
        try:
            result = train_fn(run.config, str(run.workdir))
            ev = _eval_of(result, run.workdir)
            step = _final_step(result)
            del result  # Frees the trained state before the next stage.
            if run.evaluate and not ev:
                raise RuntimeError(
                    f"stage {name!r} of cell {cell!r} is evaluated but training returned no "
                    f"eval results and wrote no {run.workdir / 'eval.json'}"
                )
        except Exception as e:
            if not keep_going:
                say(f"{head} failed: {type(e).__name__}: {e}; re-run to retry (it resumes)")
                raise
            broken[run] = f"{type(e).__name__}: {e}"
            for c, _, _ in run.users:
                failed.setdefault(c, f"stage {name} failed ({type(e).__name__})")
            say(f"{head} FAILED: {broken[run]}; going on (--keep_going)")
            write_results(plan, failed)
            remaining -= 1
            continue
        except BaseException:
            say(f"{head} interrupted; re-run the same command to resume this stage")
            raise
        wall = time.perf_counter() - t
        done = {
            "step": step,
            "wall_seconds": wall,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "eval": ev,
        }
        write_text_atomic(run.workdir / DONE_JSON, json.dumps(done, indent=1) + "\n")
        durations.append(wall)
        remaining -= 1
        trained += 1
        write_results(plan, failed)
        say(f"{head} finished in {_hms(wall)}")
    results = write_results(plan, failed)
    say(
        f"sweep {plan.name!r}: {trained} stage(s) trained, {skipped} already done, "
        f"in {_hms(time.perf_counter() - t0)}; table: {plan.out_dir / TABLES_MD}"
    )
    if broken:
        raise RuntimeError(
            f"{len(broken)} stage run(s) failed or were skipped: "
            + "; ".join(f"{_rel(plan, r.workdir)}: {why}" for r, why in broken.items())
        )
    return results
