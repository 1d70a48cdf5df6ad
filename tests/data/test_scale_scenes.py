"""Tests of the ScaleScenes generator: determinism, object records against the drawn masks, size range."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sacseg.data import ScaleScenes, train_transforms
from sacseg.data.scale_scenes import CLASSES, HUE_SPREAD, HUES, OBJECT_CLASSES, SHAPES


def test_same_seed_same_scenes_in_any_order() -> None:
    a, b = ScaleScenes(5, size=96, seed=3), ScaleScenes(5, size=96, seed=3)
    later = b.load(4)
    first = [a.load(i) for i in range(5)]
    assert torch.equal(first[4][0], later[0]) and torch.equal(first[4][1], later[1])
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(first, (b.load(i) for i in range(5))))
    assert not torch.equal(first[0][0], first[1][0])
    other = ScaleScenes(5, size=96, seed=4).load(0)
    assert not torch.equal(first[0][0], other[0])


def test_sample_format() -> None:
    ds = ScaleScenes(3, size=64, radius_range=(2, 16))
    assert ds.classes == CLASSES and ds.ignore_index == 255
    assert ds.palette.dtype == torch.uint8 and tuple(ds.palette.shape) == (len(CLASSES), 3)
    image, target = ds[0]
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, 64, 64)
    assert target.dtype == torch.long and tuple(target.shape) == (64, 64)
    assert set(target.unique().tolist()) <= set(range(len(CLASSES)))
    image, target = ScaleScenes(3, size=64, radius_range=(2, 16), transforms=train_transforms(48))[1]
    assert tuple(image.shape) == (3, 48, 48) and tuple(target.shape) == (48, 48)


def test_object_records_match_the_drawn_masks() -> None:
    ds = ScaleScenes(20, size=128, radius_range=(2.0, 30.0))
    whole = 0
    for index in range(len(ds)):
        instances, records = ds.objects(index)
        _, label = ds.load(index)
        assert instances.dtype == torch.long and instances.shape == label.shape
        assert set(instances.unique().tolist()) <= {0} | {r["id"] for r in records}
        for record in records:
            mask = instances == record["id"]
            assert record["area"] == int(mask.sum()) <= record["drawn_area"]
            assert record["class"] in OBJECT_CLASSES
            assert (label[mask] == record["class"]).all()
            cx, cy = record["center"]
            r = record["size"]
            inside_image = r * 2.4 < min(cx, cy, 128 - cx, 128 - cy)  # 2.4 > the largest half extent / radius
            if inside_image and record["area"] == record["drawn_area"] and r >= 4:
                whole += 1
                assert math.sqrt(record["area"] / math.pi) == pytest.approx(r, rel=0.1, abs=0.5)
        # The object classes are exactly where the instance map is non-zero.
        assert torch.equal(instances > 0, label >= OBJECT_CLASSES[0])
    assert whole >= 10


def test_sizes_span_an_order_of_magnitude_with_perspective() -> None:
    ds = ScaleScenes(20, size=256)
    records = [r for i in range(len(ds)) for r in ds.objects(i)[1]]
    sizes = np.array([r["size"] for r in records])
    assert sizes.max() / sizes.min() >= 10
    centre_y = np.array([r["center"][1] for r in records])
    assert np.corrcoef(sizes, centre_y)[0, 1] > 0.8  # near (low in the image) = large
    assert {r["class"] for r in records} == set(OBJECT_CLASSES)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="radius_range"):
        ScaleScenes(2, size=64, radius_range=(4, 40))
    with pytest.raises(ValueError, match="num_objects"):
        ScaleScenes(2, num_objects=(5, 2))
    with pytest.raises(IndexError, match="out of range"):
        ScaleScenes(2).objects(2)


def test_each_object_class_has_its_silhouette_and_hue() -> None:
    """The cues that make the classes learnable: how much of its bounding box an unoccluded object fills
    (rectangle 1, ellipse pi/4, ring 3/4 of that, triangle 1/2), and the hue of its bright colour."""
    ds = ScaleScenes(40, size=128, noise=0.0)
    fills: dict[str, list[float]] = {name: [] for name in SHAPES}
    hues: dict[str, list[float]] = {name: [] for name in SHAPES}
    for index in range(len(ds)):
        instances, records = ds.objects(index)
        image = ds.load(index)[0].permute(1, 2, 0).numpy().astype(float)
        for record in records:
            if record["size"] < 6 or record["area"] != record["drawn_area"]:
                continue
            mask = (instances == record["id"]).numpy()
            ys, xs = np.nonzero(mask)
            if ys.min() == 0 or xs.min() == 0 or ys.max() == 127 or xs.max() == 127:
                continue  # cut by the border
            name = CLASSES[record["class"]]
            fills[name].append(mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)))
            pixels = image[mask]
            bright = pixels[pixels.sum(1) >= np.quantile(pixels.sum(1), 0.9)].mean(0)
            r, g, b = bright
            hues[name].append(math.degrees(math.atan2(math.sqrt(3) * (g - b), 2 * r - g - b)) % 360)
    expected_fill = {"stripes": 1.0, "checker": 0.5, "dots": math.pi / 4, "rings": 0.75 * math.pi / 4}
    for name in SHAPES:
        assert len(fills[name]) >= 5, name
        assert np.median(fills[name]) == pytest.approx(expected_fill[name], abs=0.08), name
        off = [min(abs(h - HUES[name]), 360 - abs(h - HUES[name])) for h in hues[name]]
        assert np.median(off) <= HUE_SPREAD + 10, (name, hues[name])
