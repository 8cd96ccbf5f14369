"""Tile sweep and per-kernel breakdown of rcond's fused linear + cross-entropy (issue 4).

For each shape N×D×V (bf16, a fraction of the tokens at weight 0, inputs as in
``benchmarks/kernel.py``) and each tile configuration (BM, BV, BD, BK, warps, stages) given to all
four kernels, after the shipped per-kernel ``GPU_TILES``, one forward + backward of the summed loss
is:

- timed: median of ``triton.testing.do_bench``;
- broken down per kernel: device time of each Triton kernel and of everything else (the row
  argsort, the log-sum-exp merge, the target sort) from one profiled step;
- checked: ‖g − g_ref‖ / ‖g_ref‖ of dh and dW against the shipped tiles' gradients (a
  different tiling changes only the summation order, so anything above ~1e-2 is a bug).

The shipped tiles run first, then configurations until ``--budget`` seconds have passed; what ran is printed and, with
``--json``, written. Needs a CUDA device.

    python benchmarks/kernel_tiles.py [--shapes 16384x2048x128256,8192x768x50257] [--masked 0.3]
                                      [--budget 200] [--json tiles.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from kernel import make_inputs, parse_shape
from rcond.kernels.fused_linear_ce import KERNELS

CONFIGS = [  # (bm, bv, bd, bk, num_warps, num_stages) for every kernel; None: the shipped GPU_TILES,
    None,      # first, so that a spent budget never leaves them out (and they are the gradients' reference)
    (128, 128, 128, 64, 8, 3),
    (128, 128, 128, 64, 4, 4),
    (128, 256, 128, 64, 8, 3),
    (64, 128, 128, 64, 4, 4),
    (128, 128, 64, 64, 4, 4),
    (128, 128, 128, 128, 8, 2),
    (256, 128, 128, 64, 8, 3),
]


def step_fn(x: dict):
    from rcond.loss import packed_conditional_loss

    def step():
        packed_conditional_loss(x["hidden"], x["weight"], x["targets"], x["loss_weight"],
                                impl="triton").loss_sum.backward()
    return step


def breakdown(step) -> dict[str, float]:
    """Device milliseconds per Triton kernel (and 'other') over one profiled step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    out = dict.fromkeys(KERNELS + ("other",), 0.0)
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)
        if getattr(ev, "device_type", None) is not None and "CUDA" not in str(ev.device_type):
            continue
        name = next((k for k in KERNELS if k in ev.key), "other")
        out[name] += us / 1e3
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="16384x2048x128256,8192x768x50257")
    ap.add_argument("--masked", type=float, default=0.3)
    ap.add_argument("--budget", type=float, default=200.0, help="seconds; configurations stop after")
    ap.add_argument("--json")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/kernel_tiles.py needs a CUDA device; none is visible, nothing measured.")
        return 2
    import triton
    from triton.testing import do_bench

    import rcond.kernels.fused_linear_ce as K

    deadline = time.monotonic() + a.budget
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}")
    shapes = [parse_shape(s) for s in a.shapes.split(",")]
    inputs = {shape: make_inputs(*shape, a.masked) for shape in shapes}
    refs: dict[tuple, tuple] = {}
    shipped = K.GPU_TILES
    rows = {shape: [] for shape in shapes}
    results = []
    for cfg in CONFIGS:  # configurations outer, so that a spent budget still leaves every shape
        if time.monotonic() > deadline:
            print(f"budget spent: configurations from {cfg} on were not run")
            break
        K.GPU_TILES = shipped if cfg is None else dict.fromkeys(K.KERNELS, K.Tiles(*cfg))
        for shape in shapes:
            x = inputs[shape]
            h, w = x["hidden"], x["weight"]
            step = step_fn(x)
            label = "shipped, per kernel" if cfg is None else " ".join(map(str, cfg))
            try:
                h.grad = w.grad = None
                step()
                torch.cuda.synchronize()
            except Exception as e:  # a tile that does not fit shared memory, say
                rows[shape].append(f"  {label:<22} failed: {type(e).__name__}: {str(e)[:120]}")
                results.append({"shape": shape, "tiles": label, "error": f"{type(e).__name__}: {e}"})
                continue
            grads = (h.grad.float(), w.grad.float())
            ref = refs.setdefault(shape, grads)
            err = [((g - r).norm() / r.norm()).item() for g, r in zip(grads, ref)]
            del grads
            h.grad = w.grad = None
            ms = do_bench(step, warmup=25, rep=200, grad_to_none=[h, w], return_mode="median")
            parts = breakdown(step)
            h.grad = w.grad = None
            rows[shape].append(f"  {label:<22} {ms:7.2f} " + " ".join(f"{parts[k]:12.2f}" for k in KERNELS)
                               + f" {parts['other']:7.2f} {err[0]:9.1e} {err[1]:9.1e}")
            print(rows[shape][-1], f"({shape[0]}x{shape[1]}x{shape[2]})", flush=True)
            results.append({"shape": shape, "masked": a.masked, "tiles": label, "ms": ms,
                            "kernels_ms": parts, "err_dh": err[0], "err_dw": err[1]})
            if a.json:
                with open(a.json, "w") as f:
                    json.dump({"device": torch.cuda.get_device_name(), "results": results}, f, indent=2)
    for shape in shapes:
        n, d, v = shape
        print(f"\n{n}x{d}x{v}, {a.masked:.0%} masked (ms; per-kernel device ms from one profiled step;"
              f" gradients against the first row's, the shipped tiles)")
        print(f"  {'BM BV BD BK w s':<22} {'ms':>7} " + " ".join(f"{k.strip('_')[:12]:>12}" for k in KERNELS)
              + f" {'other':>7} {'dh vs ref':>9} {'dW vs ref':>9}")
        print("\n".join(rows[shape]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
