"""Fused linear + log-softmax (cross-entropy) for packed, conditioned training, in Triton.

For the active rows of hidden h [N, D] against the output embedding W [V, D] (+ bias b [V]):

    a = h·Wᵀ + b,  u = a·scale,  z = softcap·tanh(u/softcap) (or z = u)
    lse_i = log Σ_j exp z_ij,   lp_i = z_{i,t_i} − lse_i,   H_i = lse_i − Σ_j p_ij·z_ij

and, given the upstream dlp_i (c_i = −dlp_i carries the loss weight and every output's gradient):

    g_ij = c_i·(p_ij − [j = t_i])·∂z_ij/∂a_ij,   dh = g·W,   dW = gᵀ·h,   db = Σ_i g_ij.

No [N, V] tensor is ever formed.

Row compaction, without host synchronisation: ``rows`` is a stable argsort that lists the active
rows first and ``count`` the number of active rows, a 0-d tensor on the device. Every kernel
reads ``count``; programs past it return at once and reductions over rows stop at it, so work
falls with the fraction of inactive (zero-weight) rows while the host never learns the count.

Forward, ``_lse_kernel``, grid (vocabulary splits, row blocks): each program streams its share of
[BV]-column vocabulary tiles; per tile it forms the [BM, BV] logits with ``tl.dot`` over D in BK
steps, folds them into a running max / sum of exponentials (and Σ e·z for the entropy), and picks
the target logit out of the tile that holds it. Splits give parallelism with few row blocks and
keep the programs in flight on few row blocks (L2 reuse of h); their partials [4, S, N] are merged
by a log-sum-exp over S in a few torch ops.

Grid order. Launches put the small axis first (splits; a chunk's vocabulary tiles; D tiles) and
row blocks second, so the programs in flight at one time share a few row blocks of h or g and a
few tiles of W: their working set stays in L2 instead of re-streaming h from memory per tile.

Backward, one vocabulary chunk of CV columns at a time (CV a multiple of BV, at most MAX_CHUNK,
with the chunk's [N, CV] workspace within WORKSPACE_BYTES):

- ``_grad_logits_kernel`` recomputes the [BM, BV] logit tiles and writes g, in hidden's dtype;
- ``_grad_weight_kernel``: dW[chunk] = gᵀ·h and db[chunk], one program per [BV, BD] tile reducing
  over all active rows in fp32 registers, each element of dW written once in its final dtype;
- ``_grad_hidden_kernel``: dh += g·W[chunk], one program per [BM, BD] tile reducing over the
  chunk's columns in fp32 registers, adding to an fp32 [N, D] accumulator (only allocated when
  there is more than one chunk); the last chunk writes dh, in hidden's dtype, to the rows' places.

Rounding of g. The gradient matmuls run at the tensor-core rate of hidden's dtype, so g is
rounded to it first. Per row, the target entry c·(p_t − 1) usually dominates, and its single
rounding would cost bf16 gradients about 2e-3 of relative error on top of the ~1.7e-3 of rounding
dh and dW themselves. So the target entry's rounding residual err_i is kept in fp32 and added
back: to dh as err_i·W[t_i] (a gather), to dW and db by a second, short loop in
``_grad_weight_kernel`` over the active rows sorted by target (each vocabulary tile owns the run
of rows whose targets it holds; the runs' bounds come from a device-side argsort + searchsorted).

No atomics anywhere: every output element has one owner and a fixed summation order, so results
are bitwise reproducible from run to run. The deterministic mode is the only mode.

Dtypes. Tiles are multiplied in hidden's dtype with fp32 accumulation; a wider weight (an fp32
master weight against bf16 activations) is converted tile by tile in registers, as autocast would,
and dW is written in the weight's dtype. fp32 inputs multiply with ``input_precision="ieee"`` (no
TF32), so fp32 gradients are exact to fp32 rounding.

Deviations and costs, stated:
- the backward recomputes the logits: 8·N·D·V flops (forward 2, recompute 2, dW 2, dh 2) where an
  implementation that keeps the logits needs 6, the price of O(N·CV) rather than O(N·V) memory;
- the fp32 dh accumulator (4·N·D bytes) is the largest extra allocation when V needs several
  chunks, and each chunk reads and writes it once;
- tanh is built from exp (``_tanh``): libdevice calls do not run in the interpreter;
- triton 3.9's interpreter multiplies bf16 tiles as their raw uint16 storage, so under
  ``TRITON_INTERPRET=1`` bf16 tiles are widened to fp32 before ``tl.dot`` (exact: bf16 products are
  exact in fp32), and it truncates fp32 -> bf16 casts, so ``_cast`` rounds bf16 explicitly (the
  hardware's round-to-nearest-even, in both modes).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl
from torch import Tensor

WORKSPACE_BYTES = 64 << 20  # the backward's [N, CV] gradient-of-logits chunk ...
MAX_CHUNK = 4096            # ... of at most this many vocabulary columns
ROW_GROUP = 16              # row blocks the forward keeps in flight (its L2 working set)
INTERPRETED = bool(triton.knobs.runtime.interpret)  # how this module's kernels were decorated
DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}
# Multiply-adds fused into FMAs, as every measurement and GPU test so far ran them (Triton's
# default up to 3.9; 3.10 turns it off unless asked): pinned, so a Triton upgrade changes nothing.
FP_FUSION = True


@dataclass(frozen=True)
class Tiles:
    """One kernel's tile sizes (rows BM, vocabulary BV, hidden BD, reduction BK) and launch options."""

    bm: int
    bv: int
    bd: int
    bk: int
    num_warps: int
    num_stages: int


KERNELS = ("_lse_kernel", "_grad_logits_kernel", "_grad_weight_kernel", "_grad_hidden_kernel")
# 16-bit hidden and weight (bf16/fp16), per kernel, from the tile sweep on one H200
# (benchmarks/kernel_tiles.py; KERNEL_NOTES.md): the forward is fastest with 256-column vocabulary
# tiles and dW with 4 warps and 4 stages, the other two at 128x128x64 with 8 warps and 3 stages.
# The backward's kernels must share BV (the chunk is a multiple of it, and dW's runs of rows by
# target are counted per BV-column tile).
GPU_TILES = {
    "_lse_kernel": Tiles(bm=128, bv=256, bd=128, bk=64, num_warps=8, num_stages=3),
    "_grad_logits_kernel": Tiles(bm=128, bv=128, bd=128, bk=64, num_warps=8, num_stages=3),
    "_grad_weight_kernel": Tiles(bm=128, bv=128, bd=128, bk=64, num_warps=4, num_stages=4),
    "_grad_hidden_kernel": Tiles(bm=128, bv=128, bd=128, bk=64, num_warps=8, num_stages=3),
}
# A 4-byte operand (fp32, or bf16 activations against an fp32 master weight, as in training):
# 128x128x64, 8 warps, 3 stages for every kernel, the configuration the GPU tests ran. The
# forward's 256-column tiles would need 196,608 bytes of shared memory in fp32 (163,840 mixed),
# more than an A100 block can have (166,912) or an sm86/89 one (101,376); see KERNEL_NOTES.md.
WIDE_GPU_TILES = dict.fromkeys(KERNELS, Tiles(bm=128, bv=128, bd=128, bk=64, num_warps=8, num_stages=3))
# Interpreter tiles: small, with BV ≠ BM so that swapped row / vocabulary indices show up in tests,
# and different per kernel (forward BV, dh's BM) so that each launch provably uses its own.
INTERPRETER_TILES = {
    "_lse_kernel": Tiles(bm=16, bv=64, bd=16, bk=16, num_warps=1, num_stages=1),
    "_grad_logits_kernel": Tiles(bm=16, bv=32, bd=16, bk=16, num_warps=1, num_stages=1),
    "_grad_weight_kernel": Tiles(bm=16, bv=32, bd=16, bk=16, num_warps=1, num_stages=1),
    "_grad_hidden_kernel": Tiles(bm=32, bv=32, bd=16, bk=16, num_warps=1, num_stages=1),
}


@triton.jit
def _tanh(x):
    """tanh from one exp of a non-positive argument (no overflow); libdevice is not interpretable."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _cast(x, DTYPE: tl.constexpr):
    """fp32 -> DTYPE rounding to nearest even; for bf16 the rounding is done in integer arithmetic
    (the same result as the hardware conversion, which triton 3.9's interpreter truncates)."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)


@triton.jit
def _mm(acc, a_base, a_ok, a_step, b_base, b_ok, b_step, K, DOT_DTYPE: tl.constexpr,
        DOT_PRECISION: tl.constexpr, BK: tl.constexpr):
    """acc [BI, BJ] += Σ_{k<K} A[i, k]·B[k, j], A[i, k] at a_base[i] + k·a_step and B[k, j] at
    b_base[j] + k·b_step (rows i / columns j with a_ok / b_ok false read as 0)."""
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        k_ok = ks < K
        a = tl.load(a_base[:, None] + ks[None, :] * a_step,
                    mask=a_ok[:, None] & k_ok[None, :], other=0.0)             # [BI, BK]
        b = tl.load(b_base[None, :] + ks[:, None] * b_step,
                    mask=k_ok[:, None] & b_ok[None, :], other=0.0)             # [BK, BJ]
        acc = tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _logits_tile(h_ptr, w_ptr, b_ptr, rows, row_ok, cols, col_ok, D, stride_h, stride_w,
                 softcap, scale, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                 DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 BM: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr):
    """Logits z [BM, BV] (fp32) of hidden rows ``rows`` against vocabulary ``cols``; −inf past V."""
    acc = _mm(tl.zeros([BM, BV], dtype=tl.float32), h_ptr + rows * stride_h, row_ok, 1,
              w_ptr + cols * stride_w, col_ok, 1, D, DOT_DTYPE, DOT_PRECISION, BK)  # h·Wᵀ
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    acc = acc * scale
    if HAS_SOFTCAP:
        acc = softcap * _tanh(acc / softcap)
    return tl.where(col_ok[None, :], acc, float("-inf"))


@triton.jit
def _row_block(rows_ptr, tgt_ptr, count_ptr, BM: tl.constexpr):
    """This program's block (grid axis 1) of the compacted rows: positions [BM], valid mask,
    original row ids, targets."""
    offs = tl.program_id(1) * BM + tl.arange(0, BM)
    row_ok = offs < tl.load(count_ptr)
    rows = tl.load(rows_ptr + offs, mask=row_ok, other=0)
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=-1)
    return offs, row_ok, rows, tgt


@triton.jit
def _lse_kernel(h_ptr, w_ptr, b_ptr, tgt_ptr, rows_ptr, count_ptr, part_ptr,
                N, D, V, stride_h, stride_w, tiles_per_split, softcap, scale,
                HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, WITH_ENTROPY: tl.constexpr,
                DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                BM: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr):
    """Partials over one vocabulary split: part[0..3, split, m] = max, Σ e, Σ e·z, target logit."""
    if tl.program_id(1) * BM >= tl.load(count_ptr):
        return
    offs, row_ok, rows, tgt = _row_block(rows_ptr, tgt_ptr, count_ptr, BM)
    split = tl.program_id(0)
    run_max = tl.full([BM], float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros([BM], dtype=tl.float32)
    run_dot = tl.zeros([BM], dtype=tl.float32)
    tgt_logit = tl.zeros([BM], dtype=tl.float32)
    first = split * tiles_per_split
    last = tl.minimum(first + tiles_per_split, tl.cdiv(V, BV))
    for tile in range(first, last):
        cols = tile * BV + tl.arange(0, BV)
        col_ok = cols < V
        z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, row_ok, cols, col_ok, D, stride_h, stride_w,
                         softcap, scale, HAS_BIAS, HAS_SOFTCAP, DOT_DTYPE, DOT_PRECISION,
                         BM, BV, BK)                                           # [BM, BV]
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        alpha = tl.exp(run_max - new_max)
        e = tl.exp(z - new_max[:, None])                                       # 0 past V
        run_sum = run_sum * alpha + tl.sum(e, axis=1)
        if WITH_ENTROPY:
            run_dot = run_dot * alpha + tl.sum(e * tl.where(col_ok[None, :], z, 0.0), axis=1)
        tgt_logit += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
        run_max = new_max
    part = part_ptr + split * N + offs
    plane = tl.num_programs(0) * N
    tl.store(part, run_max, mask=row_ok)
    tl.store(part + plane, run_sum, mask=row_ok)
    tl.store(part + 2 * plane, run_dot, mask=row_ok)
    tl.store(part + 3 * plane, tgt_logit, mask=row_ok)


@triton.jit
def _grad_logits_kernel(h_ptr, w_ptr, b_ptr, tgt_ptr, rows_ptr, count_ptr, lse_ptr, coef_ptr,
                        g_ptr, err_ptr, v0, D, V, stride_h, stride_w, stride_g, softcap, scale,
                        HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                        DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                        BM: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr):
    """g[m, j − v0] = c_m·(p_mj − [j = t_m])·∂z/∂a for one [BM, BV] tile of the chunk at v0,
    and err[m] = the rounding residual of g at the target, for rows whose target is in the tile."""
    if tl.program_id(1) * BM >= tl.load(count_ptr):
        return
    offs, row_ok, rows, tgt = _row_block(rows_ptr, tgt_ptr, count_ptr, BM)
    lse = tl.load(lse_ptr + offs, mask=row_ok, other=0.0)
    coef = tl.load(coef_ptr + offs, mask=row_ok, other=0.0)
    local = tl.program_id(0) * BV + tl.arange(0, BV)                           # chunk columns
    cols = v0 + local
    col_ok = cols < V
    z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, row_ok, cols, col_ok, D, stride_h, stride_w,
                     softcap, scale, HAS_BIAS, HAS_SOFTCAP, DOT_DTYPE, DOT_PRECISION,
                     BM, BV, BK)                                               # [BM, BV]
    is_tgt = (cols[None, :] == tgt[:, None]) & col_ok[None, :]                 # [BM, BV]
    g = tl.exp(z - lse[:, None]) - tl.where(is_tgt, 1.0, 0.0)
    if HAS_SOFTCAP:
        t = tl.where(col_ok[None, :], z / softcap, 0.0)
        g = g * (1.0 - t * t)
    g = g * (coef * scale)[:, None]
    stored = _cast(g, g_ptr.dtype.element_ty)
    tl.store(g_ptr + offs[:, None] * stride_g + local[None, :], stored,
             mask=row_ok[:, None] & col_ok[None, :])
    resid = tl.sum(tl.where(is_tgt, g - stored.to(tl.float32), 0.0), axis=1)  # [BM]
    has_tgt = tl.sum(is_tgt.to(tl.int32), axis=1) > 0
    tl.store(err_ptr + offs, resid, mask=row_ok & has_tgt)


@triton.jit
def _grad_weight_kernel(g_ptr, h_ptr, rows_ptr, count_ptr, err_ptr, by_tgt_ptr, tgt_sorted_ptr,
                        bounds_ptr, dw_ptr, db_ptr, v0, width, D, stride_g, stride_h, stride_dw,
                        HAS_BIAS: tl.constexpr, DOT_DTYPE: tl.constexpr,
                        DOT_PRECISION: tl.constexpr,
                        BV: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr):
    """dW[v0 + j, d] = Σ_m g[m, j]·h[rows_m, d] over the active rows, plus the target residuals
    Σ_{m: t_m = v0 + j} err[m]·h[rows_m, d] (rows sorted by target); db likewise, on d-tile 0."""
    pid_v = tl.program_id(0)
    pid_d = tl.program_id(1)
    count = tl.load(count_ptr)
    local = pid_v * BV + tl.arange(0, BV)
    v_ok = local < width
    ds = pid_d * BD + tl.arange(0, BD)
    d_ok = ds < D
    acc = tl.zeros([BV, BD], dtype=tl.float32)
    bias_acc = tl.zeros([BV], dtype=tl.float32)
    for k0 in range(0, count, BK):
        ks = k0 + tl.arange(0, BK)
        k_ok = ks < count
        rows = tl.load(rows_ptr + ks, mask=k_ok, other=0)
        g = tl.load(g_ptr + ks[:, None] * stride_g + local[None, :],
                    mask=k_ok[:, None] & v_ok[None, :], other=0.0)             # [BK, BV]
        h = tl.load(h_ptr + rows[:, None] * stride_h + ds[None, :],
                    mask=k_ok[:, None] & d_ok[None, :], other=0.0)             # [BK, BD]
        acc = tl.dot(tl.trans(g.to(DOT_DTYPE)), h.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            bias_acc += tl.sum(g.to(tl.float32), axis=0)
    tile_start = v0 + pid_v * BV
    lo = tl.load(bounds_ptr + tile_start // BV)
    hi = tl.load(bounds_ptr + tile_start // BV + 1)
    for k0 in range(lo, hi, BK):
        ks = k0 + tl.arange(0, BK)
        k_ok = ks < hi
        pos = tl.load(by_tgt_ptr + ks, mask=k_ok, other=0)                     # compacted rows
        rows = tl.load(rows_ptr + pos, mask=k_ok, other=0)
        col = tl.load(tgt_sorted_ptr + ks, mask=k_ok, other=-1) - tile_start
        resid = tl.load(err_ptr + pos, mask=k_ok, other=0.0)
        sel = tl.where(col[:, None] == tl.arange(0, BV)[None, :], resid[:, None], 0.0)  # [BK, BV]
        h = tl.load(h_ptr + rows[:, None] * stride_h + ds[None, :],
                    mask=k_ok[:, None] & d_ok[None, :], other=0.0)             # [BK, BD]
        acc = tl.dot(tl.trans(sel), h.to(tl.float32), acc, input_precision="tf32")  # ~1e-3 of g
        if HAS_BIAS:
            bias_acc += tl.sum(sel, axis=0)
    tl.store(dw_ptr + (v0 + local)[:, None] * stride_dw + ds[None, :],
             _cast(acc, dw_ptr.dtype.element_ty), mask=v_ok[:, None] & d_ok[None, :])
    if HAS_BIAS and pid_d == 0:
        tl.store(db_ptr + v0 + local, _cast(bias_acc, db_ptr.dtype.element_ty), mask=v_ok)


@triton.jit
def _grad_hidden_kernel(g_ptr, w_ptr, tgt_ptr, rows_ptr, count_ptr, err_ptr, acc_ptr, dh_ptr,
                        v0, width, D, V, stride_g, stride_w, stride_dh,
                        FIRST: tl.constexpr, LAST: tl.constexpr,
                        DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                        BM: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr):
    """dh[m, d] (+)= Σ_j g[m, j]·W[v0 + j, d] over the chunk; the last chunk adds the target
    residual err[m]·W[t_m, d] and stores dh at rows_m."""
    pid_d = tl.program_id(0)
    pid_m = tl.program_id(1)
    count = tl.load(count_ptr)
    if pid_m * BM >= count:
        return
    offs = pid_m * BM + tl.arange(0, BM)
    row_ok = offs < count
    ds = pid_d * BD + tl.arange(0, BD)
    d_ok = ds < D
    acc = _mm(tl.zeros([BM, BD], dtype=tl.float32), g_ptr + offs * stride_g, row_ok, 1,
              w_ptr + v0 * stride_w + ds, d_ok, stride_w, width, DOT_DTYPE, DOT_PRECISION, BK)
    tile = offs[:, None] * D + ds[None, :]
    tile_ok = row_ok[:, None] & d_ok[None, :]
    if not FIRST:
        acc += tl.load(acc_ptr + tile, mask=tile_ok, other=0.0)
    if LAST:
        rows = tl.load(rows_ptr + offs, mask=row_ok, other=0)
        tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=-1)
        t_ok = row_ok & (tgt >= 0) & (tgt < V)
        resid = tl.load(err_ptr + offs, mask=t_ok, other=0.0)
        w_t = tl.load(w_ptr + tgt[:, None] * stride_w + ds[None, :],
                      mask=t_ok[:, None] & d_ok[None, :], other=0.0)           # [BM, BD]
        acc += resid[:, None] * w_t.to(tl.float32)
        tl.store(dh_ptr + rows[:, None] * stride_dh + ds[None, :],
                 _cast(acc, dh_ptr.dtype.element_ty), mask=tile_ok)
    else:
        tl.store(acc_ptr + tile, acc, mask=tile_ok)


@lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _tiles(device: torch.device, *dtypes: torch.dtype) -> dict[str, Tiles]:
    """The tiles for operands of these dtypes on ``device``."""
    if device.type != "cuda" or INTERPRETED:
        tiles = INTERPRETER_TILES
    else:
        tiles = GPU_TILES if all(dt.itemsize == 2 for dt in dtypes) else WIDE_GPU_TILES
    if tiles["_grad_logits_kernel"].bv != tiles["_grad_weight_kernel"].bv:
        raise ValueError("the gradient-of-logits and dW kernels must share the vocabulary tile BV")
    return tiles


def _dot_types(dtype: torch.dtype) -> tuple[tl.dtype, str]:
    """The dtype tiles are multiplied in, and tl.dot's input_precision."""
    if dtype == torch.float32:
        return tl.float32, "ieee"
    if dtype == torch.bfloat16 and INTERPRETED:
        return tl.float32, "ieee"
    return DTYPES[dtype], "tf32"  # input_precision only affects fp32 operands


def _default_splits(n: int, v: int, tiles: Tiles, device: torch.device) -> int:
    """Vocabulary splits for the forward: about two programs per SM with at most ROW_GROUP row
    blocks among them, so the hidden rows in flight stay in L2 while the splits stream W."""
    if device.type != "cuda" or INTERPRETED:
        return 1
    row_blocks = triton.cdiv(max(n, 1), tiles.bm)
    sms = _sm_count(torch.cuda.current_device() if device.index is None else device.index)
    return max(1, min(triton.cdiv(2 * sms, min(row_blocks, ROW_GROUP)), triton.cdiv(v, tiles.bv)))


def _default_chunk(n: int, v: int, itemsize: int, tiles: Tiles) -> int:
    """Backward vocabulary chunk: a multiple of BV, at most MAX_CHUNK, whose [N, CV] workspace
    fits WORKSPACE_BYTES. Each chunk re-reads and re-writes the fp32 dh accumulator (8·N·D bytes),
    a cost relative to the chunk's matmuls of about 4·(flop rate)/(bandwidth)/CV, so wider is
    faster up to MAX_CHUNK."""
    fit = WORKSPACE_BYTES // (max(n, 1) * itemsize) // tiles.bv * tiles.bv
    return max(tiles.bv, min(fit, MAX_CHUNK, triton.cdiv(v, tiles.bv) * tiles.bv))


class FusedLinearLogprob(torch.autograd.Function):
    """(hidden, weight, bias, targets, active, ...) -> (log p(target) [N], entropy [N] or None)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, active, softcap, scale, with_entropy,
                vocab_chunk, vocab_splits):
        n, d = hidden.shape
        v = weight.shape[0]
        device = hidden.device
        tiles = _tiles(device, hidden.dtype, weight.dtype)
        fwd = tiles["_lse_kernel"]
        dot_dtype, precision = _dot_types(hidden.dtype)
        hidden, weight = hidden.contiguous(), weight.contiguous()
        targets = targets.to(torch.int64).contiguous()
        bias = None if bias is None else bias.contiguous()
        rows = torch.argsort(active.logical_not().to(torch.int8), stable=True)  # [N] active first
        count = active.sum(dtype=torch.int32)                                  # 0-d, on device
        tiles_total = triton.cdiv(v, fwd.bv)
        splits = vocab_splits or _default_splits(n, v, fwd, device)
        per_split = triton.cdiv(tiles_total, splits)
        splits = triton.cdiv(tiles_total, per_split)                           # none left empty
        part = torch.empty((4, splits, n), dtype=torch.float32, device=device)  # [4, S, N]
        _lse_kernel[(splits, max(1, triton.cdiv(n, fwd.bm)))](
            hidden, weight, hidden if bias is None else bias, targets, rows, count, part,
            n, d, v, hidden.stride(0), weight.stride(0), per_split,
            float(softcap or 0.0), float(scale),
            HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None, WITH_ENTROPY=with_entropy,
            DOT_DTYPE=dot_dtype, DOT_PRECISION=precision, BM=fwd.bm, BV=fwd.bv, BK=fwd.bk,
            num_warps=fwd.num_warps, num_stages=fwd.num_stages, enable_fp_fusion=FP_FUSION,
        )
        run_max, run_sum, run_dot, tgt_logit = part.unbind(0)                  # [S, N] each
        top = run_max.amax(0)                                                  # [N]
        rescale = torch.exp(run_max - top)                                     # [S, N]
        total = (run_sum * rescale).sum(0)                                     # [N]
        lse = top + torch.log(total)                                           # [N] compacted
        live = torch.arange(n, device=device) < count                          # [N] compacted
        zero = torch.zeros((), device=device)
        logprob = torch.empty(n, dtype=torch.float32, device=device).scatter_(
            0, rows, torch.where(live, tgt_logit.sum(0) - lse, zero))          # [N] original order
        entropy = None
        if with_entropy:
            ent = lse - (run_dot * rescale).sum(0) / total                     # [N] compacted
            entropy = torch.empty_like(logprob).scatter_(0, rows, torch.where(live, ent, zero))
            ctx.mark_non_differentiable(entropy)
        ctx.save_for_backward(hidden, weight, bias, targets, rows, count, lse)
        ctx.softcap, ctx.scale, ctx.tiles = softcap, float(scale), tiles
        ctx.vocab_chunk = vocab_chunk or _default_chunk(n, v, hidden.element_size(),
                                                        tiles["_grad_logits_kernel"])
        return logprob, entropy

    @staticmethod
    def backward(ctx, dlogprob, _dentropy):
        hidden, weight, bias, targets, rows, count, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n, d = hidden.shape
        v = weight.shape[0]
        device = hidden.device
        chunk = ctx.vocab_chunk
        lg, wg, hg = (ctx.tiles[k] for k in KERNELS[1:])  # grad-logits, dW, dh tiles; lg.bv == wg.bv
        dot_dtype, precision = _dot_types(hidden.dtype)
        coef = dlogprob.float().neg().gather(0, rows)                          # [N] c, compacted
        err = torch.zeros(n, dtype=torch.float32, device=device)               # [N] compacted
        g = torch.empty((n, chunk), dtype=hidden.dtype, device=device)         # [N, CV]
        starts = range(0, v, chunk)
        dh = torch.zeros_like(hidden) if need_h else None                      # [N, D]
        acc = (torch.empty((n, d), dtype=torch.float32, device=device)         # [N, D] fp32
               if need_h and len(starts) > 1 else None)
        dw = torch.empty_like(weight) if need_w or need_b else None            # [V, D], db's pass
        db = torch.empty_like(bias) if need_b else None                        # [V]
        if dw is not None:  # active rows by target, and where each vocabulary tile's run starts
            tiles_total = triton.cdiv(v, wg.bv)
            live = torch.arange(n, device=device) < count                      # [N] compacted
            tgt = torch.where(live, targets.gather(0, rows), tiles_total * wg.bv)
            by_tgt = torch.argsort(tgt, stable=True)                           # [N]
            tgt_sorted = tgt.gather(0, by_tgt)                                 # [N]
            bounds = torch.searchsorted(                                       # [T + 1]
                tgt_sorted, torch.arange(tiles_total + 1, device=device) * wg.bv)
        dots = dict(DOT_DTYPE=dot_dtype, DOT_PRECISION=precision, enable_fp_fusion=FP_FUSION)
        for v0 in starts:
            width = min(chunk, v - v0)
            _grad_logits_kernel[(triton.cdiv(width, lg.bv), max(1, triton.cdiv(n, lg.bm)))](
                hidden, weight, hidden if bias is None else bias, targets, rows, count, lse, coef,
                g, err, v0, d, v, hidden.stride(0), weight.stride(0), g.stride(0),
                float(ctx.softcap or 0.0), ctx.scale,
                HAS_BIAS=bias is not None, HAS_SOFTCAP=ctx.softcap is not None,
                BM=lg.bm, BV=lg.bv, BK=lg.bk, num_warps=lg.num_warps, num_stages=lg.num_stages,
                **dots,
            )
            if dw is not None:
                _grad_weight_kernel[(triton.cdiv(width, wg.bv), triton.cdiv(d, wg.bd))](
                    g, hidden, rows, count, err, by_tgt, tgt_sorted, bounds,
                    dw, dw if db is None else db, v0, width, d,
                    g.stride(0), hidden.stride(0), dw.stride(0), HAS_BIAS=db is not None,
                    BV=wg.bv, BD=wg.bd, BK=wg.bk, num_warps=wg.num_warps,
                    num_stages=wg.num_stages, **dots,
                )
            if dh is not None:
                _grad_hidden_kernel[(triton.cdiv(d, hg.bd), max(1, triton.cdiv(n, hg.bm)))](
                    g, weight, targets, rows, count, err, dh if acc is None else acc, dh,
                    v0, width, d, v, g.stride(0), weight.stride(0), dh.stride(0),
                    FIRST=v0 == 0, LAST=v0 + chunk >= v,
                    BM=hg.bm, BD=hg.bd, BK=hg.bk, num_warps=hg.num_warps,
                    num_stages=hg.num_stages, **dots,
                )
        return (dh, dw if need_w else None, db, None, None, None, None, None, None, None)


def fused_linear_logprob(hidden: Tensor, weight: Tensor, targets: Tensor, active: Tensor, *,
                         bias: Tensor | None = None, softcap: float | None = None,
                         scale: float = 1.0, with_entropy: bool = False,
                         vocab_chunk: int | None = None,
                         vocab_splits: int | None = None) -> tuple[Tensor, Tensor | None]:
    """Per-token ``(log p(target) [N] fp32, entropy [N] fp32 or None)`` for ``active [N]`` rows.

    Inactive rows get log-prob 0 and no gradient. ``vocab_chunk`` (a multiple of the vocabulary
    tile) and ``vocab_splits`` override the backward chunk width and the forward's vocabulary
    split count; by default they follow the workspace budget and the device's SM count.
    """
    if hidden.dtype not in DTYPES or weight.dtype not in DTYPES:
        raise ValueError(f"triton loss supports bf16/fp16/fp32 hidden and weight, got "
                         f"{hidden.dtype} and {weight.dtype}")
    if not (hidden.is_cuda or INTERPRETED):
        raise ValueError("triton loss needs CUDA tensors (or TRITON_INTERPRET=1 set before "
                         "rcond.kernels.fused_linear_ce is imported); use impl='torch' on CPU")
    bv = _tiles(hidden.device, hidden.dtype, weight.dtype)["_grad_logits_kernel"].bv
    if vocab_chunk is not None and (vocab_chunk <= 0 or vocab_chunk % bv):
        raise ValueError(f"vocab_chunk must be a positive multiple of {bv}, got {vocab_chunk}")
    return FusedLinearLogprob.apply(hidden, weight, bias, targets, active, softcap, scale,
                                    with_entropy, vocab_chunk, vocab_splits)
