"""An exported file as a model: ``sacseg eval/predict --onnx`` and ``Segmenter.from_onnx`` give what the checkpoint gives."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sacseg.cli import main
from sacseg.config import TrainConfig
from sacseg.data import ScaleScenes
from sacseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sacseg.evaluation.onnx_model import OnnxModel
from sacseg.evaluation.predict_files import PREDICTIONS_MARKER
from sacseg.evaluation.segmenter import Segmenter
from sacseg.export.onnx_export import export_onnx
from sacseg.factory import load_trained_model
from sacseg.training.train import train

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run(tiny_config: Callable[..., TrainConfig], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SAC-single trained 2 iterations on 64x64 ScaleScenes: its checkpoint, a dynamic export with
    the scale maps and a static 64x64 one."""
    out = tmp_path_factory.mktemp("onnx_run")
    train(tiny_config(out, model="sac_single_resnet18", iterations=2, val_every=2))
    files = {"checkpoint": out / "last.pt", "dynamic": out / "dynamic.onnx", "static": out / "static.onnx"}
    common = ["export", "--checkpoint", str(files["checkpoint"]), "--height", "64", "--width", "64", "--device", "cpu"]
    assert main([*common, "--out", str(files["dynamic"]), "--dynamic", "--with-scales"]) == 0
    assert main([*common, "--out", str(files["static"])]) == 0
    return files


def _eval(source: list[str], out: Path, *options: str) -> dict:
    assert main(["eval", *source, "--set", "scale_scenes_val_images=2", "--device", "cpu", "--out", str(out), *options]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize(
    "options",
    [[], ["--mode", "slide", "--crop-size", "48", "--stride", "32", "--scales", "0.75", "1", "--flip"]],
    ids=["whole", "slide-multiscale-flip"],
)
def test_eval_onnx_scores_as_the_checkpoint(run: dict[str, Path], tmp_path: Path, options: list[str]) -> None:
    checkpoint = _eval(["--checkpoint", str(run["checkpoint"])], tmp_path / "pt.json", *options)
    exported = _eval(["--onnx", str(run["dynamic"])], tmp_path / "onnx.json", *options)
    assert abs(exported["miou"] - checkpoint["miou"]) * 100 <= 0.05
    assert exported["num_pixels"] == checkpoint["num_pixels"] == 2 * 64 * 64
    assert exported["meta"]["onnx"] == str(run["dynamic"]) and "checkpoint" not in exported["meta"]
    assert {k: v for k, v in exported["meta"].items() if k != "onnx"} == {
        k: v for k, v in checkpoint["meta"].items() if k != "checkpoint"
    }


def test_a_static_file_takes_its_own_size_only(run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = _eval(["--checkpoint", str(run["checkpoint"])], tmp_path / "pt.json")
    assert _eval(["--onnx", str(run["static"])], tmp_path / "onnx.json")["miou"] == pytest.approx(checkpoint["miou"], abs=5e-4)
    with pytest.raises(SystemExit) as exit_info:
        _eval(["--onnx", str(run["static"])], tmp_path / "x.json", "--scales", "0.75")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"sacseg eval: error: {run['static']} takes inputs of shape 1x3x64x64 only (exported with static shapes), "
        "got 1x3x48x48: export with --dynamic for other sizes"
    )


def test_predict_onnx_draws_the_checkpoint_s_pictures(run: dict[str, Path], tmp_path: Path) -> None:
    inputs = tmp_path / "images"
    inputs.mkdir()
    scenes = ScaleScenes(2, size=64, seed=3)
    for i in range(2):
        Image.fromarray(scenes.load(i)[0].permute(1, 2, 0).numpy()).save(inputs / f"{i}.png")
    written = {}
    for flag, source in (("--checkpoint", run["checkpoint"]), ("--onnx", run["dynamic"])):
        for fmt in ("color", "index"):
            out = tmp_path / f"{flag[2:]}_{fmt}"
            assert main(["predict", flag, str(source), str(inputs), "--out", str(out), "--format", fmt, "--device", "cpu"]) == 0
            written[flag, fmt] = {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))}
            assert {p.name for p in out.iterdir()} - set(written[flag, fmt]) == {PREDICTIONS_MARKER}
    assert sorted(written["--onnx", "color"]) == ["0_color.png", "0_overlay.png", "0_scale_classifier.png"] + [
        "1_color.png", "1_overlay.png", "1_scale_classifier.png"
    ]  # fmt: skip
    for fmt in ("color", "index"):
        assert written["--onnx", fmt].keys() == written["--checkpoint", fmt].keys()
    for name, labels in written["--onnx", "index"].items():
        assert (labels == written["--checkpoint", "index"][name]).mean() >= 0.999


def test_segmenter_from_onnx_reads_its_labels_from_the_file(run: dict[str, Path], tmp_path: Path) -> None:
    image = ScaleScenes(1, size=64, seed=5).load(0)[0].permute(1, 2, 0).numpy()
    reference = Segmenter.from_checkpoint(run["checkpoint"], device="cpu")
    segmenter = Segmenter.from_onnx(run["dynamic"], device="cpu")
    assert isinstance(segmenter.model, OnnxModel) and segmenter.device == torch.device("cpu")
    labels, scales = segmenter.predict(image)
    expected_labels, expected_scales = reference.predict(image)
    assert (labels == expected_labels).float().mean() >= 0.999
    assert scales.keys() == expected_scales.keys() == {"classifier"}
    assert torch.allclose(scales["classifier"], expected_scales["classifier"], atol=1e-4)
    assert segmenter.classes == reference.classes and torch.equal(segmenter.palette, reference.palette)
    # Another palette and class names in the file are the ones the segmenter uses.
    graph = onnx.load(str(run["dynamic"]))
    props = {p.key: p.value for p in graph.metadata_props}
    props |= {"palette": json.dumps([[i, 0, 0] for i in range(7)]), "classes": json.dumps([f"c{i}" for i in range(7)])}
    onnx.helper.set_model_props(graph, props)
    onnx.save(graph, str(tmp_path / "relabelled.onnx"))
    relabelled = Segmenter.from_onnx(tmp_path / "relabelled.onnx", device="cpu")
    assert relabelled.classes == tuple(f"c{i}" for i in range(7)) and relabelled.palette[:, 0].tolist() == list(range(7))


def test_the_file_s_normalisation_is_honoured(run: dict[str, Path], tmp_path: Path) -> None:
    graph = onnx.load(str(run["dynamic"]))
    props = {p.key: p.value for p in graph.metadata_props} | {"mean": "[0, 0, 0]", "std": "[1, 1, 1]"}
    onnx.helper.set_model_props(graph, props)
    onnx.save(graph, str(tmp_path / "raw.onnx"))
    raw, ours = OnnxModel(tmp_path / "raw.onnx", "cpu"), OnnxModel(run["dynamic"], "cpu")
    images = torch.randn(1, 3, 40, 56)
    unnormalised = images * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert torch.allclose(raw(images)["out"], ours(unnormalised)["out"], atol=1e-5)


def test_bad_files_are_one_line_each(run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "text.onnx").write_text("not a model\n")
    with pytest.raises(ValueError, match=r"text\.onnx is not an ONNX model onnxruntime can load: "):
        OnnxModel(tmp_path / "text.onnx", "cpu")
    with pytest.raises(FileNotFoundError, match="ONNX file not found"):
        OnnxModel(tmp_path / "none.onnx", "cpu")
    model, _ = load_trained_model(run["checkpoint"])
    bare = export_onnx(model, tmp_path / "bare.onnx", 32, 32).path  # no Segmenter metadata
    with pytest.raises(ValueError) as error:
        Segmenter.from_onnx(bare, device="cpu")
    assert str(error.value) == (
        f"{bare} has no sacseg metadata (classes, palette, mean, std, config missing): write it with 'sacseg export', "
        "or pass Segmenter.metadata() to export_onnx"
    )
    graph = onnx.load(str(run["static"]))
    graph.graph.input[0].name = "x"
    for node in graph.graph.node:
        node.input[:] = ["x" if name == "images" else name for name in node.input]
    onnx.save(graph, str(tmp_path / "renamed.onnx"))
    Image.new("RGB", (8, 8)).save(tmp_path / "image.png")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--onnx", str(tmp_path / "renamed.onnx"), str(tmp_path / "image.png"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"sacseg predict: error: {tmp_path / 'renamed.onnx'}: the graph's input is 'x', but its metadata names 'images'\n"
    )


@pytest.mark.slow  # a whole evaluation of the real CamVid samples, twice
def test_eval_onnx_on_camvid_gives_the_checkpoint_s_miou(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's acceptance check on real data: a tiny CamVid training, its export, both evaluated."""
    camvid, root = shared_data / "camvid", tmp_path / "camvid"
    for sub in ("train", "trainannot"):  # two iterations of batch 2 read four frames
        (root / sub).parent.mkdir(parents=True, exist_ok=True)
        (root / sub).symlink_to(camvid / sub)
    for sub in ("val", "valannot"):
        (root / sub).mkdir()
        for image in sorted((camvid / "val").iterdir())[:6]:
            (root / sub / image.name).symlink_to(camvid / sub / image.name)
    config = Path(__file__).resolve().parents[2] / "configs" / "camvid_baseline_r18.yaml"
    keys = [
        "model=sac_single_resnet18", "epochs=0", "iterations=2", "crop_size=64", "batch_size=2", "workers=0",
        "threads=1", "val_every=2", f"data_root={root}", f"out_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    assert main(["train", "--config", str(config), *(f"--set={key}" for key in keys)]) == 0
    checkpoint, exported = tmp_path / "run" / "last.pt", tmp_path / "camvid.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(exported), "--dynamic", "--device", "cpu",
                 "--height", "64", "--width", "64"]) == 0  # fmt: skip
    scores = {}
    for flag, source in (("--checkpoint", checkpoint), ("--onnx", exported)):
        out = tmp_path / f"{flag[2:]}.json"
        assert main(["eval", flag, str(source), "--scales", "0.5", "--device", "cpu", "--out", str(out)]) == 0
        scores[flag] = json.loads(out.read_text())
    capsys.readouterr()
    assert scores["--onnx"]["num_pixels"] == scores["--checkpoint"]["num_pixels"] > 0.9 * 6 * 480 * 360
    assert abs(scores["--onnx"]["miou"] - scores["--checkpoint"]["miou"]) * 100 <= 0.05
