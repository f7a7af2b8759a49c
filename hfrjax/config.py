"""Typed config sections: every default written once, every misspelt key an error.

A run's config is an ``ml_collections.ConfigDict`` (config files, ``--config.x.y=...`` flags,
sweeps); its sections are read through frozen dataclasses derived from `Section`. A key that no
section knows is an error naming the key, where it is, and the closest valid spelling::

    ConfigError: unknown key 'optimizer.weight_decy'; did you mean 'weight_decay'?

`default_config(task)` builds the complete ConfigDict of a task from those dataclasses, so
every documented field exists (and is settable from the command line) on every config built
from it, and config files only state what differs from the defaults. Sequences become tuples
there, which ``ml_collections``' flags can override (``--config.model.kwargs.layers=(2,2,2,2)``).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config key or value that no section accepts; the message names it."""


def _plain(d: Any) -> dict:
    if d is None:
        return {}
    if hasattr(d, "to_dict"):
        d = d.to_dict()
    if dataclasses.is_dataclass(d) and not isinstance(d, type):
        d = {f.name: getattr(d, f.name) for f in dataclasses.fields(d)}
    if not isinstance(d, dict):
        raise ConfigError(f"expected a dict of options, got {d!r}")
    return dict(d)


def unknown_key_error(key: str, valid: typing.Iterable[str], where: str = "") -> ConfigError:
    """The error for an unknown ``key`` at ``where``, suggesting the closest ``valid`` key."""
    valid = sorted(valid)
    name = f"{where}.{key}" if where else key
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown key {name!r}; {hint}")


def check_keys(d: dict, valid: typing.Iterable[str], where: str = "") -> None:
    valid = set(valid)
    for key in sorted(set(d) - valid):
        raise unknown_key_error(key, valid, where)


@dataclasses.dataclass(frozen=True)
class Section:
    """A typed config section; subclasses are frozen dataclasses with a default per field.

    Fields whose type is another `Section` are parsed recursively; fields named in
    ``FREE_FORM`` (e.g. a model's kwargs) are passed through as plain dicts.
    """

    FREE_FORM: typing.ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_config(cls, d: Any = None, where: str = "") -> "Section":
        if isinstance(d, cls):
            return d
        d = _plain(d)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        check_keys(d, fields, where)
        hints = typing.get_type_hints(cls)
        out = {}
        for name, value in d.items():
            sub = f"{where}.{name}" if where else name
            kind = _section_type(hints.get(name))
            parser = _dict_parser(hints.get(name))
            if kind is not None:
                out[name] = kind.from_config(value, sub)
            elif parser is not None:
                out[name] = parser(value)
            elif name in cls.FREE_FORM:
                out[name] = _plain(value)
            else:
                out[name] = _to_tuple(value)
        try:
            return cls(**out)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where or cls.__name__}: {e}") from None

    def to_dict(self) -> dict:
        return {f.name: _dictify(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _section_type(hint: Any) -> type | None:
    for t in (hint, *typing.get_args(hint)):
        if isinstance(t, type) and issubclass(t, Section):
            return t
    return None


def _dict_parser(hint: Any):
    """Another dataclass with its own ``from_dict`` (e.g. the data pipeline's InputConfig)."""
    for t in (hint, *typing.get_args(hint)):
        if isinstance(t, type) and dataclasses.is_dataclass(t) and hasattr(t, "from_dict"):
            return t.from_dict
    return None


def _to_tuple(v: Any) -> Any:
    if hasattr(v, "to_dict"):
        v = v.to_dict()
    if isinstance(v, list):
        return tuple(_to_tuple(x) for x in v)
    if isinstance(v, dict):
        return {k: _to_tuple(x) for k, x in v.items()}
    return v


def _dictify(v: Any) -> Any:
    if isinstance(v, Section):
        return v.to_dict()
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _dictify(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
        return tuple(_dictify(x) for x in v)
    if isinstance(v, dict):
        return {k: _dictify(x) for k, x in v.items()}
    return v


def to_config_dict(section: Section | dict) -> ml_collections.ConfigDict:
    """A ConfigDict with every field of ``section`` (its defaults); sequences as tuples."""
    d = section.to_dict() if isinstance(section, Section) else _dictify(section)
    return ml_collections.ConfigDict(d)


def merge(base: ml_collections.ConfigDict, overrides: dict, where: str = "") -> None:
    """Sets ``overrides`` (nested dicts) into ``base``; unknown keys are an error.

    Free-form sub-dicts (a model's ``kwargs``) may gain keys: they are dicts in ``base`` that
    the caller marks by leaving them empty or by naming them in ``free_form``.
    """
    for k, v in overrides.items():
        sub = f"{where}.{k}" if where else k
        if k not in base:
            raise unknown_key_error(k, list(base.keys()), where)
        cur = base[k]
        if isinstance(cur, ml_collections.ConfigDict) and isinstance(v, dict) and not _free(sub):
            merge(cur, v, sub)
        else:
            base[k] = ml_collections.ConfigDict(_to_tuple(v)) if isinstance(v, dict) else _to_tuple(v)


_FREE_FORM_SUFFIXES = (".kwargs",)


def _free(path: str) -> bool:
    return path.endswith(_FREE_FORM_SUFFIXES) or path == "kwargs"
