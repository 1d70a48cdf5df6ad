"""Correctness of sac_conv2d: the paper's equations, F.conv2d, deform_conv2d and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

import sacseg.ops._plan as plan
from sacseg.ops import SAC_IMPLEMENTATIONS, sac_conv2d, sampling_backend

#: Every implementation, the fast one with each sampling backend: "fast_torch" is ``impl="fast"``
#: with torch sampling, forward and backward (the fixture below).
IMPLS = sorted([*SAC_IMPLEMENTATIONS, "fast_torch"])


@pytest.fixture(autouse=True)
def _sampling_backend(request):
    params = getattr(request.node, "callspec", None)
    with sampling_backend("torch" if params is not None and params.params.get("impl") == "fast_torch" else "auto"):
        yield


def _impl(name):
    return "fast" if name == "fast_torch" else name


def loop_reference(input, scale, weight, bias, stride, padding, dilation):
    """Equations (7)-(9) with explicit loops: every tap, every bilinear neighbour."""
    n_, c_in, h, w = input.shape
    c_out, _, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    h_out, w_out = scale.shape[-2:]
    out = torch.zeros(n_, c_out, h_out, w_out, dtype=input.dtype)
    for n in range(n_):
        for p in range(h_out):
            for q in range(w_out):
                s = float(scale[n, 0, p, q])
                cy, cx = p * sh - ph + (kh // 2) * dh, q * sw - pw + (kw // 2) * dw
                acc = torch.zeros(c_out, dtype=input.dtype)
                for a in range(kh):
                    for b in range(kw):
                        y = cy + (a - kh // 2) * dh * s  # eq. (7)
                        x = cx + (b - kw // 2) * dw * s
                        z = torch.zeros(c_in, dtype=input.dtype)  # eq. (8)
                        for m in range(math.floor(y), math.floor(y) + 2):
                            for k in range(math.floor(x), math.floor(x) + 2):
                                if 0 <= m < h and 0 <= k < w:
                                    z += input[n, :, m, k] * max(0.0, 1 - abs(y - m)) * max(0.0, 1 - abs(x - k))
                        acc += weight[:, :, a, b] @ z  # eq. (9)
                out[n, :, p, q] = acc + (bias if bias is not None else 0)
    return out


def _out_size(h, w, k, stride, padding, dilation):
    return tuple((size + 2 * pp - d * (kk - 1) - 1) // s + 1 for size, kk, s, pp, d in zip((h, w), k, stride, padding, dilation))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "kernel,stride,padding,dilation",
    [
        ((3, 3), (1, 1), (1, 1), (1, 1)),
        ((3, 5), (2, 1), (2, 1), (1, 2)),
        ((1, 1), (1, 1), (0, 0), (1, 1)),
        ((5, 5), (1, 2), (4, 3), (2, 1)),
    ],
)
def test_matches_loop_reference(impl, kernel, stride, padding, dilation):
    n, c_in, c_out, h, w = 2, 3, 4, 7, 8
    x = torch.randn(n, c_in, h, w, dtype=torch.float64)
    weight = torch.randn(c_out, c_in, *kernel, dtype=torch.float64)
    bias = torch.randn(c_out, dtype=torch.float64)
    h_out, w_out = _out_size(h, w, kernel, stride, padding, dilation)
    scale = torch.rand(n, 1, h_out, w_out, dtype=torch.float64) * 2.5 + 0.1  # taps inside and outside
    expected = loop_reference(x, scale, weight, bias, stride, padding, dilation)
    got = sac_conv2d(x, scale, weight, bias, stride, padding, dilation, impl=_impl(impl))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "kernel,stride,padding,dilation",
    [
        ((1, 1), 1, 0, 1),
        ((3, 3), 1, 1, 1),
        ((3, 3), 2, 0, 3),
        ((5, 5), 1, 2, 2),
        ((3, 5), (1, 2), (1, 2), (2, 1)),
        ((3, 3), 3, 4, 4),
    ],
)
def test_scale_one_is_conv2d(impl, kernel, stride, padding, dilation):
    x = torch.randn(2, 5, 13, 11)
    weight = torch.randn(6, 5, *kernel)
    bias = torch.randn(6)
    expected = F.conv2d(x, weight, bias, stride, padding, dilation)
    scale = torch.ones(2, 1, *expected.shape[-2:])
    got = sac_conv2d(x, scale, weight, bias, stride, padding, dilation, impl=_impl(impl))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("dilation,padding", [(1, 1), (2, 0), (2, 3)])
def test_integer_scale_is_dilated_conv(impl, m, dilation, padding):
    # Scale m is dilation m*d around the same centre: padding grows by (k//2)*d*(m-1) for the same grid.
    x = torch.randn(1, 4, 17, 15)
    weight = torch.randn(3, 4, 3, 3)
    plain = F.conv2d(x, weight, None, 1, padding, dilation)
    scale = torch.full((1, 1, *plain.shape[-2:]), float(m))
    got = sac_conv2d(x, scale, weight, None, 1, padding, dilation, impl=_impl(impl))
    expected = F.conv2d(x, weight, None, 1, padding + dilation * (m - 1), dilation * m)
    assert expected.shape == got.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _deform_offsets(scale, kernel, dilation):
    """Offsets making deform_conv2d sample where SAC does: (s - 1) * dil * (a - kh//2, b - kw//2)."""
    kh, kw = kernel
    a = torch.arange(kh, dtype=scale.dtype).repeat_interleave(kw) - kh // 2
    b = torch.arange(kw, dtype=scale.dtype).repeat(kh) - kw // 2
    dy = (scale - 1) * dilation[0] * a.view(1, -1, 1, 1)
    dx = (scale - 1) * dilation[1] * b.view(1, -1, 1, 1)
    # torchvision's layout: channel 2k is dy, 2k+1 is dx of tap k (row-major over the kernel).
    return torch.stack((dy, dx), dim=2).flatten(1, 2)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel,stride,padding,dilation", [((3, 3), (1, 1), (2, 2), (2, 2)), ((3, 5), (2, 1), (1, 3), (1, 2))])
def test_forward_and_gradients_match_deform_conv2d(impl, kernel, stride, padding, dilation):
    n, c_in, c_out, h, w = 2, 4, 5, 12, 10
    x = torch.randn(n, c_in, h, w, dtype=torch.float64)
    weight = torch.randn(c_out, c_in, *kernel, dtype=torch.float64)
    bias = torch.randn(c_out, dtype=torch.float64)
    h_out, w_out = _out_size(h, w, kernel, stride, padding, dilation)
    scale = torch.rand(n, 1, h_out, w_out, dtype=torch.float64) * 1.6 + 0.3
    grad_out = torch.randn(n, c_out, h_out, w_out, dtype=torch.float64)

    leaves_sac = [t.clone().requires_grad_() for t in (x, scale, weight, bias)]
    out_sac = sac_conv2d(leaves_sac[0], leaves_sac[1], leaves_sac[2], leaves_sac[3], stride, padding, dilation, impl=_impl(impl))
    grads_sac = torch.autograd.grad(out_sac, leaves_sac, grad_out)

    leaves_dc = [t.clone().requires_grad_() for t in (x, scale, weight, bias)]
    offset = _deform_offsets(leaves_dc[1], kernel, dilation)
    out_dc = deform_conv2d(leaves_dc[0], offset, leaves_dc[2], leaves_dc[3], stride, padding, dilation)
    grads_dc = torch.autograd.grad(out_dc, leaves_dc, grad_out)

    torch.testing.assert_close(out_sac, out_dc, rtol=1e-9, atol=1e-9)
    for name, g_sac, g_dc in zip(("input", "scale", "weight", "bias"), grads_sac, grads_dc):
        torch.testing.assert_close(g_sac, g_dc, rtol=1e-8, atol=1e-8, msg=lambda m: f"grad of {name}: {m}")  # noqa: B023


@pytest.mark.parametrize("impl", IMPLS)
# The second sends taps outside the input; its float64 gradcheck of the fast path is slow.
@pytest.mark.parametrize("scale_range", [(0.3, 1.7), pytest.param((1.5, 4.0), marks=pytest.mark.slow)])
def test_gradcheck(impl, scale_range):
    lo, hi = scale_range
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(2, 1, 3, 4, dtype=torch.float64) * (hi - lo) + lo).requires_grad_()

    def fn(x, scale, weight, bias):
        return sac_conv2d(x, scale, weight, bias, stride=2, padding=2, dilation=2, impl=_impl(impl))

    assert torch.autograd.gradcheck(fn, (x, scale, weight, bias), eps=1e-6, atol=1e-5)


def test_scale_gradient_is_equation_16():
    """g(s) = sum_ij (i d dZ/dx' + j d dZ/dy')^T g(Z), with eq. (14)'s derivatives, at one output."""
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    weight = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    s0, d = 1.37, 2
    scale = torch.full((1, 1, 1, 1), s0, dtype=torch.float64, requires_grad=True)
    # A 9x9 input, kernel 3, dilation 2, padding 0, stride 4 -> 2x2 outputs; take a 1x1 crop of the grid.
    out = sac_conv2d(x[:, :, :5, :5], scale, weight, None, 1, 0, d)
    (g,) = torch.autograd.grad(out.sum(), scale)
    expected = 0.0
    cy = cx = 2  # centre of the 5x5 window
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            y, xx = cy + i * d * s0, cx + j * d * s0
            y0, x0 = math.floor(y), math.floor(xx)
            fy, fx = y - y0, xx - x0
            patch = x[0, :, :5, :5]

            def at(m, k):
                return patch[:, m, k] if 0 <= m < 5 and 0 <= k < 5 else torch.zeros(2, dtype=torch.float64)  # noqa: B023 (called in this iteration)

            dz_dy = (at(y0 + 1, x0) - at(y0, x0)) * (1 - fx) + (at(y0 + 1, x0 + 1) - at(y0, x0 + 1)) * fx
            dz_dx = (at(y0, x0 + 1) - at(y0, x0)) * (1 - fy) + (at(y0 + 1, x0 + 1) - at(y0 + 1, x0)) * fy
            g_z = weight[0, :, i + 1, j + 1]  # eq. (10) with g(B) = 1
            expected += float((i * d * dz_dy + j * d * dz_dx) @ g_z)
    assert g.item() == pytest.approx(expected, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
def test_batch_size_zero(impl):
    x = torch.randn(0, 3, 8, 8, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    scale = torch.ones(0, 1, 8, 8, requires_grad=True)
    out = sac_conv2d(x, scale, weight, None, padding=1, impl=_impl(impl))
    assert out.shape == (0, 4, 8, 8)
    out.sum().backward()
    assert weight.grad is not None and torch.count_nonzero(weight.grad) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_inputs(impl):
    x = torch.randn(2, 9, 10, 3).permute(0, 3, 1, 2)  # channels-last view
    weight = torch.randn(3, 4, 3, 3).transpose(0, 1)
    scale = (torch.rand(2, 10, 9, 1) + 0.5).permute(0, 3, 2, 1)
    bias = torch.randn(8)[::2]
    assert not (x.is_contiguous() or weight.is_contiguous() or scale.is_contiguous() or bias.is_contiguous())
    got = sac_conv2d(x, scale, weight, bias, padding=1, impl=_impl(impl))
    expected = sac_conv2d(x.contiguous(), scale.contiguous(), weight.contiguous(), bias.contiguous(), padding=1, impl=_impl(impl))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_autocast_keeps_scale_gradient(impl):
    x = torch.randn(1, 3, 8, 8)
    weight = torch.randn(2, 3, 3, 3)
    scale = (torch.rand(1, 1, 8, 8) * 0.8 + 0.6).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # A half-precision input, as a previous autocast layer would hand over.
        out = sac_conv2d(x.bfloat16(), scale, weight, None, padding=2, dilation=2, impl=_impl(impl))
    assert out.dtype == torch.float32
    (g_auto,) = torch.autograd.grad(out.sum(), scale)
    out32 = sac_conv2d(x.bfloat16().float(), scale, weight, None, padding=2, dilation=2, impl=_impl(impl))
    (g32,) = torch.autograd.grad(out32.sum(), scale)
    assert torch.count_nonzero(g_auto) > 0
    torch.testing.assert_close(g_auto, g32)


def test_unknown_impl_lists_valid_ones():
    x, w = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3)
    with pytest.raises(ValueError, match="reference"):
        sac_conv2d(x, torch.ones(1, 1, 2, 2), w, impl="nope")


@pytest.mark.parametrize(
    "make,error,pattern",
    [
        (
            lambda: (torch.randn(3, 8, 8), torch.ones(1, 1, 6, 6), torch.randn(2, 3, 3, 3), None),
            ValueError,
            r"input must be a 4-D.*\(3, 8, 8\)",
        ),
        (
            lambda: (torch.randn(1, 3, 8, 8), torch.ones(1, 1, 6, 6), torch.randn(2, 3, 3), None),
            ValueError,
            r"weight must be a 4-D.*\(2, 3, 3\)",
        ),
        (
            lambda: (torch.randn(1, 3, 8, 8), torch.ones(1, 1, 8, 8), torch.randn(2, 3, 3, 3), None),
            ValueError,
            r"scale must have shape \[N, 1, H_out, W_out\] = \[1, 1, 6, 6\].*\(1, 1, 8, 8\)",
        ),
        (
            lambda: (torch.randn(1, 3, 8, 8), torch.ones(1, 6, 6), torch.randn(2, 3, 3, 3), None),
            ValueError,
            r"scale must have shape.*\(1, 6, 6\)",
        ),
        (lambda: (torch.randn(1, 3, 8, 8), torch.ones(1, 1, 7, 7), torch.randn(2, 3, 2, 2), None), ValueError, r"odd.*2x2"),
        (
            lambda: (torch.randn(1, 3, 8, 8), torch.ones(1, 1, 6, 6), torch.randn(2, 4, 3, 3), None),
            ValueError,
            r"channel mismatch.*C_in=3.*expects 4",
        ),
        (
            lambda: (torch.randn(1, 3, 8, 8), torch.ones(1, 1, 6, 6), torch.randn(2, 3, 3, 3), torch.randn(3)),
            ValueError,
            r"bias must have shape \[2\].*\(3,\)",
        ),
        (
            lambda: (torch.randn(1, 3, 8, 8), torch.ones(1, 1, 6, 6, dtype=torch.float64), torch.randn(2, 3, 3, 3), None),
            RuntimeError,
            r"one dtype.*scale.*float64",
        ),
        (
            lambda: (torch.randn(1, 3, 8, 8), torch.ones(1, 1, 6, 6, device="meta"), torch.randn(2, 3, 3, 3), None),
            RuntimeError,
            r"one device.*meta",
        ),
        (
            lambda: (torch.randn(1, 3, 2, 2), torch.ones(1, 1, 1, 1), torch.randn(2, 3, 3, 3), None),
            ValueError,
            r"\(1, 3, 2, 2\) is too small",
        ),
    ],
)
def test_errors_name_the_fault(make, error, pattern):
    x, scale, weight, bias = make()
    with pytest.raises(error, match=pattern):
        sac_conv2d(x, scale, weight, bias)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"stride": 0}, "stride"),
        ({"padding": -1}, "padding"),
        ({"dilation": (1, 0)}, "dilation"),
        ({"stride": (1, 2, 3)}, "stride"),
    ],
)
def test_bad_geometry(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        sac_conv2d(torch.randn(1, 1, 8, 8), torch.ones(1, 1, 6, 6), torch.randn(1, 1, 3, 3), **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("impl", IMPLS)
def test_cuda_matches_cpu(impl):
    x = torch.randn(2, 4, 11, 9, dtype=torch.float64)
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    scale = torch.rand(2, 1, 11, 9, dtype=torch.float64) + 0.5
    cpu = sac_conv2d(x, scale, weight, None, padding=2, dilation=2, impl=_impl(impl))
    gpu = sac_conv2d(x.cuda(), scale.cuda(), weight.cuda(), None, padding=2, dilation=2, impl=_impl(impl))
    torch.testing.assert_close(gpu.cpu(), cpu)


#: Every implementation, and the fast ones in both GEMM orders (the reference has one).
PATHS = [("reference", None)] + [
    pytest.param(impl, project, id=f"{impl}-{'multiply-then-sample' if project else 'sample-then-multiply'}")
    for impl in IMPLS
    if impl != "reference"
    for project in (False, True)
]


def _force_gemm_order(monkeypatch, project):
    if project is not None:
        monkeypatch.setattr(plan, "project_first", lambda *args: project)


def _relative_error(got, expected):
    return ((got.float() - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("impl,project", PATHS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_at_a_realistic_size(impl, project, dtype, monkeypatch):
    # 128x256 positions and 32768 table rows: far past the integers bfloat16 (256) and float16 (2048)
    # hold exactly. Positions must stay float32, or rows are wrong (or out of range) even at scale 1.
    _force_gemm_order(monkeypatch, project)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 128, 256, generator=g)
    weight = torch.randn(2, 16, 3, 3, generator=g) / 12
    expected = F.conv2d(x, weight, None, 1, 2, 2)
    # F.conv2d's own error in this dtype sets the bar: the operator may not be much worse.
    conv_error = _relative_error(F.conv2d(x.to(dtype), weight.to(dtype), None, 1, 2, 2), expected)
    ones = torch.ones(1, 1, 128, 256)
    got = sac_conv2d(x.to(dtype), ones.to(dtype), weight.to(dtype), None, 1, 2, 2, impl=_impl(impl))
    assert got.dtype == dtype
    assert _relative_error(got, expected) <= 3 * conv_error
    scale = torch.rand(1, 1, 128, 256, generator=g) * 1.5 + 0.5
    expected = sac_conv2d(x, scale, weight, None, 1, 2, 2, impl=_impl(impl))
    got = sac_conv2d(x.to(dtype), scale.to(dtype), weight.to(dtype), None, 1, 2, 2, impl=_impl(impl))
    # The scale itself is rounded to the dtype, which moves the taps: compare with that scale.
    expected_rounded = sac_conv2d(x, scale.to(dtype).float(), weight, None, 1, 2, 2, impl=_impl(impl))
    assert _relative_error(got, expected_rounded) <= 3 * conv_error
    assert _relative_error(got, expected) <= 0.05


@pytest.mark.parametrize("impl,project", PATHS)
def test_bfloat16_gradients_follow_float32(impl, project, monkeypatch):
    _force_gemm_order(monkeypatch, project)
    g = torch.Generator().manual_seed(1)
    # Scales bfloat16 holds exactly: a rounded scale moves taps across pixel borders, where the
    # scale's gradient (piecewise constant in the position) jumps.
    scale = (torch.rand(2, 1, 40, 300, generator=g) + 0.5).bfloat16().float()
    tensors = [torch.randn(2, 16, 40, 300, generator=g), scale]
    tensors += [torch.randn(3, 16, 3, 3, generator=g) / 12, torch.randn(3, generator=g)]
    grad_out = torch.randn(2, 3, 40, 300, generator=g)
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        leaves = [t.to(dtype).requires_grad_() for t in tensors]
        out = sac_conv2d(*leaves, 1, 1, 1, impl=_impl(impl))
        results.append((out, *torch.autograd.grad(out, leaves, grad_out.to(dtype))))
    for name, expected, got in zip(("output", "input", "scale", "weight", "bias"), *results):
        assert got.dtype == torch.bfloat16 and torch.isfinite(got).all(), name
        assert _relative_error(got, expected) <= 0.03, name


@pytest.mark.parametrize("impl,project", PATHS)
@pytest.mark.parametrize("dilation", [1, 2])
def test_non_finite_input_spreads_as_in_conv2d(impl, project, dilation, monkeypatch):
    # At scale 1 a tap reads one pixel with weight 1 and three with weight 0, and padding taps none:
    # NaN or Inf there must not leak through a zero weight (0 * NaN is NaN).
    _force_gemm_order(monkeypatch, project)
    x = torch.randn(2, 6, 13, 11)
    x[0, 1, 3, 4] = x[0, 3, 7, 0] = float("nan")
    x[1, 2, 0, 0], x[1, 0, 12, 10] = float("inf"), float("-inf")
    weight = torch.randn(5, 6, 3, 3)
    expected = F.conv2d(x, weight, None, 1, dilation, dilation)
    got = sac_conv2d(x, torch.ones(2, 1, *expected.shape[-2:]), weight, None, 1, dilation, dilation, impl=_impl(impl))
    bad = ~torch.isfinite(expected)
    assert 0 < bad.sum() < bad.numel() // 2
    assert torch.equal(~torch.isfinite(got), bad)
    torch.testing.assert_close(got[~bad], expected[~bad], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scale_is_refused(impl, value):
    scale = torch.ones(2, 1, 8, 8)
    scale[1, 0, 2, 3] = scale[0, 0, 7, 7] = value
    with pytest.raises(ValueError, match=r"scale has 2 non-finite value\(s\) \(NaN or Inf\) among 128 of shape \(2, 1, 8, 8\)"):
        sac_conv2d(torch.randn(2, 3, 8, 8), scale, torch.randn(4, 3, 3, 3), None, padding=1, impl=_impl(impl))
