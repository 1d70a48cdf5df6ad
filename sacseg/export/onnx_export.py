"""ONNX export of segmentation models, verified against onnxruntime before it is reported done."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

from sacseg.export.sac_lowering import SacLowering, onnx_lowering
from sacseg.utils.optional import import_optional

__all__ = ["DEFAULT_OPSET", "GPU_PORTABLE_OPS", "OnnxExport", "export_onnx"]

#: ONNX opset of the TorchScript-based exporter's graphs (onnxruntime >= 1.14 runs it). The
#: dynamo-based exporter builds opset 18 natively (a lower request goes through onnx's converter).
DEFAULT_OPSET = 17
_DYNAMO_OPSET = 18
_INPUT_NAME = "images"
#: The operator types an exported model is made of (either exporter, ``sac_lowering="grid_sample"``,
#: every model option). Each is supported by TensorRT's ONNX parser from TensorRT 8.6
#: (onnx-tensorrt's docs/operators.md; GridSample from 8.5, IsInf from 8.6) and by onnxruntime's
#: CUDA execution provider (its docs/OperatorKernels.md; GridSample of the ONNX domain from 1.18):
#: the README's Deployment section lists them.
GPU_PORTABLE_OPS = frozenset(
    {
        "Add", "And", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
        "ConvTranspose", "Div", "Equal", "Expand", "Flatten", "Gather", "Greater", "GridSample", "Identity", "IsInf",
        "IsNaN", "Less", "MaxPool", "Mul", "Range", "ReduceSum", "Relu", "Reshape", "Resize", "Shape", "Sigmoid",
        "Slice", "Squeeze", "Sub", "Transpose", "Unsqueeze", "Where",
    }
)  # fmt: skip


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote and how closely onnxruntime reproduced PyTorch.

    ``errors`` maps each checked input shape ``(N, 3, H, W)`` to the largest relative error
    over the outputs (see :func:`export_onnx`).
    """

    path: Path
    opset: int
    outputs: tuple[str, ...]
    errors: dict[tuple[int, int, int, int], float]


class _TupleOutputs(nn.Module):
    """The model with its ``{"out", "scales"}`` dict flattened to the tuple ONNX outputs need."""

    def __init__(self, model: nn.Module, scale_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.scale_names = scale_names

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(images)
        if isinstance(outputs, Tensor):
            return (outputs,)
        return (outputs["out"], *(outputs["scales"][name] for name in self.scale_names))


def _scale_names(outputs: Tensor | dict, with_scales: bool) -> tuple[str, ...]:
    if not with_scales:
        return ()
    scales = {} if isinstance(outputs, Tensor) else outputs.get("scales", {})
    if not scales:
        raise ValueError("with_scales=True but the model returns no scale maps (its output has no 'scales' entries)")
    return tuple(scales)


def _export_graph(
    module: _TupleOutputs,
    example: Tensor,
    path: Path,
    output_names: list[str],
    dynamic: bool,
    opset: int,
    dynamo: bool,
) -> None:
    if dynamo:
        dynamic_shapes = None
        if dynamic:
            dim = torch.export.Dim
            dynamic_shapes = {_INPUT_NAME: {0: dim("batch"), 2: dim("height"), 3: dim("width")}}
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            input_names=[_INPUT_NAME],
            output_names=output_names,
            external_data=False,
            verbose=False,
        )
        return
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {_INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, "out": {0: "batch", 2: "height", 3: "width"}}
        for name in output_names[1:]:
            dynamic_axes[name] = {0: "batch", 2: f"{name}_height", 3: f"{name}_width"}
    with warnings.catch_warnings():
        # The tracer warns about every shape check of sac_conv2d's argument validation (they hold
        # for any input size), and torch >= 2.9 calls this exporter legacy; both are noise here:
        # the onnxruntime check below is what tells whether the graph is right.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[_INPUT_NAME],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
        )


def _onnx() -> ModuleType:
    return import_optional("onnx", "export", "ONNX export")


def _add_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    """Store ``metadata`` in the file's ``metadata_props`` (next to any the exporter wrote)."""
    onnx = _onnx()
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, {**{p.key: p.value for p in graph.metadata_props}, **metadata})
    onnx.save(graph, str(path))


def _check_graph(path: Path) -> int:
    """Validate the graph, refuse non-default domains; return its default-domain opset."""
    onnx = _onnx()
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    custom = sorted({f"{node.domain}::{node.op_type}" for node in graph.graph.node if node.domain not in ("", "ai.onnx")})
    if custom:
        raise RuntimeError(f"the exported graph {path} uses operators outside the default ONNX domain: {custom}")
    return next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))


def _max_relative_error(
    session: object,
    module: _TupleOutputs,
    output_names: list[str],
    shape: tuple[int, int, int, int],
    device: torch.device,
    seed: int,
) -> float:
    """Largest ``max|onnxruntime - torch| / max|torch|`` over the outputs on a random ``shape`` input."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(shape, generator=generator)
    with torch.no_grad():
        expected = [t.float().cpu().numpy() for t in module(images.to(device))]
    got = session.run(None, {_INPUT_NAME: images.numpy()})  # type: ignore[attr-defined]
    worst = 0.0
    for name, a, b in zip(output_names, got, expected):
        if a.shape != b.shape:
            raise RuntimeError(f"onnxruntime output {name!r} has shape {a.shape}, PyTorch gives {b.shape} for input {shape}")
        worst = max(worst, float(abs(a - b).max() / max(abs(b).max(), 1e-12)))
    return worst


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    height: int,
    width: int,
    dynamic: bool = False,
    with_scales: bool = False,
    opset: int | None = None,
    *,
    dynamo: bool = False,
    rtol: float = 1e-4,
    seed: int = 0,
    metadata: Mapping[str, str] | None = None,
    sac_lowering: SacLowering = "grid_sample",
) -> OnnxExport:
    """Export ``model`` to ONNX at ``path`` and check it in onnxruntime before keeping the file.

    The graph has one input ``"images" [N, 3, H, W]`` and the outputs ``"out" [N, K, H, W]``
    (logits) and, with ``with_scales``, ``"scale_<name>" [N, 1, h, w]`` for each of the model's
    scale maps in its order (``scale_classifier``, ``scale_res5``). ``model`` may also return a
    plain tensor, exported as ``"out"``. Only default-domain ONNX operators are used: under
    export, ``sac_conv2d`` records ``sac_lowering`` (:mod:`sacseg.export.sac_lowering`): by
    default bilinear ``GridSample`` and 1x1 ``Conv`` in the fast path's order, whose operators
    (:data:`GPU_PORTABLE_OPS`) TensorRT and onnxruntime's CUDA provider run.

    The check runs onnxruntime (CPU) and PyTorch on a random input of the export size and, with
    ``dynamic``, also on a batch of 2 at ``(H + H // 2 + 1, W + W // 4 + 1)`` (another aspect ratio,
    sizes no longer multiples of the output stride); every output must satisfy
    ``max|ort - torch| <= rtol * max|torch|`` (relative to the output's range, since elementwise
    relative errors are meaningless for logits near zero). The file is written atomically, and
    only when the check passes.

    Args:
        model: a segmentation model; run in eval mode (its mode is restored afterwards).
        path: the ``.onnx`` file to write; its parent folder is created.
        height, width: the export (and, without ``dynamic``, the only) input size; batch 1.
        dynamic: make batch, height and width dynamic axes.
        with_scales: also output the scale maps.
        opset: ONNX opset version; ``None``: :data:`DEFAULT_OPSET` (17), or 18 with ``dynamo``.
        dynamo: use the ``torch.export``-based exporter (needs ``onnxscript``) instead of the
            TorchScript-based one, which exports several times faster and needs nothing more.
        rtol: tolerance of the onnxruntime check.
        seed: seed of the random check inputs.
        metadata: string key-value pairs stored in the file's ``metadata_props`` (``sacseg export``
            stores the class names, palette, normalisation and config: :meth:`sacseg.Segmenter.metadata`),
            next to the two that export always writes: ``input`` (the input's name, ``"images"``) and
            ``scales`` (the names of the scale maps output, a JSON list, ``[]`` without ``with_scales``).
        sac_lowering: ``"grid_sample"`` (needs opset >= 16) or ``"gather"``, the reference's
            gathers (the graph of sacseg 0.1.0, several times slower in onnxruntime).

    Raises:
        ValueError: bad sizes, ``with_scales`` for a model without scale maps, an unknown
            ``sac_lowering``, or ``"grid_sample"`` below opset 16.
        RuntimeError: the graph uses a non-default domain, or onnxruntime differs by more than
            ``rtol`` (the message gives the error and the input shape).
    """
    _onnx()
    onnxruntime = import_optional("onnxruntime", "export", "ONNX export")

    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    bad = {k: v for k, v in (metadata or {}).items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise ValueError(f"metadata keys and values must be strings, got {bad!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if opset is None:
        opset = _DYNAMO_OPSET if dynamo else DEFAULT_OPSET
    if sac_lowering == "grid_sample" and opset < 16:
        raise ValueError(
            f"sac_lowering='grid_sample': GridSample needs opset >= 16, got {opset} ('gather' exports to older opsets)"
        )
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    # A batch of 2 for dynamic exports: torch.export specialises a size-1 dimension to 1.
    example_shape = (2 if dynamic else 1, 3, height, width)
    check_shapes = [(1, 3, height, width)]
    if dynamic:
        check_shapes.append((2, 3, height + height // 2 + 1, width + width // 4 + 1))

    was_training = model.training
    model.eval()
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        example = torch.randn(example_shape, generator=torch.Generator().manual_seed(seed)).to(device)
        with torch.no_grad():
            scale_names = _scale_names(model(example), with_scales)
        # eval() on the wrapper too: the exporters restore the exported module's own mode afterwards.
        module = _TupleOutputs(model, scale_names).eval()
        output_names = ["out", *(f"scale_{name}" for name in scale_names)]
        with onnx_lowering(sac_lowering):
            _export_graph(module, example, tmp, output_names, dynamic, opset, dynamo)
        _add_metadata(tmp, {**(metadata or {}), "input": _INPUT_NAME, "scales": json.dumps(list(scale_names))})
        written_opset = _check_graph(tmp)
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        errors = {}
        for i, shape in enumerate(check_shapes):
            errors[shape] = _max_relative_error(session, module, output_names, shape, device, seed + 1 + i)
            if errors[shape] > rtol:
                raise RuntimeError(
                    f"onnxruntime differs from PyTorch on a {shape} input: max relative error {errors[shape]:.3e} "
                    f"> rtol {rtol:.1e}; {path} was not written"
                )
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    return OnnxExport(path=path, opset=written_opset, outputs=tuple(output_names), errors=errors)
