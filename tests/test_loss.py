"""rcond.loss: the chunked torch reference and the API, against the float64 oracle of
loss_testing (fresh random inputs each run; a failure names its seed). The triton path is
checked by the same oracle in tests/kernels/test_fused_linear_ce.py."""

import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

import rcond.loss
from loss_testing import (check_inactive_rows, compare, compare_with_junk_ignored_targets, make_case,
                          poison_allocations, reference, upstream, without_weights)
from rcond.loss import LossOutput, PackedConditionalLoss, linear_logprob, packed_conditional_loss, resolve_impl

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
VARIANTS = {
    "plain": {},
    "bias-softcap-scale": dict(bias=True, softcap=4.0, logit_scale=0.7),
    "scale": dict(logit_scale=1.6),   # a logit scale without softcap: dz/da is the scale alone
}


@pytest.fixture
def poisoned(monkeypatch):
    poison_allocations(monkeypatch)


@pytest.mark.parametrize("per_token", [False, True], ids=["sums", "per-token"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_float64(dtype, variant, per_token, poisoned):
    compare(make_case(dtype, **VARIANTS[variant]), per_token=per_token, impl="torch", chunk_size=8)


def test_mixed_precision_weight(poisoned):
    """bf16 activations against an fp32 weight: each gradient in its input's dtype."""
    compare(make_case(torch.bfloat16, weight_dtype=torch.float32, bias=True), impl="torch")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_all_ignored_is_zero_not_nan(dtype, poisoned):
    out = compare(without_weights(make_case(dtype, bias=True)), impl="torch")
    assert out.loss_sum.item() == 0 and out.weight_sum.item() == 0
    assert not out.segment_weight.any() and not out.bin_weight.any()


def test_zero_weight_rows_get_logprobs_and_gradients(poisoned):
    """With per-token outputs requested, weight-0 rows are computed and receive gradient."""
    case = make_case(torch.float32, zero_fraction=0.6)
    out = compare(case, per_token=True, impl="torch")
    assert (out.token_logprobs[case.loss_weight == 0] < 0).all()


def test_gradcheck_token_logprobs():
    case = make_case(torch.float64, n=6, d=5, v=9, bias=True, softcap=3.0, logit_scale=1.3)

    def logprobs(hidden, weight, bias):
        return packed_conditional_loss(hidden, weight, case.targets, case.loss_weight, bias=bias,
                                       softcap=case.softcap, logit_scale=case.logit_scale,
                                       return_token_logprobs=True, impl="torch",
                                       chunk_size=4).token_logprobs

    inputs = [t.detach().requires_grad_() for t in (case.hidden, case.weight, case.bias)]
    assert torch.autograd.gradcheck(logprobs, inputs)


def test_group_counts_default_to_max_id_plus_one():
    case = make_case(torch.float32)
    explicit = packed_conditional_loss(case.hidden, case.weight, case.targets, case.loss_weight,
                                       case.segment_ids, case.bin_ids,
                                       num_segments=int(case.segment_ids.max()) + 1,
                                       num_bins=int(case.bin_ids.max()) + 1)
    inferred = packed_conditional_loss(case.hidden, case.weight, case.targets, case.loss_weight,
                                       case.segment_ids, case.bin_ids)
    for name in ("segment_loss", "segment_weight", "bin_loss", "bin_weight"):
        torch.testing.assert_close(getattr(inferred, name), getattr(explicit, name))


def test_every_id_minus_one_means_no_groups():
    """A batch of only `off` documents (every bin −1), no num_bins: zero groups, and the loss as
    without bins (hand-checked: the same sums, no IndexError from an empty index_add)."""
    case = make_case(torch.float32)
    none = torch.full_like(case.bin_ids, -1)
    out = packed_conditional_loss(case.hidden, case.weight, case.targets, case.loss_weight, none, none)
    plain = packed_conditional_loss(case.hidden, case.weight, case.targets, case.loss_weight)
    for name in ("segment_loss", "segment_weight", "bin_loss", "bin_weight"):
        assert getattr(out, name).shape == (0,)
    torch.testing.assert_close(out.loss_sum, plain.loss_sum)
    torch.testing.assert_close(out.weight_sum, plain.weight_sum)


def test_optional_outputs_absent_unless_asked():
    case = make_case(torch.float32)
    out = packed_conditional_loss(case.hidden, case.weight, case.targets, case.loss_weight)
    assert isinstance(out, LossOutput)
    assert out.segment_loss is None and out.bin_loss is None
    assert out.token_logprobs is None and out.token_entropy is None


def test_empty_batch():
    out = packed_conditional_loss(torch.zeros(0, 4), torch.randn(7, 4), torch.zeros(0, dtype=torch.long),
                                  torch.zeros(0), torch.zeros(0, dtype=torch.long), num_segments=2)
    assert out.loss_sum.item() == 0 and out.segment_loss.tolist() == [0.0, 0.0]


def test_frozen_weight_gets_no_gradient():
    case = make_case(torch.float32)
    hidden = case.hidden.clone().requires_grad_()
    out = packed_conditional_loss(hidden, case.weight, case.targets, case.loss_weight, impl="torch")
    out.loss_sum.backward()
    assert case.weight.grad is None and torch.isfinite(hidden.grad).all()


def test_module_matches_function():
    case = make_case(torch.float32, bias=True, softcap=4.0)
    module = PackedConditionalLoss(softcap=4.0, impl="torch")
    got = module(case.hidden, case.weight, case.targets, case.loss_weight, case.segment_ids,
                 bias=case.bias, num_segments=case.num_segments)
    want = packed_conditional_loss(case.hidden, case.weight, case.targets, case.loss_weight,
                                   case.segment_ids, bias=case.bias, softcap=4.0,
                                   num_segments=case.num_segments)
    torch.testing.assert_close(got.segment_loss, want.segment_loss)
    assert "softcap=4.0" in repr(module)


def test_auto_is_torch_on_cpu_and_unknown_impls_fail():
    case = make_case(torch.float32)
    assert resolve_impl("auto", case.hidden, case.weight) == "torch"
    with pytest.raises(ValueError, match="impl"):
        packed_conditional_loss(case.hidden, case.weight, case.targets, case.loss_weight, impl="cuda")
    with pytest.raises(ValueError, match="impl"):
        PackedConditionalLoss(impl="fast")


def test_triton_refuses_cpu_tensors_when_compiled():
    kernels = pytest.importorskip("rcond.kernels.fused_linear_ce")
    if kernels.INTERPRETED:
        pytest.skip("the kernels were imported under TRITON_INTERPRET=1 and run on CPU")
    case = make_case(torch.float32)
    with pytest.raises(ValueError, match="CUDA"):
        packed_conditional_loss(case.hidden, case.weight, case.targets, case.loss_weight, impl="triton")


BAD_INPUTS = {  # what is broken: (argument, value from the case, the message expected)
    "hidden": ("hidden", lambda c: c.hidden[:, :-1], r"hidden must be \[N, D\] and weight \[V, D\]; got \(37, 18\)"),
    "hidden_3d": ("hidden", lambda c: c.hidden[:3, None, :].expand(3, 19, 19),
                  r"hidden must be \[N, D\] and weight \[V, D\]; got \(3, 19, 19\)"),
    "int_hidden": ("hidden", lambda c: c.hidden.long(), "hidden and weight must be floating point"),
    "targets": ("targets", lambda c: c.targets[:-1], r"targets must be \[N\] = \[37\], got \(36,\)"),
    "loss_weight": ("loss_weight", lambda c: c.loss_weight[:1], r"loss_weight must be \[N\] = \[37\], got \(1,\)"),
    "segment_ids": ("segment_ids", lambda c: c.segment_ids[:-1], r"segment_ids must be \[N\] = \[37\]"),
    "bin_ids": ("bin_ids", lambda c: c.bin_ids[:-1], r"bin_ids must be \[N\] = \[37\]"),
    "bias": ("bias", lambda c: c.bias[:-1], r"bias must be \[V\] = \[131\], got \(130,\)"),
    "float_targets": ("targets", lambda c: c.targets.float(), "targets must be an integer tensor, got torch.float32"),
    "bool_targets": ("targets", lambda c: c.targets > 0, "targets must be an integer tensor, got torch.bool"),
    "float_bin_ids": ("bin_ids", lambda c: c.bin_ids.float(), "bin_ids must be an integer tensor"),
}


@pytest.mark.parametrize("bad", BAD_INPUTS)
def test_bad_inputs_are_refused(bad):
    """Each malformed input is a ValueError naming the argument and the shape or dtype expected
    (a [1] loss_weight would broadcast, an integer hidden be cast, without the checks)."""
    case = make_case(torch.float32, bias=True)
    args = dict(hidden=case.hidden, weight=case.weight, targets=case.targets, loss_weight=case.loss_weight,
                segment_ids=case.segment_ids, bin_ids=case.bin_ids, bias=case.bias)
    name, broken, message = BAD_INPUTS[bad]
    args[name] = broken(case)
    with pytest.raises(ValueError, match=f"^{message}"):
        packed_conditional_loss(**args)



def test_ignored_rows_may_hold_any_target(poisoned):
    """Targets need to be token ids on active rows only: weight-0 rows holding -100 (the usual
    ignore index) or V give the sums and gradients of the float64 oracle run with valid ids there,
    since weight-0 rows are dropped before any gather (computing every row would index out of
    range)."""
    compare_with_junk_ignored_targets(make_case(torch.float32, bias=True, zero_fraction=0.5), impl="torch",
                                      chunk_size=8)


def test_negative_weights_count_with_their_sign(poisoned):
    """loss_sum = Σ w·(−lp) for any real weights (reward-weighted variants may push a token down):
    a negative weight is an active row like a positive one, in every sum and gradient."""
    case = make_case(torch.float32, bias=True)
    signed = case.loss_weight * torch.where(torch.arange(len(case.loss_weight)) % 2 == 0, 1.0, -1.0)
    out = compare(replace(case, loss_weight=signed), impl="torch", chunk_size=8)
    assert out.weight_sum.item() == pytest.approx(signed.sum().item(), abs=1e-5)


def test_entropy_alone_covers_every_row(poisoned):
    """return_entropy without return_token_logprobs still makes every row active: weight-0 rows get
    their entropy (the float64 oracle's), not 0, and no log-probs are returned."""
    case = make_case(torch.float32, zero_fraction=0.6)
    out = packed_conditional_loss(case.hidden, case.weight, case.targets, case.loss_weight,
                                  return_entropy=True, impl="torch", chunk_size=8)
    ref, _ = reference(case, upstream(case, token_logprobs=False))
    assert out.token_logprobs is None
    torch.testing.assert_close(out.token_entropy.double(), ref["token_entropy"], rtol=1e-4, atol=1e-5)
    assert (out.token_entropy[case.loss_weight == 0] > 0).all()


def test_float64_inputs_give_float64_sums():
    """LossOutput is float64 for float64 inputs (so gradcheck applies to the sums), even with an
    fp32 loss_weight: weight_sum included, and equal to the float64 sum of the weights."""
    case = make_case(torch.float64, bias=True)
    out = packed_conditional_loss(case.hidden, case.weight, case.targets, case.loss_weight,
                                  case.segment_ids, case.bin_ids, num_segments=case.num_segments,
                                  num_bins=case.num_bins, bias=case.bias)
    for name in ("loss_sum", "weight_sum", "segment_loss", "segment_weight", "bin_loss", "bin_weight"):
        assert getattr(out, name).dtype == torch.float64, name
    assert out.weight_sum.item() == case.loss_weight.double().sum().item()


def test_group_counts_fix_the_output_length():
    """num_segments / num_bins fix the outputs' length even when the highest ids are absent from the
    batch (every rank's sums must have one shape to be all-reduced): the missing groups are 0."""
    case = make_case(torch.float32)
    out = packed_conditional_loss(case.hidden, case.weight, case.targets, case.loss_weight,
                                  case.segment_ids.clamp(max=1), case.bin_ids.clamp(max=0),
                                  num_segments=case.num_segments, num_bins=case.num_bins)
    assert out.segment_loss.shape == out.segment_weight.shape == (case.num_segments,)
    assert out.bin_loss.shape == out.bin_weight.shape == (case.num_bins,)
    assert not out.segment_weight[2:].any() and not out.bin_weight[1:].any()
    kept = case.bin_ids >= 0
    assert out.bin_weight[0].item() == pytest.approx(case.loss_weight[kept].sum().item())


def test_empty_batch_without_group_counts_has_no_groups():
    """No tokens and no num_segments / num_bins: max id + 1 of no ids is 0 groups, not an error
    from max() of an empty tensor nor a phantom group."""
    ids = torch.zeros(0, dtype=torch.long)
    out = packed_conditional_loss(torch.zeros(0, 4), torch.randn(7, 4), ids, torch.zeros(0), ids, ids)
    assert out.segment_loss.shape == out.bin_weight.shape == (0,)
    assert out.loss_sum.item() == 0 and out.weight_sum.item() == 0


@pytest.mark.parametrize("softcap", [0.0, -2.0])
def test_softcap_must_be_positive(softcap):
    """A softcap of 0 would divide by zero (NaN logits) and a negative one flip the logits: refused."""
    case = make_case(torch.float32)
    with pytest.raises(ValueError, match=f"softcap must be positive, got {softcap}"):
        packed_conditional_loss(case.hidden, case.weight, case.targets, case.loss_weight, softcap=softcap)


def test_module_passes_every_option_through(poisoned):
    """The module form with a logit scale, bins counted by num_bins and per-token outputs: the
    float64 oracle's values (the function form's options reach the loss), and a repr naming them."""
    case = make_case(torch.float32, bias=True, softcap=4.0, logit_scale=0.7)
    case = replace(case, bin_ids=case.bin_ids.clamp(max=case.num_bins - 2))   # top bin absent
    module = PackedConditionalLoss(softcap=4.0, logit_scale=0.7, impl="torch", chunk_size=8)
    got = module(case.hidden, case.weight, case.targets, case.loss_weight, case.segment_ids, case.bin_ids,
                 bias=case.bias, num_segments=case.num_segments, num_bins=case.num_bins,
                 return_token_logprobs=True, return_entropy=True)
    ref, _ = reference(case, upstream(case, token_logprobs=True))
    for name in ("loss_sum", "segment_loss", "bin_loss", "bin_weight", "token_logprobs", "token_entropy"):
        torch.testing.assert_close(getattr(got, name).double(), ref[name], rtol=1e-4, atol=1e-5, msg=name)
    assert repr(module) == "PackedConditionalLoss(softcap=4.0, logit_scale=0.7, impl='torch')"


def test_auto_picks_triton_only_for_cuda_tensors_of_kernel_dtypes(monkeypatch):
    """The dispatch rule of resolve_impl, on stand-ins for CUDA tensors (it reads is_cuda and dtype
    only): bf16/fp16/fp32 on CUDA -> triton, float64 anywhere or CPU -> torch, and torch when
    triton does not import."""
    pytest.importorskip("triton")

    def cuda(dtype):
        return SimpleNamespace(is_cuda=True, dtype=dtype)

    assert resolve_impl("auto", cuda(torch.bfloat16), cuda(torch.float32)) == "triton"
    assert resolve_impl("auto", cuda(torch.float16), cuda(torch.float16)) == "triton"
    assert resolve_impl("auto", cuda(torch.float64), cuda(torch.float64)) == "torch"
    assert resolve_impl("auto", cuda(torch.float32), cuda(torch.float64)) == "torch"
    assert resolve_impl("auto", SimpleNamespace(is_cuda=False, dtype=torch.float32), cuda(torch.float32)) == "torch"
    assert resolve_impl("torch", cuda(torch.bfloat16), cuda(torch.bfloat16)) == "torch"
    monkeypatch.setitem(sys.modules, "triton", None)                    # import triton -> ImportError
    assert resolve_impl("auto", cuda(torch.bfloat16), cuda(torch.bfloat16)) == "torch"


def test_triton_without_the_kernels_says_what_to_do(monkeypatch):
    """impl='triton' where the kernels cannot be imported: a RuntimeError pointing at impl='torch',
    not a bare ImportError; and linear_logprob refuses an impl it does not know."""
    case = make_case(torch.float32)
    monkeypatch.setitem(sys.modules, "rcond.kernels.fused_linear_ce", None)
    with pytest.raises(RuntimeError, match="needs the triton package; use impl='torch'"):
        packed_conditional_loss(case.hidden, case.weight, case.targets, case.loss_weight, impl="triton")
    with pytest.raises(ValueError, match="impl must be 'torch' or 'triton' here, got 'auto'"):
        linear_logprob(case.hidden, case.weight, case.targets, case.loss_weight != 0, impl="auto")


def test_default_chunk_keeps_logits_within_the_budget(monkeypatch):
    """Without chunk_size, a chunk holds as many rows as keep its fp32 [rows, V] logits within
    CHUNK_LOGIT_BYTES, and at least one row when V alone exceeds it; the result is unchanged."""
    case = make_case(torch.float32, bias=True)
    v = case.weight.shape[0]
    seen = []
    real = rcond.loss._logits
    monkeypatch.setattr(rcond.loss, "_logits", lambda h, *a, **k: seen.append(h.shape[0]) or real(h, *a, **k))
    want = packed_conditional_loss(case.hidden, case.weight, case.targets, case.loss_weight, bias=case.bias,
                                   impl="torch", chunk_size=64)
    for budget, rows in ((4 * v * 5, 5), (4 * v - 1, 1)):
        monkeypatch.setattr(rcond.loss, "CHUNK_LOGIT_BYTES", budget)
        seen.clear()
        got = packed_conditional_loss(case.hidden, case.weight, case.targets, case.loss_weight, bias=case.bias,
                                      impl="torch")
        assert max(seen) == rows, (budget, seen)
        torch.testing.assert_close(got.loss_sum, want.loss_sum)


def test_inactive_rows_report_zero_and_get_no_gradient(poisoned):
    """linear_logprob on its own: rows outside ``active`` (which need not hold a token id) report
    log-prob and entropy 0 and receive no gradient, as its docstring says."""
    check_inactive_rows(lambda h, w, t, active: linear_logprob(h, w, t, active, with_entropy=True, chunk_size=8))
