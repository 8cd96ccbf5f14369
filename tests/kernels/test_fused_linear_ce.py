"""rcond.kernels.fused_linear_ce against the float64 oracle of loss_testing: under
TRITON_INTERPRET=1 on CPU at small odd shapes (fixture ``flce``), and compiled on a CUDA device
at larger shapes when one is present (``gpu`` marker). Fresh random inputs each run; a failure
names its seed.

Triton binds ``@triton.jit`` functions, its own ``triton.language`` helpers included, to the
compiler or to the interpreter when they are defined, i.e. when triton is imported. So the
interpreter tests run in a child process that has TRITON_INTERPRET=1 from its start
(``test_interpreter_suite``); the other test files of this process import triton normally.
"""

import importlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests") not in sys.path:  # loss_testing lives in tests/
    sys.path.insert(0, str(ROOT / "tests"))

from loss_testing import (GRAD_RTOL, check_inactive_rows, compare, compare_with_junk_ignored_targets,  # noqa: E402
                          interpreting, make_case, poison_allocations, reference, run, upstream, without_weights)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
VARIANTS = {
    "plain": {},
    "bias-softcap-scale": dict(bias=True, softcap=4.0, logit_scale=0.7),
}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def flce():
    """rcond.kernels.fused_linear_ce with interpreted kernels (CPU tensors); skips elsewhere."""
    pytest.importorskip("triton")
    if not interpreting():
        pytest.skip("interpreter test: run by test_interpreter_suite in a TRITON_INTERPRET=1 child")
    module = importlib.import_module("rcond.kernels.fused_linear_ce")
    assert module.INTERPRETED
    return module


@pytest.fixture
def poisoned(monkeypatch):
    poison_allocations(monkeypatch)


def test_interpreter_suite():
    """Runs this file's interpreter tests (fixture ``flce``) in a child with TRITON_INTERPRET=1."""
    pytest.importorskip("triton")
    if interpreting():
        pytest.skip("this process is the interpreter child")
    child = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-m", "not gpu", "-p", "no:cacheprovider"],
        env={**os.environ, "TRITON_INTERPRET": "1"}, cwd=ROOT, capture_output=True, text=True,
        timeout=600)
    assert child.returncode == 0, child.stdout[-8000:] + child.stderr[-2000:]


@pytest.mark.parametrize("per_token", [False, True], ids=["sums", "per-token"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_float64(flce, poisoned, dtype, variant, per_token):
    compare(make_case(dtype, **VARIANTS[variant]), per_token=per_token, impl="triton")


@pytest.mark.parametrize("chunk,splits", [(32, 3), (64, 2), (96, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_vocab_chunks_and_splits(flce, poisoned, monkeypatch, dtype, chunk, splits):
    """Several backward chunks (fp32 dh accumulator) and forward splits (merged partials)."""
    monkeypatch.setattr(flce, "MAX_CHUNK", chunk)
    monkeypatch.setattr(flce, "_default_splits", lambda *args: splits)
    compare(make_case(dtype, bias=True, softcap=4.0), impl="triton")


def test_mixed_precision_weight(flce, poisoned):
    compare(make_case(torch.bfloat16, weight_dtype=torch.float32, bias=True), impl="triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_all_ignored_is_zero_not_nan(flce, poisoned, monkeypatch, dtype):
    """No active row: every program exits or reduces over nothing, and dW, db come out 0."""
    monkeypatch.setattr(flce, "MAX_CHUNK", 64)
    out = compare(without_weights(make_case(dtype, bias=True)), impl="triton")
    assert out.loss_sum.item() == 0 and out.weight_sum.item() == 0


@pytest.mark.parametrize("max_chunk", [None, 64], ids=["one-chunk", "two-chunks"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_vocabulary_a_multiple_of_the_chunk(flce, poisoned, monkeypatch, dtype, max_chunk):
    """V = 128, a whole number of backward chunks (one of 128, or two of 64): the chunk that ends
    exactly at V is the last one, which writes dh (the random odd V of other tests never ends a
    chunk exactly)."""
    if max_chunk is not None:
        monkeypatch.setattr(flce, "MAX_CHUNK", max_chunk)
    compare(make_case(dtype, v=128, bias=True), impl="triton")


def test_ignored_rows_may_hold_any_target(flce, poisoned):
    """Weight-0 rows holding -100 (the usual ignore index) or V: the sums and gradients of the
    float64 oracle run with valid ids there; only active rows' targets are read."""
    compare_with_junk_ignored_targets(make_case(torch.bfloat16, bias=True, zero_fraction=0.5), impl="triton")


def test_inactive_rows_report_zero_and_get_no_gradient(flce, poisoned):
    """fused_linear_logprob on its own: rows outside ``active`` (holding -100) report log-prob and
    entropy 0 and receive no gradient; only the active rows are computed."""
    check_inactive_rows(lambda h, w, t, active: flce.fused_linear_logprob(h, w, t, active, with_entropy=True),
                        torch.bfloat16)


def test_vocab_chunk_must_be_a_positive_multiple_of_the_tile(flce):
    """The backward chunk must hold whole vocabulary tiles (dW's runs of rows by target are counted
    per tile): 0, negative or 33 are refused naming the tile; 64 gives the default chunk's values."""
    case = make_case(torch.float32)
    args = (case.hidden, case.weight, case.targets, case.loss_weight != 0)
    for bad in (0, -32, 33):
        with pytest.raises(ValueError, match=f"vocab_chunk must be a positive multiple of 32, got {bad}"):
            flce.fused_linear_logprob(*args, vocab_chunk=bad)
    torch.testing.assert_close(flce.fused_linear_logprob(*args, vocab_chunk=64)[0],
                               flce.fused_linear_logprob(*args)[0], atol=0, rtol=0)


@pytest.mark.parametrize("n, v, itemsize, expected", [
    (1000, 50257, 2, 4096),        # the workspace allows more: MAX_CHUNK
    (100_000, 50257, 2, 256),      # 64 MiB / (100,000 rows x 2 bytes) = 335 columns, down to a multiple of 128
    (10**6, 50257, 4, 128),        # not even one tile fits the budget: one tile all the same
    (10, 300, 2, 384),             # a small vocabulary: its width rounded up to whole tiles
])
def test_default_chunk_by_hand(n, v, itemsize, expected):
    """The backward's default vocabulary chunk: a multiple of BV (128 here), at most MAX_CHUNK, within
    WORKSPACE_BYTES of [N, CV] gradient, no wider than the vocabulary's tiles."""
    pytest.importorskip("triton")
    from rcond.kernels import fused_linear_ce as flce

    tiles = flce.Tiles(bm=128, bv=128, bd=128, bk=64, num_warps=8, num_stages=3)
    assert flce._default_chunk(n, v, itemsize, tiles) == expected


def test_bf16_hidden_gradient_adds_back_the_target_rounding_residual(flce):
    """g is rounded to bf16 before the dh matmul, and the target entry's rounding residual is added
    back (err·W[t]): dh stays within 1.25x of the unavoidable error, that of rounding the exact
    float64 dh to bf16 (measured 1.10-1.15x; 1.34-1.39x without the residual, which the 3e-3
    tolerance of the other tests lets through). A fixed case: the margin is a statistical one."""
    gen = torch.Generator().manual_seed(0)
    n, d, v = 160, 32, 131
    hidden = torch.randn(n, d, generator=gen).bfloat16()
    weight = (torch.randn(v, d, generator=gen) * 0.6).bfloat16()
    targets = torch.randint(0, v, (n,), generator=gen)
    w = torch.rand(n, generator=gen) * 2
    h64 = hidden.double().requires_grad_()
    lp64 = torch.log_softmax(h64 @ weight.double().T, -1).gather(1, targets[:, None])[:, 0]
    (-(lp64 * w.double()).sum()).backward()
    exact = h64.grad
    floor = (exact.bfloat16().double() - exact).norm() / exact.norm()
    h = hidden.clone().requires_grad_()
    lp, _ = flce.fused_linear_logprob(h, weight, targets, w != 0)
    (-(lp * w).sum()).backward()
    err = (h.grad.double() - exact).norm() / exact.norm()
    assert err <= 1.25 * floor, f"dh error {err:.2e} = {err / floor:.2f}x the bf16 rounding floor {floor:.2e}"


def test_bitwise_deterministic(flce, monkeypatch):
    monkeypatch.setattr(flce, "MAX_CHUNK", 64)
    case = make_case(torch.bfloat16, bias=True, softcap=4.0)
    grads = upstream(case, token_logprobs=True)
    (first, first_grads), (second, second_grads) = (
        run(case, grads, impl="triton", return_token_logprobs=True) for _ in range(2))
    assert torch.equal(first.token_logprobs, second.token_logprobs)
    assert all(torch.equal(first_grads[k], second_grads[k]) for k in first_grads)


def test_refuses_float64(flce):
    case = make_case(torch.float64)
    with pytest.raises(ValueError, match="bf16/fp16/fp32"):
        flce.fused_linear_logprob(case.hidden, case.weight, case.targets, case.loss_weight != 0)


def _launches(monkeypatch, flce, name):
    """Records the grid of every launch of kernel ``name`` (and launches it as before)."""
    grids = []
    kernel = getattr(flce, name)

    class Recorded:
        def __getitem__(self, grid):
            grids.append(grid)
            return kernel[grid]

    monkeypatch.setattr(flce, name, Recorded())
    return grids


def _float64_reference(case, coef):
    """log p(target) [N] and entropy [N] in float64 from full logits (loss_testing's oracle), and
    the gradients of Σ coef·log p with respect to the case's hidden, weight and bias."""
    ref, grads = reference(case, {"token_logprobs": coef})
    return ref["token_logprobs"], ref["token_entropy"], grads


def _relative_error(got, expected):
    return ((got.double() - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("splits", [1, 3])
def test_logits_far_apart_across_vocabulary_tiles(flce, monkeypatch, splits):
    """Rows whose largest logits lie 100 apart in different vocabulary tiles (exp(100) overflows
    fp32): the running max must never decrease from one tile to the next, and the merge of the
    splits' partials must rescale to the largest of their maxima (per-token entropies are left out:
    lse − E[z] at |z| ≈ 50 cancels to fp32's 1e-5). Hand-built: the last hidden
    feature is ±50 and the last weight feature +1 on the first forward tile, −1 after it."""
    monkeypatch.setattr(flce, "_default_splits", lambda *args: splits)
    case = make_case(torch.float32, bias=True, zero_fraction=0.0)
    n, v = case.targets.shape[0], case.weight.shape[0]
    bv = flce.INTERPRETER_TILES["_lse_kernel"].bv
    assert v > 2 * bv  # three forward tiles, one per split at splits=3
    hidden, weight = case.hidden.clone(), case.weight.clone()
    hidden[:, -1] = torch.where(torch.arange(n) % 2 == 0, 50.0, -50.0)
    weight[:, -1] = torch.where(torch.arange(v) < bv, 1.0, -1.0)
    compare(replace(case, hidden=hidden, weight=weight), impl="triton")  # sums and gradients


def test_entropy_merges_vocab_splits(flce, poisoned, monkeypatch):
    """Per-token log-probs and entropies from three forward splits: each split's Σ e·z is
    rescaled to the common max before the merge, like Σ e."""
    monkeypatch.setattr(flce, "_default_splits", lambda *args: 3)
    compare(make_case(torch.float32, bias=True, softcap=4.0), per_token=True, impl="triton")


def test_explicit_vocab_chunk_and_splits_are_used(flce, monkeypatch):
    """``vocab_chunk`` sets the backward's chunks (one grad-logits launch per chunk) and
    ``vocab_splits`` the forward's splits (grid axis 0), with the float64 oracle's values and
    gradients either way."""
    case = make_case(torch.float32, bias=True)
    n, v = case.targets.shape[0], case.weight.shape[0]
    coef = torch.randn(n)
    active = case.loss_weight != 0
    lp64, _, grads64 = _float64_reference(case, coef * active)
    assert v > 2 * flce.INTERPRETER_TILES["_lse_kernel"].bv  # three forward tiles: up to 3 splits
    for chunk, splits in ((None, None), (32, 2), (64, 3)):
        forward = _launches(monkeypatch, flce, "_lse_kernel")
        backward = _launches(monkeypatch, flce, "_grad_logits_kernel")
        hidden, weight, bias = (t.clone().requires_grad_() for t in (case.hidden, case.weight, case.bias))
        lp, _ = flce.fused_linear_logprob(hidden, weight, case.targets, active, bias=bias,
                                          vocab_chunk=chunk, vocab_splits=splits)
        (lp * coef).sum().backward()
        assert [grid[0] for grid in forward] == [splits or 1]
        assert len(backward) == (1 if chunk is None else -(-v // chunk)), (chunk, backward)
        torch.testing.assert_close(lp[active].double(), lp64[active], rtol=1e-4, atol=1e-5)
        for name, got in (("hidden", hidden.grad), ("weight", weight.grad), ("bias", bias.grad)):
            assert _relative_error(got, grads64[name]) <= 1e-5, (name, chunk, splits)


def test_non_contiguous_hidden_and_weight(flce):
    """Hidden and weight given as transposed views (a weight tied to a [D, V] embedding, say):
    log-probs, entropies and gradients match float64 as for contiguous inputs."""
    case = make_case(torch.float32, bias=True)
    hidden_t = case.hidden.T.contiguous().requires_grad_()                    # [D, N]
    weight_t = case.weight.T.contiguous().requires_grad_()                    # [D, V]
    hidden, weight = hidden_t.T, weight_t.T                                    # strides (1, N), (1, V)
    assert not hidden.is_contiguous() and not weight.is_contiguous()
    active = case.loss_weight != 0
    coef = case.loss_weight
    lp64, ent64, grads64 = _float64_reference(case, coef)
    lp, ent = flce.fused_linear_logprob(hidden, weight, case.targets, active, bias=case.bias,
                                        with_entropy=True)
    torch.testing.assert_close(lp[active].double(), lp64[active], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ent[active].double(), ent64[active], rtol=1e-4, atol=1e-5)
    (lp * coef).sum().backward()
    assert _relative_error(hidden_t.grad.T, grads64["hidden"]) <= 1e-5
    assert _relative_error(weight_t.grad.T, grads64["weight"]) <= 1e-5


@pytest.mark.parametrize("trained", [("hidden",), ("weight",), ("bias",), ("weight", "bias")],
                         ids="+".join)
def test_gradients_of_some_inputs_only(flce, poisoned, trained):
    """Only some of hidden, weight and bias require grad (a frozen embedding, a trainable bias):
    those get the float64 gradients, the others none, and the entropy is not differentiable."""
    case = make_case(torch.float32, bias=True)
    active = case.loss_weight != 0
    leaves = {name: getattr(case, name).clone().requires_grad_(name in trained)
              for name in ("hidden", "weight", "bias")}
    _, _, grads64 = _float64_reference(case, case.loss_weight)
    lp, ent = flce.fused_linear_logprob(leaves["hidden"], leaves["weight"], case.targets, active,
                                        bias=leaves["bias"], with_entropy=True)
    assert not ent.requires_grad
    (lp * case.loss_weight).sum().backward()
    for name, leaf in leaves.items():
        if name in trained:
            assert _relative_error(leaf.grad, grads64[name]) <= 1e-5, name
        else:
            assert leaf.grad is None, name


_cast_under_test = None  # rcond's _cast, set by the test below for its kernel to call


def test_bf16_cast_rounds_to_nearest_even(flce, monkeypatch):
    """``_cast`` to bf16 rounds as torch's (and the hardware's) conversion does: to nearest, ties
    to the even mantissa, in either direction of sign; exact halfway values between bf16 numbers
    are where truncation, round-half-up and round-half-down differ from it."""
    import triton
    import triton.language as tl

    # the interpreter looks a kernel's names up in its module's globals when it runs (not in closures)
    monkeypatch.setitem(globals(), "_cast_under_test", flce._cast)

    @triton.jit
    def cast_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        ok = offs < n
        x = tl.load(x_ptr + offs, mask=ok, other=0.0)
        tl.store(y_ptr + offs, _cast_under_test(x, tl.bfloat16), mask=ok)

    ulp = 2.0 ** -7                                                            # bf16 spacing in [1, 2)
    base = torch.tensor([1.0, 1.0 + ulp, 1.5, 1.5 + ulp, 3.0, 0.75, 1e-3, 1e4])
    values = torch.cat([base, base + 0.5 * ulp * base.abs().log2().floor().exp2(),  # exact ties
                        base + 0.25 * ulp, base + 0.75 * ulp])                  # below / above half
    values = torch.cat([values, -values])
    expected = values.to(torch.bfloat16)
    got = torch.empty_like(expected)
    cast_kernel[(1,)](values, got, values.numel(), BLOCK=64)
    assert torch.equal(got.view(torch.int16), expected.view(torch.int16)), (values, got, expected)


@pytest.mark.parametrize("targets_at", ["random", "tile-starts"])
def test_bf16_weight_gradient_adds_back_the_target_rounding_residual(flce, targets_at):
    """The dW / db side of the target residual: each vocabulary tile adds Σ err_i·h_i (and Σ err_i)
    over its run of rows sorted by target. dW and db stay within 1.25x of the bf16 rounding floor
    of the exact float64 values (measured 1.02-1.16x; 1.2-1.4x with a tile's run dropped or
    misplaced, ~1.8x with the residual's sign flipped). Targets all at the first column of a dW
    tile put every row on a run boundary; chunks of two tiles make the tiles' runs chunk-relative.
    Fixed cases: the margin is a statistical one."""
    gen = torch.Generator().manual_seed(0)
    n, d, v = 160, 32, 131
    bv = flce.INTERPRETER_TILES["_grad_weight_kernel"].bv
    hidden = torch.randn(n, d, generator=gen).bfloat16()
    weight = (torch.randn(v, d, generator=gen) * 0.6).bfloat16()
    bias = torch.randn(v, generator=gen).bfloat16()
    targets = torch.randint(0, v, (n,), generator=gen)
    if targets_at == "tile-starts":
        targets = targets // bv * bv
    w = torch.rand(n, generator=gen) * 2
    w64, b64 = weight.double().requires_grad_(), bias.double().requires_grad_()
    lp64 = torch.log_softmax(hidden.double() @ w64.T + b64, -1).gather(1, targets[:, None])[:, 0]
    (-(lp64 * w.double()).sum()).backward()
    wt, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    lp, _ = flce.fused_linear_logprob(hidden, wt, targets, w != 0, bias=b, vocab_chunk=2 * bv)
    (-(lp * w).sum()).backward()
    for name, got, exact in (("dW", wt.grad, w64.grad), ("db", b.grad, b64.grad)):
        floor = _relative_error(exact.bfloat16(), exact)
        err = _relative_error(got, exact)
        assert err <= 1.25 * floor, f"{name} error {err:.2e} = {err / floor:.2f}x the bf16 rounding floor {floor:.2e}"


def test_no_rows(flce, poisoned):
    """N = 0 (an empty batch): empty log-probs and entropies, zero gradients for weight and bias,
    whatever the backward's default chunk and the launch grids make of no rows."""
    weight = torch.randn(131, 19).requires_grad_()
    bias = torch.randn(131).requires_grad_()
    hidden = torch.zeros(0, 19).requires_grad_()
    lp, ent = flce.fused_linear_logprob(hidden, weight, torch.zeros(0, dtype=torch.int64),
                                        torch.zeros(0, dtype=torch.bool), bias=bias, with_entropy=True)
    assert lp.shape == ent.shape == (0,)
    lp.sum().backward()
    assert hidden.grad.shape == (0, 19)
    assert (weight.grad == 0).all() and (bias.grad == 0).all()


def test_inactive_rows_are_never_read(flce, poisoned):
    """Hidden states of inactive rows are NaN (padding no one wrote, say) and their targets valid
    ids: no active row's log-prob, and no gradient, may depend on them."""
    case = make_case(torch.bfloat16, bias=True, zero_fraction=0.5)
    active = case.loss_weight != 0
    hidden = torch.where(active[:, None], case.hidden, torch.nan).requires_grad_()
    weight, bias = case.weight.clone().requires_grad_(), case.bias.clone().requires_grad_()
    lp64, _, grads64 = _float64_reference(case, case.loss_weight)
    lp, _ = flce.fused_linear_logprob(hidden, weight, case.targets, active, bias=bias)
    torch.testing.assert_close(lp[active].double(), lp64[active], rtol=1e-4, atol=1e-5)
    assert (lp[~active] == 0).all()
    (lp * case.loss_weight).sum().backward()
    assert (hidden.grad[~active] == 0).all()
    for name, got in (("hidden", hidden.grad), ("weight", weight.grad), ("bias", bias.grad)):
        assert _relative_error(got, grads64[name]) <= GRAD_RTOL[torch.bfloat16], name


def test_gradient_kernels_must_share_the_vocabulary_tile(flce, monkeypatch):
    """dW's runs of rows by target are counted per grad-logits tile: tiles where the two kernels'
    BV differ are refused."""
    tiles = dict(flce.INTERPRETER_TILES)
    tiles["_grad_weight_kernel"] = flce.Tiles(bm=16, bv=64, bd=16, bk=16, num_warps=1, num_stages=1)
    monkeypatch.setattr(flce, "INTERPRETER_TILES", tiles)
    case = make_case(torch.float32)
    with pytest.raises(ValueError, match="must share the vocabulary tile BV"):
        flce.fused_linear_logprob(case.hidden, case.weight, case.targets, case.loss_weight != 0)


INDEX_POINTERS = {"count": "*i32", "tgt": "*i64", "rows": "*i64", "by_tgt": "*i64", "tgt_sorted": "*i64",
                  "bounds": "*i64"}  # other pointers: hidden's dtype (h, g, dh), weight's (w, b, dw, db), fp32


def compile_for(name, hidden="bf16", weight="bf16", capability=90):
    """Compile one kernel for an sm_<capability> GPU (no GPU needed) at the tiles rcond would use
    for these operand dtypes, with the alignment hints the JIT derives from 16-byte-aligned
    pointers and strides."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from rcond.kernels import fused_linear_ce as flce

    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}
    tiles = flce._tiles(torch.device("cuda"), torch_dtype[hidden], torch_dtype[weight])[name]
    kernel = getattr(flce, name)
    dot_dtype, precision = flce._dot_types(torch_dtype[hidden])  # as the launches pick them
    values = dict(HAS_BIAS=True, HAS_SOFTCAP=True, WITH_ENTROPY=True, FIRST=False, LAST=True,
                  DOT_DTYPE=dot_dtype, DOT_PRECISION=precision, BM=tiles.bm, BV=tiles.bv,
                  BD=tiles.bd, BK=tiles.bk)
    constexprs = {p.name: values[p.name] for p in kernel.params if p.is_constexpr}

    def pointer(arg):
        base = arg[:-4]
        return INDEX_POINTERS.get(base) or {"h": f"*{hidden}", "g": f"*{hidden}", "dh": f"*{hidden}", "w": f"*{weight}",
                                            "b": f"*{weight}", "dw": f"*{weight}", "db": f"*{weight}"}.get(base, "*fp32")

    signature = {a: "constexpr" if a in constexprs else pointer(a) if a.endswith("_ptr") else
                 "fp32" if a in ("softcap", "scale") else "i32" for a in kernel.arg_names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(kernel.arg_names)
               if a.endswith("_ptr") or a.startswith("stride") or a in ("D", "v0", "width")}
    try:
        return triton.compile(ASTSource(kernel, signature, constexprs, aligned),
                              target=GPUTarget("cuda", capability, 32),
                              options=dict(num_warps=tiles.num_warps, num_stages=tiles.num_stages,
                                           enable_fp_fusion=flce.FP_FUSION))
    except FileNotFoundError as e:  # no ptxas in this triton install
        pytest.skip(f"cannot compile for CUDA here: {e}")


KERNEL_NAMES = ["_lse_kernel", "_grad_logits_kernel", "_grad_weight_kernel", "_grad_hidden_kernel"]


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_compiles_for_hopper_with_pipelined_tensor_core_loops(name):
    """bf16 at the GPU tiles for sm_90: catches what the interpreter does not check, and that the
    matmul loops use wgmma fed by cp.async stages."""
    pytest.importorskip("triton")
    if interpreting():
        pytest.skip("kernels are interpreted in this process")
    ptx = compile_for(name).asm["ptx"]
    assert "wgmma.mma_async" in ptx and "cp.async" in ptx


@pytest.mark.parametrize("operands", [("bf16", "bf16"), ("fp32", "fp32"), ("bf16", "fp32")],
                         ids=["bf16", "fp32", "bf16-act-fp32-weight"])
@pytest.mark.parametrize("capability,limit", [(80, 166_912), (90, 232_448)], ids=["A100", "H100"])
def test_tiles_fit_shared_memory(operands, capability, limit):
    """Every kernel, at the tiles chosen for these operand dtypes, fits one block's shared memory
    on an A100 and an H100 (Triton refuses to launch a kernel that does not)."""
    pytest.importorskip("triton")
    if interpreting():
        pytest.skip("kernels are interpreted in this process")
    used = {name: compile_for(name, *operands, capability=capability).metadata.shared for name in KERNEL_NAMES}
    assert all(bytes_ <= limit for bytes_ in used.values()), used


@pytest.mark.parametrize("name", ["_lse_kernel", "_grad_logits_kernel", "_grad_hidden_kernel"])
def test_fp32_operands_multiply_without_tf32(name):
    """fp32 hidden and weight multiply with input_precision="ieee" (no TF32 tensor-core inputs), at
    the dot types rcond picks for them; only dW's target-residual loop (~1e-3 of g, and 0 for fp32
    g) may use TF32, so that kernel is not checked."""
    pytest.importorskip("triton")
    if interpreting():
        pytest.skip("kernels are interpreted in this process")
    assert "tf32" not in compile_for(name, "fp32", "fp32").asm["ptx"]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_matches_float64(dtype):
    case = make_case(dtype, n=3001, d=256, v=20011, bias=True, softcap=30.0, device="cuda")
    compare(case, per_token=True, impl="triton")
    compare(case, impl="triton")


@pytest.mark.gpu
@needs_cuda
def test_gpu_mixed_precision_and_auto():
    case = make_case(torch.bfloat16, weight_dtype=torch.float32, n=2048, d=512, v=50257,
                     device="cuda")
    compare(case, impl="auto")


@pytest.mark.gpu
@needs_cuda
def test_gpu_training_curve_matches_torch_loss(tmp_path):
    """`rcond train --loss triton` and `--loss torch`, same tiny run: the same loss curve within
    bf16 tolerance (the triton path multiplies bf16 weight tiles, as autocast would)."""
    import json
    import random

    from rcond.corpus import PackOptions, build, train_tokenizer
    from rcond.sources import SourceReader
    from rcond.train import Stage, TrainConfig, train

    rng, words = random.Random(0), "good bad fine great awful nice poor okay superb dull".split()
    reviews = [[rng.choice(words) for _ in range(rng.randint(2, 14))] for _ in range(200)]
    src = tmp_path / "reviews.jsonl"
    src.write_text("".join(json.dumps({"prompt": "review:", "response": " ".join(r),
                                       "reward": sum(w in ("good", "great") for w in r) / len(r)})
                           + "\n" for r in reviews))
    reader = SourceReader([str(src)], "scored")
    build(reader, tmp_path / "corpus", train_tokenizer(reader.texts(), 300), num_bins=4,
          opts=PackOptions(block_size=64), progress=False)
    curves = {}
    for loss in ("torch", "triton"):
        cfg = TrainConfig(stages=[Stage(corpora=[str(tmp_path / "corpus")], steps=12)],
                          model="tiny", batch_size=4, warmup=2, lr=3e-3, seed=0, device="cuda",
                          loss=loss)
        train(cfg, tmp_path / loss, progress=False)
        curves[loss] = [json.loads(line)["loss"] for line in open(tmp_path / loss / "log.jsonl")]
    assert len(curves["triton"]) == 12
    assert curves["triton"] == pytest.approx(curves["torch"], rel=2e-2)

