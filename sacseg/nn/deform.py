"""Modulated deformable convolution (DCNv2), the predictor of its offsets and masks, and the scale its offsets imply."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sacseg.nn.guided import GuidedConv2d
from sacseg.utils.pair import IntOrPair, pair

__all__ = ["ModulatedDeformConv2d", "OffsetMaskPredictor", "deformation_scale", "modulated_deform_conv2d"]


def modulated_deform_conv2d(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> Tensor:
    """``torchvision.ops.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)``
    (DCNv2), computed with PyTorch's own operators: every tap's moved positions sampled at once by
    ``F.grid_sample`` (bilinear, zero outside the input, as torchvision samples), masked, then one
    matrix product with the weights. The same function and gradients (tests compare them in float64);
    on CPU a training step of such a layer takes about a quarter of torchvision's time, whose CPU kernel
    loops over positions, and it stays exportable and compilable like any composite of core operators.
    Memory: the sampled columns ``[N, C_in * kh * kw, H_out, W_out]`` are kept for the backward pass.

    Shapes:
        input ``[N, C_in, H, W]``, offset ``[N, 2 * kh * kw, H_out, W_out]`` (``(dy, dx)`` per tap, taps in
        row-major order, in input pixels), mask ``[N, kh * kw, H_out, W_out]``, weight
        ``[C_out, C_in, kh, kw]``, bias ``[C_out]`` -> ``[N, C_out, H_out, W_out]``.
    """
    (sh, sw), (ph, pw), (dh, dw) = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    n, channels, h, w = input.shape
    out_channels, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    taps = kh * kw
    arange = partial(torch.arange, dtype=input.dtype, device=input.device)
    # Where each tap of the plain convolution reads, per output position: [taps, H_out, W_out, (y, x)].
    ys = (arange(kh) * dh)[:, None, None, None] + (arange(ho) * sh - ph)[None, None, :, None]
    xs = (arange(kw) * dw)[None, :, None, None] + (arange(wo) * sw - pw)[None, None, None, :]
    plain = torch.stack(torch.broadcast_tensors(ys, xs), dim=-1).reshape(taps, ho, wo, 2)
    places = plain + offset.view(n, taps, 2, ho, wo).permute(0, 1, 3, 4, 2)
    # grid_sample takes (x, y) with -1 and 1 at the outer edges of the border pixels (align_corners=False):
    # pixel p sits at (2p + 1) / size - 1.
    grid = (2 * places.flip(-1) + 1) / torch.tensor([w, h], dtype=input.dtype, device=input.device) - 1
    sampled = F.grid_sample(input, grid.view(n, taps * ho, wo, 2), mode="bilinear", padding_mode="zeros", align_corners=False)
    columns = sampled.view(n, channels, taps, ho, wo) * mask.view(n, 1, taps, ho, wo)
    out = torch.einsum("nckhw,ock->nohw", columns, weight.reshape(out_channels, channels, taps))
    return out if bias is None else out + bias.view(1, -1, 1, 1)


class ModulatedDeformConv2d(GuidedConv2d):
    """DCNv2 (Zhu et al., CVPR 2019): every tap of a convolution moved by its own learned offset and
    weighted by its own learned mask, per output position (:func:`modulated_deform_conv2d`, the function
    of ``torchvision.ops.deform_conv2d``).

    Parameters are named, shaped and initialised as ``nn.Conv2d``'s (and ``torchvision.ops.DeformConv2d``'s),
    so a plain convolution's state dict loads into it (:class:`~sacseg.nn.GuidedConv2d`). With zero
    offsets and masks of 1 it computes the plain convolution: every tap then samples an integer
    position, where bilinear sampling returns the pixel itself, and zero outside the input, as zero
    padding does.

    The guide is what :class:`OffsetMaskPredictor` returns: ``2 * kh * kw`` offsets in input pixels,
    ``(dy, dx)`` for each tap in row-major order (``deform_conv2d``'s layout), then ``kh * kw`` masks.

    Shapes:
        input ``[N, C_in, H, W]``, guide ``[N, 3 * kh * kw, H_out, W_out]`` -> ``[N, C_out, H_out, W_out]``,
        with ``H_out, W_out`` as ``nn.Conv2d`` of the same geometry gives.
    """

    def forward(self, input: Tensor, guide: Tensor) -> Tensor:
        taps = self.kernel_size[0] * self.kernel_size[1]
        if guide.shape[1] != 3 * taps:
            raise ValueError(f"guide must have 3 * {taps} channels (offsets, then masks), got {tuple(guide.shape)}")
        offset, mask = guide.split((2 * taps, taps), dim=1)
        return modulated_deform_conv2d(input, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation)


class OffsetMaskPredictor(nn.Module):
    """The offsets and masks of a :class:`ModulatedDeformConv2d` of ``kernel_size`` taps, from features.

    A 3x3 convolution (padding 1: one prediction per feature position, as SAC's
    :class:`~sacseg.nn.ScaleRegressor`) to ``2 * kh * kw`` offsets and ``kh * kw`` mask logits; the
    masks are ``2 * sigmoid(logit)``. Weights and bias start at zero, so every offset starts at 0 and
    every mask at ``2 * sigmoid(0) = 1``: the deformable layer starts as its plain convolution,
    whatever the features (DCNv2's ``sigmoid`` would start the masks at 0.5 and halve the layer's
    output). The weights still get a gradient from the first step (the features times the guide's
    gradient), as the scale regressor's do.

    Shapes:
        features ``[N, C, H, W]`` -> guide ``[N, 3 * kh * kw, H, W]`` (offsets, then masks in ``(0, 2)``).
    """

    def __init__(self, in_channels: int, kernel_size: tuple[int, int] = (3, 3)) -> None:
        super().__init__()
        self.taps = kernel_size[0] * kernel_size[1]
        self.conv = nn.Conv2d(in_channels, 3 * self.taps, 3, padding=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.conv.weight)
        assert self.conv.bias is not None  # made with one
        nn.init.zeros_(self.conv.bias)

    def forward(self, features: Tensor) -> Tensor:
        offset, logit = self.conv(features).split((2 * self.taps, self.taps), dim=1)
        return torch.cat((offset, 2 * torch.sigmoid(logit)), dim=1)

    def extra_repr(self) -> str:
        return f"taps={self.taps}"


def deformation_scale(guide: Tensor, kernel_size: tuple[int, int], dilation: tuple[int, int]) -> Tensor:
    """The isotropic stretch of a deformable layer's taps: the scale ``s`` whose SAC taps ``s * p_k`` are
    the least-squares fit to the moved taps ``p_k + o_k``, so DCN rows report a scale map as SAC's do.

    ``p_k`` is tap ``k``'s place in the plain kernel (dilation included, centre 0) and ``o_k`` its offset:
    ``s = 1 + sum_k <p_k, o_k> / sum_k |p_k|^2``. Exact for offsets that are a SAC stretch
    (``o_k = (s - 1) p_k``); shifts, shears and anisotropic stretches of the taps average out of it,
    and the masks do not enter.

    Shapes:
        guide ``[N, 3 * kh * kw, H, W]`` (:class:`OffsetMaskPredictor`'s) -> scale ``[N, 1, H, W]``.
    """
    kh, kw = kernel_size
    ys = (torch.arange(kh, dtype=guide.dtype, device=guide.device) - kh // 2) * dilation[0]
    xs = (torch.arange(kw, dtype=guide.dtype, device=guide.device) - kw // 2) * dilation[1]
    places = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(kh * kw * 2)  # (dy, dx) per tap
    offsets = guide[:, : 2 * kh * kw]
    return 1 + torch.einsum("nchw,c->nhw", offsets, places / places.square().sum())[:, None]
