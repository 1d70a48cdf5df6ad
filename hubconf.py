"""torch.hub entry points: the paper's models (and their deformable rivals) by name and sac_convert, for ``torch.hub.load``.

``torch.hub.load("<owner>/sacseg", "sac_multiple_resnet50", num_classes=19, backbone_weights="imagenet")``
(or a local clone with ``source="local"``); ``torch.hub.list`` names the entries, ``torch.hub.help``
prints one's docstring. ``torch.hub.load(repo, "sac_convert", model, stages=("layer4",))`` converts a
model in place: pass it positionally, ``model=`` is ``torch.hub.load``'s own parameter.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from sacseg.models import MODELS as _MODELS
from sacseg.models import build_model as _build_model
from sacseg.models import sac_convert as sac_convert

# torch.hub.list lists every public callable of this module: the names used in annotations only stay out.
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from sacseg.models import DilatedFCN

dependencies = ["torch", "torchvision"]

_SCHEMES = {
    "fcn": "The paper's baseline: an FCN on a dilated ResNet-{depth}, a 3x3 classifier on res5 upsampled to the input",
    "sac_single": "SAC-single on a dilated ResNet-{depth}: the baseline with a scale-adaptive classifier, its scales regressed from res5",
    "sac_multiple": (
        "SAC-multiple on a dilated ResNet-{depth}: SAC-single with every 3x3 convolution of res5 scale-adaptive too, "
        "sharing one scale map regressed from res4"
    ),
    "dcn_single": (
        "The deformable rival to SAC-single on a dilated ResNet-{depth}: the baseline with a modulated deformable "
        "(DCNv2) classifier, its offsets and masks regressed from res5"
    ),
    "dcn_multiple": (
        "The deformable rival to SAC-multiple on a dilated ResNet-{depth}: DCN-single with every 3x3 convolution of "
        "res5 deformable too, sharing one offset/mask field regressed from res4"
    ),
}

_ORIGINS = {
    False: "The paper's model (Zhang et al., ICCV 2017, section 4.1)",
    True: "The studies' deformable rival to SAC (DCNv2, Zhu et al., CVPR 2019; sacseg.models.DeformableFCN)",
}


def _entry(name: str) -> Callable[..., DilatedFCN]:
    """The hub entry that builds ``sacseg.models.MODELS[name]``, with its builder's signature and a docstring."""
    signature = inspect.signature(_MODELS[name])
    scheme, _, depth = name.rpartition("_resnet")

    def entry(num_classes: int, **options: Any) -> DilatedFCN:
        return _build_model(name, num_classes, **options)

    options = ", ".join(f"{p.name}={p.default!r}" for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY)
    entry.__name__ = entry.__qualname__ = name
    entry.__signature__ = signature  # type: ignore[attr-defined]
    entry.__doc__ = f"""{_SCHEMES[scheme].format(depth=depth)}.

    {_ORIGINS[scheme.startswith("dcn_")]}, as ``sacseg.models.build_model({name!r},
    num_classes, **options)`` builds it.

    Args:
        num_classes: the number of classes.
        options: keyword options, as ``build_model`` documents them (the scale ones are for ``sac_*``
            models only; ``backbone_weights="imagenet"`` downloads torchvision's ImageNet ResNet-{depth},
            the default None leaves the weights random):
            {options}.

    Returns:
        a ``sacseg.models.DilatedFCN``: images ``[N, 3, H, W]`` -> ``{{"out": [N, num_classes, H, W],
        "scales": {{name: [N, 1, h, w]}}}}``.
    """
    return entry


globals().update({name: _entry(name) for name in _MODELS})
