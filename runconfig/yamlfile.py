"""YAML config files: loaded with the line of every key (for error messages), saved so that
``--config`` replays them."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from runconfig.schema import ConfigError, Source


def load_yaml(path: str | Path) -> tuple[object, Source]:
    """-> (the file's data, its :class:`Source`: the 1-based line of each key path, e.g.
    ``("datasets", 3, "holdout")``). Raises ConfigError for a missing file or invalid YAML."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    # one parse: compose the node tree (which carries the marks), then construct from it
    loader = yaml.SafeLoader(p.read_text())
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    finally:
        loader.dispose()
    lines: dict[tuple, int] = {}
    if node is not None:
        _record_lines(node, (), lines)
    return data, Source(str(p), lines)


def _record_lines(node: yaml.Node, path: tuple, lines: dict[tuple, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                here = (*path, key.value)
                lines[here] = key.start_mark.line + 1
                _record_lines(value, here, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _record_lines(item, (*path, i), lines)


def save_yaml(cfg, path: str | Path) -> Path:
    """Writes config dataclass ``cfg`` as YAML; ``--config PATH`` gives back an equal config."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
    p.write_text(f"# {type(cfg).__name__}, resolved; replay: --config {p.name}\n{text}")
    return p
