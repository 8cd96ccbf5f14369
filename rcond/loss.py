"""Packed conditional loss: weighted next-token cross-entropy over packed rows, with per-segment
and per-bin sums, computed from the last hidden states without materialising [N, V] logits.

Logits of token i over the vocabulary (W the output embedding [V, D], b an optional bias):

    u_i = (h_i·Wᵀ + b)·scale            scale = logit_scale or 1
    z_i = softcap·tanh(u_i / softcap)   when softcap is given, else z_i = u_i
    lp_i = z_i[t_i] − logsumexp_j z_ij  log-probability of the target t_i

Outputs are sums, never means, so callers normalise across micro-batches and ranks:

    loss_sum          = Σ_i w_i·(−lp_i)                weight_sum        = Σ_i w_i
    segment_loss[s]   = Σ_{i: seg_i = s} w_i·(−lp_i)   segment_weight[s] = Σ_{i: seg_i = s} w_i
    bin_loss[k], bin_weight[k] likewise over bin ids; an id of −1 leaves the token out.

Structure. One autograd primitive, ``linear_logprob``, maps (h, W, b, t) to per-token lp (and,
if asked, the entropy of the predictive distribution); every output above is a plain weighted sum
of lp on the device (``index_add``: deterministic on CPU, and on CUDA under
``torch.use_deterministic_algorithms(True)``). Autograd therefore hands the primitive
dlp_i = g_lp_i − w_i·(g_loss + g_seg[seg_i] + g_bin[bin_i]) = −c_i, and its backward forms
dlogits_ij = c_i·(p_ij − [j = t_i])·∂z_ij/∂a_ij (a = h·Wᵀ + b), folding the per-token coefficient
in before the weight-gradient reduction.

Dtypes. hidden and weight may differ (mixed precision: bf16 activations against an fp32 master
weight); the matmul operands take hidden's precision (the triton kernels convert weight tiles to
hidden's dtype in registers, as autocast would; the torch reference computes in fp32, or float64
when hidden is float64), accumulation is fp32, and each gradient comes back in its input's dtype.

Which rows are computed. A row is *active* when its loss weight is non-zero; when per-token
log-probs or entropies are requested every row is active (RLHF and the evaluators want them on
tokens of weight 0 too). Inactive rows are removed before any matmul; their lp is reported as 0
and they receive zero gradient. Targets must be valid token ids on active rows.

Implementations (``impl``):
- ``"torch"``: the chunked reference below — fp32 math (float64 when the inputs are float64, so
  ``torch.autograd.gradcheck`` applies), ``chunk_size`` active rows at a time, the backward
  recomputing each chunk's logits. It gathers the active rows with ``nonzero`` (a host sync).
- ``"triton"``: ``rcond.kernels.fused_linear_ce`` — fused online log-sum-exp forward and
  recomputing backward with no host synchronisation (see that module).
- ``"auto"``: triton for CUDA tensors of dtype bf16/fp16/fp32 when triton imports, else torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

IMPLS = ("auto", "torch", "triton")
CHUNK_LOGIT_BYTES = 64 << 20  # default torch-reference chunk: this many bytes of logits


@dataclass
class LossOutput:
    """Outputs of the packed conditional loss (fp32; float64 for float64 inputs); see the module
    docstring for definitions. Optional fields are None unless asked for."""

    loss_sum: Tensor
    weight_sum: Tensor
    segment_loss: Tensor | None = None
    segment_weight: Tensor | None = None
    bin_loss: Tensor | None = None
    bin_weight: Tensor | None = None
    token_logprobs: Tensor | None = None
    token_entropy: Tensor | None = None


def packed_conditional_loss(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    loss_weight: Tensor,
    segment_ids: Tensor | None = None,
    bin_ids: Tensor | None = None,
    *,
    num_segments: int | None = None,
    num_bins: int | None = None,
    bias: Tensor | None = None,
    softcap: float | None = None,
    logit_scale: float | None = None,
    return_token_logprobs: bool = False,
    return_entropy: bool = False,
    impl: str = "auto",
    chunk_size: int | None = None,
) -> LossOutput:
    """Weighted cross-entropy sums of ``hidden [N, D]`` against ``weight [V, D]``.

    ``targets [N]`` token ids, ``loss_weight [N]`` float (0 = ignore), ``segment_ids`` /
    ``bin_ids [N]`` in ``[0, num_segments)`` / ``[0, num_bins)`` or −1. Pass ``num_segments`` and
    ``num_bins`` to avoid the host sync of ``max() + 1``. ``chunk_size`` is the torch reference's
    rows per chunk (default: as many as keep a chunk's fp32 logits within 64 MiB); the triton
    path sizes its own workspace. Gradients flow from ``loss_sum``, ``segment_loss``,
    ``bin_loss`` and ``token_logprobs`` to ``hidden``, ``weight`` and ``bias``.
    """
    n = _check_inputs(hidden, weight, targets, loss_weight, segment_ids, bin_ids, bias)
    if softcap is not None and softcap <= 0:
        raise ValueError(f"softcap must be positive, got {softcap}")
    backend = resolve_impl(impl, hidden, weight)
    math_dtype = torch.promote_types(hidden.dtype, torch.float32)
    w = loss_weight.to(math_dtype)                                             # [N]
    if return_token_logprobs or return_entropy:
        active = torch.ones(n, dtype=torch.bool, device=hidden.device)         # [N]
    else:
        active = w != 0                                                        # [N]
    logprob, entropy = linear_logprob(
        hidden, weight, targets, active, bias=bias, softcap=softcap,
        scale=1.0 if logit_scale is None else float(logit_scale),
        with_entropy=return_entropy, impl=backend, chunk_size=chunk_size,
    )
    token_loss = w * -logprob                                                  # [N]
    out = LossOutput(loss_sum=token_loss.sum(), weight_sum=w.sum())
    if segment_ids is not None:
        count = _group_count(segment_ids, num_segments)
        out.segment_loss = _group_sum(segment_ids, token_loss, count)          # [S]
        out.segment_weight = _group_sum(segment_ids, w, count)                 # [S]
    if bin_ids is not None:
        count = _group_count(bin_ids, num_bins)
        out.bin_loss = _group_sum(bin_ids, token_loss, count)                  # [K]
        out.bin_weight = _group_sum(bin_ids, w, count)                         # [K]
    if return_token_logprobs:
        out.token_logprobs = logprob
    if return_entropy:
        out.token_entropy = entropy
    return out


class PackedConditionalLoss(nn.Module):
    """Module form of :func:`packed_conditional_loss` holding the logit options and the impl."""

    def __init__(self, *, softcap: float | None = None, logit_scale: float | None = None,
                 impl: str = "auto", chunk_size: int | None = None) -> None:
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.softcap, self.logit_scale, self.impl, self.chunk_size = softcap, logit_scale, impl, chunk_size

    def forward(self, hidden: Tensor, weight: Tensor, targets: Tensor, loss_weight: Tensor,
                segment_ids: Tensor | None = None, bin_ids: Tensor | None = None, *,
                bias: Tensor | None = None, num_segments: int | None = None,
                num_bins: int | None = None, return_token_logprobs: bool = False,
                return_entropy: bool = False) -> LossOutput:
        return packed_conditional_loss(
            hidden, weight, targets, loss_weight, segment_ids, bin_ids,
            num_segments=num_segments, num_bins=num_bins, bias=bias, softcap=self.softcap,
            logit_scale=self.logit_scale, return_token_logprobs=return_token_logprobs,
            return_entropy=return_entropy, impl=self.impl, chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return f"softcap={self.softcap}, logit_scale={self.logit_scale}, impl={self.impl!r}"


def resolve_impl(impl: str, hidden: Tensor, weight: Tensor) -> str:
    """``"auto"`` -> ``"triton"`` for CUDA bf16/fp16/fp32 tensors when triton imports, else ``"torch"``."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    if hidden.is_cuda and {hidden.dtype, weight.dtype} <= {torch.bfloat16, torch.float16, torch.float32}:
        try:
            import triton  # noqa: F401
        except ImportError:
            return "torch"
        return "triton"
    return "torch"


def linear_logprob(hidden: Tensor, weight: Tensor, targets: Tensor, active: Tensor, *,
                   bias: Tensor | None = None, softcap: float | None = None, scale: float = 1.0,
                   with_entropy: bool = False, impl: str = "torch",
                   chunk_size: int | None = None) -> tuple[Tensor, Tensor | None]:
    """Per-token ``(log p(target), entropy or None)`` for the ``active [N]`` rows, 0 elsewhere.

    Log-probs are differentiable with respect to hidden, weight and bias; entropies are not.
    """
    if impl == "triton":
        try:
            from rcond.kernels.fused_linear_ce import fused_linear_logprob
        except ImportError as e:
            raise RuntimeError("impl='triton' needs the triton package; use impl='torch'") from e
        return fused_linear_logprob(hidden, weight, targets, active, bias=bias, softcap=softcap,
                                    scale=scale, with_entropy=with_entropy)
    if impl != "torch":
        raise ValueError(f"impl must be 'torch' or 'triton' here, got {impl!r}")
    rows = chunk_size or max(1, CHUNK_LOGIT_BYTES // (4 * weight.shape[0]))
    return _ChunkedLinearLogprob.apply(hidden, weight, bias, targets, active, softcap, scale,
                                       with_entropy, rows)


def _logits(h: Tensor, w: Tensor, b: Tensor | None, softcap: float | None,
            scale: float, slope: bool = True) -> tuple[Tensor, Tensor | None]:
    """Logits ``z [C, V]`` of rows ``h [C, D]`` and ``dz/da`` (a = h·Wᵀ + b), in h's dtype: a 0-dim
    tensor (the scale) without softcap, else ``[C, V]``; None when not ``slope`` (the forward has
    no use for it). ``z`` is a new tensor the caller may overwrite; the elementwise steps work in
    place on it (each ``[C, V]`` pass allocated anew costs a fresh allocation's page faults on CPU)."""
    a = h @ w.T if b is None else torch.addmm(b, h, w.T)                       # [C, V]
    if scale != 1.0:
        a.mul_(scale)                                                          # u = a * scale
    if softcap is None:
        return a, torch.full((), scale, dtype=a.dtype, device=a.device) if slope else None
    t = a.div_(softcap).tanh_()                                                # [C, V] tanh(u / softcap)
    dz_da = (t * t).neg_().add_(1).mul_(scale) if slope else None             # [C, V] scale * (1 - t²)
    return t.mul_(softcap), dz_da


class _ChunkedLinearLogprob(torch.autograd.Function):
    """Reference primitive: chunks of active rows, full-vocabulary logits per chunk only."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, active, softcap, scale, with_entropy, chunk):
        n = hidden.shape[0]
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        w, b = weight.to(dtype), None if bias is None else bias.to(dtype)      # [V, D], [V]
        rows = active.nonzero()[:, 0]                                          # [M]
        logprob = hidden.new_zeros(n, dtype=dtype)                             # [N]
        entropy = hidden.new_zeros(n, dtype=dtype) if with_entropy else None   # [N]
        lse = hidden.new_empty(rows.shape[0], dtype=dtype)                     # [M]
        for s in range(0, rows.shape[0], chunk):
            r = rows[s:s + chunk]                                              # [C]
            z, _ = _logits(hidden[r].to(dtype), w, b, softcap, scale, slope=False)  # [C, V]
            lse_c = torch.logsumexp(z, dim=1)                                  # [C]
            lse[s:s + chunk] = lse_c
            logprob[r] = z.gather(1, targets[r, None])[:, 0] - lse_c
            if with_entropy:
                entropy[r] = lse_c - (torch.softmax(z, dim=1) * z).sum(1)
        ctx.save_for_backward(hidden, weight, bias, targets, rows, lse)
        ctx.softcap, ctx.scale, ctx.chunk = softcap, scale, chunk
        if with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logprob, entropy

    @staticmethod
    def backward(ctx, dlogprob, _dentropy):
        hidden, weight, bias, targets, rows, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtype = lse.dtype
        w, b = weight.to(dtype), None if bias is None else bias.to(dtype)      # [V, D], [V]
        coef = -dlogprob.to(dtype)[rows]                                       # [M] c_i
        dh = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device) if need_h else None
        dw = torch.zeros(w.shape, dtype=dtype, device=w.device) if need_w else None
        db = torch.zeros(w.shape[0], dtype=dtype, device=w.device) if need_b else None
        for s in range(0, rows.shape[0], ctx.chunk):
            r = rows[s:s + ctx.chunk]                                          # [C]
            h = hidden[r].to(dtype)                                            # [C, D]
            z, dz_da = _logits(h, w, b, ctx.softcap, ctx.scale)                # [C, V]
            p = z.sub_(lse[s:s + ctx.chunk, None]).exp_()                     # [C, V] softmax, in z's memory
            p[torch.arange(r.shape[0], device=p.device), targets[r]] -= 1
            c = coef[s:s + ctx.chunk, None]                                    # [C, 1]
            g = p.mul_(c * dz_da) if dz_da.dim() == 0 else p.mul_(dz_da).mul_(c)  # [C, V] dlogits
            if need_h:
                dh[r] = g @ w
            if need_w:
                dw.addmm_(g.T, h)
            if need_b:
                db += g.sum(0)
        return (None if dh is None else dh.to(hidden.dtype),
                None if dw is None else dw.to(weight.dtype),
                None if db is None else db.to(bias.dtype),
                None, None, None, None, None, None)


def _group_count(ids: Tensor, count: int | None) -> int:
    """The number of groups: ``count`` if given, else ``max(ids) + 1`` (a host sync)."""
    if count is not None:
        return count
    return int(ids.max()) + 1 if ids.numel() else 0


def _group_sum(ids: Tensor, values: Tensor, count: int) -> Tensor:
    """``out[g] = Σ_{i: ids_i = g} values_i`` for ids in [0, count); ids of −1 are left out."""
    if count == 0:  # no groups (every id −1): nothing to add into
        return values.new_zeros(0)
    keep = ids >= 0                                                            # [N]
    index = torch.where(keep, ids, torch.zeros_like(ids))                      # [N]
    kept = torch.where(keep, values, torch.zeros_like(values))                 # [N]
    return values.new_zeros(count).index_add(0, index, kept)


def _check_inputs(hidden, weight, targets, loss_weight, segment_ids, bin_ids, bias) -> int:
    """Validate shapes and dtypes; returns N."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden must be [N, D] and weight [V, D]; got {tuple(hidden.shape)} "
                         f"and {tuple(weight.shape)}")
    if not hidden.is_floating_point() or not weight.is_floating_point():
        raise ValueError(f"hidden and weight must be floating point; got {hidden.dtype} and "
                         f"{weight.dtype}")
    n = hidden.shape[0]
    for name, t in (("targets", targets), ("loss_weight", loss_weight),
                    ("segment_ids", segment_ids), ("bin_ids", bin_ids)):
        if t is not None and tuple(t.shape) != (n,):
            raise ValueError(f"{name} must be [N] = [{n}], got {tuple(t.shape)}")
    for name, t in (("targets", targets), ("segment_ids", segment_ids), ("bin_ids", bin_ids)):
        if t is not None and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
            raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    return n
