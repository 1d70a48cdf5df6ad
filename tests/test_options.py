"""Tests for ``InferenceOptions``: one checked set of inference options, from arguments or a config's ``eval_*`` keys,
which validation during training uses whole."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import sacseg
from sacseg.config import TrainConfig, config_from_dict
from sacseg.evaluation.evaluate import evaluate
from sacseg.factory import build_eval_dataset, load_trained_model
from sacseg.options import InferenceOptions
from sacseg.training.train import train


def test_sizes_and_scales_are_kept_as_tuples_and_read_as_windows() -> None:
    options = InferenceOptions(mode="slide", crop_size=[512, 1024], stride=256, scales=[0.75, 1, 1.25], flip=True)
    assert (options.crop_size, options.stride, options.scales) == ((512, 1024), 256, (0.75, 1.0, 1.25))
    assert options.window() == ((512, 1024), (256, 256))
    assert options.describe() == "mode slide, crop 512x1024, stride 256, scales 0.75 1 1.25, flip"
    assert InferenceOptions(mode="slide", crop_size=8).window() == ((8, 8), (8, 8))  # stride: the crop
    assert InferenceOptions(crop_size=8).window() is None  # whole images ignore the window
    assert InferenceOptions().describe() == "mode whole, scales 1" and InferenceOptions().single_pass
    assert not InferenceOptions(scales=(1.0, 1.5)).single_pass and not InferenceOptions(flip=True).single_pass
    assert {options: 1}[InferenceOptions("slide", (512, 1024), 256, (0.75, 1.0, 1.25), True)] == 1  # equal, hashable
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.flip = False  # type: ignore[misc]
    assert sacseg.InferenceOptions is InferenceOptions


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "tiles"}, "mode must be one of whole, slide, got 'tiles'"),
        ({"mode": "slide"}, "crop_size is needed when mode is 'slide'"),
        ({"crop_size": [1, 2, 3]}, r"crop_size must be an int or a pair of ints, got \[1, 2, 3\]"),
        ({"mode": "slide", "crop_size": 8, "stride": 0}, "stride must be positive, got 0"),
        ({"mode": "slide", "crop_size": (8, 16), "stride": (4, 17)},
         r"stride \(\(4, 17\)\) must not exceed crop_size \(\(8, 16\)\): the windows would leave gaps"),
        ({"scales": ()}, r"scales must be a non-empty sequence of positive numbers, got \(\)"),
        ({"scales": (1.0, 0.0)}, r"scales must be a non-empty sequence of positive numbers, got \(1.0, 0.0\)"),
        ({"scales": "1"}, "scales must be a non-empty sequence of positive numbers, got '1'"),
        ({"flip": 1}, "flip must be True or False, got 1"),
    ],
)  # fmt: skip
def test_errors_name_the_option_and_the_value(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        InferenceOptions(**values)


def test_from_config_reads_the_eval_keys_and_errors_name_them() -> None:
    keys = {"eval_mode": "slide", "eval_crop_size": [24, 32], "eval_stride": 12, "eval_scales": [0.5, 1], "eval_flip": True}
    cfg = config_from_dict({"iterations": 1, **keys})
    assert InferenceOptions.from_config(cfg) == InferenceOptions("slide", (24, 32), 12, (0.5, 1.0), True)
    # A config without the keys added later (eval_scales, eval_flip) keeps single-scale, unmirrored validation.
    assert InferenceOptions.from_config(config_from_dict({"iterations": 1})) == InferenceOptions()
    with pytest.raises(
        ValueError, match=r"^run.yaml: config key 'eval_stride' \(16\) must not exceed config key 'eval_crop_size' \(8\)"
    ):
        config_from_dict({"iterations": 1, "eval_mode": "slide", "eval_crop_size": 8, "eval_stride": 16}, source="run.yaml")
    with pytest.raises(
        ValueError, match=r"^config: config key 'eval_scales' must be a non-empty sequence of positive numbers, got \[\]$"
    ):
        config_from_dict({"iterations": 1, "eval_scales": []})
    with pytest.raises(ValueError, match="^config: config key 'eval_flip' must be bool, got 'yes'"):
        config_from_dict({"iterations": 1, "eval_flip": "yes"})


def test_named_errors_call_the_options_what_the_caller_does() -> None:
    values = dataclasses.asdict(InferenceOptions()) | {"mode": "slide"}
    with pytest.raises(ValueError, match="^--crop-size is needed when --mode is 'slide'$"):
        InferenceOptions.named(values, lambda option: "--" + option.replace("_", "-"))
    assert InferenceOptions.named(values | {"crop_size": 8}, str) == InferenceOptions(mode="slide", crop_size=8)


def test_training_validates_under_every_eval_option(tiny_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, iterations=1, val_every=1, eval_mode="slide", eval_crop_size=48, eval_stride=32,
                      eval_scales=[0.75, 1.0], eval_flip=True)  # fmt: skip
    summary = train(cfg)
    model, _ = load_trained_model(tmp_path / "last.pt")
    loader = torch.utils.data.DataLoader(build_eval_dataset(cfg), batch_size=1)
    expected = evaluate(model, loader, cfg.num_classes, options=InferenceOptions.from_config(cfg)).compute()
    assert summary.last_metrics["miou"] == pytest.approx(expected["miou"])
    assert summary.last_metrics["pixel_acc"] == pytest.approx(expected["pixel_acc"])


def test_tag_names_the_options_in_a_file_name() -> None:
    assert InferenceOptions().tag() == "whole" and InferenceOptions(scales=(0.25,)).tag() == "whole_ms0.25"
    options = InferenceOptions(mode="slide", crop_size=(512, 1024), stride=(256, 512), scales=(0.75, 1, 1.25), flip=True)
    assert options.tag() == "slide-512x1024-256x512_ms0.75-1.0-1.25_flip"
    assert InferenceOptions(mode="slide", crop_size=512).tag() == "slide-512-512"  # the step defaults to the window
