"""The fast path as the operator torch.ops.sacseg.sac_conv2d and its private forward and backward: schema, opcheck,
autocast, compile, export, the sampling backend setting."""

from __future__ import annotations

import io

import pytest
import torch

import sacseg.ops._library as library
import sacseg.ops._plan as plan
import sacseg.ops.backend as backend
import sacseg.ops.sac_conv as sac_module
from sacseg.ops import sac_conv2d, sac_output_size, sampling_backend, set_sampling_backend

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))]

# (N, C_in, C_out, (H, W), kernel, stride, padding, dilation): strides, dilations, odd sizes, batch 0.
CASES = [
    (2, 5, 4, (9, 11), (3, 3), (1, 1), (1, 1), (1, 1)),
    (1, 3, 2, (13, 7), (3, 5), (2, 1), (2, 1), (1, 2)),
    (2, 4, 3, (10, 9), (3, 3), (3, 2), (4, 0), (2, 3)),
    (1, 6, 1, (5, 6), (1, 1), (1, 1), (0, 0), (1, 1)),
    (0, 3, 4, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1)),
]


def _args(case, dtype, device, requires_grad):
    n, c_in, c_out, (h, w), kernel, stride, padding, dilation = case
    h_out, w_out = sac_output_size((h, w), kernel, stride, padding, dilation)
    opts = {"dtype": dtype, "device": device}
    tensors = [
        torch.randn(n, c_in, h, w, **opts),
        torch.rand(n, 1, h_out, w_out, **opts) * 1.5 + 0.5,
        torch.randn(c_out, c_in, *kernel, **opts),
        torch.randn(c_out, **opts),
    ]
    tensors = [t.requires_grad_(requires_grad) for t in tensors]
    return (*tensors, list(stride), list(padding), list(dilation))


def test_the_schema_takes_what_conv2d_takes():
    assert str(torch.ops.sacseg.sac_conv2d.default._schema) == (
        "sacseg::sac_conv2d(Tensor input, Tensor scale, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation) -> Tensor"
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=["plain", "stride-dilation", "big-padding", "1x1", "batch0"])
@pytest.mark.parametrize("project", [False, True], ids=["sample-then-multiply", "multiply-then-sample"])
def test_opcheck(device, dtype, case, project, monkeypatch):
    # Schema, fake (meta) shapes and strides, autograd registration, and AOT dispatch with dynamic shapes.
    monkeypatch.setattr(plan, "project_first", lambda *args: project)
    for name in backend.SAMPLING_BACKENDS:
        with sampling_backend(name):
            args = _args(case, dtype, device, requires_grad=True)
            torch.library.opcheck(torch.ops.sacseg.sac_conv2d.default, args)
            torch.library.opcheck(
                torch.ops.sacseg._sac_conv2d_forward.default, args, test_utils=("test_schema", "test_faketensor")
            )
    x, scale, weight, _, stride, padding, dilation = args
    out, tables = torch.ops.sacseg._sac_conv2d_forward(*args)
    grad_out = torch.randn_like(out)
    size = list(x.shape[2:])
    for mask in ([True, True, True, True], [False, True, False, False], [True, False, True, False]):
        backward_args = (grad_out, x if project else None, scale, weight, tables, size, stride, padding, dilation, mask)
        torch.library.opcheck(
            torch.ops.sacseg._sac_conv2d_backward.default, backward_args, test_utils=("test_schema", "test_faketensor")
        )


def test_backward_without_the_input_it_needs_says_so(monkeypatch):
    monkeypatch.setattr(plan, "project_first", lambda *args: True)
    x, scale, weight, bias, *geometry = _args(CASES[0], torch.float32, "cpu", False)
    out, tables = torch.ops.sacseg._sac_conv2d_forward(x, scale, weight, bias, *geometry)
    with pytest.raises(ValueError, match="needs the input when the forward multiplied first"):
        torch.ops.sacseg._sac_conv2d_backward(out, None, scale, weight, tables, list(x.shape[2:]), *geometry, [True] * 4)


def test_batch_zero_forward_and_backward():
    x, scale, weight, bias, stride, padding, dilation = _args(CASES[-1], torch.float32, "cpu", True)
    out = sac_conv2d(x, scale, weight, bias, stride, padding, dilation)
    assert out.shape == (0, 4, 8, 8)
    grads = torch.autograd.grad(out.sum(), (x, scale, weight, bias))
    assert [g.shape for g in grads] == [x.shape, scale.shape, weight.shape, bias.shape]
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_autocast_rule_on_cpu():
    # Called directly, as a traced graph calls it: a bfloat16 input next to float32 parameters.
    x, scale, weight, bias, *geometry = _args(CASES[0], torch.float32, "cpu", False)
    expected = torch.ops.sacseg.sac_conv2d(x.bfloat16().float(), scale, weight, bias, *geometry)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.ops.sacseg.sac_conv2d(x.bfloat16(), scale, weight, bias, *geometry)
    assert out.dtype == torch.float32  # CPU keeps float32
    torch.testing.assert_close(out, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_autocast_rule_on_cuda_keeps_the_scale_float32():
    x, scale, weight, bias, *geometry = _args(CASES[0], torch.float32, "cuda", False)
    scale.requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = sac_conv2d(x, scale, weight, bias, *geometry)
    assert out.dtype == torch.bfloat16
    (grad,) = torch.autograd.grad(out.float().sum(), scale)
    assert grad.dtype == torch.float32
    expected = sac_conv2d(x, scale, weight, bias, *geometry)
    assert (out.float() - expected).abs().max() <= 0.02 * expected.abs().max()


def test_compiled_forward_and_backward_keep_the_operator():
    # fullgraph: a graph break is an error; the graph must call the operator, not the reference.
    torch._dynamo.reset()
    graphs = []

    def backend_(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x, scale, weight, bias, stride, padding, dilation = _args(CASES[1], torch.float64, "cpu", True)

    def fn(x, scale, weight, bias):
        return sac_conv2d(x, scale, weight, bias, stride, padding, dilation)

    compiled = torch.compile(fn, backend=backend_, fullgraph=True)
    grad_out = torch.randn_like(fn(x, scale, weight, bias))
    results = []
    for f in (fn, compiled):
        out = f(x, scale, weight, bias)
        results.append((out, *torch.autograd.grad(out, (x, scale, weight, bias), grad_out)))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    targets = {str(node.target) for gm in graphs for node in gm.graph.nodes if node.op == "call_function"}
    assert targets & {"sacseg.sac_conv2d", "sacseg.sac_conv2d.default"}
    assert not any("gather" in target for target in targets)


def test_aot_compiled_graphs_call_the_private_operators_and_follow_the_backend_when_run(monkeypatch):
    # Through AOTAutograd (the "aot_eager" backend), forward and backward run the private operators;
    # which sampling kernels they take is read when they run, not when they were traced.
    torch._dynamo.reset()
    x, scale, weight, bias, *geometry = _args(CASES[0], torch.float64, "cpu", True)
    compiled = torch.compile(lambda *t: sac_conv2d(*t, *geometry), backend="aot_eager", fullgraph=True)
    seen = []
    kernels_for = backend.kernels_for
    monkeypatch.setattr(backend, "kernels_for", lambda t: seen.append(kernels_for(t)) or seen[-1])
    for name, expected in (("auto", "native"), ("torch", "torch")):
        seen.clear()
        with sampling_backend(name):
            compiled(x, scale, weight, bias).sum().backward()
        assert seen == [expected, expected]  # forward, then backward


def test_exported_program_keeps_one_node_and_saves_and_loads():
    x, scale, weight, bias, *geometry = _args(CASES[0], torch.float32, "cpu", False)

    class Layer(torch.nn.Module):
        def forward(self, x, scale):
            return sac_conv2d(x, scale, weight, bias, *geometry)

    layer = Layer()
    program = torch.export.export(layer, (x, scale))
    calls = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert calls == ["sacseg.sac_conv2d.default"]
    decomposed = program.run_decompositions()  # the inference IR keeps it too
    assert [str(node.target) for node in decomposed.graph.nodes if node.op == "call_function"] == calls
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    torch.testing.assert_close(loaded.module()(x, scale), layer(x, scale), rtol=0, atol=0)


def test_non_finite_scale_is_refused_in_a_compiled_graph():
    torch._dynamo.reset()
    x, scale, weight, bias, stride, padding, dilation = _args(CASES[0], torch.float32, "cpu", False)
    compiled = torch.compile(
        lambda x, s: sac_conv2d(x, s, weight, bias, stride, padding, dilation), backend="eager", fullgraph=True
    )
    compiled(x, scale)
    scale[0, 0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"scale has 1 non-finite"):
        compiled(x, scale)


def test_onnx_export_and_tracing_decompose_into_the_reference(monkeypatch):
    assert sac_module._choose_impl() is sac_module.SAC_IMPLEMENTATIONS["fast"]
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert sac_module._choose_impl() is sac_module.sac_reference


def test_second_derivative_raises():
    x, scale, weight, bias, stride, padding, dilation = _args(CASES[0], torch.float64, "cpu", True)
    out = sac_conv2d(x, scale, weight, bias, stride, padding, dilation)
    (grad,) = torch.autograd.grad(out.sum(), scale, create_graph=True)
    for leaf in (scale, x):  # x only through the tables the backward reads
        with pytest.raises(RuntimeError, match="differentiable once"):
            torch.autograd.grad(grad.sum(), leaf, retain_graph=True)


def test_inference_runs_below_autograd_without_the_autograd_function(monkeypatch):
    calls = []
    monkeypatch.setattr(library._SacConv2d, "apply", lambda *a: calls.append(1) or (None, None))
    x, scale, weight, bias, *geometry = _args(CASES[0], torch.float32, "cpu", True)
    with torch.no_grad():
        out = sac_conv2d(x, scale, weight, bias, *geometry)
    assert out.shape == (2, 4, 9, 11) and calls == []


def test_sampling_backend_setting():
    assert backend.get_sampling_backend() == "auto"
    x = torch.zeros(1)
    with sampling_backend("torch"):
        assert backend.kernels_for(x) == "torch"
        with sampling_backend("auto"):
            assert backend.kernels_for(x) == "native"
        assert backend.get_sampling_backend() == "torch"
    assert backend.get_sampling_backend() == "auto"
    with pytest.raises(ValueError, match=r"unknown sampling backend 'cuda'; valid: 'auto', 'torch'"):
        set_sampling_backend("cuda")  # type: ignore[arg-type]
