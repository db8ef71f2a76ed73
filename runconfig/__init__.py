"""One config mechanism for every command line and config file of the project.

A config is a dataclass declared with :func:`config` (a pydantic v2 dataclass): its fields, types
and defaults are the only place an option is written. From it come

- validation before any work (:func:`from_dict`): strict types (``holdout: "false"`` is not a
  boolean, ``frame_stride: "2"`` is not an integer), unknown keys and unknown ``Literal`` values
  are errors, each one a line of a :class:`ConfigError` naming the key path, the file and line
  (``FILE:LINE: datasets[3].holdout: Input should be a valid boolean (got 'false')``);
- YAML files with line numbers (:func:`load_yaml`) and saved configs that replay
  (:func:`save_yaml`, then ``--config run.yaml``);
- command lines (:func:`add_arguments`, :func:`parse`): one flag per field, ``--config FILE``
  whose values are defaults that flags override.

Why pydantic v2: it is already in the venv (DeepSpeed depends on it: no new wheel); it validates
strict types, unknown keys (``extra="forbid"``) and enum values (``Literal``) and reports each
error with its location as a key path, which maps onto YAML lines; and pydantic dataclasses stay
dataclasses (``dataclasses.fields/asdict/replace`` work), so the configs keep the house style and
``BuildConfig.resolved()`` (written into the shard manifest) is unchanged. tyro and jsonargparse
would each be a new dependency and neither validates a YAML file with line numbers out of the box.

This package needs no torch: the sharder (CPU-only data-preparation boxes) imports it.
"""
from runconfig.cli import add_arguments, explicit_dests, parse
from runconfig.schema import ConfigError, Source, config, from_dict
from runconfig.yamlfile import load_yaml, save_yaml

__all__ = ["ConfigError", "Source", "add_arguments", "config", "explicit_dests", "from_dict", "load_yaml",
           "parse", "save_yaml"]
