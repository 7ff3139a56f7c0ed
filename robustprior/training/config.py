"""Configs checked against a declared schema before any work.

A schema is a :class:`Section` (or a plain dict, read as one) whose entries are :class:`Field`\\ s
and nested sections::

    SCHEMA = Section({
        "manual_seed": Field(int, 0, at_least=0),
        "device": Field(str, "auto", check=check_device_name),
        "train": {
            "total_iter": Field(int, 1000, at_least=1),
            "lr": Field(float, 1e-3, above=0),
            "betas": Field(list, [0.9, 0.999], items=float, length=2),
            "schedule": Field(str, "cosine", choices=("constant", "cosine", "step")),
        },
        "history": Field(list, [], internal=True),   # written by training; not compared on resume
    })
    config = load_config("run.yaml", SCHEMA)          # a dict with every default filled in

:func:`validate_config` reports every problem of a config in one :class:`ConfigError`, one line per
problem: an unknown key (with the closest valid key, found by :mod:`difflib`, also in another
section), a missing required key, a wrong type, a value out of range or not among the choices.
YAML 1.1 reads ``1e-3`` as a string; a float field accepts such a numeric string, and an integer
field a whole float (BasicSR's ``val_freq: !!float 1e4``).

Two more entries let a schema read files written for another tool (BasicSR option files):
:class:`Ignored` accepts a key this project does not use (any value); the validated config leaves
it out and :func:`validate_config` lists every such key present in one :class:`UnusedKeysWarning`.
``Section(aliases={"test": "val"})`` reads a key under another name.

Renamed keys. ``Section(former={"seed": "manual_seed"})`` names a key's earlier name within the same
section. One behaviour for each reader:

* a config a user gives (:func:`validate_config`, :func:`load_config`, a dotted override of
  :func:`apply_overrides`) with the earlier name is refused: ``unknown key 'seed' (renamed: use
  'manual_seed')``, one line per such key (the project has one vocabulary; the shipped configs use
  the names of now);
* a run's own saved config (``config.yaml`` of a run folder, the config a training checkpoint
  carries) written before the rename is migrated when it is read (:func:`migrate_config`, applied
  by :func:`validate_saved_config`): every earlier name becomes its name of now, so a run folder of
  an earlier version resumes; training writes the config back with the names of now.

:func:`read_config_file` is the one YAML reader of every config kind (options, recipe configs,
training configs); :func:`load_config` reads and validates.
"""
from __future__ import annotations

import copy
import difflib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["REQUIRED", "Field", "Section", "Ignored", "UnusedKeysWarning", "validate_config", "load_config",
           "read_config_file", "config_differences", "apply_overrides", "copy_internal_values", "format_value",
           "merge_config", "migrate_config", "validate_saved_config"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # default of a field the config must give
_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
               dict: "a mapping"}


@dataclass(frozen=True)
class Field:
    """One config value: its type (``int``, ``float``, ``bool``, ``str``, ``list`` or ``dict``, a
    free mapping; or a tuple of them, tried in order, e.g. ``(str, list)`` for ``all`` or a list of
    names), default, and constraints.

    ``at_least`` / ``at_most`` / ``above`` / ``below``: inclusive and strict bounds of numbers.
    ``choices``: the allowed values. ``items`` / ``length``: element type and exact length of a
    list. ``check``: a function that raises ``ValueError(reason)`` for a bad value (e.g. a free
    mapping's keys). ``nullable``: ``null`` is allowed (implied by a ``None`` default).
    ``internal``: written by the training command itself (a run's history), so not compared when a
    run resumes."""

    kind: type | tuple[type, ...]
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple | None = None
    at_least: float | None = None
    at_most: float | None = None
    above: float | None = None
    below: float | None = None
    items: type | None = None
    length: int | None = None
    check: Callable[[Any], None] | None = None
    nullable: bool = False
    internal: bool = False

    def __post_init__(self) -> None:
        if not self.kinds or any(kind not in _KIND_NAMES for kind in self.kinds):
            raise TypeError(f"Field kind must be one of {[kind.__name__ for kind in _KIND_NAMES]} or a tuple of "
                            f"them, got {self.kind}")

    @property
    def kinds(self) -> tuple[type, ...]:
        """The accepted types, in the order they are tried."""
        return self.kind if isinstance(self.kind, tuple) else (self.kind,)

    @property
    def kind_names(self) -> str:
        """``"an integer"``, ``"a string or a list"``, ... (for messages)."""
        return " or ".join(_KIND_NAMES[kind] for kind in self.kinds)

    @property
    def accepts_null(self) -> bool:
        return self.nullable or self.default is None


@dataclass(frozen=True)
class Ignored:
    """A key another tool's files carry that this project does not use (e.g. BasicSR's ``model_type``):
    any value is accepted, left out of the validated config and listed in the one
    :class:`UnusedKeysWarning` of :func:`validate_config`; ``reason`` says why it is not needed."""

    reason: str = ""


class UnusedKeysWarning(UserWarning):
    """A config holds keys this project reads but does not use (:class:`Ignored`), listed once."""


@dataclass(frozen=True)
class Section:
    """A mapping of named fields and sections; ``check(values)`` may test them together (raise
    ``ValueError(reason)``); ``nullable``: the whole section may be ``null``; ``aliases``: another
    name a key may be given under (``{"test": "val"}``: ``test:`` is read as ``val:``); ``former``: a
    key's earlier name in this section -> its name now (``{"seed": "manual_seed"}``): refused in a
    given config with the new name named, migrated in a run's saved config (module docstring);
    ``renamed``: a former key -> where its value goes now, free text for the error message."""

    fields: Mapping[str, Field | Section | Ignored | Mapping]
    check: Callable[[dict], None] | None = None
    nullable: bool = False
    aliases: Mapping[str, str] | None = None
    renamed: Mapping[str, str] | None = None  # a former key -> where its value goes now (error messages)
    former: Mapping[str, str] | None = None  # a key's earlier name -> its name now (same section)

    def entries(self) -> Iterator[tuple[str, Field | Section | Ignored]]:
        for name, entry in self.fields.items():
            yield name, as_section(entry) if isinstance(entry, Mapping) else entry


def as_section(schema: Section | Mapping) -> Section:
    return schema if isinstance(schema, Section) else Section(schema)


def format_value(value: Any) -> str:
    """A value as it would be written in YAML (for messages)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip().removesuffix("\n...")


def _kind_of(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a mapping", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _all_paths(section: Section, prefix: str = "") -> list[str]:
    paths = []
    for name, entry in section.entries():
        if isinstance(entry, Ignored):
            continue
        path = f"{prefix}{name}"
        paths.append(path)
        if isinstance(entry, Section):
            paths += _all_paths(entry, path + ".")
    return paths


def _former_paths(section: Section, prefixes: tuple[str, ...] = ("",), new_prefix: str = "") -> dict[str, str]:
    """``{earlier dotted key: dotted key now}`` for every ``Section.former`` entry, and for every key
    of a renamed section given under the section's earlier name (``optimizer.lr`` -> ``train.lr``)."""
    former = section.former or {}
    paths = {f"{prefix}{old}": f"{new_prefix}{new}" for prefix in prefixes for old, new in former.items()}
    earlier = {new: old for old, new in former.items()}
    for name, entry in section.entries():
        if not isinstance(entry, Section):
            continue
        if name in earlier:
            paths |= {f"{prefix}{earlier[name]}.{path}": f"{new_prefix}{name}.{path}"
                      for prefix in prefixes for path in _all_paths(entry)}
        names = (name, earlier[name]) if name in earlier else (name,)
        paths |= _former_paths(entry, tuple(f"{prefix}{n}." for prefix in prefixes for n in names),
                               f"{new_prefix}{name}.")
    return paths


def _suggestion(key: str, section: Section, prefix: str, root: Section) -> str:
    """`` (did you mean 'x.y'?)`` for an unknown ``key``: a close key in the same section, else a
    key of that (or a close) name elsewhere in the schema; else the section's valid keys. A key the
    section's ``renamed`` or ``former`` lists names its replacement."""
    if section.former and key in section.former:
        new = section.former[key]
        entry = dict(section.entries()).get(new)
        inner = entry.former if isinstance(entry, Section) and entry.former else {}
        nested = "".join(f", '{old}' -> '{name}'" for old, name in inner.items())
        return f" (renamed: use '{prefix}{new}'{' with its keys renamed' + nested if nested else ''})"
    if section.renamed and key in section.renamed:
        return f" (renamed: use {section.renamed[key]})"
    local = [name for name, entry in section.entries() if not isinstance(entry, Ignored)]
    close = difflib.get_close_matches(key, local, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    elsewhere = _all_paths(root)
    leaves = {path.rsplit(".", 1)[-1]: path for path in reversed(elsewhere)}
    close = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.75)
    if close:
        return f" (did you mean '{leaves[close[0]]}'?)"
    return f" (valid keys{' in ' + repr(prefix[:-1]) if prefix else ''}: {', '.join(local)})"


def _check_number(value: Any, field: Field, path: str) -> str | None:
    bounds = [(field.at_least, lambda v, b: v >= b, ">="), (field.at_most, lambda v, b: v <= b, "<="),
              (field.above, lambda v, b: v > b, ">"), (field.below, lambda v, b: v < b, "<")]
    if isinstance(value, float) and not math.isfinite(value):
        return f"'{path}' must be a finite number, got {format_value(value)}"
    for bound, holds, symbol in bounds:
        if bound is not None and not holds(value, bound):
            return f"'{path}' must be {symbol} {format_value(bound)}, got {format_value(value)}"
    return None


def _coerce(value: Any, kind: type, path: str) -> tuple[Any, str | None]:
    """``value`` as ``kind`` (ints as floats, numeric strings as floats), or an error message."""
    if kind is float:
        if isinstance(value, str):
            try:
                return float(value), None
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), None
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        if isinstance(value, float) and value.is_integer():  # BasicSR writes counts as !!float 1e4
            return int(value), None
    elif kind is list:
        if isinstance(value, (list, tuple)):
            return list(value), None
    elif kind is dict:
        if isinstance(value, Mapping):
            return dict(value), None
    elif isinstance(value, kind):
        return value, None
    return None, f"'{path}' must be {_KIND_NAMES[kind]}, got {format_value(value)} ({_kind_of(value)})"


def _validate_field(value: Any, field: Field, path: str, problems: list[str]) -> Any:
    if value is None:
        if not field.accepts_null:
            problems.append(f"'{path}' must be {field.kind_names}, got null")
        return None
    for kind in field.kinds:
        coerced, problem = _coerce(value, kind, path)
        if problem is None:
            value = coerced
            break
    else:
        problems.append(problem if len(field.kinds) == 1 else
                        f"'{path}' must be {field.kind_names}, got {format_value(value)} ({_kind_of(value)})")
        return None
    if isinstance(value, list):
        if field.length is not None and len(value) != field.length:
            problems.append(f"'{path}' must have {field.length} entries, got {len(value)}: {format_value(value)}")
            return None
        if field.items is not None:
            items = []
            for index, item in enumerate(value):
                item, problem = _coerce(item, field.items, f"{path}[{index}]")
                if problem is not None:
                    problems.append(problem)
                    return None
                items.append(item)
            value = items
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        problem = _check_number(value, field, path)
        if problem is not None:
            problems.append(problem)
            return None
    if field.choices is not None and value not in field.choices:
        close = difflib.get_close_matches(str(value), [str(choice) for choice in field.choices], n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.append(f"'{path}' must be one of {', '.join(map(str, field.choices))}; got {format_value(value)}{hint}")
        return None
    if field.check is not None:
        try:
            field.check(value)
        except ValueError as error:
            problems.append(f"'{path}': {error}")
            return None
    return copy.deepcopy(value)


def _resolve_aliases(values: Mapping, section: Section, prefix: str, problems: list[str]) -> Mapping:
    """``values`` with every alias key renamed to its key; both given is a problem."""
    if not section.aliases or not any(alias in values for alias in section.aliases):
        return values
    renamed = dict(values)
    for alias, name in section.aliases.items():
        if alias in renamed:
            if name in renamed:
                problems.append(f"'{prefix}{alias}' and '{prefix}{name}' are the same key: give one")
            renamed[name] = renamed.pop(alias)
    return renamed


def _validate_section(values: Any, section: Section, prefix: str, root: Section, problems: list[str],
                      unused: list[str]) -> dict | None:
    where = prefix[:-1]
    if values is None:
        if section.nullable:
            return None
        values = {}
    if not isinstance(values, Mapping):
        problems.append(f"'{where}' must be a mapping of keys, got {format_value(values)} ({_kind_of(values)})")
        return None
    values = _resolve_aliases(values, section, prefix, problems)
    known = dict(section.entries())
    for key in values:
        if key not in known:
            problems.append(f"unknown key '{prefix}{key}'{_suggestion(str(key), section, prefix, root)}")
        elif isinstance(known[key], Ignored):
            unused.append(f"{prefix}{key}")
    result: dict[str, Any] = {}
    before = len(problems)
    for name, entry in known.items():
        path = f"{prefix}{name}"
        if isinstance(entry, Ignored):
            continue
        if isinstance(entry, Section):
            result[name] = _validate_section(values.get(name), entry, path + ".", root, problems, unused)
        elif name not in values:
            if entry.default is not REQUIRED:
                result[name] = copy.deepcopy(entry.default)
            elif not any(old in values and new == name for old, new in (section.former or {}).items()):
                problems.append(f"'{path}' is required")  # (under its former name: that key's message names it)
        else:
            result[name] = _validate_field(values[name], entry, path, problems)
    if section.check is not None and len(problems) == before:
        try:
            section.check(result)
        except ValueError as error:
            problems.append(f"'{where}': {error}" if where else str(error))
    return result


def validate_config(values: Mapping[str, Any] | None, schema: Section | Mapping, source: str = "config") -> dict:
    """``values`` checked against ``schema``, with every default filled in (a new dict).

    Raises :class:`ConfigError` listing every problem; ``source`` (e.g. the file name) starts the message.
    Keys the schema marks :class:`Ignored` are left out of the result and listed in one
    :class:`UnusedKeysWarning`."""
    root = as_section(schema)
    problems: list[str] = []
    unused: list[str] = []
    result = _validate_section(values, root, "", root, problems, unused)
    if problems:
        heading = f"{source}: " if len(problems) == 1 else f"{source}: {len(problems)} problems:\n  "
        raise ConfigError(heading + "\n  ".join(problems))
    if unused:
        warnings.warn(f"{source}: keys not used by this project (ignored): {', '.join(unused)}",
                      UnusedKeysWarning, stacklevel=2)
    return result


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict:
    """``base`` with ``override`` merged in, recursively (mappings merge, anything else is replaced;
    keys only in ``override`` are added): a variant of a config written as its differences. A new
    dict; validate the result against the schema."""
    merged = copy.deepcopy(dict(base))
    for key, value in (override or {}).items():
        merged[key] = (merge_config(merged[key], value) if isinstance(value, Mapping)
                       and isinstance(merged.get(key), Mapping) else copy.deepcopy(value))
    return merged


def read_config_file(path: str | Path) -> dict:
    """The mapping a YAML config file holds (``{}`` for an empty file), unvalidated: the one reader of
    every config kind. :class:`ConfigError` (naming the file) when it is missing, unreadable, not YAML
    or not a mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path} must be a mapping of keys, got {_kind_of(values)}")
    return dict(values)


def migrate_config(values: Any, schema: Section | Mapping, prefix: str = "") -> tuple[Any, list[str]]:
    """A run's saved config written before keys were renamed (``Section.former``), with every earlier
    name replaced by its name now (a new, unvalidated mapping), and the renames made
    (``["seed -> manual_seed", ...]``, dotted). A key given under both names is left as it is
    (validation then reports the earlier one). Only for a run's own saved config: a config a user
    gives is refused with the new name (module docstring)."""
    section = as_section(schema)
    if not isinstance(values, Mapping):
        return values, []
    result, done = dict(values), []
    for old, new in (section.former or {}).items():
        if old in result and new not in result:
            result = {new if key == old else key: value for key, value in result.items()}
            done.append(f"{prefix}{old} -> {prefix}{new}")
    for name, entry in section.entries():
        if isinstance(entry, Section) and isinstance(result.get(name), Mapping):
            result[name], nested = migrate_config(result[name], entry, f"{prefix}{name}.")
            done += nested
    return result, done


def validate_saved_config(values: Mapping[str, Any] | None, schema: Section | Mapping, source: str) -> dict:
    """A run's own saved config (its ``config.yaml``, a training checkpoint's config) migrated
    (:func:`migrate_config`) and validated (:func:`validate_config`)."""
    migrated, _ = migrate_config(values, schema)
    return validate_config(migrated, schema, source=source)


def load_config(path: str | Path, schema: Section | Mapping) -> dict:
    """Read the YAML file ``path`` (:func:`read_config_file`) and :func:`validate_config` it (errors name the file)."""
    return validate_config(read_config_file(path), schema, source=str(path))


def _leaves(values: Any, section: Section, prefix: str, internal: bool) -> Iterator[tuple[str, Any]]:
    values = values or {}
    for name, entry in section.entries():
        path = f"{prefix}{name}"
        if isinstance(entry, Ignored):
            continue
        if isinstance(entry, Section):
            if values.get(name) is None and entry.nullable:
                yield path, values.get(name)
            else:
                yield from _leaves(values.get(name), entry, path + ".", internal)
        elif internal or not entry.internal:
            yield path, values.get(name)


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], schema: Section | Mapping
                       ) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old value, new value)}`` for every schema value that differs between two
    validated configs, internal fields left out."""
    root = as_section(schema)
    before = dict(_leaves(old, root, "", internal=False))
    return {path: (before[path], value) for path, value in _leaves(new, root, "", internal=False)
            if before[path] != value}


def apply_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any], schema: Section | Mapping,
                    source: str = "command line") -> dict:
    """``config`` with dotted-key values replaced (``{"train.total_iter": 4}``), validated again."""
    updated = copy.deepcopy(dict(config))
    known = set(_all_paths(as_section(schema)))
    former = _former_paths(as_section(schema))
    for key, value in overrides.items():
        if key in former:
            raise ConfigError(f"{source}: unknown key '{key}' (renamed: use '{former[key]}')")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            raise ConfigError(f"{source}: unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        *parents, leaf = key.split(".")
        target = updated
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return validate_config(updated, schema, source=source)


def copy_internal_values(target: Mapping[str, Any], source: Mapping[str, Any], schema: Section | Mapping) -> dict:
    """``target`` with the internal fields (a run's history) taken from ``source``."""
    result = copy.deepcopy(dict(target))
    internal = {path for path, _ in _leaves(source, as_section(schema), "", internal=True)} - {
        path for path, _ in _leaves(source, as_section(schema), "", internal=False)}
    for path in internal:
        *parents, leaf = path.split(".")
        value, holder = source, result
        for parent in parents:
            value, holder = (value or {}).get(parent), holder.setdefault(parent, {})
        holder[leaf] = copy.deepcopy((value or {}).get(leaf))
    return result
