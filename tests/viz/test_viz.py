"""Viz: exact palette colours, overlays, denormalisation, and readable PNG figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from sacseg.data import IMAGENET_MEAN, IMAGENET_STD
from sacseg.utils.io import save_png
from sacseg.viz import add_legend, colorize, denormalize, heatmap, overlay, save_report_grid, save_scale_map

PALETTE = torch.tensor([[128, 64, 128], [244, 35, 232], [70, 70, 70]], dtype=torch.uint8)


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


def _labels(h: int = 30, w: int = 50) -> torch.Tensor:
    labels = torch.zeros(h, w, dtype=torch.long)
    labels[:, w // 3 :] = 1
    labels[:, 2 * w // 3 :] = 2
    labels[: h // 5] = 255
    return labels


def test_colorize_uses_the_palette_and_black_for_ignore(tmp_path: Path) -> None:
    labels = _labels()
    rgb = colorize(labels, PALETTE)
    assert rgb.shape == (30, 50, 3) and rgb.dtype == np.uint8
    for k in range(3):
        assert (rgb[labels == k] == PALETTE[k].numpy()).all()
    assert (rgb[labels == 255] == 0).all()
    save_png(rgb, tmp_path / "c.png")
    assert np.array_equal(_read(tmp_path / "c.png"), rgb)  # PNG is lossless and the right size
    with pytest.raises(ValueError, match=r"\[3\]"):
        colorize(torch.tensor([[0, 3]]), PALETTE)
    with pytest.raises(ValueError, match="palette"):
        colorize(labels, PALETTE.long())


def test_overlay_blends() -> None:
    image = np.full((4, 5, 3), 100, np.uint8)
    colours = np.full((4, 5, 3), 200, np.uint8)
    assert (overlay(image, colours, 0.0) == 100).all()
    assert (overlay(image, colours, 1.0) == 200).all()
    assert (overlay(image, colours, 0.25) == 125).all()
    with pytest.raises(ValueError, match=r"\(4, 5, 3\).*\(4, 4, 3\)"):
        overlay(image, colours[:, :4])


def test_denormalize_inverts_imagenet_normalisation() -> None:
    rgb = torch.randint(0, 256, (3, 7, 9), generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    normalised = (rgb / 255.0 - mean) / std
    assert np.array_equal(denormalize(normalised), rgb.permute(1, 2, 0).numpy().astype(np.uint8))


def test_heatmap_follows_the_colour_map() -> None:
    values = torch.tensor([[0.0, 1.0, 2.0, 5.0]])
    rgb = heatmap(values, vmin=0.0, vmax=2.0)
    jet = matplotlib.colormaps["jet"]
    expected = np.array([jet(0.0, bytes=True)[:3], jet(0.5, bytes=True)[:3], jet(1.0, bytes=True)[:3]])
    assert np.array_equal(rgb[0, :3], expected)
    assert np.array_equal(rgb[0, 3], rgb[0, 2])  # clipped to vmax


def test_scale_map_png_has_colour_bar_and_map_colours(tmp_path: Path) -> None:
    scale = torch.ones(1, 40, 80)  # [1, H, W] is accepted
    scale[0, :, 40:] = 3.0
    path = tmp_path / "scale.png"
    save_scale_map(scale, path, vmin=0.5, vmax=3.5, title="classifier", height=3.0, dpi=50)
    rgb = _read(path)
    assert rgb.shape[0] == 150 and rgb.shape[1] > rgb.shape[0]
    jet = matplotlib.colormaps["jet"]
    for value in (1.0, 3.0):
        colour = np.array(jet((value - 0.5) / 3.0, bytes=True)[:3])
        assert (np.abs(rgb.astype(int) - colour).sum(-1) <= 3).mean() > 0.1, value


def test_report_grid_png(tmp_path: Path) -> None:
    image = denormalize(torch.zeros(3, 30, 50))
    colours = colorize(_labels(), PALETTE)
    scale = torch.linspace(0.5, 2.0, 50).expand(30, 50)
    rows = [[image, colours, colours, colours, scale], [image, None, colours, colours, scale * 2]]
    path = tmp_path / "grid.png"
    save_report_grid(rows, path, ["image", "baseline", "SAC", "ground truth", "scale"], cell_height=2.0, dpi=40)
    rgb = _read(path)
    assert rgb.shape[0] > 2 * 2.0 * 40 - 1 and rgb.shape[1] > rgb.shape[0]
    for k in range(3):  # each palette colour shows up as a solid area
        assert (rgb == PALETTE[k].numpy()).all(-1).sum() > 100, k
    with pytest.raises(ValueError, match="row 1 has 4 cells for 5"):
        save_report_grid([rows[0], rows[1][:4]], path, ["image", "baseline", "SAC", "ground truth", "scale"])


def test_importing_sacseg_viz_does_not_import_matplotlib() -> None:
    code = "import sys, sacseg.viz, sacseg.models.inference, sacseg.evaluation.metrics; print('matplotlib' in sys.modules)"
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert out.stdout.strip() == "False"


def test_legend_lists_the_classes_present_with_their_colours() -> None:
    palette = torch.tensor([[200, 0, 0], [0, 200, 0], [0, 0, 200], [200, 200, 0]], dtype=torch.uint8)
    labels = torch.full((20, 120), 255)
    labels[:, :80] = 2  # most pixels first
    labels[:, 80:90] = 0
    picture = colorize(labels, palette)
    out = add_legend(picture, labels, ("red", "green", "blue", "yellow"), palette)
    assert out.shape[0] > 20 and out.shape[1:] == (120, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:20], picture)
    strip = out[20:]

    def columns(colour: list[int]) -> np.ndarray:
        return np.nonzero((strip == colour).all(-1).any(0))[0]

    assert len(columns([0, 0, 200])) and len(columns([200, 0, 0]))  # swatches of the classes present
    assert columns([0, 0, 200]).max() < columns([200, 0, 0]).min()  # largest area first
    assert not len(columns([0, 200, 0])) and not len(columns([200, 200, 0]))  # absent classes are not listed
    text = strip[:, columns([0, 0, 200]).max() + 2 : columns([200, 0, 0]).min() - 1]
    assert (text.max(-1) < 128).any()  # the name "blue" in dark text between the two swatches
    ignored = torch.full((4, 4), 255)
    assert add_legend(colorize(ignored, palette), ignored, ("red", "green", "blue", "yellow"), palette).shape == (4, 4, 3)
    with pytest.raises(ValueError, match=r"palette must be \[3, 3\]"):
        add_legend(picture, labels, ("red", "green", "blue"), palette)
