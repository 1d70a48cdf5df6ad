"""``sacseg.Segmenter`` and the prediction/export conveniences: index PNGs, --set, non-square windows, ONNX metadata."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import sacseg
from sacseg.checkpoint import atomic_torch_save
from sacseg.cli import main
from sacseg.config import TrainConfig
from sacseg.data import CamVid
from sacseg.evaluation.predict_files import load_image
from sacseg.export.onnx_export import export_onnx
from sacseg.factory import build_model_from_config
from sacseg.models.inference import predict, predict_with_scales
from sacseg.options import InferenceOptions


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SAC-single CamVid checkpoint (11 classes) with random weights: varied classes, scales away from 1."""
    cfg = dataclasses.replace(TrainConfig(), model="sac_single_resnet18", dataset="camvid", num_classes=11, iterations=1)
    torch.manual_seed(0)
    model = build_model_from_config(cfg)
    nn.init.normal_(model.classifier.weight, std=1.0)
    nn.init.normal_(model.scale_regressors["classifier"].conv.weight, std=0.02)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    atomic_torch_save({"model": model.state_dict(), "config": dataclasses.asdict(cfg), "iteration": 1}, path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (40, 56)), ("b.jpg", (48, 40))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_segmenter_predicts_any_image_form_as_the_engine_does(checkpoint: Path, images: Path) -> None:
    segmenter = sacseg.Segmenter.from_checkpoint(checkpoint, device="cpu")
    assert segmenter.classes == CamVid.classes and torch.equal(segmenter.palette, CamVid.palette)
    path = images / "a.png"
    picture, tensor = load_image(path)
    probs, scale_maps = predict_with_scales(segmenter.model, tensor[None])
    labels, scales = segmenter.predict(path)
    assert labels.dtype == torch.long and labels.shape == (40, 56)
    assert torch.equal(labels, probs.argmax(1)[0]) and len(labels.unique()) >= 2
    assert set(scales) == {"classifier"} and scales["classifier"].shape == (40, 56)
    torch.testing.assert_close(scales["classifier"], scale_maps["classifier"][0, 0])
    assert scales["classifier"].std() > 0
    pixels = torch.tensor(picture).permute(2, 0, 1)  # uint8 [3, H, W], as torchvision.io.read_image gives
    to_tensor = pixels.float() / 255  # [0, 1], as torchvision's to_tensor gives
    for form in (str(path), Image.open(path), picture, pixels, pixels.permute(1, 2, 0), picture.transpose(2, 0, 1)):
        again, again_scales = segmenter.predict(form)
        assert torch.equal(again, labels) and torch.equal(again_scales["classifier"], scales["classifier"])
    again, again_scales = segmenter.predict(to_tensor)  # x / 255 is not x * (1 / 255) to the last bit
    assert torch.equal(again, labels) and torch.allclose(again_scales["classifier"], scales["classifier"])
    batch_labels, batch_scales = segmenter.predict(torch.stack([to_tensor, to_tensor.flip(-1)]))
    assert batch_labels.shape == (2, 40, 56) and batch_scales["classifier"].shape == (2, 40, 56)
    assert torch.equal(batch_labels[0], labels) and torch.equal(batch_labels[1], segmenter.predict(pixels.flip(-1))[0])
    assert torch.equal(segmenter.predict(np.stack([picture, picture]))[0], torch.stack([labels, labels]))
    found = list(segmenter.predict_folder(images))
    assert [p.name for p, _, _ in found] == ["a.png", "b.jpg"] and found[1][1].shape == (48, 40)
    assert torch.equal(found[0][1], labels)


def test_segmenter_options_and_bad_inputs(checkpoint: Path, images: Path) -> None:
    segmenter = sacseg.Segmenter.from_checkpoint(
        checkpoint, device="cpu", overrides=["eval_mode=slide", "eval_crop_size=[24, 32]", "eval_flip=true"]
    )
    assert segmenter.options == InferenceOptions(mode="slide", crop_size=(24, 32), stride=None, scales=(1.0,), flip=True)
    picture, tensor = load_image(images / "a.png")
    expected = predict(segmenter.model, tensor[None], segmenter.options).argmax(1)[0]
    assert torch.equal(segmenter.predict(picture)[0], expected)
    given = InferenceOptions(scales=(0.75, 1.0))  # options given replace the config's
    assert sacseg.Segmenter(segmenter.model, segmenter.config, given).options == given
    with pytest.raises(ValueError, match=r"an image array must be RGB \[3, H, W\] or \[H, W, 3\].*got shape \(4, 4\)"):
        segmenter.predict(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"an image tensor must be RGB .*got shape \(1, 1, 3, 4, 4\)"):
        segmenter.predict(torch.zeros(1, 1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"must be uint8 \(0..255\) or float \(0..1\), got torch.int64"):
        segmenter.predict(torch.zeros(3, 4, 4, dtype=torch.long))
    # Float pixels outside [0, 1] would be normalised wrongly: refused, saying what they look like.
    with pytest.raises(ValueError, match=r"values up to 255: for 0..255 pixels pass uint8, or divide by 255"):
        segmenter.predict(torch.tensor(picture).permute(2, 0, 1).float())
    with pytest.raises(ValueError, match=r"values down to -\d.*: it looks normalised already"):
        segmenter.predict(tensor)
    with pytest.raises(TypeError, match="got int"):
        segmenter.predict(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes' is 5 but the model in .*best.pt has 11"):
        sacseg.Segmenter.from_checkpoint(checkpoint, device="cpu", overrides=["num_classes=5"])


@pytest.mark.parametrize(
    "options",
    [["--set", "eval_mode=slide", "--set", "eval_crop_size=[24, 32]", "--set", "eval_stride=[12, 16]"],
     ["--mode", "slide", "--crop-size", "24", "32", "--stride", "12", "16"]],
    ids=["set-config-keys", "flags"],
)  # fmt: skip
def test_predict_index_pngs_with_non_square_windows(
    checkpoint: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str]
) -> None:
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), str(images), "--out", str(out), "--format", "index", *options]) == 0
    assert "2 files for 2 images" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [".sacseg-predictions", "a_index.png", "b_index.png"]
    segmenter = sacseg.Segmenter.from_checkpoint(checkpoint, device="cpu")
    for stem, suffix in (("a", ".png"), ("b", ".jpg")):
        x = load_image(images / f"{stem}{suffix}")[1][None]
        expected = predict(segmenter.model, x, InferenceOptions(mode="slide", crop_size=(24, 32), stride=(12, 16))).argmax(1)[0]
        with Image.open(out / f"{stem}_index.png") as png:
            assert png.mode == "L"
            np.testing.assert_array_equal(np.asarray(png), expected.numpy())


def test_predict_size_flags_take_one_or_two_numbers(
    checkpoint: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--checkpoint", str(checkpoint), str(images), "--out", str(tmp_path), "--crop-size", "8", "8", "8"])
    assert exit_info.value.code == 2
    assert "sacseg predict: error: --crop-size takes one number (a square) or two (H W), got 3" in capsys.readouterr().err


def test_colour_pictures_carry_a_legend_of_the_classes_present(checkpoint: Path, images: Path, tmp_path: Path) -> None:
    assert main(["predict", "--checkpoint", str(checkpoint), str(images / "a.png"), "--out", str(tmp_path / "l")]) == 0
    assert (
        main(["predict", "--checkpoint", str(checkpoint), str(images / "a.png"), "--out", str(tmp_path / "n"), "--no-legend"])
        == 0
    )
    plain = np.asarray(Image.open(tmp_path / "n" / "a_color.png"))
    with_legend = np.asarray(Image.open(tmp_path / "l" / "a_color.png"))
    assert plain.shape == (40, 56, 3) and with_legend.shape[0] > 40
    np.testing.assert_array_equal(with_legend[:40], plain)
    assert Image.open(tmp_path / "l" / "a_overlay.png").height == with_legend.shape[0]


onnx = pytest.importorskip("onnx")


def test_export_stores_classes_palette_and_normalisation(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    args = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--height", "32", "--width", "32", "--device", "cpu"]
    assert main([*args, "--set", "threads=1"]) == 0
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["classes"]) == list(CamVid.classes)
    assert json.loads(props["palette"]) == CamVid.palette.tolist()
    assert json.loads(props["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(props["std"]) == pytest.approx([0.229, 0.224, 0.225])
    assert props["model"] == "sac_single_resnet18" and props["dataset"] == "camvid" and props["ignore_index"] == "255"
    with pytest.raises(ValueError, match="metadata keys and values must be strings"):
        export_onnx(nn.Conv2d(3, 2, 1), tmp_path / "x.onnx", 8, 8, metadata={"classes": ["sky"]})  # type: ignore[dict-item]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # --set reaches the config: a wrong key value is refused
        main([*args, "--overwrite", "--set", "num_classes=5"])
    assert exit_info.value.code == 2
    assert "config key 'num_classes' is 5 but the model in" in capsys.readouterr().err
