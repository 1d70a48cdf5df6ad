"""The Triton row-sampling kernels against the torch path, run on CPU through Triton's interpreter; the operator's CUDA
path (the kernels' self-check, no host sync) with its decisions forced on CPU tensors."""

from __future__ import annotations

import functools
import importlib
import math
import warnings
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton")

import sacseg.ops._plan as plan
import sacseg.ops.backend as backend
import sacseg.ops.sampling as sampling
import sacseg.ops.sampling.torch_ops as torch_ops
import sacseg.ops.sampling.triton_kernels as triton_kernels
import sacseg.ops.selfcheck as selfcheck
from sacseg.ops import sac_conv2d, sampling_backend
from sacseg.ops.sampling import Grid

H, W = 5, 6
# (taps, run, sum_taps): sampled columns as the fast path reads them (taps=1, run=kernel taps),
# row blocks per tap, and the multiply-first sums over taps.
LAYOUTS = [(1, 1, False), (1, 3, False), (3, 1, False), (3, 1, True), (4, 2, True)]
LAYOUT_IDS = ["plain", "runs", "row-blocks", "sum-taps-3", "sum-taps-4"]
# M = 156 is no multiple of the blocks (8..128 samples); 70 channels take two blocks of 64. The
# interpreter sums the position gradients' dot products element by element in Python: the adjoint's
# tests take few samples where they take many channels.
M, CHANNELS = 156, [5, 70]


def _load(interpret: bool):
    """The kernel module, re-imported if need be so that its kernels are decorated for Triton's
    interpreter or for the GPU: ``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates."""
    if interpret != triton_kernels._INTERPRETED:
        with pytest.MonkeyPatch.context() as env:
            if interpret:
                env.setenv("TRITON_INTERPRET", "1")
            else:
                env.delenv("TRITON_INTERPRET", raising=False)
            importlib.reload(triton_kernels)
    return triton_kernels


@pytest.fixture(scope="module", autouse=True)
def _restore_mode():
    # Later test files (and the CUDA dispatch) must find the kernels as they were imported.
    mode = triton_kernels._INTERPRETED
    yield
    _load(mode)


@pytest.fixture
def kernels():
    """``sacseg.ops.sampling.triton_kernels`` running on CPU tensors through the interpreter."""
    return _load(True)


def _positions(m: int, seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``[m]`` positions reaching two pixels past every border, with integers, borders and far outliers."""
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(m, generator=g, dtype=torch.float64) * (H + 3) - 2.5
    x = torch.rand(m, generator=g, dtype=torch.float64) * (W + 3) - 2.5
    y[: m // 4] = y[: m // 4].round()  # integer rows: the right-hand derivative, weight-0 corners
    x[m // 8 : m // 3] = x[m // 8 : m // 3].round()
    edges = torch.tensor([-1.0, 0.0, H - 1.0, H, -1e6, 1e6, -1.5, H - 0.5], dtype=torch.float64)
    y[-len(edges) :] = edges
    x[-len(edges) :] = edges.flip(0).clamp(-1e6, W)
    return y.to(dtype), x.to(dtype)


def _table(taps: int, c: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + seed)
    return torch.randn(H * W * taps, c, generator=g, dtype=torch.float64).to(dtype)


def _assert_close(got: torch.Tensor, expected: torch.Tensor, rel: float, name: str = "result") -> None:
    # Relative to the largest entry: element-wise relative error is meaningless where a sum cancels.
    assert got.shape == expected.shape, f"{name}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    err = (got.double() - expected.double()).abs().max().item() if got.numel() else 0.0
    bound = rel * max(expected.abs().max().item() if expected.numel() else 0.0, 1e-30)
    assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g}"


def _grad(taps: int, sum_taps: bool, m: int, c: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(200 + seed)
    return torch.randn(m // taps if sum_taps else m, c, generator=g, dtype=torch.float64).to(dtype)


def _backward_pair(kernels, table, taps, y, x, grad, run, reference_table=None, reference_grad=None):
    """Triton's and the torch path's ``(grad_table, grad_y, grad_x)``, both adding into the same start;
    the torch path reads ``reference_table`` and ``reference_grad`` where given (float32 copies)."""
    reference_table = table if reference_table is None else reference_table
    reference_grad = grad if reference_grad is None else reference_grad
    start = torch.randn(table.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    got_table = start.to(device=table.device, dtype=table.dtype)
    ref_table = got_table.to(reference_table.dtype)
    got = kernels.sample_rows_backward(Grid(table, H, W, taps, y, x), grad, got_table, True, run=run)
    ref = sampling.sample_rows_backward(
        Grid(reference_table, H, W, taps, y, x), reference_grad, ref_table, True, run=run, kernels="torch"
    )
    return (got_table, *got), (ref_table, *ref)


@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("taps,run,sum_taps", LAYOUTS, ids=LAYOUT_IDS)
def test_sample_rows_matches_torch_float32(kernels, taps, run, sum_taps, c):
    table, (y, x) = _table(taps, c, 0), _positions(M, 0)
    got = kernels.sample_rows(Grid(table, H, W, taps, y, x), sum_taps=sum_taps, run=run)
    expected = sampling.sample_rows(Grid(table, H, W, taps, y, x), sum_taps=sum_taps, run=run, kernels="torch")
    assert got.dtype == torch.float32
    _assert_close(got, expected, 1e-5)


@pytest.mark.parametrize("m,c", [(M, 5), (24, 70)])
@pytest.mark.parametrize("taps,run,sum_taps", LAYOUTS, ids=LAYOUT_IDS)
def test_sample_rows_backward_matches_torch_float32(kernels, taps, run, sum_taps, m, c):
    table, (y, x) = _table(taps, c, 1), _positions(m, 1)
    got, expected = _backward_pair(kernels, table, taps, y, x, _grad(taps, sum_taps, m, c, 1), run)
    assert torch.count_nonzero(expected[1]) > 0 and torch.count_nonzero(expected[2]) > 0
    for name, g, e in zip(("grad_table", "grad_y", "grad_x"), got, expected):
        assert g.dtype == torch.float32, name
        _assert_close(g, e, 1e-5, name)


@pytest.mark.parametrize("taps,run,sum_taps", [(3, 1, False), (3, 1, True)], ids=["row-blocks", "sum-taps"])
def test_float64_agrees_tightly(kernels, taps, run, sum_taps):
    table, (y, x) = _table(taps, 5, 2, torch.float64), _positions(M, 2, torch.float64)
    got = kernels.sample_rows(Grid(table, H, W, taps, y, x), sum_taps=sum_taps, run=run)
    assert got.dtype == torch.float64
    _assert_close(got, sampling.sample_rows(Grid(table, H, W, taps, y, x), sum_taps=sum_taps, run=run, kernels="torch"), 1e-12)
    got, expected = _backward_pair(kernels, table, taps, y, x, _grad(taps, sum_taps, M, 5, 2, torch.float64), run)
    for name, g, e in zip(("grad_table", "grad_y", "grad_x"), got, expected):
        assert g.dtype == torch.float64, name
        _assert_close(g, e, 1e-12, name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("taps,run,sum_taps", [(1, 3, False), (3, 1, True)], ids=["runs", "sum-taps"])
def test_half_tables_blend_in_float32(kernels, dtype, taps, run, sum_taps):
    # Positions stay float32; the blend and the table's gradient are summed in float32 and rounded
    # once into the table's dtype: half an ulp of the largest entry at most.
    table, (y, x) = _table(taps, 20, 3, dtype), _positions(48, 3)
    grad = _grad(taps, sum_taps, 48, 20, 3, dtype)
    eps = torch.finfo(dtype).eps
    got = kernels.sample_rows(Grid(table, H, W, taps, y, x), sum_taps=sum_taps, run=run)
    assert got.dtype == dtype
    expected = sampling.sample_rows(Grid(table.float(), H, W, taps, y, x), sum_taps=sum_taps, run=run, kernels="torch")
    _assert_close(got, expected, eps)
    got, expected = _backward_pair(kernels, table, taps, y, x, grad, run, table.float(), grad.float())
    assert got[0].dtype == dtype and got[1].dtype == got[2].dtype == torch.float32  # as torch promotes
    _assert_close(got[0], expected[0], eps, "grad_table")
    _assert_close(got[1], expected[1], 1e-5, "grad_y")  # exact inputs, float32 arithmetic
    _assert_close(got[2], expected[2], 1e-5, "grad_x")


def test_strided_inputs_and_outputs(kernels):
    taps, c, m = 3, 10, 48
    wide = _table(taps, 2 * c, 4)
    table = wide[:, ::2]  # a channel stride of 2
    column_major = table.t().contiguous().t()  # a row stride of 1
    y, x = (p.repeat_interleave(2)[::2] for p in _positions(m, 4))
    assert not (table.is_contiguous() or column_major.is_contiguous() or y.is_contiguous())
    expected = sampling.sample_rows(Grid(table.contiguous(), H, W, taps, y.contiguous(), x.contiguous()), kernels="torch")
    for t in (table, column_major):
        out = torch.full((m, c), math.nan)
        assert kernels.sample_rows(Grid(t, H, W, taps, y, x), out=out) is out
        _assert_close(out, expected, 1e-5)
    grad = torch.randn(c, m).t()  # channels strided, as grad_out's permuted view arrives
    grad_table = torch.zeros(c, H * W * taps).t()  # not contiguous: summed apart, then added
    got = kernels.sample_rows_backward(Grid(column_major, H, W, taps, y, x), grad, grad_table, True)
    ref_table = torch.zeros(H * W * taps, c)
    ref = sampling.sample_rows_backward(
        Grid(table.contiguous(), H, W, taps, y.contiguous(), x.contiguous()), grad.contiguous(), ref_table, True, kernels="torch"
    )
    for name, g, e in zip(("grad_table", "grad_y", "grad_x"), (grad_table, *got), (ref_table, *ref)):
        _assert_close(g, e, 1e-5, name)


@pytest.mark.parametrize("sum_taps", [False, True])
def test_no_samples(kernels, sum_taps):
    table, empty = _table(3, 5, 5), torch.empty(0)
    out = kernels.sample_rows(Grid(table, H, W, 3, empty, empty), sum_taps=sum_taps)
    assert out.shape == (0, 5)
    grad_table = torch.ones_like(table)
    grad_y, grad_x = kernels.sample_rows_backward(Grid(table, H, W, 3, empty, empty), torch.empty(0, 5), grad_table, True)
    assert grad_y.shape == grad_x.shape == (0,) and torch.equal(grad_table, torch.ones_like(table))


def test_nan_in_unweighted_pixels_does_not_leak(kernels):
    # Every sample sits on pixel (2, 3) exactly, or weighs column 4 / row 3 by zero; those hold NaN,
    # as does everything a sample outside the input would clamp to.
    taps, c = 2, 5
    table = _table(taps, c, 6).view(H, W, taps, c)
    clean = table[2, 3].clone()
    table[3], table[:, 4] = math.nan, math.nan
    table[0], table[:, 0], table[H - 1], table[:, W - 1] = math.nan, math.nan, math.nan, math.nan
    table[2, 3] = clean
    table = table.view(H * W * taps, c)
    y = torch.tensor([2.0, 2.0, 2.0, 2.0, -3.0, 2.0, H + 2.0, 2.0])
    x = torch.tensor([3.0, 3.0, 3.0, 3.0, 3.0, -7.0, 3.0, W + 0.5])
    out = kernels.sample_rows(Grid(table, H, W, taps, y, x))
    assert torch.equal(out[:4], clean[[0, 1, 0, 1]]) and torch.equal(out[4:], torch.zeros(4, c))
    sums = kernels.sample_rows(Grid(table, H, W, taps, y, x), sum_taps=True)
    assert torch.equal(sums, torch.stack([clean.sum(0), clean.sum(0), torch.zeros(c), torch.zeros(c)]))
    grad_table = torch.zeros_like(table)
    kernels.sample_rows_backward(Grid(table, H, W, taps, y, x), torch.ones(8, c), grad_table, False)
    assert torch.equal(grad_table.view(H, W, taps, c)[2, 3], torch.full((taps, c), 2.0))
    assert grad_table.abs().sum() == 4 * c  # nothing but the four weighted samples, and no NaN


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deterministic_mode_sums_the_table_gradient_without_atomics(kernels, dtype, monkeypatch):
    taps, c = 3, 10
    table, (y, x) = _table(taps, c, 8, dtype), _positions(M, 8)
    grad = _grad(taps, True, M, c, 8, dtype)
    torch_path, table_only = torch_ops.sample_rows_backward, []
    # The reference asks for positions too; the dispatcher's fallback asks for the table's gradient only.
    monkeypatch.setattr(torch_ops, "sample_rows_backward", lambda *a: table_only.append(not a[3]) or torch_path(*a))
    dispatched = SimpleNamespace(sample_rows_backward=functools.partial(sampling.sample_rows_backward, kernels="triton"))
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        got, expected = _backward_pair(dispatched, table, taps, y, x, grad, 1, table.float(), grad.float())
    finally:
        torch.use_deterministic_algorithms(previous)
    assert table_only == [True, False]
    if dtype == torch.float32:
        assert torch.equal(got[0], expected[0])  # the torch path's own (deterministic) sum
    else:  # summed in float32 by the torch path, rounded once
        _assert_close(got[0], expected[0], torch.finfo(dtype).eps, "grad_table")
    _assert_close(got[1], expected[1], 1e-5, "grad_y")
    _assert_close(got[2], expected[2], 1e-5, "grad_x")


def test_bad_arguments_raise(kernels):
    table, (y, x) = _table(3, 5, 9), _positions(12, 9)
    with pytest.raises(ValueError, match="h \\* w \\* taps"):
        kernels.sample_rows(Grid(table[1:], H, W, 3, y, x))  # would read past the table's end
    with pytest.raises(ValueError, match="runs of 5"):
        kernels.sample_rows(Grid(table, H, W, 3, y, x), run=5)
    with pytest.raises(ValueError, match="out must be"):
        kernels.sample_rows(Grid(table, H, W, 3, y, x), out=torch.empty(12, 4))
    with pytest.raises(ValueError, match="positions"):
        kernels.sample_rows(Grid(table, H, W, 3, y, x[:-1]))
    with pytest.raises(ValueError, match="grad of shape"):
        kernels.sample_rows_backward(Grid(table, H, W, 3, y, x), torch.zeros(5, 5), None, True)
    with pytest.raises(ValueError, match="grad_table"):
        kernels.sample_rows_backward(Grid(table, H, W, 3, y, x), torch.zeros(12, 5), table[1:], True)


def test_available_in_the_interpreter_only_where_asked(kernels):
    assert kernels.available(torch.zeros(1))  # CPU tensors run through the interpreter
    assert backend.kernels_for(torch.zeros(1)) == "native"  # the CPU path keeps its own kernels


PROJECT = pytest.mark.parametrize("project", [False, True], ids=["sample-then-multiply", "multiply-then-sample"])
# The interpreter runs a kernel launch in seconds: the default run takes one order, `make test-slow` the other.
PROJECT_ONE_QUICK = pytest.mark.parametrize(
    "project",
    [False, pytest.param(True, marks=pytest.mark.slow)],
    ids=["sample-then-multiply", "multiply-then-sample"],
)


@PROJECT_ONE_QUICK
def test_fast_sac_through_the_kernels_matches_reference(kernels, project, monkeypatch):
    # The fast path's own calls (chunk buffers as out, grad_out's permuted rows as grad, per-image
    # tables) reach the kernels on CPU here as they do on CUDA.
    monkeypatch.setattr(backend, "kernels_for", lambda input: "triton")
    _check_fast_sac(kernels, project, "cpu", monkeypatch)


@PROJECT_ONE_QUICK
def test_fast_sac_in_bfloat16_through_the_kernels_matches_the_torch_path(kernels, project, monkeypatch):
    # Half-precision data with float32 positions, and (backward) a float32 gradient of the table:
    # the fast path's own dtype contract, as CUDA autocast runs it.
    monkeypatch.setattr(plan, "project_first", lambda *args: project)
    g = torch.Generator().manual_seed(11)
    x, scale = torch.randn(2, 6, 11, 13, generator=g), torch.rand(2, 1, 11, 13, generator=g) * 1.5 + 0.5
    weight, grad_out = torch.randn(5, 6, 3, 3, generator=g) / 7, torch.randn(2, 5, 11, 13, generator=g)
    results = []
    for through_kernels in (True, False):
        monkeypatch.setattr(backend, "kernels_for", lambda input, k=through_kernels: "triton" if k else "torch")
        leaves = [t.bfloat16().requires_grad_() for t in (x, scale, weight)]
        out = sac_conv2d(*leaves, padding=2, dilation=2, impl="fast")
        results.append((out, *torch.autograd.grad(out, leaves, grad_out.bfloat16())))
    for name, got, expected in zip(("output", "input", "scale", "weight"), *results):
        assert got.dtype == expected.dtype == torch.bfloat16, name
        _assert_close(got.float(), expected.float(), 2 * torch.finfo(torch.bfloat16).eps, name)


def _check_fast_sac(module, project: bool, device: str, monkeypatch) -> None:
    """``sac_conv2d(impl="fast")`` on ``device`` against the reference, output and all gradients, and
    that both of ``module``'s kernels served it."""
    monkeypatch.setattr(plan, "project_first", lambda *args: project)
    calls = set()
    for name in ("sample_rows", "sample_rows_backward"):
        monkeypatch.setattr(module, name, lambda *a, _f=getattr(module, name), **k: calls.add(_f.__name__) or _f(*a, **k))  # noqa: B008
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 6, 11, 13, generator=g)
    scale = torch.rand(2, 1, 11, 13, generator=g) * 1.5 + 0.5
    weight = torch.randn(5, 6, 3, 3, generator=g) / 7
    bias = torch.randn(5, generator=g)
    grad_out = torch.randn(2, 5, 11, 13, generator=g).to(device)
    results = []
    for impl in ("fast", "reference"):
        leaves = [t.to(device).requires_grad_() for t in (x, scale, weight, bias)]
        out = sac_conv2d(*leaves, padding=2, dilation=2, impl=impl)
        results.append((out, *torch.autograd.grad(out, leaves, grad_out)))
    assert calls == {"sample_rows", "sample_rows_backward"}, f"the fast path reached only {calls or 'none'} of the kernels"
    for name, got, expected in zip(("output", "input", "scale", "weight", "bias"), *results):
        _assert_close(got, expected, 1e-5, name)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("taps,run,sum_taps", LAYOUTS, ids=LAYOUT_IDS)
def test_interpreter_sweep(kernels, taps, run, sum_taps, seed):
    # Three channel blocks, several sample blocks, random geometry and a start to add into.
    g = torch.Generator().manual_seed(300 + seed)
    c, m = int(torch.randint(129, 160, (1,), generator=g)), 12 * int(torch.randint(12, 24, (1,), generator=g))
    table, (y, x) = _table(taps, c, seed), _positions(m, seed)
    expected = sampling.sample_rows(Grid(table, H, W, taps, y, x), sum_taps=sum_taps, run=run, kernels="torch")
    _assert_close(kernels.sample_rows(Grid(table, H, W, taps, y, x), sum_taps=sum_taps, run=run), expected, 1e-5)
    got, expected = _backward_pair(kernels, table, taps, y, x, _grad(taps, sum_taps, m, c, seed), run)
    for name, g_, e in zip(("grad_table", "grad_y", "grad_x"), got, expected):
        _assert_close(g_, e, 1e-5, name)


@pytest.mark.parametrize("table_type", ["fp32", "bf16"])
def test_kernels_compile_for_the_gpu(table_type):
    # Triton compiles for a GPU target without one (its wheel ships ptxas): the one check here of
    # the path that the interpreter does not take. With the specialisations a launch gets (unit
    # channel strides, 16-divisible row strides), the table's rows load as 128-bit vectors.
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    module = _load(False)
    pointers = dict.fromkeys(("table", "out", "grad"), f"*{table_type}")
    pointers.update(dict.fromkeys(("y", "x", "grad_table", "part_y", "part_x"), "*fp32"))
    fixed = {"COMPUTE": tl.float32, "BLOCK_M": 16, "BLOCK_C": 64, "ACCUMULATE": True, "POSITIONS": True}
    fixed.update(dict.fromkeys(("stride_col", "stride_y", "stride_x", "stride_grad_col"), 1))
    aligned = ("table", "out", "grad", "y", "x", "grad_table", "part_y", "part_x", "c", "stride_row", "stride_grad_row", "m")
    for kernel in (module._sample_kernel, module._sample_backward_kernel):
        names = kernel.arg_names
        source = ASTSource(
            fn=kernel,
            signature={n: "constexpr" if n in fixed else pointers.get(n, "i32") for n in names},
            constexprs={n: v for n, v in fixed.items() if n in names},
            attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned if n in names},
        )
        ptx = compile(source, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
        assert "ld.global.v4.b32" in ptx, kernel.__name__
        assert ("atom.global" in ptx) == (kernel is module._sample_backward_kernel), kernel.__name__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("taps,run,sum_taps", LAYOUTS, ids=LAYOUT_IDS)
def test_cuda_kernels_match_torch(taps, run, sum_taps, dtype):
    module = _load(False)
    exact = dtype in (torch.float32, torch.float64)
    table = _table(taps, 70, 11, dtype).cuda()
    y, x = (p.cuda() for p in _positions(M, 11, torch.float64 if dtype == torch.float64 else torch.float32))
    grad = _grad(taps, sum_taps, M, 70, 11, dtype).cuda()
    reference = table if exact else table.float()
    rel = {torch.float32: 1e-5, torch.float64: 1e-12}.get(dtype, torch.finfo(dtype).eps)
    got = module.sample_rows(Grid(table, H, W, taps, y, x), sum_taps=sum_taps, run=run)
    assert got.dtype == dtype and got.is_cuda
    _assert_close(got, sampling.sample_rows(Grid(reference, H, W, taps, y, x), sum_taps=sum_taps, run=run, kernels="torch"), rel)
    got, expected = _backward_pair(module, table, taps, y, x, grad, run, reference, grad if exact else grad.float())
    _assert_close(got[0], expected[0], rel, "grad_table")
    _assert_close(got[1], expected[1], 1e-5 if dtype != torch.float64 else 1e-12, "grad_y")
    _assert_close(got[2], expected[2], 1e-5 if dtype != torch.float64 else 1e-12, "grad_x")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@PROJECT
def test_cuda_fast_sac_runs_the_kernels_and_matches_reference(project, monkeypatch):
    module = _load(False)
    assert module.available(torch.zeros(1, device="cuda"))
    _check_fast_sac(module, project, "cuda", monkeypatch)


# The operator's CUDA path, run on CPU: backend.cuda_path forced, the Triton kernels in the interpreter.


@pytest.fixture
def gpu_path(kernels, monkeypatch):
    """The CUDA path's decisions taken for CPU tensors, with a fresh self-check state; the interpreted kernels."""
    monkeypatch.setattr(backend, "cuda_path", lambda t: True)
    monkeypatch.setattr(selfcheck, "_results", {})
    monkeypatch.setattr(selfcheck, "_failed_devices", {})
    monkeypatch.delenv("SACSEG_CUDA_SELFCHECK", raising=False)
    return kernels


def _layer_run(project: bool, monkeypatch, backend_name: str = "auto"):
    """Output and gradients of sac_conv2d on a small layer, multiplying first or not."""
    monkeypatch.setattr(plan, "project_first", lambda *args: project)
    g = torch.Generator().manual_seed(12)
    leaves = [t.requires_grad_() for t in (torch.randn(1, 6, 8, 9, generator=g), torch.rand(1, 1, 8, 9, generator=g) + 0.5)]
    weight, bias = torch.randn(4, 6, 3, 3, generator=g) / 7, torch.randn(4, generator=g)
    with sampling_backend(backend_name):
        out = sac_conv2d(leaves[0], leaves[1], weight, bias, padding=2, dilation=2)
        return (out, *torch.autograd.grad(out, leaves, torch.ones_like(out)))


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.slow)])
def test_selfcheck_passes_with_the_kernels(kernels, dtype):
    assert selfcheck.run_selfcheck(torch.device("cpu"), dtype) is None


def _wrong_values(real):
    return lambda *a, **k: real(*a, **k).mul_(1.01)


def _wrong_positions(real):
    def wrong(*a, **k):
        positions = real(*a, **k)
        return None if positions is None else (positions[0] * 1.01, positions[1])

    return wrong


def _raises(real):
    def broken(*a, **k):
        raise RuntimeError("planted failure")

    return broken


@pytest.mark.parametrize(
    "kernel,plant,found",
    [
        ("sample_rows", _wrong_values, "output .* differs from the torch path"),
        ("sample_rows_backward", _wrong_positions, "scale's gradient .* differs from the torch path"),
        ("sample_rows", _raises, "RuntimeError: planted failure"),
    ],
    ids=["wrong-forward", "wrong-backward", "raises"],
)
def test_a_failed_selfcheck_warns_once_and_the_torch_path_runs(gpu_path, kernel, plant, found, monkeypatch):
    monkeypatch.setattr(gpu_path, kernel, plant(getattr(gpu_path, kernel)))
    expected = _layer_run(False, monkeypatch, "torch")
    with pytest.warns(RuntimeWarning, match=rf"failed their self-check on cpu \(cpu\) torch.float32: {found}") as caught:
        got = _layer_run(False, monkeypatch)
    assert len([w for w in caught if "self-check" in str(w.message)]) == 1
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the device is ruled out, for every dtype
        for g, e in zip(_layer_run(True, monkeypatch), _layer_run(True, monkeypatch, "torch")):
            assert torch.equal(g, e)
    results = selfcheck.cuda_status().results
    assert list(results) == ["cpu (cpu) torch.float32"] and results["cpu (cpu) torch.float32"].startswith("failed: ")


def test_a_passed_selfcheck_runs_once_and_the_kernels_serve(gpu_path, monkeypatch):
    runs, calls = [], []
    check = selfcheck.run_selfcheck
    monkeypatch.setattr(selfcheck, "run_selfcheck", lambda *a: runs.append(a) or check(*a))
    sample = gpu_path.sample_rows
    monkeypatch.setattr(gpu_path, "sample_rows", lambda *a, **k: calls.append(1) or sample(*a, **k))
    for project in (False, True):
        _layer_run(project, monkeypatch)
    assert runs == [(torch.device("cpu"), torch.float32)] and calls
    assert selfcheck.cuda_status().results == {"cpu (cpu) torch.float32": "passed"}


def test_selfcheck_off(gpu_path, monkeypatch):
    monkeypatch.setenv("SACSEG_CUDA_SELFCHECK", "0")
    monkeypatch.setattr(gpu_path, "sample_rows", _wrong_values(gpu_path.sample_rows))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _layer_run(False, monkeypatch)
    assert not torch.equal(got[0], _layer_run(False, monkeypatch, "torch")[0])  # the (planted) kernels ran unchecked
    status = selfcheck.cuda_status()
    assert not status.selfcheck and status.results == {"cpu (cpu) torch.float32": "skipped (SACSEG_CUDA_SELFCHECK=0)"}
    assert "CUDA self-check: off" in str(status)


def test_without_triton_the_gpu_path_warns_once_and_samples_with_torch(monkeypatch):
    monkeypatch.setattr(backend, "cuda_path", lambda t: True)
    monkeypatch.setattr(backend, "load_triton", lambda: None)
    monkeypatch.setattr(backend, "_warned_no_triton", False)
    with pytest.warns(RuntimeWarning, match="Triton does not import"):
        assert backend.kernels_for(torch.zeros(1)) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.kernels_for(torch.zeros(1)) == "torch"


@PROJECT_ONE_QUICK
def test_the_gpu_path_makes_no_host_sync(gpu_path, project, monkeypatch):
    # No .item(), bool(), int(), float() or .tolist() of a tensor anywhere in forward and backward (on a
    # GPU each would wait for the device). The self-check, which syncs by design, runs before.
    expected = _layer_run(project, monkeypatch, "torch")
    _layer_run(project, monkeypatch)
    assert selfcheck.cuda_status().results == {"cpu (cpu) torch.float32": "passed"}

    def sync(*args, **kwargs):
        raise AssertionError("a host sync in the operator's CUDA path")

    with monkeypatch.context() as patched:
        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
            patched.setattr(torch.Tensor, name, sync)
        got = _layer_run(project, monkeypatch)
    for name, g, e in zip(("output", "input", "scale"), got, expected):
        _assert_close(g, e, 1e-5, name)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_the_gpu_path_refuses_a_non_finite_scale_on_the_device(impl, monkeypatch):
    # A device-side assert there (on CPU it fails at once), never a silent result.
    monkeypatch.setattr(backend, "cuda_path", lambda t: True)
    monkeypatch.setattr(backend, "kernels_for", lambda t: "torch")
    scale = torch.ones(1, 1, 8, 8)
    scale[0, 0, 2, 3] = float("nan")
    with pytest.raises(RuntimeError, match=r"scale of shape \(1, 1, 8, 8\) has non-finite values"):
        sac_conv2d(torch.randn(1, 3, 8, 8), scale, torch.randn(4, 3, 3, 3), None, padding=1, impl=impl)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@PROJECT
def test_cuda_forward_and_backward_make_no_host_sync(project, monkeypatch):
    _load(False)
    monkeypatch.setattr(plan, "project_first", lambda *args: project)
    g = torch.Generator().manual_seed(13)
    x = torch.randn(2, 6, 11, 13, generator=g).cuda().requires_grad_()
    scale = (torch.rand(2, 1, 11, 13, generator=g) + 0.5).cuda().requires_grad_()
    weight = (torch.randn(5, 6, 3, 3, generator=g) / 7).cuda().requires_grad_()
    sac_conv2d(x, scale, weight, None, padding=2, dilation=2).sum().backward()  # the self-check, Triton's compiles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sac_conv2d(x, scale, weight, None, padding=2, dilation=2).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert selfcheck.cuda_status().results[selfcheck._device_label(x.device, torch.float32)] == "passed"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_cuda_selfcheck_passes(dtype):
    module = _load(False)
    assert module.available(torch.zeros(1, device="cuda"))
    assert selfcheck.run_selfcheck(torch.device("cuda", torch.cuda.current_device()), dtype) is None
