"""Joint image + label transforms (random scale, crop, flip, ImageNet normalisation) on torchvision v2."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from sacseg.utils.pair import IntOrPair, positive_pair

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255

ImageLike = Image.Image | torch.Tensor | np.ndarray
JointTransform = Callable[[ImageLike, ImageLike], tuple[torch.Tensor, torch.Tensor]]


class RandomScale(v2.Transform):
    """Resize image and mask jointly by one factor drawn uniformly from ``scale_range``.

    Images are resampled bilinearly (with antialiasing when shrinking); ``tv_tensors.Mask`` inputs are
    resampled with nearest neighbour by torchvision's mask kernel, so no label value is invented.
    """

    def __init__(self, scale_range: tuple[float, float]) -> None:
        super().__init__()
        low, high = (float(s) for s in scale_range)
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (low, high)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        factor = float(torch.empty(()).uniform_(*self.scale_range))
        return {"size": [max(1, round(height * factor)), max(1, round(width * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


class _Joint:
    """Wrap a v2 pipeline as ``(image, label) -> (image float [3, H, W], target long [H, W])``."""

    def __init__(self, pipeline: v2.Transform) -> None:
        self.pipeline = pipeline

    def __call__(self, image: ImageLike, label: ImageLike) -> tuple[torch.Tensor, torch.Tensor]:
        image_t, label_t = _to_tv_tensors(image, label)
        out_image, out_label = self.pipeline(image_t, label_t)
        return out_image.as_subclass(torch.Tensor), out_label.as_subclass(torch.Tensor).long()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"


def _to_tv_tensors(image: ImageLike, label: ImageLike) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Image: PIL RGB, uint8 array [H, W, 3] or uint8 tensor [3, H, W]; label: PIL, array or tensor [H, W]."""
    if isinstance(image, Image.Image):
        image_t = F.pil_to_tensor(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    else:
        image_t = image
    if isinstance(label, Image.Image):
        label_t = torch.from_numpy(np.array(label))
    elif isinstance(label, np.ndarray):
        label_t = torch.from_numpy(label)
    else:
        label_t = label
    if image_t.ndim != 3 or image_t.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W] (or PIL / [H, W, 3] array), got shape {tuple(image_t.shape)}")
    if label_t.ndim != 2:
        raise ValueError(f"label must be [H, W], got shape {tuple(label_t.shape)}")
    if image_t.shape[-2:] != label_t.shape:
        raise ValueError(f"image {tuple(image_t.shape[-2:])} and label {tuple(label_t.shape)} differ in size")
    return tv_tensors.Image(image_t), tv_tensors.Mask(label_t)


def _to_normalised_float(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.Normalize(mean, std)]


def train_transforms(
    crop_size: IntOrPair = 500,
    scale_range: tuple[float, float] = (0.5, 1.5),
    flip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> JointTransform:
    """Training augmentation of the paper: random resize, random crop, horizontal flip, normalisation.

    The image is normalised first, so where the (resized) input is smaller than ``crop_size`` the image is
    padded with 0 in normalised space (= the mean colour) and the label with 255 (ignored).
    Returns a callable ``(image, label) -> (image float [3, h, w], target long [h, w])``.
    """
    steps: list[v2.Transform] = _to_normalised_float(mean, std)
    steps.append(RandomScale(scale_range))
    steps.append(
        v2.RandomCrop(
            positive_pair(crop_size, "crop_size"), pad_if_needed=True, fill={tv_tensors.Image: 0.0, tv_tensors.Mask: IGNORE_INDEX}
        )
    )
    if flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    return _Joint(v2.Compose(steps))


def eval_transforms(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> JointTransform:
    """Evaluation: to float and normalise only; ``(image, label) -> (image float [3, H, W], target long [H, W])``."""
    return _Joint(v2.Compose(_to_normalised_float(mean, std)))
