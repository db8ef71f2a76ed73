"""Curation config: which datasets to read and how to turn them into shards.

A config is YAML (see ``sharder/registry/openus46.yaml`` for the full OpenUS-46 list); every
field has a default so ``usf-shard build DIR... --out OUT`` works with none. The dataclasses are
:mod:`runconfig` configs: types, ranges, allowed values and unknown keys are checked when a file is
loaded (each error names the file, line and key), the cross-field rules in :func:`validate`; all
before any work starts: a bad config is a clear error, never a half-written output.
"""
from __future__ import annotations

import re
import typing
from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from runconfig import ConfigError, Source, config, from_dict, load_yaml

from .curate import COLOUR_POLICIES, CROP_MODES

Format = Literal["auto", "image", "dicom", "volume", "video"]
FORMATS = typing.get_args(Format)
GroupRuleName = Literal["auto", "parent", "file", "dicom", "regex", "csv"]
GROUP_RULES = typing.get_args(GroupRuleName)
# sharder/textgate.py's policies (named here: the config must not import onnxruntime)
TextPolicy = Literal["reject", "clean", "off"]
Positive = Annotated[int, Field(ge=1)]


@config
class GroupRule:
    """How frames are grouped into patients/studies (the unit of the train/val split).

    auto: DICOM study/patient id when the file has one, else the parent directory.
    parent: the input's parent directory (relative to the dataset root).
    file: each input file is its own group.
    dicom: StudyInstanceUID / PatientID from the file (falls back to file).
    regex: first capture group of ``pattern`` searched in the relative path.
    csv: ``csv`` maps the relative path (column ``path_column``) to ``group_column``.
    """

    rule: GroupRuleName = "auto"
    pattern: str | None = None
    csv: str | None = None
    path_column: str = "path"
    group_column: str = "group"


@config
class DatasetSpec:
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$")]  # letters, digits, '_', '-', '.'
    root: str | None = None
    globs: list[str] = field(default_factory=lambda: ["**/*"])
    format: Format = "auto"
    anatomy: str = "unknown"
    licence: str | None = None
    source: str | None = None  # where a user downloads it (documentation only)
    reader: str | None = None  # which reader it needs (documentation only)
    holdout: bool = False  # downstream evaluation set: never in pretraining shards
    group: GroupRule = field(default_factory=GroupRule)  # YAML shorthand: `group: parent` for {rule: parent}
    frame_stride: Positive = 1
    max_frames: int | None = None
    volume_axes: Annotated[list[Literal[0, 1, 2]], Field(min_length=1)] = field(default_factory=lambda: [2])
    slice_stride: Positive = 1
    crop_mode: Literal[CROP_MODES] = "auto"  # sharder.curate.CROP_MODES
    colour_policy: Literal[COLOUR_POLICIES] = "luma"  # sharder.curate.COLOUR_POLICIES
    deannotate: bool = False
    deannotate_reason: str | None = None  # why de-annotation is on/off for this set (documentation)
    # text gate (sharder/textgate.py) on written frames: "reject" a frame with text in it
    # (reason text_found), "clean" it (text boxes inpainted, op text:inpaint), "off", or None:
    # the build's text_policy
    text_policy: TextPolicy | None = None


@config
class BuildConfig:
    datasets: list[DatasetSpec] = field(default_factory=list)
    seed: int = 0  # split and shuffle seed
    salt: str = "usf-mae-default-salt"  # set a private salt per site: ids become unlinkable
    codec: Literal["jpg", "png", "zst"] = "jpg"  # shard image codec
    jpeg_quality: int = 95  # codec jpg
    short_side: Annotated[int, Field(ge=16)] = 256  # frames are resized to this short side
    min_side: Positive = 64  # smaller scan regions are rejected (too_small)
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05  # of the groups, per dataset
    shard_max_samples: Positive = 2000  # samples per tar
    shard_max_bytes: int = 256 * 2**20  # bytes per tar
    dedup_exact: bool = True  # drop pixel-identical frames
    dedup_near: bool = True  # drop near-duplicates (pHash Hamming distance <= near_max_dist)
    near_max_dist: Annotated[int, Field(ge=0, le=16)] = 4  # measured: see sharder/dedup.py (false-match rate)
    holdout_leak_max_dist: int = 4  # same false-match trade-off as near_max_dist
    max_pixels: int = 64_000_000  # frames with more pixels are rejected
    max_input_bytes: int = 4 * 2**30  # larger input files are rejected
    strict: bool = False  # a missing dataset root is fatal instead of skipped
    # text gate sampling within one cine/video/volume: besides first/middle/last, frames whose
    # crop box changed, and every frame after one with text, every n-th frame is checked
    text_check_every: Positive = 16  # text gate: every n-th frame of a cine/volume (and see above)
    # the text gate's policy for datasets that set none: a frame in which the offline detector
    # reads text is rejected (reason text_found) unless a dataset asks for "clean" (inpaint the
    # boxes) or, knowingly, "off". Phantom builds opt out explicitly (tests/conftest.py,
    # launch/demo.sh): the phantom burns typed labels into its scan regions on purpose.
    text_policy: TextPolicy = "reject"  # frames with text: reject, clean (inpaint) or off

    def resolved(self) -> dict:
        """The config as written into the manifest: roots are dropped (they are local paths that
        may carry names); everything else is kept so a build can be reproduced."""
        d = asdict(self)
        for ds in d["datasets"]:
            ds["root"] = None
            if ds["group"].get("csv"):
                ds["group"]["csv"] = Path(ds["group"]["csv"]).name
        return d


def validate(cfg: BuildConfig, src: Source | None = None) -> BuildConfig:
    """The checks that span fields (types, ranges and allowed values are checked by the
    dataclasses themselves): group rules and their arguments, unique dataset names."""
    src = src or Source()
    problems = []
    names = set()
    for i, ds in enumerate(cfg.datasets):
        at = ("datasets", i)
        if ds.name in names:
            problems.append(f"{src.where((*at, 'name'))}: duplicate dataset name {ds.name!r}")
        names.add(ds.name)
        g = ds.group
        if g.rule == "regex":
            if not g.pattern:
                problems.append(f"{src.where((*at, 'group'))}: rule regex needs group.pattern")
            else:
                try:
                    if re.compile(g.pattern).groups < 1:
                        problems.append(f"{src.where((*at, 'group', 'pattern'))}: {g.pattern!r} needs one "
                                        "capture group (the patient/study id)")
                except re.error as e:
                    problems.append(f"{src.where((*at, 'group', 'pattern'))}: does not compile: {e}")
        if g.rule == "csv" and not g.csv:
            problems.append(f"{src.where((*at, 'group'))}: rule csv needs group.csv")
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> BuildConfig:
    """Reads a YAML config (or none) and applies ``overrides`` (CLI flags; None: not given).
    Raises ConfigError, naming the file, line and key of each problem, before any work."""
    data, src = ({}, Source("config")) if path is None else load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    data = dict(data)
    if data.get("datasets") is None:
        data.pop("datasets", None)
    for d in data.get("datasets") or []:
        if isinstance(d, dict) and isinstance(d.get("group"), str):  # shorthand `group: parent`
            d["group"] = {"rule": d["group"]}
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    src.lines = {loc: n for loc, n in src.lines.items() if loc[0] not in flags}
    src.rest = "command line"
    cfg = from_dict(BuildConfig, {**data, **flags}, src)
    if path is not None:  # relative roots are relative to the config file
        base = Path(path).resolve().parent
        for ds in cfg.datasets:
            if ds.root and not Path(ds.root).expanduser().is_absolute():
                ds.root = str(base / ds.root)
            if ds.group.csv and not Path(ds.group.csv).is_absolute():
                ds.group.csv = str(base / ds.group.csv)
    return validate(cfg, src)


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
