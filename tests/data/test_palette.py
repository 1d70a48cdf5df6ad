"""The generated palette of class lists without one: distinct colours, none near black."""

from __future__ import annotations

import numpy as np
import pytest

from sacseg.data import index_palette
from sacseg.data._base import _lab


def _closest_pair(palette: np.ndarray) -> float:
    lab = _lab(palette.astype(np.float64))
    distance = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    distance[np.eye(len(lab), dtype=bool)] = np.inf
    return float(distance.min())


@pytest.mark.parametrize(("classes", "min_delta_e"), [(7, 60), (11, 60), (19, 40), (32, 30), (150, 15)])
def test_every_two_colours_differ_and_none_is_black(classes: int, min_delta_e: float) -> None:
    palette = index_palette(classes).numpy()
    assert palette.shape == (classes, 3) and palette.dtype == np.uint8
    # CIE76 distances: about 2 is just noticeable, 10 plainly different; the old bit-interleaved
    # palette had black for class 0 and, among 11 classes, three reds 27-33 apart.
    assert _closest_pair(palette) >= min_delta_e
    assert _lab(palette.astype(np.float64))[:, 0].min() > 25  # black is for ignored pixels


def test_a_longer_list_keeps_the_shorter_lists_colours() -> None:
    assert (index_palette(150)[:19] == index_palette(19)).all()
