"""An exported ONNX file run by onnxruntime as a model: the ``{"out", "scales"}`` dict of a sacseg model, classes, palette and normalisation from the file's metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sacseg.config import TrainConfig, config_from_dict
from sacseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sacseg.utils.device import resolve_device
from sacseg.utils.optional import import_optional

__all__ = ["REQUIRED_METADATA", "OnnxModel"]

#: The ``metadata_props`` a file needs (``sacseg export`` writes them): what a checkpoint's config
#: and the data pipeline otherwise say.
REQUIRED_METADATA = ("classes", "palette", "mean", "std", "input", "scales", "config")


class OnnxModel(nn.Module):
    """An ONNX file written by ``sacseg export`` (or :func:`~sacseg.export.onnx_export.export_onnx`
    with :meth:`sacseg.Segmenter.metadata`), run by onnxruntime and called as the model it came from.

    It has no parameters and takes and returns CPU tensors (onnxruntime holds the weights, on the
    GPU with ``device="cuda"``), so :func:`~sacseg.models.inference.predict`,
    :func:`~sacseg.evaluation.evaluate.evaluate`, ``predict_files`` and :class:`sacseg.Segmenter`
    run it as they run a checkpoint's model.

    Args:
        path: the ``.onnx`` file.
        device: ``"cpu"``, ``"cuda"`` (onnxruntime's CUDA provider, which must be installed) or
            ``"auto"`` (CUDA where torch and onnxruntime both have it).
        threads: onnxruntime's intra-op threads (``None``: its default, every core).

    Raises:
        FileNotFoundError: no such file.
        ValueError: in one line: not an ONNX file onnxruntime loads, no sacseg metadata, a graph
            input other than the metadata's, or unreadable metadata.

    Shapes:
        ``images [N, 3, H, W]`` normalised as sacseg's data pipeline does (ImageNet mean and std;
        converted to the file's ``mean``/``std`` when they differ) -> ``{"out": [N, K, H, W],
        "scales": {name: [N, 1, h, w]}}`` (the scale maps the file outputs, ``{}`` without). A file
        with static shapes takes its own input size only.
    """

    def __init__(self, path: str | os.PathLike[str], device: str | torch.device = "auto", threads: int | None = None) -> None:
        super().__init__()
        onnxruntime = import_optional("onnxruntime", "export", "running an ONNX file")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {self.path}")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=_providers(device, onnxruntime))
        except Exception as err:  # onnxruntime raises InvalidProtobuf, Fail, ... for a file it cannot load
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{self.path} is not an ONNX model onnxruntime can load: {reason}") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in REQUIRED_METADATA if key not in metadata]
        if missing:
            raise ValueError(
                f"{self.path} has no sacseg metadata ({', '.join(missing)} missing): write it with 'sacseg export', "
                "or pass Segmenter.metadata() to export_onnx"
            )
        #: The file's ``metadata_props``.
        self.metadata: dict[str, str] = dict(metadata)
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != [metadata["input"]]:
            names = ", ".join(repr(i.name) for i in inputs)
            raise ValueError(f"{self.path}: the graph's input is {names}, but its metadata names {metadata['input']!r}")
        #: ``[N, 3, H, W]`` with ints where the file's shape is static, strings (or ``None``) where dynamic.
        self.input_shape: list[Any] = list(inputs[0].shape)
        self.scale_names: tuple[str, ...] = tuple(self._json("scales"))
        self.classes: tuple[str, ...] = tuple(self._json("classes"))
        self.palette: Tensor = torch.tensor(self._json("palette"), dtype=torch.uint8)
        self.config: TrainConfig = config_from_dict(self._json("config"), source=f"{self.path} (metadata 'config')")
        # The scale and shift [3, 1, 1] from the pipeline's normalisation to the file's (x * std +
        # mean is the same image in both); None when they agree.
        mean, std = torch.tensor(self._json("mean")).view(3, 1, 1), torch.tensor(self._json("std")).view(3, 1, 1)
        our_mean, our_std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
        same = torch.equal(mean, our_mean) and torch.equal(std, our_std)
        self._renormalise: tuple[Tensor, Tensor] | None = None if same else (our_std / std, (our_mean - mean) / std)
        outputs = [o.name for o in self.session.get_outputs()]
        wanted = ["out", *(f"scale_{name}" for name in self.scale_names)]
        if outputs != wanted:
            raise ValueError(f"{self.path}: the graph's outputs are {outputs}, but its metadata promises {wanted}")

    def _json(self, key: str) -> Any:
        try:
            return json.loads(self.metadata[key])
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.path}: metadata {key!r} is not JSON ({err})") from None

    def forward(self, images: Tensor) -> dict[str, Tensor | dict[str, Tensor]]:
        fixed = [(i, size) for i, size in enumerate(self.input_shape) if isinstance(size, int)]
        if images.dim() != 4 or any(images.shape[i] != size for i, size in fixed):
            shape = "x".join(str(s) if isinstance(s, int) else "?" for s in self.input_shape)
            raise ValueError(
                f"{self.path} takes inputs of shape {shape} only (exported with static shapes), got "
                f"{'x'.join(map(str, images.shape))}: export with --dynamic for other sizes"
            )
        x = images.detach().float().cpu()
        if self._renormalise is not None:
            x = x * self._renormalise[0] + self._renormalise[1]
        outputs = self.session.run(None, {self.metadata["input"]: np.ascontiguousarray(x.numpy())})
        scales = {name: torch.from_numpy(array) for name, array in zip(self.scale_names, outputs[1:])}
        return {"out": torch.from_numpy(outputs[0]), "scales": scales}

    def extra_repr(self) -> str:
        return f"{str(self.path)!r}, input {self.input_shape}, providers {self.session.get_providers()}"


def _providers(device: str | torch.device, onnxruntime: Any) -> list[str]:
    """onnxruntime's execution providers for ``device`` (see :class:`OnnxModel`)."""
    available = onnxruntime.get_available_providers()
    cuda = "CUDAExecutionProvider" in available
    if str(device) == "auto":
        return (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda and torch.cuda.is_available() else ["CPUExecutionProvider"]
        )
    if resolve_device(device, f"device {device}").type == "cpu":
        return ["CPUExecutionProvider"]
    if not cuda:
        raise ValueError(f"device {device}: this onnxruntime has no CUDA provider (install onnxruntime-gpu), only {available}")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]
