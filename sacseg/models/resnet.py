"""Dilated ResNet backbones (output stride 8 or 16) under torchvision's parameter names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision import models as tvm

from sacseg.models._state import check_state_dict
from sacseg.nn import GuidedConv2d, ScaleAdaptiveConv2d

__all__ = ["BasicBlock", "Bottleneck", "DilatedResNet", "ResStage", "load_backbone_weights", "stage_geometry"]

NormLayer = Callable[[int], nn.Module]

#: The torchvision weights that ``backbone_weights="imagenet"`` loads: IMAGENET1K_V1, the original
#: ResNet recipe (the only one for ResNet-18, the one torchvision's own FCN/DeepLabV3 start from, and
#: the closest to the paper's ImageNet ResNet-101).
IMAGENET_WEIGHTS = {
    18: tvm.ResNet18_Weights.IMAGENET1K_V1,
    50: tvm.ResNet50_Weights.IMAGENET1K_V1,
    101: tvm.ResNet101_Weights.IMAGENET1K_V1,
}


def stage_geometry(output_stride: int) -> list[tuple[int, int]]:
    """``(stride, dilation)`` of ``layer1..layer4`` for an output stride: the one place that converts.

    As in timm: once the stem and the stages reached ``output_stride``, each further stride is
    removed and multiplied into the dilation instead. 8 -> ``[(1, 1), (2, 1), (1, 2), (1, 4)]``,
    16 -> ``[(1, 1), (2, 1), (2, 1), (1, 2)]``.
    """
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
    geometry, reached, dilation = [], 4, 1  # the stem (conv1 + maxpool) has stride 4
    for stride in (1, 2, 2, 2):
        if reached >= output_stride:
            dilation, stride = dilation * stride, 1
        else:
            reached *= stride
        geometry.append((stride, dilation))
    return geometry


def _conv3x3(in_channels: int, out_channels: int, stride: int, dilation: int, sac: bool) -> nn.Module:
    conv = ScaleAdaptiveConv2d if sac else nn.Conv2d
    return conv(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _conv(conv: nn.Module, x: Tensor, scale: Tensor | None) -> Tensor:
    """``conv(x)``, or ``conv(x, scale)`` when ``conv`` takes a guide: a SAC layer's scale map, or a
    deformable layer's offsets and masks (``sacseg.models.DeformableFCN``), passed where SAC passes its map."""
    if isinstance(conv, GuidedConv2d):
        if scale is None:
            raise ValueError(
                f"this block has {type(conv).__name__} layers: pass a scale map [N, 1, H_out, W_out] (SAC) "
                "or their offsets and masks (DCN)"
            )
        return conv(x, scale)
    return conv(x)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` (same names) with dilation and optionally SAC 3x3 convolutions.

    Shapes:
        ``[N, inplanes, H, W]`` (and scale ``[N, 1, H/stride, W/stride]`` when ``sac``) ->
        ``[N, planes, H/stride, W/stride]``.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        dilation: int,
        downsample: nn.Module | None,
        norm_layer: NormLayer,
        sac: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation, sac)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation, sac)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def forward(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        out = self.relu(self.bn1(_conv(self.conv1, x, scale)))
        out = self.bn2(_conv(self.conv2, out, scale))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (ResNet v1.5: stride on the 3x3, same names), dilated, optionally SAC.

    Shapes:
        ``[N, inplanes, H, W]`` (and scale ``[N, 1, H/stride, W/stride]`` when ``sac``) ->
        ``[N, 4 * planes, H/stride, W/stride]``.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        dilation: int,
        downsample: nn.Module | None,
        norm_layer: NormLayer,
        sac: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation, sac)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(_conv(self.conv2, out, scale)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResStage(nn.Sequential):
    """A ResNet stage (``layer1``..``layer4``): its blocks in turn, each given the same scale map.

    The scale is an argument rather than module state, so the data flow stays explicit for
    ``torch.compile`` and ONNX export. Shapes: ``[N, C_in, H, W]`` (+ scale ``[N, 1, h, w]`` at the
    stage's output resolution when its blocks are SAC) -> ``[N, C_out, h, w]``.
    """

    def forward(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        for block in self:
            x = block(x, scale)
        return x


_ARCHITECTURES: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class DilatedResNet(nn.Module):
    """ResNet-18/50/101 without its classifier, with the last stages dilated to output stride 8 or 16.

    Parameter names are torchvision's ``resnet*`` ones (``conv1``, ``bn1``, ``layer1.0.conv1`` ...),
    so its ImageNet state dicts load unchanged (less ``fc.*``). A dilated stage dilates *all* its 3x3
    convolutions, the first block's included (the paper's and DeepLab's ResNet; torchvision's
    ``replace_stride_with_dilation`` keeps the previous dilation in the first block). With
    ``sac_res5`` every 3x3 convolution of ``layer4`` is a :class:`ScaleAdaptiveConv2d` and
    :meth:`forward` needs the scale map they share.

    Shapes:
        images ``[N, 3, H, W]`` -> res4 ``[N, res4_channels, ceil(H/os'), ceil(W/os')]`` (``os'`` = 8 at
        output stride 8, 16 at 16) -> res5 ``[N, out_channels, ceil(H/os), ceil(W/os)]``.
    """

    def __init__(
        self, depth: int, output_stride: int = 8, sac_res5: bool = False, norm_layer: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        if depth not in _ARCHITECTURES:
            raise ValueError(f"depth must be one of {sorted(_ARCHITECTURES)}, got {depth!r}")
        block, counts = _ARCHITECTURES[depth]
        geometry = stage_geometry(output_stride)
        self.depth = depth
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        stages = []
        for index, (planes, count, (stride, dilation)) in enumerate(zip((64, 128, 256, 512), counts, geometry)):
            sac = sac_res5 and index == 3
            out_channels = planes * block.expansion
            downsample = None
            if stride != 1 or inplanes != out_channels:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, out_channels, 1, stride=stride, bias=False), norm_layer(out_channels)
                )
            blocks = [block(inplanes, planes, stride, dilation, downsample, norm_layer, sac)]
            blocks += [block(out_channels, planes, 1, dilation, None, norm_layer, sac) for _ in range(count - 1)]
            stages.append(ResStage(*blocks))
            inplanes = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.res4_channels = 256 * block.expansion
        self.out_channels = 512 * block.expansion
        self.res5_dilation = geometry[3][1]
        # torchvision's initialisation, so an untrained backbone starts where torchvision's would.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, ScaleAdaptiveConv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_res4(self, images: Tensor) -> Tensor:
        """The output of the 4th residual stage (``layer3``), ``[N, res4_channels, h, w]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, images: Tensor, res5_scale: Tensor | None = None) -> Tensor:
        """res5 features ``[N, out_channels, h, w]``; ``res5_scale`` ``[N, 1, h, w]`` iff ``sac_res5``."""
        return self.layer4(self.forward_res4(images), res5_scale)


def _read_state_dict(path: Path) -> Mapping[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict (a mapping of names to tensors) of a torchvision resnet")
    return state


def _download_imagenet(depth: int) -> Mapping[str, Tensor]:
    weights = IMAGENET_WEIGHTS[depth]
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except OSError as err:  # urllib's URLError and socket errors are OSErrors
        name = weights.url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"could not download the ImageNet weights of resnet{depth} ({weights!r}) from {weights.url}: {err}. "
            f"Offline, fetch that file on a machine with internet and pass its path instead, "
            f"backbone_weights='/path/to/{name}' (or put it into $TORCH_HOME/hub/checkpoints/)"
        ) from err


def load_backbone_weights(backbone: DilatedResNet, weights: str | Path) -> None:
    """Load torchvision ResNet weights into ``backbone``: ``"imagenet"`` or the path of a state dict.

    The state dict is a torchvision ``resnet*`` one; its ``fc.*`` keys are ignored, any other
    missing, unexpected or misshapen key raises ``ValueError`` naming the keys and the source
    (before anything is loaded).
    """
    if weights == "imagenet":
        state, source = _download_imagenet(backbone.depth), IMAGENET_WEIGHTS[backbone.depth].url
    else:
        path = Path(weights)
        state, source = _read_state_dict(path), str(path)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    check_state_dict(backbone.state_dict(), state, f"{source} does not fit a resnet{backbone.depth} backbone")
    backbone.load_state_dict(state)
