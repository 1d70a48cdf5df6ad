"""Tests for the flat YAML configs: every shipped file is complete and valid; errors name the key."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from pathlib import Path

import pytest
import yaml

from sacseg.config import TrainConfig, apply_overrides, config_from_dict, load_config, save_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def test_configs_folder_has_every_paper_row() -> None:
    names = {p.stem for p in CONFIGS}
    for dataset in ("cityscapes", "ade20k"):
        for row in ("baseline", "sac_single", "sac_multiple", "sac_single_only", "sac_multiple_only"):
            assert f"{dataset}_{row}_r101" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_file_is_complete_and_valid(path: Path) -> None:
    keys = set(yaml.safe_load(path.read_text()))
    assert keys == FIELDS, f"missing {FIELDS - keys}, extra {keys - FIELDS}"
    cfg = load_config(path)
    assert cfg.out_dir == f"runs/{path.stem}"
    if "_only_" in path.stem:
        assert cfg.baseline_checkpoint is not None and cfg.model.startswith("sac_")
    if path.stem.endswith("_r101"):  # the paper's schedule
        assert (cfg.batch_size, cfg.crop_size, cfg.epochs, cfg.lr_step, cfg.lr) == (8, 500, 70, 60, 5e-4)
        assert (cfg.momentum, cfg.weight_decay, cfg.scale_min, cfg.scale_max, cfg.flip) == (0.9, 1e-4, 0.5, 1.5, True)


def test_a_short_config_gets_a_poly_decay_from_lr_0_01() -> None:
    # Not the paper's step at lr_step 60: counted in iterations, it fell in the middle of a short run.
    cfg = config_from_dict({"iterations": 100})
    assert (cfg.schedule, cfg.lr, cfg.poly_power) == ("poly", 0.01, 0.9)


def test_unknown_key_names_it_and_lists_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model: fcn_resnet18\nlearning_rate: 0.1\niterations: 2\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*'learning_rate'.*valid keys: model, num_classes"):
        load_config(path)
    path.write_text("model: fcn_resnet18\nlr_stpe: 30\niterations: 2\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown config key 'lr_stpe'; did you mean 'lr_step'\? valid keys: model"):
        load_config(path)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"batch_size": "eight", "iterations": 1}, "batch_size"),
        ({"batch_size": 2.5, "iterations": 1}, "batch_size"),
        ({"amp": 1, "iterations": 1}, "amp"),
        ({"precision": "fp8", "iterations": 1}, "precision"),
        ({"cudnn_benchmark": "yes", "iterations": 1}, "cudnn_benchmark"),
        ({"crop_size": True, "iterations": 1}, "crop_size"),
        ({"lr": "fast", "iterations": 1}, "lr"),
        ({"model": None, "iterations": 1}, "model"),
        ({"schedule": "cosine", "iterations": 1}, "schedule"),
        ({"batch_size": 0, "iterations": 1}, "batch_size"),
        ({"epochs": 2, "iterations": 3}, "epochs"),
        ({"output_stride": 32, "iterations": 1}, "output_stride"),
        ({"scale_bound": "tanh", "iterations": 1}, "scale_bound"),
        ({"scale_lr_mult": 0.0, "iterations": 1}, "scale_lr_mult"),
        ({"eval_crop_size": [512, 1024, 3], "iterations": 1}, "eval_crop_size"),
        ({"eval_stride": [256, 5.5], "iterations": 1}, "eval_stride"),
    ],
)
def test_bad_value_names_the_key(values: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"'{key}'"):
        config_from_dict(values)


def test_overrides_are_parsed_with_the_field_type(tmp_path: Path) -> None:
    cfg = config_from_dict({"iterations": 4})
    cfg = apply_overrides(
        cfg, ["lr=5e-3", "grad_clip=1", "precision=bf16", "baseline_checkpoint=null", "model=sac_single_resnet18"]
    )
    assert (cfg.lr, cfg.grad_clip, cfg.precision, cfg.baseline_checkpoint, cfg.model) == (
        5e-3,
        1.0,
        "bf16",
        None,
        "sac_single_resnet18",
    )
    assert isinstance(cfg.grad_clip, float)
    with pytest.raises(ValueError, match="'batch_size'"):
        apply_overrides(cfg, ["batch_size=big"])
    with pytest.raises(ValueError, match="unknown config key 'bach_size'; did you mean 'batch_size'\\? valid keys"):
        apply_overrides(cfg, ["bach_size=2"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(cfg, ["batch_size"])


def test_saved_config_loads_back_equal(tmp_path: Path) -> None:
    cfg = apply_overrides(config_from_dict({"iterations": 4}), ["grad_clip=2.0", "lr=0.02"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml") == cfg


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_camvid_config_reads_the_real_sample(shared_data: Path) -> None:
    from sacseg.factory import build_datasets

    cfg = apply_overrides(load_config(CONFIGS[0].parent / "camvid_baseline_r18.yaml"), [f"data_root={shared_data / 'camvid'}"])
    train_set, val_set = build_datasets(cfg)
    assert (len(train_set), len(val_set)) == (367, 101)
    image, target = train_set[0]
    assert image.shape == (3, cfg.crop_size, cfg.crop_size) and target.shape == (cfg.crop_size, cfg.crop_size)


def test_training_crops_are_an_int_or_height_and_width() -> None:
    from sacseg.factory import build_datasets

    cfg = config_from_dict({"iterations": 1, "crop_size": [48, 80], "scale_scenes_size": 64, "scale_scenes_val_images": 1})
    image, target = build_datasets(cfg)[0][0]
    assert image.shape == (3, 48, 80) and target.shape == (48, 80)  # padded to the width with ignored labels
    assert config_from_dict(dataclasses.asdict(cfg)) == cfg and apply_overrides(cfg, ["crop_size=32"]).crop_size == 32
    with pytest.raises(ValueError, match=r"config key 'crop_size' must be an int or a pair of ints, got \[48, 80, 3\]"):
        apply_overrides(cfg, ["crop_size=[48, 80, 3]"])
    with pytest.raises(ValueError, match=r"config key 'crop_size' must be positive, got \[0, 80\]"):
        apply_overrides(cfg, ["crop_size=[0, 80]"])


def test_window_sizes_are_an_int_or_height_and_width() -> None:
    cfg = config_from_dict({"iterations": 1, "eval_mode": "slide", "eval_crop_size": [512, 1024], "eval_stride": 256})
    assert (cfg.eval_crop_size, cfg.eval_stride) == ([512, 1024], 256)
    cfg = apply_overrides(cfg, ["eval_stride=[256, 512]"])
    assert cfg.eval_stride == [256, 512]
    assert config_from_dict(dataclasses.asdict(cfg)) == cfg  # as saved into checkpoints
    with pytest.raises(ValueError, match=r"config key 'eval_crop_size' must be an int or a pair of ints, got \[1, 2, 3\]"):
        apply_overrides(cfg, ["eval_crop_size=[1, 2, 3]"])


@pytest.mark.parametrize(
    ("key", "owner"),
    [
        ("upsample", "sacseg.options.UpsampleMode"),
        ("scale_bound", "sacseg.options.ScaleBound"),
        ("eval_mode", "sacseg.options.InferenceMode"),
        ("device", "sacseg.utils.device.DeviceName"),
        ("schedule", "sacseg.config.Schedule"),
    ],
)
def test_choices_are_the_owners_literal_types(key: str, owner: str) -> None:
    module, _, name = owner.rpartition(".")
    choices = typing.get_args(getattr(importlib.import_module(module), name))
    for value in choices:  # every value the owner accepts is a valid config value...
        assert getattr(config_from_dict({"iterations": 1, key: value, "eval_crop_size": 8}), key) == value
    # ...and the message for any other lists exactly those.
    with pytest.raises(ValueError, match=f"config key '{key}' must be one of {', '.join(choices)}, got 'other'"):
        config_from_dict({"iterations": 1, key: "other"})


def test_init_checkpoint_held_scales_and_classifier_dilation() -> None:
    base = {"iterations": 1}
    cfg = config_from_dict({**base, "min_scale": 1.0, "max_scale": 1.0, "init_checkpoint": "b.pt", "classifier_dilation": 1})
    assert cfg.min_scale == cfg.max_scale == 1.0 and cfg.init_checkpoint == "b.pt" and not cfg.val_at_start
    with pytest.raises(ValueError, match="'init_checkpoint' excludes"):
        config_from_dict({**base, "init_checkpoint": "b.pt", "baseline_checkpoint": "b.pt"})
    with pytest.raises(ValueError, match="'classifier_dilation' must be >= 1"):
        config_from_dict({**base, "classifier_dilation": 0})
    with pytest.raises(ValueError, match="min_scale <= max_scale"):
        config_from_dict({**base, "min_scale": 2.0, "max_scale": 1.0})


def test_deprecated_amp_is_read_as_a_precision_with_a_warning(tmp_path: Path) -> None:
    # Configs and run folders of 0.1.0 say amp: true / false.
    with pytest.warns(FutureWarning, match="'amp: true' is read as 'precision: fp16'"):
        assert config_from_dict({"iterations": 1, "amp": True}).precision == "fp16"
    with pytest.warns(FutureWarning, match="'precision: fp32'"):
        assert config_from_dict({"iterations": 1, "amp": False, "precision": "fp32"}).precision == "fp32"
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="'amp' .* and 'precision' .* disagree"):
        config_from_dict({"iterations": 1, "amp": True, "precision": "bf16"})
    with pytest.warns(FutureWarning, match="--set: config key 'amp' is deprecated"):
        assert apply_overrides(config_from_dict({"iterations": 1}), ["amp=true"]).precision == "fp16"
    assert "amp" not in dataclasses.asdict(config_from_dict({"iterations": 1}))  # never written back


def test_cudnn_benchmark_defaults_to_on_unless_deterministic() -> None:
    from sacseg.training.train import cudnn_benchmark

    assert cudnn_benchmark(config_from_dict({"iterations": 1, "deterministic": False})) is True
    assert cudnn_benchmark(config_from_dict({"iterations": 1, "deterministic": True})) is False
    assert cudnn_benchmark(config_from_dict({"iterations": 1, "deterministic": True, "cudnn_benchmark": True})) is True
