"""Curation config: which datasets to read and how to turn them into shards.

A config is YAML (see ``sharder/registry/openus46.yaml`` for the full OpenUS-46 list); every
field has a default so ``usf-shard build DIR... --out OUT`` works with none. Validation happens
here, before any work starts: a bad config is a clear error, never a half-written output.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

FORMATS = ("auto", "image", "dicom", "volume", "video")
CODECS = ("jpg", "png", "zst")
GROUP_RULES = ("auto", "parent", "file", "dicom", "regex", "csv")
TEXT_POLICIES = ("reject", "clean", "off")  # sharder/textgate.py (kept here: no onnxruntime import)


class ConfigError(ValueError):
    """The config cannot be used; the message says which key and why."""


@dataclass
class GroupRule:
    """How frames are grouped into patients/studies (the unit of the train/val split).

    auto: DICOM study/patient id when the file has one, else the parent directory.
    parent: the input's parent directory (relative to the dataset root).
    file: each input file is its own group.
    dicom: StudyInstanceUID / PatientID from the file (falls back to file).
    regex: first capture group of ``pattern`` searched in the relative path.
    csv: ``csv`` maps the relative path (column ``path_column``) to ``group_column``.
    """

    rule: str = "auto"
    pattern: str | None = None
    csv: str | None = None
    path_column: str = "path"
    group_column: str = "group"


@dataclass
class DatasetSpec:
    name: str
    root: str | None = None
    globs: list[str] = field(default_factory=lambda: ["**/*"])
    format: str = "auto"
    anatomy: str = "unknown"
    licence: str | None = None
    source: str | None = None  # where a user downloads it (documentation only)
    reader: str | None = None  # which reader it needs (documentation only)
    holdout: bool = False  # downstream evaluation set: never in pretraining shards
    group: GroupRule = field(default_factory=GroupRule)
    frame_stride: int = 1
    max_frames: int | None = None
    volume_axes: list[int] = field(default_factory=lambda: [2])
    slice_stride: int = 1
    crop_mode: str = "auto"
    colour_policy: str = "luma"
    deannotate: bool = False
    deannotate_reason: str | None = None  # why de-annotation is on/off for this set (documentation)
    # text gate (sharder/textgate.py) on written frames: "reject" a frame with text in it
    # (reason text_found), "clean" it (text boxes inpainted, op text:inpaint), "off", or None:
    # the build's text_policy
    text_policy: str | None = None


@dataclass
class BuildConfig:
    datasets: list[DatasetSpec] = field(default_factory=list)
    seed: int = 0
    salt: str = "usf-mae-default-salt"  # set a private salt per site: ids become unlinkable
    codec: str = "jpg"
    jpeg_quality: int = 95
    short_side: int = 256
    min_side: int = 64
    val_fraction: float = 0.05
    shard_max_samples: int = 2000
    shard_max_bytes: int = 256 * 2**20
    dedup_exact: bool = True
    dedup_near: bool = True
    near_max_dist: int = 4  # measured: see sharder/dedup.py (false-match rate vs threshold)
    holdout_leak_max_dist: int = 4  # same false-match trade-off as near_max_dist
    max_pixels: int = 64_000_000
    max_input_bytes: int = 4 * 2**30
    strict: bool = False  # a missing dataset root is fatal instead of skipped
    # text gate sampling within one cine/video/volume: besides first/middle/last, frames whose
    # crop box changed, and every frame after one with text, every n-th frame is checked
    text_check_every: int = 16
    # the text gate's policy for datasets that set none: a frame in which the offline detector
    # reads text is rejected (reason text_found) unless a dataset asks for "clean" (inpaint the
    # boxes) or, knowingly, "off". Phantom builds opt out explicitly (tests/conftest.py,
    # launch/demo.sh): the phantom burns typed labels into its scan regions on purpose.
    text_policy: str = "reject"

    def resolved(self) -> dict:
        """The config as written into the manifest: roots are dropped (they are local paths that
        may carry names); everything else is kept so a build can be reproduced."""
        d = asdict(self)
        for ds in d["datasets"]:
            ds["root"] = None
            if ds["group"].get("csv"):
                ds["group"]["csv"] = Path(ds["group"]["csv"]).name
        return d


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**data)


def _dataset_from_dict(d: dict, i: int) -> DatasetSpec:
    where = f"datasets[{i}]"
    d = dict(d)
    g = d.pop("group", None)
    if isinstance(g, str):
        g = {"rule": g}
    spec = _build(DatasetSpec, d, where)
    spec.group = _build(GroupRule, g or {}, f"{where}.group")
    return spec


def validate(cfg: BuildConfig) -> BuildConfig:
    if cfg.codec not in CODECS:
        raise ConfigError(f"codec: {cfg.codec!r} is not one of {CODECS}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ConfigError(f"val_fraction: {cfg.val_fraction} must be in [0, 1)")
    if cfg.short_side < 16 or cfg.min_side < 1:
        raise ConfigError("short_side must be >= 16 and min_side >= 1")
    if not 0 <= cfg.near_max_dist <= 16:
        raise ConfigError("near_max_dist must be in 0..16")
    if cfg.text_policy not in TEXT_POLICIES:
        raise ConfigError(f"text_policy: {cfg.text_policy!r} is not one of {TEXT_POLICIES}")
    if cfg.text_check_every < 1:
        raise ConfigError("text_check_every must be >= 1")
    if cfg.shard_max_samples < 1:
        raise ConfigError("shard_max_samples must be >= 1")
    names = set()
    for i, ds in enumerate(cfg.datasets):
        where = f"datasets[{i}] ({ds.name})"
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", ds.name or ""):
            raise ConfigError(f"{where}: name must be letters, digits, '_', '-', '.'")
        if ds.name in names:
            raise ConfigError(f"{where}: duplicate dataset name")
        names.add(ds.name)
        if ds.format not in FORMATS:
            raise ConfigError(f"{where}: format {ds.format!r} is not one of {FORMATS}")
        if ds.group.rule not in GROUP_RULES:
            raise ConfigError(f"{where}: group.rule {ds.group.rule!r} is not one of {GROUP_RULES}")
        if ds.group.rule == "regex":
            if not ds.group.pattern:
                raise ConfigError(f"{where}: group.rule regex needs group.pattern")
            try:
                if re.compile(ds.group.pattern).groups < 1:
                    raise ConfigError(f"{where}: group.pattern needs one capture group")
            except re.error as e:
                raise ConfigError(f"{where}: group.pattern does not compile: {e}") from None
        if ds.group.rule == "csv" and not ds.group.csv:
            raise ConfigError(f"{where}: group.rule csv needs group.csv")
        if ds.text_policy is not None and ds.text_policy not in TEXT_POLICIES:
            raise ConfigError(f"{where}: text_policy {ds.text_policy!r} is not one of {TEXT_POLICIES}")
        if ds.frame_stride < 1 or ds.slice_stride < 1:
            raise ConfigError(f"{where}: frame_stride and slice_stride must be >= 1")
        if any(a not in (0, 1, 2) for a in ds.volume_axes) or not ds.volume_axes:
            raise ConfigError(f"{where}: volume_axes must be a non-empty subset of [0, 1, 2]")
    return cfg


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> BuildConfig:
    """Reads a YAML config (or none) and applies ``overrides`` (CLI flags). Raises ConfigError."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    data = dict(data)
    datasets = data.pop("datasets", []) or []
    if not isinstance(datasets, list):
        raise ConfigError("datasets: must be a list")
    cfg = _build(BuildConfig, data, str(path or "config"))
    cfg.datasets = [_dataset_from_dict(d, i) for i, d in enumerate(datasets)]
    for k, v in (overrides or {}).items():
        if v is not None:
            setattr(cfg, k, v)
    if path is not None:  # relative roots are relative to the config file
        base = Path(path).resolve().parent
        for ds in cfg.datasets:
            if ds.root and not Path(ds.root).expanduser().is_absolute():
                ds.root = str(base / ds.root)
            if ds.group.csv and not Path(ds.group.csv).is_absolute():
                ds.group.csv = str(base / ds.group.csv)
    return validate(cfg)


ANATOMY_WORDS = ("breast", "thyroid", "cardiac", "echo", "liver", "kidney", "fetal", "ovary", "lung",
                 "prostate", "muscle", "nerve", "carotid", "abdomen", "gist", "bladder", "spleen")


def guess_anatomy(name: str) -> str:
    """Quick mode: an anatomy word in the dataset's folder name ('breast_png' -> breast)."""
    low = name.lower()
    for w in ANATOMY_WORDS:
        if w in low:
            return {"echo": "cardiac"}.get(w, w)
    return "unknown"


def quick_datasets(dirs: list[str | Path], holdout: tuple[str, ...] = ()) -> list[DatasetSpec]:
    """Quick mode: each top-level folder of each input dir is a dataset, formats detected by
    content, anatomy guessed from the folder name, names listed in ``holdout`` marked held out.
    A dir holding files directly becomes one dataset named after its position, not its name
    (folder names may carry patient names)."""
    specs: list[DatasetSpec] = []
    for j, d in enumerate(dirs):
        d = Path(d)
        subdirs = sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
        has_files = d.is_dir() and any(p.is_file() for p in d.iterdir())
        if subdirs and not has_files:
            for s in subdirs:
                name = _safe_name(s.name, f"ds{j}")
                specs.append(DatasetSpec(name=name, root=str(s), anatomy=guess_anatomy(name),
                                         holdout=name in holdout))
        else:
            specs.append(DatasetSpec(name=f"input{j}", root=str(d)))
    seen: dict[str, int] = {}
    for s in specs:  # keep names unique
        n = seen.get(s.name, 0)
        seen[s.name] = n + 1
        if n:
            s.name = f"{s.name}_{n}"
    return specs


def _safe_name(name: str, fallback: str) -> str:
    """Quick-mode dataset names come from top-level folder names (e.g. 'breast_png'); anything
    that is not a plain identifier is replaced by a neutral name."""
    return name if re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name) else fallback
