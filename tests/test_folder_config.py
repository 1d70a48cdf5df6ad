"""Own data from the command line: ``dataset: folder`` trained, evaluated and predicted through ``sacseg``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sacseg import Segmenter
from sacseg.checkpoint import load_checkpoint
from sacseg.cli import main
from sacseg.config import apply_overrides, load_config
from sacseg.data import index_palette
from sacseg.factory import build_datasets, dataset_labels

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")
EXAMPLE = REPO / "configs" / "folder_example.yaml"
# colour of each class in the generated images, and the palette the config gives
COLOURS = np.array([[20, 20, 20], [128, 64, 128], [0, 0, 142]], np.uint8)


def _make_folder(root: Path, counts: dict[str, int], size: int = 64) -> None:
    """Masks of stripes of classes 0..2 and the ignore value 9; images painted by class."""
    rng = np.random.default_rng(0)
    for split, count in counts.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(count):
            mask = np.zeros((size, size), np.uint8)
            cut = sorted(rng.integers(8, size - 8, 2))
            mask[:, cut[0] :] = 1
            mask[:, cut[1] :] = 2
            mask[:4] = 9  # unlabelled
            image = COLOURS[np.minimum(mask, 2)] + rng.integers(0, 10, (size, size, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"frame_{i:02d}.jpg", quality=95)
            Image.fromarray(mask).save(root / "masks" / split / f"frame_{i:02d}.png")
    (root / "classes.txt").write_text("background\nroad\n\nvehicle\n")


def test_folder_dataset_trains_evaluates_and_predicts_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    _make_folder(data, {"train": 2, "val": 1})
    palette = json.dumps(COLOURS.tolist())
    run = tmp_path / "run"
    sets = [
        f"data_root={data}", "folder_classes=classes.txt", f"folder_palette={palette}", "folder_ignore_index=9",
        "epochs=0", "iterations=2", "crop_size=64", "batch_size=2", "workers=0", "threads=1", "val_every=2",
        "checkpoint_every=2",
    ]  # fmt: skip
    args = ["train", "--config", str(EXAMPLE), "--out", str(run)]
    assert main([*args, *(a for s in sets for a in ("--set", s))]) == 0
    assert "trained 2 iterations" in capsys.readouterr().out

    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--set", "workers=0"]) == 0
    printed = capsys.readouterr().out
    assert "fcn_resnet18 on folder val (1 images; mode whole" in printed
    assert all(name in printed for name in ("background", "road", "vehicle"))
    doc = json.loads((run / "eval_last_val_whole.json").read_text())
    assert list(doc["classes"]) == ["background", "road", "vehicle"] and doc["num_pixels"] == 60 * 64  # ignore rows left out

    out = tmp_path / "pred"
    # Without the legend strip (its text is drawn in other colours), every pixel is a class colour.
    predict = ["predict", "--checkpoint", str(run / "last.pt"), str(data / "images" / "val"), "--out", str(out)]
    assert main([*predict, "--no-legend"]) == 0
    colours = np.asarray(Image.open(out / "frame_00_color.png")).reshape(-1, 3)
    assert {tuple(c) for c in np.unique(colours, axis=0)} <= {tuple(c) for c in COLOURS.tolist()}


def test_folder_keys_are_checked(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _make_folder(data, {"train": 2, "val": 1})
    cfg = apply_overrides(load_config(EXAMPLE), [f"data_root={data}", "folder_classes=classes.txt", "folder_ignore_index=9"])
    train_set, val_set = build_datasets(cfg)
    assert (len(train_set), len(val_set)) == (2, 1) and train_set.classes == ("background", "road", "vehicle")
    assert dataset_labels(cfg)[1].shape == (3, 3)  # generated
    with pytest.raises(FileNotFoundError, match=f"config key 'folder_classes'.*{data / 'names.txt'}"):
        dataset_labels(apply_overrides(cfg, ["folder_classes=names.txt"]))
    with pytest.raises(ValueError, match="config key 'folder_palette' must be 3 colours"):
        dataset_labels(apply_overrides(cfg, ["folder_palette=[[0, 0, 0]]"]))
    with pytest.raises(ValueError, match="config key 'folder_classes' must be list of str or str or null, got 3"):
        apply_overrides(cfg, ["folder_classes=3"])
    with pytest.raises(ValueError, match="'folder_classes' .* is needed for dataset 'folder'"):
        apply_overrides(cfg, ["folder_classes=null"])
    with pytest.raises(FileNotFoundError, match=f"mask folder not found: {data / 'labels' / 'train'}"):
        build_datasets(apply_overrides(cfg, ["folder_masks=labels/{split}"]))


def test_a_checkpoint_names_its_classes_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The run: data_root relative to the working directory, the class names in a file there.
    _make_folder(tmp_path / "my_data", {"train": 2, "val": 1})
    monkeypatch.chdir(tmp_path)
    sets = [
        "data_root=my_data", "folder_classes=classes.txt", "folder_ignore_index=9", "epochs=0", "iterations=1",
        "crop_size=64", "batch_size=2", "workers=0", "threads=1", "val_every=1",
    ]  # fmt: skip
    assert main(["train", "--config", str(EXAMPLE), "--out", "run", *(a for s in sets for a in ("--set", s))]) == 0
    checkpoint = tmp_path / "run" / "last.pt"
    names = ["background", "road", "vehicle"]
    assert load_checkpoint(checkpoint)["labels"] == {"dataset": "folder", "classes": names, "palette": index_palette(3).tolist()}
    other = tmp_path / "other_data"  # the data elsewhere, without the class-name file
    shutil.copytree(tmp_path / "my_data", other)
    (other / "classes.txt").unlink()
    monkeypatch.chdir(tmp_path / "run")
    capsys.readouterr()

    segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu")
    assert segmenter.classes == tuple(names) and torch.equal(segmenter.palette, index_palette(3))
    assert segmenter.metadata()["ignore_index"] == "9"  # what sacseg export stores: the masks' value
    assert main(["eval", "--checkpoint", str(checkpoint), "--data-root", str(other), "--set", "workers=0"]) == 0
    printed = capsys.readouterr().out
    assert "fcn_resnet18 on folder val (1 images" in printed and all(name in printed for name in names)
    assert main(["predict", "--checkpoint", str(checkpoint), str(other / "images" / "val"), "--out", "pred"]) == 0
    assert (tmp_path / "run" / "pred" / "frame_00_color.png").is_file()
