"""Test helpers for the packed conditional loss, shared by tests/test_loss.py and
tests/kernels/test_fused_linear_ce.py: random cases, an independent float64 oracle (full
logits, autograd), the comparison with the tolerances of issue 4, and allocation poisoning."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from rcond.loss import LossOutput, packed_conditional_loss

SUMS = ("loss_sum", "weight_sum", "segment_loss", "segment_weight", "bin_loss", "bin_weight")
GRAD_RTOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 3e-3}


@dataclass
class Case:
    hidden: torch.Tensor        # [N, D]
    weight: torch.Tensor        # [V, D]
    bias: torch.Tensor | None   # [V]
    targets: torch.Tensor       # [N] int64
    loss_weight: torch.Tensor   # [N] fp32, some exactly 0
    segment_ids: torch.Tensor   # [N] in [-1, S)
    bin_ids: torch.Tensor       # [N] in [-1, K)
    num_segments: int
    num_bins: int
    softcap: float | None
    logit_scale: float | None
    seed: int


def make_case(dtype: torch.dtype, *, weight_dtype: torch.dtype | None = None, n: int = 37,
              d: int = 19, v: int = 131, bias: bool = False, softcap: float | None = None,
              logit_scale: float | None = None, zero_fraction: float = 0.3,
              num_segments: int = 11, num_bins: int = 5, device: str = "cpu") -> Case:
    """Fresh random inputs (the seed is in the case, and in failure messages). Values are
    representable in ``dtype`` even when ``weight_dtype`` is wider, so mixed precision is exact."""
    seed = random.SystemRandom().randrange(2**31)
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(n, generator=gen) * 2                                      # per-token weights
    w[torch.rand(n, generator=gen) < zero_fraction] = 0
    case = Case(
        hidden=torch.randn(n, d, generator=gen).to(dtype),
        weight=(torch.randn(v, d, generator=gen) * 0.6).to(dtype).to(weight_dtype or dtype),
        bias=torch.randn(v, generator=gen).to(dtype) if bias else None,
        targets=torch.randint(0, v, (n,), generator=gen),
        loss_weight=w,
        segment_ids=torch.randint(-1, num_segments, (n,), generator=gen),
        bin_ids=torch.randint(-1, num_bins, (n,), generator=gen),
        num_segments=num_segments, num_bins=num_bins, softcap=softcap, logit_scale=logit_scale,
        seed=seed,
    )
    moved = {k: getattr(case, k).to(device) for k in
             ("hidden", "weight", "targets", "loss_weight", "segment_ids", "bin_ids")}
    return replace(case, bias=None if case.bias is None else case.bias.to(device), **moved)


def upstream(case: Case, token_logprobs: bool) -> dict[str, torch.Tensor]:
    """Random gradients for the differentiable outputs (token log-probs only when requested)."""
    gen = torch.Generator().manual_seed(case.seed + 1)
    grads = {"loss_sum": torch.randn((), generator=gen),
             "segment_loss": torch.randn(case.num_segments, generator=gen),
             "bin_loss": torch.randn(case.num_bins, generator=gen)}
    if token_logprobs:
        grads["token_logprobs"] = torch.randn(case.targets.shape[0], generator=gen)
    return {k: g.to(case.hidden.device) for k, g in grads.items()}


def _leaves(case: Case, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    named = {"hidden": case.hidden, "weight": case.weight, "bias": case.bias}
    return {k: t.detach().to(dtype or t.dtype).requires_grad_() for k, t in named.items()
            if t is not None}


def reference(case: Case, grads: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Float64 outputs (all rows' log-probs and entropies) and input gradients, from full logits."""
    leaves = _leaves(case, torch.float64)
    a = leaves["hidden"] @ leaves["weight"].T
    if "bias" in leaves:
        a = a + leaves["bias"]
    z = a * (case.logit_scale or 1.0)
    if case.softcap is not None:
        z = case.softcap * torch.tanh(z / case.softcap)
    logp = torch.log_softmax(z, dim=-1)                                       # [N, V]
    lp = logp[torch.arange(z.shape[0], device=z.device), case.targets]        # [N]
    w = case.loss_weight.double()
    token_loss = -lp * w
    seg = F.one_hot(case.segment_ids + 1, case.num_segments + 1)[:, 1:].double()  # [N, S]
    bins = F.one_hot(case.bin_ids + 1, case.num_bins + 1)[:, 1:].double()         # [N, K]
    out = {"loss_sum": token_loss.sum(), "weight_sum": w.sum(),
           "segment_loss": seg.T @ token_loss, "segment_weight": seg.T @ w,
           "bin_loss": bins.T @ token_loss, "bin_weight": bins.T @ w,
           "token_logprobs": lp, "token_entropy": -(logp.exp() * logp).sum(-1)}
    total = sum((out[k] * g.double()).sum() for k, g in grads.items())
    total.backward()
    return {k: t.detach() for k, t in out.items()}, {k: t.grad for k, t in leaves.items()}


def run(case: Case, grads: dict[str, torch.Tensor], **kwargs) -> tuple[LossOutput, dict]:
    """The implementation under test on fresh leaves; backward from the outputs in ``grads``."""
    leaves = _leaves(case)
    out = packed_conditional_loss(
        leaves["hidden"], leaves["weight"], case.targets, case.loss_weight, case.segment_ids,
        case.bin_ids, num_segments=case.num_segments, num_bins=case.num_bins,
        bias=leaves.get("bias"), softcap=case.softcap, logit_scale=case.logit_scale, **kwargs)
    torch.autograd.backward([getattr(out, k) for k in grads], list(grads.values()))
    return out, {k: t.grad for k, t in leaves.items()}


def compare(case: Case, *, per_token: bool = False, **kwargs) -> LossOutput:
    """Run ``packed_conditional_loss(**kwargs)`` (per-token outputs if ``per_token``) and check
    every output and gradient against the float64 reference; returns the outputs."""
    grads = upstream(case, token_logprobs=per_token)
    ref, ref_grads = reference(case, grads)
    got, got_grads = run(case, grads, return_token_logprobs=per_token,
                         return_entropy=per_token, **kwargs)
    check(case, got, got_grads, ref, ref_grads)
    return got


def compare_with_junk_ignored_targets(case: Case, **kwargs) -> LossOutput:
    """Like :func:`compare` (sums only), with the targets of the weight-0 rows replaced by -100 (the
    usual ignore index) and V in the input of the implementation under test, while the float64
    oracle keeps the valid ids: targets must be token ids on active rows only."""
    ignored = (case.loss_weight == 0).nonzero()[:, 0]
    junk = case.targets.clone()
    junk[ignored[0::2]] = -100
    junk[ignored[1::2]] = case.weight.shape[0]
    grads = upstream(case, token_logprobs=False)
    ref, ref_grads = reference(case, grads)
    got, got_grads = run(replace(case, targets=junk), grads, **kwargs)
    check(case, got, got_grads, ref, ref_grads)
    return got


def check_inactive_rows(primitive, dtype: torch.dtype = torch.float32) -> None:
    """``primitive(hidden, weight, targets, active) -> (logprob, entropy)`` on an active mask that
    is not the weights' (every third row inactive, holding target -100): active rows match the
    float64 oracle, inactive rows report log-prob and entropy 0 and get zero gradient."""
    case = make_case(dtype)
    n = case.targets.shape[0]
    active = torch.arange(n) % 3 != 0
    targets = torch.where(active, case.targets, -100)
    ref, _ = reference(case, upstream(case, token_logprobs=False))
    hidden = case.hidden.detach().clone().requires_grad_()
    logprob, entropy = primitive(hidden, case.weight, targets, active)
    assert (logprob[~active] == 0).all() and (entropy[~active] == 0).all()
    torch.testing.assert_close(logprob[active].double(), ref["token_logprobs"][active], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(entropy[active].double(), ref["token_entropy"][active], rtol=1e-4, atol=1e-5)
    logprob.sum().backward()
    assert (hidden.grad[~active] == 0).all() and (hidden.grad[active] != 0).any()


def check(case: Case, got: LossOutput, got_grads: dict, ref: dict, ref_grads: dict) -> None:
    """Sums and per-token values to rtol 1e-4, gradients to GRAD_RTOL in ‖err‖/‖ref‖. Per-token
    outputs, when returned, cover every row (asking for them makes every row active)."""
    where = f"(seed {case.seed})"
    for name in SUMS + ("token_logprobs", "token_entropy"):
        value = getattr(got, name)
        if value is None:
            continue
        assert value.dtype == torch.float32, f"{name} is {value.dtype} {where}"
        assert torch.isfinite(value).all(), f"{name} has non-finite values {where}"
        torch.testing.assert_close(value.double(), ref[name], rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"{name} {where}: {m}")
    rtol = GRAD_RTOL[case.hidden.dtype]
    for name, expected in ref_grads.items():
        grad = got_grads[name]
        assert grad is not None and grad.dtype == getattr(case, name).dtype, f"d{name} {where}"
        assert torch.isfinite(grad).all(), f"d{name} has non-finite values {where}"
        if expected.norm() == 0:
            assert (grad == 0).all(), f"d{name} should be 0 {where}"
            continue
        err = ((grad.double() - expected).norm() / expected.norm()).item()
        assert err <= rtol, f"d{name} relative error {err:.2e} > {rtol:.0e} {where}"


def poison_allocations(monkeypatch) -> None:
    """torch.empty / empty_like / Tensor.new_empty return NaN (float) or -1 (integer) filled
    memory, so an element an implementation forgets to write shows up in the outputs."""
    def filled(alloc):
        def wrapper(*args, **kwargs):
            t = alloc(*args, **kwargs)
            if t.dtype != torch.bool:
                t.fill_(float("nan") if t.is_floating_point() else -1)
            return t
        return wrapper

    for owner, name in ((torch, "empty"), (torch, "empty_like"), (torch.Tensor, "new_empty")):
        monkeypatch.setattr(owner, name, filled(getattr(owner, name)))


def without_weights(case: Case) -> Case:
    """The same case with every loss weight 0 (everything ignored)."""
    return replace(case, loss_weight=torch.zeros_like(case.loss_weight))


def interpreting() -> bool:
    """Whether this process runs triton kernels in the interpreter (TRITON_INTERPRET set)."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")
