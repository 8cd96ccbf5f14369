"""Fused linear + cross-entropy, forward + backward in bf16: rcond's Triton kernel beside torch
eager, torch.compile, Liger-Kernel and Cut Cross-Entropy, in one run on one CUDA device
(DESIGN §9, issue 4).

Per shape N×D×V, with a fraction of the tokens at loss weight 0 (ignore_index for the peers):

- time: median of ``triton.testing.do_bench`` over forward + backward of the summed loss;
- ×floor: time over 6·N·D·V / R, R the bf16 matmul rate measured in this run (an 8192³ matmul);
- memory: peak ``torch.cuda.max_memory_allocated`` during one forward + backward, less what was
  allocated before it and less the gradients themselves (dh and dW, bf16);
- gradient error: ‖g − g64‖ / ‖g64‖ for dh and dW, g64 from a chunked float64 computation.

Then rcond and the peers at 16384×2048×128256 with 0%, 50% and 90% of the tokens masked.
Inputs: h ~ N(0, 1), W ~ N(0, 1/D) (logits of unit scale, the softmax close to uniform, as at
initialisation), random targets. A peer that is not installed is skipped and named.

    python benchmarks/kernel.py [--shapes 8192x768x50257,...] [--masked 0.3] [--sweep 0,0.5,0.9]
                                [--sweep-shape 16384x2048x128256] [--json results.json]

Needs a CUDA device: without one it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

import torch
import torch.nn.functional as F

SHAPES = "8192x768x50257,16384x2048x128256,32768x4096x128256"
SWEEP_SHAPE = "16384x2048x128256"
IGNORE = -100
MIB = 1 << 20


def make_inputs(n: int, d: int, v: int, masked: float, seed: int = 0) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    hidden = torch.randn(n, d, device="cuda", generator=gen).bfloat16().requires_grad_()
    weight = (torch.randn(v, d, device="cuda", generator=gen) / d ** 0.5).bfloat16().requires_grad_()
    targets = torch.randint(0, v, (n,), device="cuda", generator=gen)
    drop = torch.rand(n, device="cuda", generator=gen) < masked
    return {"hidden": hidden, "weight": weight, "targets": targets,
            "loss_weight": (~drop).float(),                          # rcond: weight 0 = ignored
            "labels": torch.where(drop, IGNORE, targets)}            # peers: ignore_index


def eager_loss(hidden, weight, labels):
    logits = F.linear(hidden, weight).float()                                  # [N, V] fp32
    return F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")


def implementations() -> tuple[dict[str, Callable], dict[str, str]]:
    """name -> loss(inputs) for every runnable implementation, and name -> why not for the rest."""
    from rcond.loss import packed_conditional_loss

    impls = {
        "rcond": lambda x: packed_conditional_loss(x["hidden"], x["weight"], x["targets"],
                                                   x["loss_weight"], impl="triton").loss_sum,
        "eager": lambda x: eager_loss(x["hidden"], x["weight"], x["labels"]),
    }
    compiled = torch.compile(eager_loss)
    impls["compile"] = lambda x: compiled(x["hidden"], x["weight"], x["labels"])
    missing = {}
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import (
            LigerFusedLinearCrossEntropyLoss)
        liger = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="sum")
        impls["liger"] = lambda x: liger(x["weight"], x["hidden"], x["labels"])
    except ImportError:
        missing["liger"] = "liger-kernel is not installed (pip install liger-kernel)"
    try:
        from cut_cross_entropy import linear_cross_entropy
        impls["cce"] = lambda x: linear_cross_entropy(x["hidden"], x["weight"], x["labels"],
                                                      ignore_index=IGNORE, reduction="sum")
    except ImportError:
        missing["cce"] = "cut-cross-entropy is not installed (pip install cut-cross-entropy)"
    return impls, missing


def matmul_rate() -> float:
    """bf16 FLOP/s of an 8192³ matmul on this device."""
    from triton.testing import do_bench

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, warmup=100, rep=500, return_mode="median")
    return 2 * 8192 ** 3 / (ms * 1e-3)


def float64_grads(x: dict, rows: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """dh, dW of Σ_i w_i·(−log p(t_i)) in float64, a chunk of rows at a time."""
    h, w = x["hidden"].detach(), x["weight"].detach().double()
    dh = torch.empty(h.shape, dtype=torch.float64, device="cuda")              # [N, D]
    dw = torch.zeros(w.shape, dtype=torch.float64, device="cuda")              # [V, D]
    for s in range(0, h.shape[0], rows):
        hc = h[s:s + rows].double()                                            # [C, D]
        g = torch.softmax(hc @ w.T, dim=1)                                     # [C, V]
        g[torch.arange(hc.shape[0], device="cuda"), x["targets"][s:s + rows]] -= 1
        g *= x["loss_weight"][s:s + rows, None].double()
        dh[s:s + rows] = g @ w
        dw += g.T @ hc
        del g
    return dh, dw


def measure(loss_fn: Callable, x: dict, reference: tuple[torch.Tensor, torch.Tensor]) -> dict:
    from triton.testing import do_bench

    h, w = x["hidden"], x["weight"]
    step = lambda: loss_fn(x).backward()  # noqa: E731
    step()  # compile / autotune outside the measurements
    h.grad = w.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    grads = (h.numel() * h.element_size() + w.numel() * w.element_size())
    extra = torch.cuda.max_memory_allocated() - base - grads
    err = [((g.double() - r).norm() / r.norm()).item() for g, r in zip((h.grad, w.grad), reference)]
    ms = do_bench(step, warmup=25, rep=200, grad_to_none=[h, w], return_mode="median")
    h.grad = w.grad = None
    return {"ms": ms, "extra_mib": extra / MIB, "err_dh": err[0], "err_dw": err[1]}


def run_shape(n: int, d: int, v: int, masked: float, impls: dict, rate: float) -> dict:
    x = make_inputs(n, d, v, masked)
    reference = float64_grads(x)
    floor_ms = 6 * n * d * v / rate * 1e3
    results = {}
    for name, fn in impls.items():
        try:
            results[name] = measure(fn, x, reference)
        except torch.OutOfMemoryError:
            results[name] = {"error": "out of memory"}
        torch.cuda.empty_cache()
    del reference
    torch.cuda.empty_cache()
    print(f"\n{n}x{d}x{v}, {masked:.0%} masked: floor {floor_ms:.2f} ms (6·N·D·V at the measured rate)")
    print(f"  {'impl':<8} {'ms':>8} {'×floor':>7} {'rcond/it':>9} {'extra MiB':>10} {'err dh':>9} {'err dW':>9}")
    ours = results.get("rcond", {}).get("ms")
    for name, r in results.items():
        if "error" in r:
            print(f"  {name:<8} {r['error']}")
            continue
        ratio = f"{ours / r['ms']:.2f}" if ours else "-"
        print(f"  {name:<8} {r['ms']:8.2f} {r['ms'] / floor_ms:7.2f} {ratio:>9} "
              f"{r['extra_mib']:10.1f} {r['err_dh']:9.1e} {r['err_dw']:9.1e}")
        r["x_floor"] = r["ms"] / floor_ms
    return {"shape": [n, d, v], "masked": masked, "floor_ms": floor_ms, "results": results}


def parse_shape(text: str) -> tuple[int, int, int]:
    n, d, v = (int(p) for p in text.lower().split("x"))
    return n, d, v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=SHAPES, help="comma-separated NxDxV (default: %(default)s)")
    ap.add_argument("--masked", type=float, default=0.3, help="fraction of tokens at weight 0")
    ap.add_argument("--sweep", default="0,0.5,0.9", help="masked fractions for the sweep ('' to skip)")
    ap.add_argument("--sweep-shape", default=SWEEP_SHAPE, help="NxDxV of the sweep (default: %(default)s)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernel.py needs a CUDA device (an H100-class GPU for the DESIGN §9 "
              "targets); none is visible here, so nothing was measured.")
        return 2
    import triton

    impls, missing = implementations()
    rate = matmul_rate()
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}, triton "
          f"{triton.__version__}; bf16 matmul {rate / 1e12:.0f} TFLOP/s (8192³, this run)")
    for name, why in missing.items():
        print(f"skipped peer {name}: {why}")
    runs = [run_shape(*parse_shape(s), args.masked, impls, rate) for s in args.shapes.split(",")]
    sweep = [run_shape(*parse_shape(args.sweep_shape), float(m), impls, rate)
             for m in args.sweep.split(",") if m]
    by_mask = {s["masked"]: s["results"].get("rcond", {}).get("ms") for s in sweep}
    if by_mask.get(0.0) and by_mask.get(0.5):
        print(f"\nrcond at 50% masked is {1 - by_mask[0.5] / by_mask[0.0]:.0%} faster than at 0% "
              f"(target ≥ 35%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "matmul_tflops": rate / 1e12,
                       "skipped": missing, "shapes": runs, "sweep": sweep}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
