"""runconfig: the one config mechanism. Sharder YAML errors name the key, the file and the line
(issue 14's three: a string "false" for a bool, a string "2" for an int, an unknown crop_mode);
unknown keys and enum values; command-line types; a saved config replays (--config) to an equal
config for the trainer and the fine-tune CLI. Fast: no build, no training."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Literal

import pytest

from finetune.config import FinetuneConfig, config_from_args
from runconfig import ConfigError, add_arguments, config, load_yaml, parse, save_yaml
from sharder.cli import main as usf_shard
from sharder.config import BuildConfig, load_config
from trainer.config import TrainConfig, parse_args

DATASETS = """\
seed: 1
datasets:
  - name: a
    root: x
  - name: b
    root: y
{extra}
"""


def _sharder_yaml(tmp_path, extra: str):
    p = tmp_path / "curation.yaml"
    p.write_text(DATASETS.format(extra=extra))
    return p


# issue 14's three: "false" was truthy (the set silently left pretraining), "2" a raw TypeError,
# an unknown crop_mode failed later inside the extract workers
@pytest.mark.parametrize("extra,line,key,expected", [
    ("    holdout: \"false\"", 8, "holdout", "Input should be a valid boolean (got 'false')"),
    ("    frame_stride: \"2\"", 8, "frame_stride", "Input should be a valid integer (got '2')"),
    ("    root: z\n    crop_mode: fancy", 9, "crop_mode", "Input should be 'auto' or 'none' (got 'fancy')"),
], ids=["holdout_string_false", "frame_stride_string", "unknown_crop_mode"])
def test_sharder_yaml_error_names_file_line_and_key(tmp_path, extra, line, key, expected):
    p = _sharder_yaml(tmp_path, f"  - name: c\n{extra}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.problems == [f"{p}:{line}: datasets[2].{key}: {expected}"]


def test_unknown_keys_and_values_are_all_reported_with_lines(tmp_path):
    p = _sharder_yaml(tmp_path, "  - name: c\n    colour: blue\n    format: tiff\ncodec: gif\nshards: 3\n")
    problems = sorted(load_config_problems(p), key=lambda s: int(s.split(":")[1]))  # by line
    assert problems[0].startswith(f"{p}:8: datasets[2].colour: unknown key; known: name, root, globs")
    assert problems[1] == (f"{p}:9: datasets[2].format: Input should be 'auto', 'image', 'dicom', "
                           "'volume' or 'video' (got 'tiff')")
    assert problems[2] == f"{p}:10: codec: Input should be 'jpg', 'png' or 'zst' (got 'gif')"
    assert problems[3].startswith(f"{p}:11: shards: unknown key")
    assert len(problems) == 4


def load_config_problems(path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return e.value.problems


def test_cross_field_rule_names_file_and_line(tmp_path):
    p = _sharder_yaml(tmp_path, "  - name: a\n    group: {rule: regex, pattern: 'no_group'}\n")
    problems = load_config_problems(p)
    assert problems[0] == f"{p}:7: datasets[2].name: duplicate dataset name 'a'"
    assert problems[1].startswith(f"{p}:8: datasets[2].group.pattern: 'no_group' needs one capture group")


def test_sharder_cli_config_error_before_any_work(tmp_path, capsys):
    p = _sharder_yaml(tmp_path, "  - name: c\n    holdout: \"false\"\n")
    assert usf_shard(["build", "--config", str(p), "--out", str(tmp_path / "o")]) == 2
    assert f"{p}:8: datasets[2].holdout" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert usf_shard(["build", "--config", str(p.parent / "none.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_sharder_flags_override_the_yaml_and_are_checked(tmp_path):
    p = _sharder_yaml(tmp_path, "codec: png\nval_fraction: 0.2\n")
    cfg = load_config(p, {"codec": "zst", "val_fraction": None})
    assert (cfg.codec, cfg.val_fraction, cfg.seed) == ("zst", 0.2, 1)
    with pytest.raises(ConfigError, match=r"^command line: val_fraction: Input should be less than 1"):
        load_config(p, {"val_fraction": 1.5})
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        usf_shard(["build", "--config", str(p), "--out", str(tmp_path / "o"), "--codec", "gif"])


def test_python_construction_and_assignment_are_checked():
    with pytest.raises(ConfigError, match=r"^BuildConfig: text_policy: Input should be 'reject', 'clean' or"):
        BuildConfig(text_policy="maybe")
    cfg = BuildConfig()
    with pytest.raises(ConfigError, match="BuildConfig: seed: Input should be a valid integer"):
        cfg.seed = "3"
    with pytest.raises(ConfigError, match="balanced: Input should be 'none', 'loss' or 'sampler'"):
        FinetuneConfig(balanced="weights")


def test_cli_wrong_type_and_choice_name_the_flag(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--epochs", "two"])
    assert "argument --epochs: invalid int value: 'two'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--loader", "webdataset"])
    assert "argument --loader: invalid choice: 'webdataset'" in capsys.readouterr().err


def test_launcher_spellings_still_parse():
    c = parse_args(["--local_rank=2", "--deepspeed", "--deepspeed_config", "launch/ds_zero2.json",
                    "--no-fused"])
    assert (c.local_rank, c.deepspeed_config, c.fused) == (2, "launch/ds_zero2.json", False)


def test_trainer_config_saves_and_replays(tmp_path):
    cfg = parse_args(["--data", "shards", "--model", "mae_vit_demo_patch16", "--img-size", "64",
                      "--max-steps", "10", "--blr", "1e-3", "--loader", "torch", "--no-tensorboard",
                      "--zero-stage", "2", "--lr", "0.01"])
    path = save_yaml(cfg, tmp_path / "config.yaml")
    assert parse_args(["--config", str(path)]) == cfg
    again = parse_args(["--config", str(path), "--max-steps", "20"])  # flags win over the file
    assert again.max_steps == 20 and again.blr == 1e-3 and asdict(again) == {**asdict(cfg), "max_steps": 20}


def test_trainer_config_file_errors_name_file_and_line(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("data: shards\nepochs: '3'\nprecision: fp16\nwarmup: 3\n")
    with pytest.raises(ConfigError) as e:
        parse_args(["--config", str(p)])
    assert e.value.problems == [
        f"{p}:2: epochs: Input should be a valid integer (got '3')",
        f"{p}:3: precision: Input should be 'auto', 'bf16' or 'fp32' (got 'fp16')",
        f"{p}:4: warmup: unknown key; known: " + ", ".join(asdict(TrainConfig())),
    ]


BASE = ["--task", "folder", "--data-root", "d", "--output-dir", "o"]


def test_finetune_config_saves_and_replays(tmp_path):
    # a recipe with one knob overridden: the replay must keep the override (file keys win over the recipe)
    cfg = config_from_args(BASE + ["--recipe", "mae_vit_b", "--mixup", "0", "--resume", "--no-progress"])
    assert (cfg.mixup, cfg.cutmix, cfg.resume, cfg.progress) == (0.0, 1.0, "auto", False)
    path = save_yaml(cfg, tmp_path / "config.yaml")
    assert config_from_args(["--config", str(path)]) == cfg  # the required flags come from the file
    assert config_from_args(["--config", str(path), "--epochs", "3"]).epochs == 3


def test_finetune_cli_keeps_its_special_flags():
    d = config_from_args(BASE)
    assert (d.save_every, d.resume, d.progress, d.probe_augment, d.auto_augment) == (
        1, None, True, True, "rand-m9-mstd0.5-inc1")
    c = config_from_args(BASE + ["--resume", "ckpt", "--no-probe-augment", "--randaug", "none",
                                 "--in-chans", "3"])
    assert (c.resume, c.probe_augment, c.auto_augment, c.in_chans) == ("ckpt", False, None, 3)
    with pytest.raises(SystemExit):  # memory is the Python API's task
        config_from_args(["--task", "memory", "--data-root", "d", "--output-dir", "o"])


@config
class Demo:
    images: list[str]  # inputs
    mode: Literal["a", "b"] = "a"  # how
    n: int | None = None
    on: bool = True


def test_bridge_generates_flags_from_fields(tmp_path):
    p = argparse.ArgumentParser()
    add_arguments(p, Demo)
    helps = {a.dest: a.help for a in p._actions}
    assert helps["images"] == "inputs" and helps["mode"] == "how"
    cfg, _, given = parse(p, Demo, ["--images", "x", "y", "--no-on", "--n", "3"])
    assert (cfg.images, cfg.mode, cfg.n, cfg.on) == (["x", "y"], "a", 3, False)
    assert given == {"images", "on", "n"}
    (tmp_path / "d.yaml").write_text("images: [z]\nmode: b\n")
    data, src = load_yaml(tmp_path / "d.yaml")
    assert data == {"images": ["z"], "mode": "b"}
    assert src.lines[("images", 0)] == 1 and src.lines[("mode",)] == 2
    assert parse(p, Demo, ["--config", str(tmp_path / "d.yaml")])[0] == Demo(images=["z"], mode="b")
