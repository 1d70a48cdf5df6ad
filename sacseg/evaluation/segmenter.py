"""One object from a checkpoint to class labels and scale maps for an image or a folder of images."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from sacseg import __version__
from sacseg.config import TrainConfig, apply_overrides, load_config
from sacseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sacseg.evaluation.onnx_model import OnnxModel
from sacseg.evaluation.predict_files import find_images, load_image, to_model_input
from sacseg.factory import load_trained_model
from sacseg.labels import dataset_labels, ignored_mask_value
from sacseg.models.inference import predict_labels
from sacseg.options import InferenceOptions
from sacseg.utils.device import model_device, resolve_device

__all__ = ["ImageInput", "Segmenter", "load_model_and_config", "load_onnx_and_config"]

#: What :meth:`Segmenter.predict` takes: an image file, a PIL image, or the RGB pixels of one image or a
#: batch as a tensor (``[3, H, W]`` / ``[N, 3, H, W]``, as torchvision's ``read_image`` and ``to_tensor``
#: give) or an array (``[H, W, 3]`` / ``[N, H, W, 3]``, as PIL and OpenCV give, in RGB order), uint8 0..255
#: or float 0..1. Not normalised: :class:`Segmenter` applies its model's normalisation.
ImageInput = str | os.PathLike | Image.Image | np.ndarray | Tensor


# The keys that build the network (build_model_from_config); a checkpoint's weights fix them.
_MODEL_KEYS = ("model", "output_stride", "upsample", "min_scale", "max_scale", "scale_bound", "frozen_bn")


def load_model_and_config(
    checkpoint: str | os.PathLike[str],
    device: str | torch.device = "auto",
    config: str | os.PathLike[str] | TrainConfig | None = None,
    overrides: Iterable[str] = (),
    report: Callable[[str], None] | None = None,
) -> tuple[nn.Module, TrainConfig]:
    """A checkpoint's model (eval mode, on ``device``; ``"auto"``: CUDA when available) and its config.

    The config is ``config`` (a YAML path or a ``TrainConfig``; it also serves a checkpoint that
    stores none) or else the checkpoint's, with ``overrides`` (``"key=value"``) applied. The model
    is always built from the checkpoint's own config, and the config's model keys are replaced by
    the checkpoint's (``report`` is told which), so that what is printed and recorded is the model
    that runs. ValueError when the config's ``num_classes`` disagrees with the model's;
    FileNotFoundError / ValueError name a missing or bad file.
    """
    given = load_config(config) if isinstance(config, (str, os.PathLike)) else config
    model, model_cfg = load_trained_model(checkpoint, resolve_device(device), default_config=given)
    return model, _run_config(given, model_cfg, overrides, (checkpoint, "checkpoint"), report)


def load_onnx_and_config(
    path: str | os.PathLike[str],
    device: str | torch.device = "auto",
    config: str | os.PathLike[str] | TrainConfig | None = None,
    overrides: Iterable[str] = (),
    report: Callable[[str], None] | None = None,
) -> tuple[OnnxModel, TrainConfig]:
    """:func:`load_model_and_config` for a file written by ``sacseg export``: an :class:`OnnxModel`
    (onnxruntime with the config's ``threads``, if any) and the config, the file's unless ``config``."""
    given = load_config(config) if isinstance(config, (str, os.PathLike)) else config
    model = OnnxModel(path, device)
    cfg = _run_config(given, model.config, overrides, (path, "ONNX file"), report)
    # The threads are known once the config is: onnxruntime takes them when a session starts.
    return (OnnxModel(path, device, cfg.threads) if cfg.threads else model), cfg


def _run_config(
    given: TrainConfig | None,
    model_cfg: TrainConfig,
    overrides: Iterable[str],
    source: tuple[str | os.PathLike[str], str],
    report: Callable[[str], None] | None,
) -> TrainConfig:
    """``given`` (else the model's config) with ``overrides``, its model keys replaced by the model's;
    ``source`` is the model's file and what it is, for messages."""
    path, kind = source
    cfg = apply_overrides(given if given is not None else model_cfg, overrides)
    if cfg.num_classes != model_cfg.num_classes:
        raise ValueError(
            f"config key 'num_classes' is {cfg.num_classes} but the model in {path} has {model_cfg.num_classes} classes"
        )
    replaced = {key: getattr(cfg, key) for key in _MODEL_KEYS if getattr(cfg, key) != getattr(model_cfg, key)}
    if replaced:
        cfg = dataclasses.replace(cfg, **{key: getattr(model_cfg, key) for key in replaced})
        if report is not None:
            changes = ", ".join(f"{key}={getattr(cfg, key)} (not {value})" for key, value in replaced.items())
            report(f"the {kind}'s model keys replace the config's: {changes}")
    return cfg


def _model_batch(image: ImageInput) -> tuple[Tensor, bool]:
    """``image`` (see :meth:`Segmenter.predict`) as the normalised batch ``[N, 3, H, W]`` models take, and
    whether it was a batch; ValueError / TypeError name the shape, type or value range at fault."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)[1][None], False
    if isinstance(image, Image.Image):
        return to_model_input(image.convert("RGB"))[None], False
    if isinstance(image, np.ndarray):
        # A copy: arrays of PIL images are read-only, which torch.from_numpy warns about.
        pixels, channels_last, kind = torch.from_numpy(np.array(image)), True, "array"
    elif isinstance(image, Tensor):
        pixels, channels_last, kind = image, False, "tensor"
    else:
        raise TypeError(f"an image must be a path, a PIL image, an array or a tensor, got {type(image).__name__}")
    shape = tuple(pixels.shape)
    if pixels.dim() not in (3, 4) or 3 not in (shape[-3], shape[-1]):
        raise ValueError(
            f"an image {kind} must be RGB [3, H, W] or [H, W, 3], or a batch [N, 3, H, W] or [N, H, W, 3], got shape {shape}"
        )
    if pixels.dtype != torch.uint8 and not pixels.is_floating_point():
        raise ValueError(f"an image {kind} must be uint8 (0..255) or float (0..1), got {pixels.dtype}")
    if pixels.is_floating_point() and pixels.numel():
        low, high = float(pixels.min()), float(pixels.max())
        if not low >= 0:
            raise ValueError(
                f"a float image {kind} must hold values in [0, 1] (as torchvision's to_tensor gives), got values down "
                f"to {low:g}: it looks normalised already; Segmenter normalises itself (pass the [0, 1] or uint8 "
                "image), or call sacseg.models.inference.predict_labels with normalised images"
            )
        if high > 1:  # 0..255 pixels have no negative values; normalised ones do
            raise ValueError(
                f"a float image {kind} must hold values in [0, 1] (as torchvision's to_tensor gives), got values up to "
                f"{high:g}: for 0..255 pixels pass uint8, or divide by 255"
            )
    # Channels-last where only that end has size 3, or where both do and the form's convention is it.
    if shape[-1] == 3 and (shape[-3] != 3 or channels_last):
        pixels = pixels.movedim(-1, -3)
    batch = pixels if pixels.dim() == 4 else pixels[None]
    return torch.stack([to_model_input(one) for one in batch]), pixels.dim() == 4


class Segmenter:
    """A trained model with its classes, palette, normalisation and inference settings.

    ``predict`` takes one image in any usual form, or a batch, and returns its class labels and scale
    maps, as mmsegmentation's ``inference_model`` does; ``predict_folder`` does so for image files and
    folders. ``options`` (:class:`sacseg.options.InferenceOptions`) default to the config's
    ``eval_*`` keys. The model must be in eval mode.

    Example::

        segmenter = sacseg.Segmenter.from_checkpoint("runs/camvid/best.pt", device="cpu")
        segmenter = sacseg.Segmenter.from_onnx("model.onnx")          # the same, run by onnxruntime
        labels, scales = segmenter.predict("street.png")   # [H, W] long, {"classifier": [H, W]}
        labels, scales = segmenter.predict(torchvision.io.read_image("street.png"))  # uint8 [3, H, W]: the same
        labels, scales = segmenter.predict(batch)          # [N, 3, H, W] in [0, 1] -> [N, H, W], {"classifier": [N, H, W]}
        name = segmenter.classes[labels[0, 0]]
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        options: InferenceOptions | None = None,
    ) -> None:
        #: The torch model or an :class:`OnnxModel`: what every prediction calls.
        self.model = model
        self.config = config
        #: Class names and their colours (uint8 ``[K, 3]``): an ONNX file's metadata's, else the config's dataset's.
        self.classes, self.palette = (model.classes, model.palette) if isinstance(model, OnnxModel) else dataset_labels(config)
        #: The inference options of every prediction.
        self.options = InferenceOptions.from_config(config) if options is None else options

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike[str],
        device: str | torch.device = "auto",
        config: str | os.PathLike[str] | TrainConfig | None = None,
        overrides: Iterable[str] = (),
        options: InferenceOptions | None = None,
    ) -> Segmenter:
        """The segmenter of a checkpoint written by ``sacseg train``; see :func:`load_model_and_config`.

        ``options`` default to the (overridden) config's ``eval_*`` keys.
        """
        model, cfg = load_model_and_config(checkpoint, device, config, overrides)
        return cls(model, cfg, options)

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device = "auto",
        config: str | os.PathLike[str] | TrainConfig | None = None,
        overrides: Iterable[str] = (),
        options: InferenceOptions | None = None,
    ) -> Segmenter:
        """The segmenter of a file written by ``sacseg export``, run by onnxruntime
        (:class:`~sacseg.evaluation.onnx_model.OnnxModel`); classes, palette, normalisation and
        config from its metadata (see :func:`load_onnx_and_config`). Predictions are on the CPU."""
        model, cfg = load_onnx_and_config(path, device, config, overrides)
        return cls(model, cfg, options)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def predict(self, image: ImageInput) -> tuple[Tensor, dict[str, Tensor]]:
        """Class labels and scale maps for one image, or for each image of a batch.

        ``image`` is a file, a PIL image, or RGB pixels (see :data:`ImageInput`): a tensor
        ``[3, H, W]`` (or ``[H, W, 3]``), a batch ``[N, 3, H, W]``, or an array ``[H, W, 3]`` (or
        ``[3, H, W]``), a batch ``[N, H, W, 3]``: the channels are the axis of size 3, tensors
        channels-first and arrays channels-last where both ends have size 3. uint8 pixels are
        0..255; float pixels must lie in ``[0, 1]`` (torchvision's ``to_tensor``): a float image with
        values above 1 (0..255 pixels) or below 0 (already normalised) is a ValueError, as it would
        be normalised wrongly. For normalised batches call
        ``sacseg.models.inference.predict_labels(segmenter.model, images, segmenter.options)``.

        Returns:
            ``labels`` long ``[H, W]`` (indices into :attr:`classes`) and ``{name: [H, W]}`` float,
            one scale-coefficient map per scale-adaptive layer (``"classifier"``, ``"res5"``;
            empty for a baseline) from a whole-image pass at scale 1, resized to the image;
            for a batch ``[N, H, W]`` each; all on :attr:`device`.
        """
        x, batched = _model_batch(image)
        labels, scale_maps = predict_labels(self.model, x.to(self.device), self.options)
        if batched:
            return labels, {name: scale[:, 0] for name, scale in scale_maps.items()}
        return labels[0], {name: scale[0, 0] for name, scale in scale_maps.items()}

    def predict_folder(
        self, inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
    ) -> Iterator[tuple[Path, Tensor, dict[str, Tensor]]]:
        """``(path, labels, scales)`` for each image file of ``inputs`` (files, or folders searched
        recursively, sorted; see :func:`sacseg.evaluation.predict_files.find_images`), one at a time."""
        paths = find_images([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)
        for path in paths:
            yield (path, *self.predict(path))

    def metadata(self) -> dict[str, str]:
        """What a deployed model needs besides its weights, as strings (JSON for lists).

        ``classes`` (names in index order), ``palette`` (``[[r, g, b], ...]``), ``mean`` and ``std``
        (RGB, of images scaled to ``[0, 1]``: the input is ``(image / 255 - mean) / std``),
        ``ignore_index`` (the mask value scoring leaves out: a folder data set's ``folder_ignore_index``,
        else 255), ``model``, ``dataset``, ``sacseg_version`` and ``config`` (the config's keys, a JSON
        object: what :meth:`from_onnx` and ``sacseg eval --onnx`` read the data set from).
        """
        return {
            "classes": json.dumps(list(self.classes)),
            "palette": json.dumps(self.palette.tolist()),
            "mean": json.dumps(list(IMAGENET_MEAN)),
            "std": json.dumps(list(IMAGENET_STD)),
            "ignore_index": str(ignored_mask_value(self.config)),
            "model": self.config.model,
            "dataset": self.config.dataset,
            "sacseg_version": __version__,
            "config": json.dumps(dataclasses.asdict(self.config)),
        }
