"""Inference on whole images or sliding windows, with multi-scale and flip fusion."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sacseg.options import InferenceMode, InferenceOptions

__all__ = ["InferenceMode", "InferenceOptions", "predict", "predict_labels", "predict_with_scales"]


def _forward(model: nn.Module, images: Tensor) -> dict[str, Any]:
    out = model(images)
    if not isinstance(out, dict) or "out" not in out:
        raise TypeError(f"the model must return a dict with an 'out' entry, got {type(out).__name__}")
    logits = out["out"]
    if logits.dim() != 4 or logits.shape[0] != images.shape[0] or logits.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"the model's 'out' must be [N, K, H, W] at the input size: input {tuple(images.shape)}, out {tuple(logits.shape)}"
        )
    return out


def _window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window offsets along one axis: every ``stride``, plus the last one flush with the border."""
    if size <= crop:
        return [0]
    starts = list(range(0, size - crop, stride))
    starts.append(size - crop)
    return starts


def _slide_logits(model: nn.Module, images: Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Logits ``[N, K, H, W]`` averaged over the windows covering each pixel."""
    h, w = images.shape[-2:]
    # A window larger than the image is clipped to it (per dimension), as in mmsegmentation: padding
    # would show the model a border the whole image does not have, so slide and whole would differ.
    crop = (min(crop[0], h), min(crop[1], w))
    total: Tensor | None = None
    count = torch.zeros(1, 1, h, w, dtype=torch.float32, device=images.device)
    for top in _window_starts(h, crop[0], stride[0]):
        for left in _window_starts(w, crop[1], stride[1]):
            window = images[..., top : top + crop[0], left : left + crop[1]]
            logits = _forward(model, window)["out"].float()
            if total is None:
                total = images.new_zeros(images.shape[0], logits.shape[1], h, w, dtype=torch.float32)
            total[..., top : top + crop[0], left : left + crop[1]] += logits
            count[..., top : top + crop[0], left : left + crop[1]] += 1
    assert total is not None  # at least one window always exists
    return total / count


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, options: InferenceOptions = InferenceOptions()) -> Tensor:
    """Class probabilities ``[N, K, H, W]`` for normalised images ``[N, 3, H, W]``.

    For each of ``options.scales`` the images are resized (bilinear), run whole (``mode="whole"``)
    or in ``crop_size`` windows every ``stride`` pixels (``mode="slide"``; overlapping logits are
    averaged, the last window is aligned to the border, and a window taller or wider than the
    image is clipped to its height or width, so one covering the image is exactly ``mode="whole"``),
    with ``flip`` also mirrored left-right; the softmax
    probabilities of every pass are resized back to ``H, W`` and averaged.

    The model must already be in eval mode; it is run without gradients.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [N, 3, H, W], got shape {tuple(images.shape)}")
    window = options.window()
    h, w = images.shape[-2:]
    probs: Tensor | None = None
    passes = 0
    for scale in options.scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if options.flip else (False,):
            x = scaled.flip(-1) if mirrored else scaled
            logits = _forward(model, x)["out"] if window is None else _slide_logits(model, x, *window)
            p = logits.float().softmax(dim=1)
            if mirrored:
                p = p.flip(-1)
            if size != (h, w):
                p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
            probs = p if probs is None else probs + p
            passes += 1
    assert probs is not None
    return probs / passes


@torch.no_grad()
def predict_with_scales(model: nn.Module, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """One whole-image pass for pictures: probabilities ``[N, K, H, W]`` and the model's scale maps.

    Each scale map ``[N, 1, h, w]`` is resized (bilinear) to the input size, giving
    ``{name: [N, 1, H, W]}`` (empty for a model without scale-adaptive layers).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [N, 3, H, W], got shape {tuple(images.shape)}")
    out = _forward(model, images)
    size = images.shape[-2:]
    scale_maps = {
        name: s if s.shape[-2:] == size else F.interpolate(s.float(), size=size, mode="bilinear", align_corners=False)
        for name, s in dict(out.get("scales", {})).items()
    }
    return out["out"].float().softmax(dim=1), scale_maps


@torch.no_grad()
def predict_labels(
    model: nn.Module, images: Tensor, options: InferenceOptions = InferenceOptions(), with_scales: bool = True
) -> tuple[Tensor, dict[str, Tensor]]:
    """Class indices ``[N, H, W]`` (long) for normalised images ``[N, 3, H, W]``, and the scale maps.

    The labels are the argmax of :func:`predict`'s probabilities under ``options``. With
    ``with_scales`` the scale maps ``{name: [N, 1, H, W]}`` come from one whole-image pass at scale 1
    (:func:`predict_with_scales`, which also gives the labels when the options ask for no more than
    that pass); without, the dict is empty.
    """
    probs, scale_maps = predict_with_scales(model, images) if with_scales else (None, {})
    if probs is None or not options.single_pass:
        probs = predict(model, images, options)
    return probs.argmax(1), scale_maps
