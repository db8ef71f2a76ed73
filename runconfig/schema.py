"""Declaring a config (:func:`config`) and validating plain values against it (:func:`from_dict`),
every problem turned into one readable line of a :class:`ConfigError`."""
from __future__ import annotations

import dataclasses
import functools
import json
import typing
from dataclasses import field

import pydantic
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass as pydantic_dataclass

# strict: no coercion ("false" is not a bool, "2" not an int; an int is a valid float);
# extra="forbid": an unknown key is an error; validate_assignment: cfg.x = v is checked too
STRICT = ConfigDict(strict=True, extra="forbid", validate_assignment=True)


def config(cls: type) -> type:
    """Class decorator: ``cls`` as a strict pydantic dataclass (still a dataclass: ``fields``,
    ``asdict`` and ``replace`` work). Use ``Literal[...]`` for every enum-like field.

    Constructing or assigning a bad value from Python raises :class:`ConfigError` too
    (``FinetuneConfig: balanced: Input should be 'none', 'loss' or 'sampler' (got 'weights')``)."""
    dc = pydantic_dataclass(cls, config=STRICT)
    init, setattr_ = dc.__init__, dc.__setattr__

    def __init__(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except pydantic.ValidationError as e:
            raise explain(e, dc, Source(dc.__name__)) from None

    def __setattr__(self, name, value):
        try:
            setattr_(self, name, value)
        except pydantic.ValidationError as e:
            raise explain(e, dc, Source(dc.__name__)) from None

    dc.__init__, dc.__setattr__ = functools.wraps(init)(__init__), __setattr__
    return dc


class ConfigError(ValueError):
    """A config cannot be used. One line per problem, each naming the key path and, when the
    value came from a file, the file and line: ``run.yaml:12: datasets[3].holdout: ...``."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclasses.dataclass
class Source:
    """Where values came from: ``name`` (a file) and the line of each key path in it (from
    :func:`runconfig.load_yaml`); keys without a recorded line are reported under ``rest``."""

    name: str = "config"
    lines: dict[tuple, int] = field(default_factory=dict)
    rest: str | None = None  # e.g. "command line" when flags were merged over the file

    def where(self, loc: tuple) -> str:
        """``FILE:LINE: a[1].b`` for key path ``loc`` (the line of its nearest recorded ancestor)."""
        path = key_path(loc)
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.lines:
                return f"{self.name}:{self.lines[loc[:n]]}: {path}"
        name = self.rest or self.name
        return f"{name}: {path}" if path else name


def key_path(loc: tuple) -> str:
    """('datasets', 3, 'holdout') -> 'datasets[3].holdout'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def from_dict(cls: type, data: object, source: Source | None = None):
    """Plain values (as YAML, JSON or argparse give them) -> a validated ``cls``.

    Raises :class:`ConfigError` listing every problem. Validated in pydantic's JSON mode: in
    strict Python mode pydantic wants *instances* for nested dataclasses (``datasets: [{...}]``
    would fail), in JSON mode it takes mappings; scalars are strict in both."""
    src = source or Source()
    if not isinstance(data, dict):
        raise ConfigError(f"{src.name}: expected a mapping of keys, got {type(data).__name__}")
    try:
        return pydantic.TypeAdapter(cls).validate_json(json.dumps(data, default=str))
    except pydantic.ValidationError as e:
        raise explain(e, cls, src) from None


def explain(err: pydantic.ValidationError, cls: type, source: Source | None = None) -> ConfigError:
    """pydantic's errors -> one ConfigError line per problem: where, what was expected, what was
    given (Literal errors list the allowed values)."""
    src = source or Source()
    problems = []
    for e in err.errors():
        loc, kind = tuple(e["loc"]), e["type"]
        if kind == "unexpected_keyword_argument":
            msg = f"unknown key; known: {', '.join(_known_keys(cls, loc[:-1]))}"
        elif kind in ("missing", "missing_argument"):
            msg = "required key missing"
        else:
            msg = f"{e['msg']} (got {e['input']!r})"
        problems.append(f"{src.where(loc)}: {msg}")
    return ConfigError(problems)


def _dataclass_in(tp) -> type | None:
    """The dataclass inside a type (``list[D]``, ``D | None``, ``D``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


def _known_keys(cls: type, loc: tuple) -> list[str]:
    """The field names of the dataclass at key path ``loc`` below ``cls``."""
    tp: type | None = cls
    for part in loc:
        if isinstance(part, str):
            info = getattr(tp, "__pydantic_fields__", {}).get(part)
            tp = _dataclass_in(info.annotation) if info is not None else None
            if tp is None:
                return []
    return [f.name for f in dataclasses.fields(tp)]
