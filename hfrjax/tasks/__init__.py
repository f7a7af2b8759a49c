"""Task registry: ``config.task`` names the task that `hfrjax.train.trainer.train` runs.

Core tasks live in this package (``classification``: margin softmax, dense / class-sharded /
Partial FC); each paper's task lives in its recipe package (``hfrjax/recipes/<paper>/``) and is
imported on first use, so naming a task is all a config needs.
"""

from __future__ import annotations

import importlib
from typing import Any

import ml_collections

from hfrjax.config import ConfigError, Section, check_keys, to_config_dict, unknown_key_error

_REGISTRY: dict[str, Any] = {}

# Where each known task is defined (imported lazily: a task registers itself on import).
TASK_MODULES = {
    "classification": "hfrjax.tasks.classification",
    "rethink": "hfrjax.recipes.rethink.task",
    "csan": "hfrjax.recipes.csan.task",
    "ssn": "hfrjax.recipes.ssn.task",
    "ftl": "hfrjax.recipes.ftl.task",
    "toplight_top": "hfrjax.recipes.toplight.task",
    "toplight_vi": "hfrjax.recipes.toplight.task",
}


def register_task(name: str):
    """Class decorator: ``@register_task("ssn")`` on a `hfrjax.train.task.Task`."""

    def decorator(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"task {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def get_task(name: str):
    """An instance of the task registered as ``name``."""
    if name not in _REGISTRY and name in TASK_MODULES:
        importlib.import_module(TASK_MODULES[name])
    if name not in _REGISTRY:
        raise unknown_key_error(name, sorted(set(_REGISTRY) | set(TASK_MODULES)), "task=")
    return _REGISTRY[name]()


def list_tasks() -> list[str]:
    return sorted(set(_REGISTRY) | set(TASK_MODULES))


def loop_config_class():
    from hfrjax.train.trainer import LoopConfig

    return LoopConfig


def parse_config(config: Any) -> tuple[Any, Any, Any]:
    """(task, loop section, task section) of a run config; unknown keys are errors."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    task = get_task(str(d.get("task", "classification")))
    loop_cls = loop_config_class()
    import dataclasses

    loop_keys = {f.name for f in dataclasses.fields(loop_cls)}
    task_keys = {f.name for f in dataclasses.fields(task.config_class)}
    check_keys(d, loop_keys | task_keys)
    loop_cfg = loop_cls.from_config({k: v for k, v in d.items() if k in loop_keys})
    task_cfg = task.config_class.from_config({k: v for k, v in d.items() if k in task_keys})
    return task, loop_cfg, task_cfg


def default_config(task: str = "classification", **overrides) -> ml_collections.ConfigDict:
    """The complete config of ``task``: every field with its one default.

    Config files start here and set what differs; ``--config.a.b=...`` flags can then set any
    documented field. ``overrides`` are nested dicts merged in (unknown keys are errors).
    """
    from hfrjax.config import merge

    t = get_task(task)
    loop = loop_config_class()(task=task)
    c = to_config_dict(loop)
    for k, v in to_config_dict(t.config_class()).items():
        if k in c:
            raise ConfigError(f"task {task!r} redefines the loop's config key {k!r}")
        c[k] = v
    merge(c, overrides)
    return c


__all__ = [
    "ConfigError",
    "Section",
    "TASK_MODULES",
    "default_config",
    "get_task",
    "list_tasks",
    "parse_config",
    "register_task",
]
