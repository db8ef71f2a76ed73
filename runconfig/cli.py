"""Command lines generated from config dataclasses (:func:`add_arguments`) and parsed into a
validated config (:func:`parse`), with ``--config FILE``: the file's values are defaults, the
flags given on the command line win."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import io
import re
import sys
import tokenize
import types
import typing
from collections.abc import Sequence
from typing import Annotated, Literal

from runconfig.schema import ConfigError, Source, from_dict
from runconfig.yamlfile import load_yaml

CONFIG_HELP = "YAML of these options (e.g. a run's saved config.yaml): its values are defaults, flags win"


def field_comments(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field line of ``cls`` (its help text; comments are
    read with tokenize, so a '#' inside a string default is not one)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    tokens = tokenize.generate_tokens(io.StringIO(src).readline)
    comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}
    lines = src.splitlines()
    head = next(i for i, s in enumerate(lines) if s.lstrip().startswith("class "))
    body = next((len(s) - len(s.lstrip()) for s in lines[head + 1:] if s.strip()), 4)
    out = {}
    for i, line in enumerate(lines, 1):
        m = re.match(rf"^ {{{body}}}(\w+)\s*:", line)
        if m and i in comments:
            out[m.group(1)] = comments[i].replace("%", "%%")  # argparse expands %(...)s in help
    return out


def _unwrap(tp) -> tuple[object, bool]:
    """-> (type without ``Annotated`` and ``| None``, whether None was allowed)."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])[0], True
    return tp, False


def _value_kwargs(name: str, tp) -> dict:
    """argparse ``type``/``choices`` for one value of type ``tp``."""
    if typing.get_origin(tp) is Literal:
        values = typing.get_args(tp)
        return {"type": type(values[0]), "choices": list(values)}
    if tp in (int, float, str):
        return {"type": tp}
    raise TypeError(f"runconfig: field {name!r} of type {tp!r} has no command-line form; skip it")


def _flag_kwargs(name: str, tp) -> dict:
    tp, _ = _unwrap(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(tp) is list:
        return {**_value_kwargs(name, _unwrap(typing.get_args(tp)[0])[0]), "nargs": "+"}
    return _value_kwargs(name, tp)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, only: Sequence[str] | None = None,
                  skip: Sequence[str] = (), flags: dict[str, dict] | None = None,
                  overrides_only: bool = False, config_file: bool = True) -> None:
    """One flag per field of config dataclass ``cls``: ``--field-name``; bool -> ``--x/--no-x``,
    ``Literal`` -> choices, ``X | None`` -> X, ``list[X]`` -> one or more X; a field without a
    default is required; help: the field's trailing comment.

    only / skip: the fields to expose (default: all). flags: per field, argparse keywords that
    replace the generated ones, plus ``names`` (its option strings) or ``positional=True``.
    overrides_only: every default None, so a flag overrides only when given (the help still
    names the field's default). config_file: also ``--config FILE`` (see :func:`parse`)."""
    flags = flags or {}
    helps = field_comments(cls)
    types_ = {name: info.annotation for name, info in cls.__pydantic_fields__.items()}
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        kw = _flag_kwargs(f.name, types_[f.name])
        default = _default(f)
        if default is dataclasses.MISSING:
            kw["required"] = True
        elif overrides_only:
            kw["default"] = None
            kw["help"] = f"{helps.get(f.name, '')} (default: {default})".strip()
        else:
            kw["default"] = default
        if f.name in helps and "help" not in kw:
            kw["help"] = helps[f.name]
        kw.update(flags.get(f.name, {}))
        if kw.pop("positional", False):
            kw.pop("required", None)
            parser.add_argument(f.name, **kw)
        else:
            names = kw.pop("names", None) or ["--" + f.name.replace("_", "-")]
            parser.add_argument(*names, dest=f.name, **kw)
    if config_file:
        parser.add_argument("--config", metavar="FILE.yaml", help=CONFIG_HELP)


def explicit_dests(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Destinations of the options actually given in ``argv`` (not their defaults), found by
    parsing again with every default suppressed."""
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    return set(vars(quiet.parse_args(argv)))


def parse(parser: argparse.ArgumentParser, cls: type, argv: Sequence[str] | None = None
          ) -> tuple[object, argparse.Namespace, set[str]]:
    """``argv`` -> (a validated ``cls``, the namespace (for flags that are not fields), the fields
    set explicitly: by a flag or by the ``--config`` file, e.g. what a recipe must not override).

    Values: each field's default, then the keys of ``--config FILE`` (an unknown key or a wrong
    type there is a ConfigError naming FILE:LINE), then the flags given. Raises ConfigError."""
    argv = sys.argv[1:] if argv is None else list(argv)
    file_values: dict = {}
    src = Source("command line")
    if "--config" in parser._option_string_actions:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config")
        path = pre.parse_known_args(argv)[0].config
        if path:
            data, src = load_yaml(path)
            file_values = data if data is not None else {}
            if not isinstance(file_values, dict):
                raise ConfigError(f"{path}: top level must be a mapping of options")
            src.rest = "command line"
    p = copy.deepcopy(parser)
    for action in p._actions:
        if action.dest in file_values and action.option_strings:
            action.required = False  # the file gives it
    ns = p.parse_args(argv)
    given = explicit_dests(p, argv)
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)}
    values.update({k: v for k, v in file_values.items() if k not in given})
    return from_dict(cls, values, src), ns, (given | set(file_values)) - {"config"}
