"""The fast SAC path against the reference: forward and all gradients, both GEMM orders, chunking, both sampling
backends; the sampling dispatcher and the native kernels."""

from __future__ import annotations

import shutil

import pytest
import torch

import sacseg.ops._compat as compat
import sacseg.ops._plan as plan
import sacseg.ops.sac_conv as sac_module
import sacseg.ops.sampling as sampling
import sacseg.ops.sampling.native as native
from sacseg.ops import sac_conv2d, sampling_backend
from sacseg.ops.sampling import Grid

#: The fast path with each sampling backend (the compiled CPU kernels, or torch ops only).
FAST = ["auto", "torch"]


def _out_size(h, w, k, stride, padding, dilation):
    return tuple((size + 2 * p - d * (kk - 1) - 1) // s + 1 for size, kk, s, p, d in zip((h, w), k, stride, padding, dilation))


def _run(backend, x, scale, weight, bias, stride, padding, dilation, grad_out):
    """Output and gradients of the fast path with ``backend``'s sampling, or of the reference (``"reference"``)."""
    leaves = [t.clone().requires_grad_() for t in (x, scale, weight, bias)]
    impl = "reference" if backend == "reference" else "fast"
    with sampling_backend("auto" if backend == "reference" else backend):
        out = sac_conv2d(*leaves, stride, padding, dilation, impl=impl)
        return (out, *torch.autograd.grad(out, leaves, grad_out))


def _assert_agree(got, expected, names=("output", "input", "scale", "weight", "bias"), rel=1e-5):
    # Relative to the largest entry: element-wise relative error is meaningless where a sum cancels.
    for name, g, e in zip(names, got, expected):
        err = (g - e).abs().max().item()
        assert err <= rel * e.abs().max().item(), f"{name}: max error {err:.3g} vs max |ref| {e.abs().max().item():.3g}"


def _case(seed, c_in, c_out, kernel, stride, padding, dilation, scale_range=(0.5, 2.0), n=2, size=(11, 13)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, *size, generator=g)
    weight = torch.randn(c_out, c_in, *kernel, generator=g) / (c_in * kernel[0] * kernel[1]) ** 0.5
    bias = torch.randn(c_out, generator=g)
    h_out, w_out = _out_size(*size, kernel, stride, padding, dilation)
    lo, hi = scale_range
    scale = torch.rand(n, 1, h_out, w_out, generator=g) * (hi - lo) + lo
    grad_out = torch.randn(n, c_out, h_out, w_out, generator=g)
    return x, scale, weight, bias, stride, padding, dilation, grad_out


def _random_geometry(seed):
    g = torch.Generator().manual_seed(1000 + seed)

    def pick(*options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    kernel = (pick(1, 3, 5), pick(1, 3))
    return kernel, (pick(1, 2), pick(1, 3)), (pick(0, 1, 3), pick(0, 2)), (pick(1, 2, 3), pick(1, 2))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("c_in,c_out", [(6, 5), (48, 2)])
@pytest.mark.parametrize("project", [False, True], ids=["sample-then-multiply", "multiply-then-sample"])
def test_fast_matches_reference_float32(backend, seed, c_in, c_out, project, monkeypatch):
    monkeypatch.setattr(plan, "project_first", lambda *args: project)
    kernel, stride, padding, dilation = _random_geometry(seed)
    case = _case(seed, c_in, c_out, kernel, stride, padding, dilation)
    _assert_agree(_run(backend, *case), _run("reference", *case))


def test_gemm_order_follows_the_cost():
    assert plan.project_first(2048, 19, 9, 64 * 64, 64 * 64)  # the classifiers
    assert plan.project_first(2048, 150, 9, 64 * 64, 64 * 64)
    assert not plan.project_first(512, 512, 9, 64 * 64, 64 * 64)  # res5
    assert not plan.project_first(2048, 19, 9, 64 * 64, 2 * 2)  # few outputs: project fewer pixels


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("c_in,c_out", [(6, 5), (48, 2)])
@pytest.mark.parametrize("dilation", [(1, 1), (2, 3)])
def test_gradients_at_scale_exactly_one(backend, c_in, c_out, dilation):
    # Every tap sits on an integer: the position derivative must take the same (right-hand) corner pair.
    case = list(_case(3, c_in, c_out, (3, 3), (1, 1), dilation, dilation))
    case[1] = torch.ones_like(case[1])
    got, expected = _run(backend, *case), _run("reference", *case)
    assert torch.count_nonzero(expected[2]) > 0
    _assert_agree(got, expected)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("c_in,c_out", [(6, 5), (48, 2)])
def test_chunks_over_rows_change_nothing(backend, c_in, c_out, monkeypatch):
    case = _case(4, c_in, c_out, (3, 3), (1, 1), (2, 2), (2, 2), size=(9, 10))
    whole = _run(backend, *case)
    monkeypatch.setattr(plan, "CHUNK_BYTES", 1)  # one output row per chunk
    _assert_agree(_run(backend, *case), whole, rel=1e-6)


@pytest.mark.parametrize("backend", FAST)
def test_float64_agrees_tightly(backend):
    case = [t.double() if isinstance(t, torch.Tensor) else t for t in _case(5, 7, 3, (3, 3), (2, 1), (1, 2), (1, 2), (0.2, 3.0))]
    _assert_agree(_run(backend, *case), _run("reference", *case), rel=1e-12)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("c_in,c_out", [(6, 5), (48, 2)])
@pytest.mark.parametrize("wanted", [(1,), (2,), (0, 3)], ids=["scale", "weight", "input+bias"])
def test_gradients_of_a_subset(backend, c_in, c_out, wanted):
    # E.g. the "-only" variants freeze the network and train the scale regressor alone.
    tensors = _case(6, c_in, c_out, (3, 3), (1, 1), (2, 2), (2, 2))
    grad_out = tensors[-1]
    results = []
    for impl in ("fast", "reference"):
        args = [t.clone().requires_grad_(k in wanted) if k < 4 else t for k, t in enumerate(tensors[:-1])]
        with sampling_backend(backend):
            out = sac_conv2d(*args, impl=impl)
            results.append(torch.autograd.grad(out, [args[k] for k in wanted], grad_out))
    _assert_agree(results[0], results[1], names=[str(k) for k in wanted])


def test_auto_uses_the_fast_path():
    case = _case(7, 5, 4, (3, 3), (1, 1), (1, 1), (1, 1))
    x, scale, weight, bias, stride, padding, dilation, _ = case
    auto = sac_conv2d(x, scale, weight, bias, stride, padding, dilation)
    assert torch.equal(auto, sac_conv2d(x, scale, weight, bias, stride, padding, dilation, impl="fast"))
    assert sac_module._choose_impl() is sac_module.SAC_IMPLEMENTATIONS["fast"]


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
def test_native_kernels_build_and_load():
    assert native.native_library() is not None


def test_failed_build_falls_back_to_torch_ops(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_library_tried", False)
    monkeypatch.setenv("SACSEG_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", shutil.which("false") or "false")  # a "compiler" that always fails
    if shutil.which("false") is None:
        pytest.skip("no `false` command to stand in for a broken compiler")
    with pytest.warns(UserWarning, match="could not build"):
        assert native.native_library() is None
    case = _case(8, 4, 3, (3, 3), (1, 1), (1, 1), (1, 1))
    _assert_agree(_run("auto", *case), _run("reference", *case))
    assert not list(tmp_path.glob("*.so*")) and not list(tmp_path.glob("tmp*"))  # no half-written library left


@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_summed_taps_and_their_adjoint(kernels):
    # sample_rows(sum_taps=True) sums each pixel's taps; its adjoint hands every tap the pixel's gradient.
    g = torch.Generator().manual_seed(3)
    h, w, taps, c, pixels = 5, 6, 4, 7, 9
    table = torch.randn(h * w * taps, c, generator=g, dtype=torch.float64)
    y = torch.rand(pixels * taps, generator=g, dtype=torch.float64) * (h + 2) - 1  # some taps outside
    x = torch.rand(pixels * taps, generator=g, dtype=torch.float64) * (w + 2) - 1
    each = sampling.sample_rows(Grid(table, h, w, taps, y, x), kernels=kernels)
    summed = sampling.sample_rows(Grid(table, h, w, taps, y, x), sum_taps=True, kernels=kernels)
    torch.testing.assert_close(summed, each.view(pixels, taps, c).sum(1))
    grad = torch.randn(pixels, c, generator=g, dtype=torch.float64)
    shared, full = torch.zeros_like(table), torch.zeros_like(table)
    positions = sampling.sample_rows_backward(Grid(table, h, w, taps, y, x), grad, shared, True, kernels=kernels)
    expanded = grad.repeat_interleave(taps, 0)
    expected = sampling.sample_rows_backward(Grid(table, h, w, taps, y, x), expanded, full, True, kernels=kernels)
    torch.testing.assert_close(shared, full)
    for got, want in zip(positions, expected):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="runs of 4 taps"):
        sampling.sample_rows_backward(Grid(table, h, w, taps, y, x), grad[:-1], None, True, kernels=kernels)
    with pytest.raises(ValueError, match="runs of 4 taps"):
        sampling.sample_rows(Grid(table, h, w, taps, y[:-1], x[:-1]), sum_taps=True, kernels=kernels)
    with pytest.raises(ValueError, match=r"h \* w \* taps"):  # the kernel would read past the table's end
        sampling.sample_rows(Grid(table[taps:], h, w, taps, y, x), kernels=kernels)
    with pytest.raises(ValueError, match="grad_table must have the table's shape"):
        sampling.sample_rows_backward(Grid(table, h, w, taps, y, x), grad, shared[taps:], True, kernels=kernels)


@pytest.mark.parametrize("kernels", ["native", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 16, 16), (2, 37, 53), (3, 1, 5), (1, 97, 9), (2, 130, 75)])  # blocks, tiles, edges
def test_transpose(kernels, dtype, shape):
    src = torch.randn(shape, dtype=dtype)
    assert torch.equal(sampling.transpose(src, kernels=kernels), src.transpose(1, 2))
    out = torch.full((shape[0], shape[2], shape[1]), float("nan"), dtype=dtype)
    assert sampling.transpose(src, kernels=kernels, out=out) is out
    assert torch.equal(out, src.transpose(1, 2))
    with pytest.raises(ValueError, match="out must be a contiguous"):
        sampling.transpose(src, kernels=kernels, out=out.transpose(1, 2))


@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_sample_rows_into_a_buffer_in_any_visiting_order(kernels):
    # The samples are runs of `run` taps per pixel; the kernel's visiting order must not show in the result.
    g = torch.Generator().manual_seed(5)
    h, w, c, pixels, run = 6, 7, 33, 10, 9
    table = torch.randn(h * w, c, generator=g, dtype=torch.float64)
    y = torch.rand(pixels * run, generator=g, dtype=torch.float64) * (h + 2) - 1  # some taps outside
    x = torch.rand(pixels * run, generator=g, dtype=torch.float64) * (w + 2) - 1
    expected = sampling.sample_rows(Grid(table, h, w, 1, y, x), kernels="torch")
    buffer = torch.full((pixels * run + 5, c), float("nan"), dtype=torch.float64)
    got = sampling.sample_rows(Grid(table, h, w, 1, y, x), run=run, kernels=kernels, out=buffer[: pixels * run])
    assert got.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(got, expected)
    assert buffer[pixels * run :].isnan().all()  # nothing written past the samples
    grad = torch.randn(pixels * run, c, generator=g, dtype=torch.float64)
    in_order, by_tap = torch.zeros_like(table), torch.zeros_like(table)
    positions = sampling.sample_rows_backward(Grid(table, h, w, 1, y, x), grad, in_order, True, kernels=kernels)
    tap_major = sampling.sample_rows_backward(Grid(table, h, w, 1, y, x), grad, by_tap, True, run=run, kernels=kernels)
    torch.testing.assert_close(by_tap, in_order)
    for a, b in zip(tap_major, positions):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"out must be a contiguous torch.float64 tensor of shape \[90, 33\]"):
        sampling.sample_rows(Grid(table, h, w, 1, y, x), kernels=kernels, out=buffer[:10])
    with pytest.raises(ValueError, match="runs of 4 taps"):
        sampling.sample_rows(Grid(table, h, w, 1, y, x), run=4, kernels=kernels)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("c_in,c_out", [(6, 5), (48, 2)], ids=["sample-then-multiply", "multiply-then-sample"])
def test_gradients_come_back_contiguous(backend, c_in, c_out):
    # Like F.conv2d's: a permuted gradient would be copied again by autograd or the next layer.
    x, scale, weight, bias, stride, padding, dilation, grad_out = _case(9, c_in, c_out, (3, 3), (1, 1), (1, 1), (2, 2))
    leaves = [t.clone().requires_grad_() for t in (x, scale, weight)]
    with sampling_backend(backend):
        sac_conv2d(*leaves, bias, stride, padding, dilation).backward(grad_out)
    for leaf in leaves:
        assert leaf.grad.is_contiguous()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("taps", [1, 4])
def test_adjoint_kernel_under_any_thread_count(threads, taps, monkeypatch):
    # The kernel splits the channels among threads, or the taps when the table has enough tap blocks.
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    g = torch.Generator().manual_seed(11)
    h, w, c, pixels = 5, 6, 40, 7
    table = torch.randn(h * w * taps, c, generator=g, dtype=torch.float64)
    y = torch.rand(pixels * taps, generator=g, dtype=torch.float64) * (h + 2) - 1
    x = torch.rand(pixels * taps, generator=g, dtype=torch.float64) * (w + 2) - 1
    grad = torch.randn(pixels * taps, c, generator=g, dtype=torch.float64)
    results = []
    for kernels in ("native", "torch"):
        grad_table = torch.zeros_like(table)
        positions = sampling.sample_rows_backward(Grid(table, h, w, taps, y, x), grad, grad_table, True, kernels=kernels)
        results.append((grad_table, *positions))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


def test_gemm_reads_strided_views_right():
    # A height-sliced NCHW input makes a plane a strided view; oneDNN must get it tight (or transposed).
    a, planes = torch.randn(5, 16), torch.randn(16, 40)
    for b in (planes.t(), planes.t()[:24], planes[:, :24].t(), planes.t().contiguous()):
        torch.testing.assert_close(compat.linear(a, b), a @ b.t())


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("c_in,c_out", [(6, 5), (48, 2)], ids=["sample-then-multiply", "multiply-then-sample"])
def test_input_sliced_in_height(backend, c_in, c_out):
    x, scale, weight, bias, stride, padding, dilation, grad_out = _case(
        12, c_in, c_out, (3, 3), (1, 1), (1, 1), (1, 1), size=(15, 13)
    )
    scale, grad_out = scale[:, :, 2:13], grad_out[:, :, 2:13]
    results = []
    for contiguous in (False, True):
        leaf = x.clone().requires_grad_()
        sliced = leaf[:, :, 2:13]  # the rows of a plane are no longer back to back
        assert not sliced.is_contiguous()
        with sampling_backend(backend):
            out = sac_conv2d(sliced.contiguous() if contiguous else sliced, scale, weight, bias, stride, padding, dilation)
            results.append((out, *torch.autograd.grad(out, leaf, grad_out)))
    _assert_agree(results[0], results[1], names=("output", "input"))
