"""Tests of the joint train / eval transforms: alignment of image and label, no invented label values."""

from __future__ import annotations

import pytest
import torch

from sacseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transforms, train_transforms

LEVEL = 20  # image intensity per label value in the label-shaped test image


def _label_shaped_pair(seed: int, height: int = 64, width: int = 96, block: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Random block x block squares of labels 0..9; every image channel encodes the label (value * LEVEL)."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 10, (height // block, width // block), generator=g, dtype=torch.uint8)
    label = blocks.repeat_interleave(block, 0).repeat_interleave(block, 1)
    image = (label * LEVEL).expand(3, -1, -1).clone()
    return image, label


@pytest.mark.parametrize("crop_size", [80, (48, 112)])
def test_train_transforms_keep_image_and_label_aligned(crop_size: int | tuple[int, int]) -> None:
    transform = train_transforms(crop_size=crop_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    expected_shape = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    for seed in range(12):
        torch.manual_seed(seed)
        image, label = _label_shaped_pair(seed)
        out_image, target = transform(image, label)
        assert out_image.dtype == torch.float32 and target.dtype == torch.long
        assert tuple(out_image.shape) == (3, *expected_shape) and tuple(target.shape) == expected_shape
        decoded = (out_image * 255 / LEVEL).round().long()
        assert torch.equal(decoded[0], decoded[2])
        labelled = target != 255
        # Bilinear resampling blends intensities across block edges: compare away from edges (5x5 constant label).
        interior = labelled & _constant_neighbourhood(target, 5)
        assert interior.sum() > 100
        assert torch.equal(decoded[0][interior], target[interior]), f"seed {seed}: image and label misaligned"
        assert torch.all(out_image[:, ~labelled] == 0), "padding must be 0 in the image where the label is 255"


def _constant_neighbourhood(target: torch.Tensor, size: int) -> torch.Tensor:
    """bool [H, W]: the label is the same everywhere in the size x size window around the pixel."""
    t = target[None, None].float()
    pool = torch.nn.functional.max_pool2d
    high = pool(t, size, stride=1, padding=size // 2)
    low = -pool(-t, size, stride=1, padding=size // 2)
    return (high == low)[0, 0]


def test_train_transforms_never_invent_label_values() -> None:
    transform = train_transforms(crop_size=64, scale_range=(0.3, 2.0))
    for seed in range(10):
        torch.manual_seed(seed)
        image, label = _label_shaped_pair(seed)
        label[label == 3] = 255
        _, target = transform(image, label)
        assert set(target.unique().tolist()) <= set(label.unique().tolist()) | {255}


def test_train_transforms_flip_and_scale_happen() -> None:
    image, label = _label_shaped_pair(0, 40, 40, block=10)
    transform = train_transforms(crop_size=40, scale_range=(1.0, 1.0), flip=True)
    targets = set()
    for seed in range(10):
        torch.manual_seed(seed)
        targets.add(tuple(transform(image, label)[1].flatten().tolist()))
    assert targets == {tuple(label.long().flatten().tolist()), tuple(label.long().flip(-1).flatten().tolist())}


def test_eval_transforms_normalise_only() -> None:
    image, label = _label_shaped_pair(1)
    out_image, target = eval_transforms()(image, label)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(out_image, (image.float() / 255 - mean) / std)
    assert torch.equal(target, label.long())


def test_transforms_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="crop_size"):
        train_transforms(crop_size=(0, 10))
    with pytest.raises(ValueError, match="scale_range"):
        train_transforms(scale_range=(1.5, 0.5))
    image, label = _label_shaped_pair(0)
    with pytest.raises(ValueError, match="differ in size"):
        eval_transforms()(image, label[:-1])
