"""Tests for ``sacseg eval`` and ``sacseg predict`` on tiny trained models (ScaleScenes, CamVid, Cityscapes names)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label
from PIL import Image

from sacseg.checkpoint import atomic_torch_save
from sacseg.cli import main
from sacseg.config import TrainConfig, apply_overrides, load_config, save_config
from sacseg.data import ScaleScenes
from sacseg.evaluation import predict_files
from sacseg.evaluation.evaluate import evaluate
from sacseg.evaluation.metrics import format_results
from sacseg.evaluation.predict_files import find_images, load_image
from sacseg.factory import build_eval_dataset, build_model_from_config, load_trained_model
from sacseg.models.inference import predict, predict_with_scales
from sacseg.options import InferenceOptions
from sacseg.training.train import train
from sacseg.viz import colorize

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sac_checkpoint(tiny_config: Callable[..., TrainConfig], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.pt`` of SAC-single trained 2 iterations on 64x64 ScaleScenes."""
    out = tmp_path_factory.mktemp("sac")
    train(tiny_config(out, model="sac_single_resnet18", iterations=2, val_every=2))
    return out / "last.pt"


@pytest.mark.parametrize(
    "options",
    [[], ["--mode", "slide", "--crop-size", "48", "--stride", "32", "--scales", "0.75", "1", "--flip"]],
    ids=["whole", "slide-multiscale-flip"],
)
def test_eval_prints_table_and_writes_json(
    sac_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str]
) -> None:
    out = tmp_path / "results.json" if options else sac_checkpoint.parent / "eval_last_val_whole.json"
    args = ["eval", "--checkpoint", str(sac_checkpoint), "--set", "scale_scenes_val_images=2", *options]
    assert main(args + (["--out", str(out)] if options else [])) == 0
    printed = capsys.readouterr()

    model, cfg = load_trained_model(sac_checkpoint)
    cfg = apply_overrides(cfg, ["scale_scenes_val_images=2"])
    inference = {"mode": "whole", "crop_size": None, "stride": None, "scales": (1.0,), "flip": False}
    if options:
        inference = {"mode": "slide", "crop_size": 48, "stride": 32, "scales": (0.75, 1.0), "flip": True}
    loader = torch.utils.data.DataLoader(build_eval_dataset(cfg), batch_size=1)
    expected = evaluate(model, loader, cfg.num_classes, options=InferenceOptions(**inference)).compute()
    assert format_results(expected, ScaleScenes.classes) in printed.out
    assert "sac_single_resnet18 on scale_scenes val (2 images; mode " in printed.out
    assert f"results: {out}" in printed.out
    assert "eval: 100%" in printed.err and "2/2" in printed.err  # the progress bar

    doc = json.loads(out.read_text())
    assert set(doc) == {"miou", "mean_acc", "pixel_acc", "num_pixels", "classes", "meta"}
    assert list(doc["classes"]) == list(ScaleScenes.classes)
    assert doc["miou"] == pytest.approx(expected["miou"]) and doc["num_pixels"] == 2 * 64 * 64
    meta = doc["meta"]
    assert meta["checkpoint"] == str(sac_checkpoint) and meta["split"] == "val" and meta["images"] == 2
    assert (meta["mode"], meta["crop_size"], meta["stride"]) == (inference["mode"], inference["crop_size"], inference["stride"])
    assert meta["scales"] == list(inference["scales"]) and meta["flip"] == inference["flip"]


def test_eval_options_default_to_the_config_and_errors_name_the_flag_or_the_key(
    sac_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    args = ["eval", "--checkpoint", str(sac_checkpoint), "--set", "scale_scenes_val_images=1", "--out", str(out)]
    config_keys = ["--set", "eval_scales=[0.75, 1]", "--set", "eval_flip=true"]
    assert main([*args, *config_keys]) == 0
    assert "(1 images; mode whole, scales 0.75 1, flip):" in capsys.readouterr().out
    assert main([*args, *config_keys, "--scales", "1", "--no-flip", "--overwrite"]) == 0  # the flags replace the keys
    assert "(1 images; mode whole, scales 1):" in capsys.readouterr().out
    meta = json.loads(out.read_text())["meta"]
    assert (meta["scales"], meta["flip"]) == ([1.0], False)
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--mode", "slide"])
    assert exit_info.value.code == 2
    assert "sacseg eval: error: config key 'eval_crop_size' is needed when --mode is 'slide'\n" in capsys.readouterr().err


def _camvid_copy(shared: Path, root: Path, split: str, count: int) -> None:
    """The first ``count`` frames of the shared CamVid val set as split ``split`` of a CamVid folder at ``root``."""
    for sub, suffix in ((split, ""), (f"{split}annot", "annot")):
        (root / sub).mkdir(parents=True)
        for image in sorted((shared / "camvid" / "val").glob("*.png"))[:count]:
            shutil.copy(shared / "camvid" / f"val{suffix}" / image.name, root / sub / image.name)


@pytest.mark.slow  # a whole evaluation of the real CamVid samples
def test_eval_camvid_folder_from_the_cli(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train_root, eval_root = tmp_path / "camvid_train", tmp_path / "camvid_eval"
    _camvid_copy(shared_data, train_root, "train", 2)
    _camvid_copy(shared_data, train_root, "val", 1)
    _camvid_copy(shared_data, eval_root, "val", 3)
    tiny = [
        "epochs=0", "iterations=2", "crop_size=64", "batch_size=2", "workers=0", "threads=1", "val_every=2",
        "scale_min=0.25", "scale_max=0.25",
    ]  # fmt: skip
    config = REPO / "configs" / "camvid_baseline_r18.yaml"
    cfg = apply_overrides(load_config(config), [*tiny, f"data_root={train_root}", f"out_dir={tmp_path / 'run'}"])
    train(cfg)
    capsys.readouterr()

    checkpoint = tmp_path / "run" / "last.pt"
    args = ["eval", "--checkpoint", str(checkpoint), "--config", str(config), "--data-root", str(eval_root)]
    assert main([*args, "--set", "workers=0", "--set", "threads=1", "--scales", "0.25"]) == 0
    printed = capsys.readouterr()
    assert "fcn_resnet18 on camvid val (3 images; mode whole, scales 0.25)" in printed.out
    assert "bicyclist" in printed.out and "pixel accuracy" in printed.out
    assert "eval: 100%" in printed.err and "3/3" in printed.err
    doc = json.loads((tmp_path / "run" / "eval_last_val_whole_ms0.25.json").read_text())
    assert doc["meta"]["data_root"] == str(eval_root) and doc["meta"]["images"] == 3
    assert doc["num_pixels"] > 0.9 * 3 * 480 * 360 and 0.0 <= doc["pixel_acc"] <= 1.0


def test_predict_writes_colour_overlay_and_scale_pictures(
    sac_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenes = ScaleScenes(2, size=64, seed=3)
    inputs = tmp_path / "images"
    inputs.mkdir()
    Image.fromarray(scenes.load(0)[0].permute(1, 2, 0).numpy()).save(inputs / "a.png")
    Image.fromarray(scenes.load(1)[0].permute(1, 2, 0).numpy()).save(inputs / "b.jpg", quality=95)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(sac_checkpoint), str(inputs), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert f"6 files for 2 images in {out}" in printed.out and "2/2" in printed.err
    assert sorted(p.name for p in out.iterdir()) == [
        ".sacseg-predictions", "a_color.png", "a_overlay.png", "a_scale_classifier.png", "b_color.png", "b_overlay.png",
        "b_scale_classifier.png",
    ]  # fmt: skip

    model, _ = load_trained_model(sac_checkpoint)
    for stem, suffix in (("a", ".png"), ("b", ".jpg")):
        picture, image = load_image(inputs / f"{stem}{suffix}")
        expected = colorize(predict(model, image[None]).argmax(1)[0], ScaleScenes.palette)
        colour = np.asarray(Image.open(out / f"{stem}_color.png"))
        np.testing.assert_array_equal(colour[:64], expected)  # the legend strip below
        assert colour.shape[0] > 64 and (colour[64:] == 255).any()
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png")).astype(int)
        np.testing.assert_allclose(overlay[:64], (picture.astype(int) + expected.astype(int)) / 2, atol=1)
        with Image.open(out / f"{stem}_scale_classifier.png") as heat:
            assert heat.height == 400 and heat.width > heat.height  # square map plus a colour bar


def test_predict_cityscapes_label_ids_round_trip(
    tiny_config: Callable[..., TrainConfig], shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A 19-class Cityscapes model with random weights: what is checked is the export, not the accuracy.
    cfg = tiny_config(tmp_path, num_classes=19, dataset="cityscapes", data_root=str(shared_data / "cityscapes_sample"))
    torch.manual_seed(0)
    model = build_model_from_config(cfg)
    torch.nn.init.normal_(model.classifier.weight, std=1.0)  # varied classes, so the mapping is exercised
    atomic_torch_save({"model": model.state_dict(), "config": dataclasses.asdict(cfg)}, tmp_path / "model.pt")
    frame = shared_data / "cityscapes_sample" / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000294_leftImg8bit.png"
    out = tmp_path / "results"
    args = ["predict", "--checkpoint", str(tmp_path / "model.pt"), str(frame), "--out", str(out)]
    assert main([*args, "--format", "cityscapes"]) == 0
    capsys.readouterr()

    written = out / "frankfurt" / "frankfurt_000000_000294_pred_labelIds.png"
    with Image.open(written) as png:
        assert png.mode == "L"
        label_ids = np.asarray(png)
    train_ids = np.vectorize(lambda i: id2label[int(i)].trainId)(label_ids)
    expected = predict(model.eval(), load_image(frame)[1][None]).argmax(1)[0].numpy()
    assert len(np.unique(expected)) >= 3
    np.testing.assert_array_equal(train_ids, expected)


def _write_config_less_checkpoint(path: Path, cfg: TrainConfig) -> None:
    model = build_model_from_config(cfg)
    atomic_torch_save({"model": model.state_dict()}, path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing checkpoint", "checkpoint not found: {tmp}/missing.pt"),
        ("corrupt checkpoint", "checkpoint {tmp}/corrupt.pt is corrupt or not a checkpoint"),
        ("no config", "checkpoint {tmp}/bare.pt stores no config"),
        ("missing image", "image or folder not found: {tmp}/nothing.png"),
        ("cityscapes format", "--format cityscapes needs a model trained on Cityscapes trainIds"),
    ],
)
def test_predict_errors_name_the_file(
    tiny_config: Callable[..., TrainConfig],
    sac_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    message: str,
) -> None:
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    Image.new("RGB", (32, 32)).save(tmp_path / "fine.png")
    checkpoint, image, extra = sac_checkpoint, tmp_path / "fine.png", []
    if case == "missing checkpoint":
        checkpoint = tmp_path / "missing.pt"
    elif case == "corrupt checkpoint":
        checkpoint = tmp_path / "corrupt.pt"
    elif case == "no config":
        checkpoint = tmp_path / "bare.pt"
        _write_config_less_checkpoint(checkpoint, tiny_config(tmp_path))
    elif case == "missing image":
        image = tmp_path / "nothing.png"
    else:
        extra = ["--format", "cityscapes"]
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "out"), *extra])
    assert exit_info.value.code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


def test_eval_uses_the_given_config_for_a_config_less_checkpoint(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_config_less_checkpoint(tmp_path / "bare.pt", tiny_config(tmp_path))
    config = tmp_path / "tiny.yaml"
    save_config(tiny_config(tmp_path), config)
    assert (
        main(["eval", "--checkpoint", str(tmp_path / "bare.pt"), "--config", str(config), "--out", str(tmp_path / "r.json")]) == 0
    )
    assert "fcn_resnet18 on scale_scenes val (1 images" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["meta"]["images"] == 1


def test_eval_with_a_baseline_config_reports_the_checkpoints_sac_model(
    tiny_config: Callable[..., TrainConfig], sac_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "baseline.yaml"
    save_config(tiny_config(tmp_path, model="fcn_resnet18"), config)
    out = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", str(sac_checkpoint), "--config", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "sac_single_resnet18 on scale_scenes val (1 images" in printed.out and "fcn_resnet18" not in printed.out
    assert "model keys replace the config's: model=sac_single_resnet18 (not fcn_resnet18)" in printed.err
    assert json.loads(out.read_text())["meta"]["model"] == "sac_single_resnet18"


def test_eval_prints_the_scores_before_a_results_file_it_cannot_write(
    sac_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("a file where a folder should be")
    unwritable = tmp_path / "file" / "results.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--checkpoint", str(sac_checkpoint), "--out", str(unwritable)])
    assert exit_info.value.code == 2
    printed = capsys.readouterr()
    assert "mean" in printed.out and "pixel accuracy" in printed.out  # the table came first
    assert printed.err.splitlines()[-1].startswith(f"sacseg eval: error: cannot write {unwritable}: ")

    with pytest.raises(SystemExit) as exit_info:  # a folder is found before evaluating
        main(["eval", "--checkpoint", str(sac_checkpoint), "--out", str(tmp_path)])
    printed = capsys.readouterr()
    assert exit_info.value.code == 2 and "pixel accuracy" not in printed.out
    assert printed.err == f"sacseg eval: error: --out {tmp_path} is a folder; give the results file to write\n"


@pytest.mark.parametrize(
    "command",
    [["eval"], ["predict", "{tmp}/image.png", "--out", "{tmp}/predictions"], ["export", "--out", "{tmp}/model.onnx"]],
    ids=["eval", "predict", "export"],
)
def test_device_cuda_without_cuda_is_one_error_line(
    sac_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    Image.new("RGB", (32, 32)).save(tmp_path / "image.png")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        main([arg.format(tmp=tmp_path) for arg in command] + ["--checkpoint", str(sac_checkpoint), "--device", "cuda"])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err == f"sacseg {command[0]}: error: --device cuda: CUDA is not available here; use cpu (or auto)\n"
    )


@pytest.mark.parametrize("inside", [False, True], ids=["out-is-the-input-folder", "out-inside-the-input-folder"])
def test_predict_does_not_predict_its_own_outputs(
    sac_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], inside: bool
) -> None:
    inputs = tmp_path / "images"
    inputs.mkdir()
    Image.fromarray(ScaleScenes(1, size=64, seed=3).load(0)[0].permute(1, 2, 0).numpy()).save(inputs / "a.png")
    out = inputs / "predictions" if inside else inputs
    for _ in range(2):
        assert main(["predict", "--checkpoint", str(sac_checkpoint), str(inputs), "--out", str(out)]) == 0
        assert f"3 files for 1 images in {out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if p.name != "predictions") == sorted(
        (["a.png"] if not inside else [".sacseg-predictions"]) + ["a_color.png", "a_overlay.png", "a_scale_classifier.png"]
    )  # no marker in a folder holding the inputs: searched from above, it is still searched


def test_find_images_skips_the_outputs_of_images_it_found(tmp_path: Path) -> None:
    names = ["a.png", "a_color.png", "a_overlay.png", "a_index.png", "a_scale_layer4.png", "a_scale_layer4.tif",
             "x_color.png", "a_scale_.jpg", "aachen_000000_000019_leftImg8bit.png", "aachen/aachen_000000_000019_pred_labelIds.png",
             "aachen/bremen_000000_000019_pred_labelIds.png"]  # fmt: skip
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    found = find_images([tmp_path], out_dir=tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in found) == [
        "a.png", "a_scale_.jpg", "aachen/bremen_000000_000019_pred_labelIds.png", "aachen_000000_000019_leftImg8bit.png",
        "x_color.png",
    ]  # fmt: skip
    assert len(find_images([tmp_path])) == len(names)  # without an output folder, every image


def test_predict_mirrors_subfolders_skips_earlier_outputs_and_reports_unreadable_images(
    sac_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "images"
    for name in ("a.png", "sub/a.png", "sub/deeper/b.jpg"):  # the same name in two folders
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 24), (40, 90, 160)).save(inputs / name)
    (inputs / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    predict = ["predict", "--checkpoint", str(sac_checkpoint), str(inputs), "--format", "index", "--out"]
    expected = ["a_index.png", "sub/a_index.png", "sub/deeper/b_index.png"]
    for out in (inputs / "out", inputs / "out2"):  # the second run must not take the first's outputs as images
        assert main([*predict, str(out)]) == 1
        printed = capsys.readouterr()
        assert "3 files for 3 images" in printed.out
        problems = [line for line in printed.err.splitlines() if line.startswith("sacseg predict:")]
        assert len(problems) == 2 and problems[1] == "sacseg predict: 1 of 4 images could not be read (named above)"
        assert problems[0].startswith(f"sacseg predict: skipped: cannot read image file {inputs / 'sub' / 'broken.png'}: ")
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == expected
        assert (out / ".sacseg-predictions").is_file()
    assert [str(p.relative_to(inputs)) for p in find_images([inputs], out_dir=inputs / "out3")] == [
        "a.png", "sub/a.png", "sub/broken.png", "sub/deeper/b.jpg",
    ]  # fmt: skip


def test_eval_results_are_named_by_checkpoint_and_options_and_never_overwritten_unasked(
    sac_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "best.pt"
    shutil.copy(sac_checkpoint, checkpoint)
    args = ["eval", "--checkpoint", str(checkpoint), "--set", "scale_scenes_val_images=1"]
    slide = ["--mode", "slide", "--crop-size", "48", "--stride", "32", "--scales", "0.75", "1", "--flip"]
    assert main(args) == 0 and main([*args, *slide]) == 0  # a sliding-window eval beside the whole-image one
    names = sorted(p.name for p in tmp_path.glob("eval_*.json"))
    assert names == ["eval_best_val_slide-48-32_ms0.75-1.0_flip.json", "eval_best_val_whole.json"]
    whole = tmp_path / "eval_best_val_whole.json"
    whole.write_text("the earlier results")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and whole.read_text() == "the earlier results"
    assert capsys.readouterr().err == (
        f"sacseg eval: error: results file {whole} exists; give --overwrite to replace it, or --out another file\n"
    )
    assert main([*args, "--overwrite"]) == 0 and json.loads(whole.read_text())["meta"]["checkpoint"] == str(checkpoint)


def test_predict_scale_maps_are_drawn_on_the_models_range_or_written_raw(
    sac_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = tmp_path / "images"
    inputs.mkdir()
    for i, name in enumerate(("a.png", "b.png")):
        Image.fromarray(ScaleScenes(2, size=64, seed=3).load(i)[0].permute(1, 2, 0).numpy()).save(inputs / name)
    ranges: list[tuple[float, float]] = []
    draw = predict_files.save_scale_map

    def spy(scale: torch.Tensor, path: Path, **options: Any) -> None:
        ranges.append((options["vmin"], options["vmax"]))
        draw(scale, path, **options)

    monkeypatch.setattr(predict_files, "save_scale_map", spy)
    predict_args = ["predict", "--checkpoint", str(sac_checkpoint), str(inputs), "--no-legend", "--out"]
    assert main([*predict_args, str(tmp_path / "png")]) == 0
    model, cfg = load_trained_model(sac_checkpoint)
    assert ranges == [(cfg.min_scale, cfg.max_scale)] * 2  # one colour scale for every image: the model's bounds
    expected = {stem: predict_with_scales(model, load_image(inputs / f"{stem}.png")[1][None])[1] for stem in "ab"}
    for fmt, suffix in (("npy", ".npy"), ("tiff", ".tif")):
        assert main([*predict_args, str(tmp_path / fmt), "--scale-format", fmt]) == 0
        for stem in "ab":
            path = tmp_path / fmt / f"{stem}_scale_classifier{suffix}"
            values = np.load(path) if fmt == "npy" else np.asarray(Image.open(path))
            assert values.dtype == np.float32 and values.shape == (64, 64)
            np.testing.assert_array_equal(values, expected[stem]["classifier"][0, 0].numpy())
