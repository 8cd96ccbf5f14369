"""The packed conditional loss on CPU: rcond's chunked torch reference beside plain eager PyTorch.

On CPU (``rcond demo``, ``rcond train`` without a GPU) the loss runs ``impl="torch"``, the chunked
reference of ``rcond.loss``: active rows only, ``[rows, V]`` logits a chunk at a time, the
backward recomputing them. This times forward + backward of the weighted loss sum against the
eager way a user would write it: the full ``[N, V]`` logits, ``F.cross_entropy(reduction="none")``
times the loss weights, summed. Same inputs, fp32, one process, the torch threads the machine has.

Per shape N×D×V (a fraction ``--masked`` of the tokens at loss weight 0): the median and best of
``--repeats`` timed runs after one warm-up, the ratio eager / rcond (above 1: rcond is faster),
and the two loss sums (they must agree). The default shape is the demo's: 16 rows of 256 tokens,
the ``tiny`` preset's width, a 4,096-token BPE plus rcond's control tokens.

    python benchmarks/loss_cpu.py [--shapes 4096x192x4106,1024x768x50257] [--masked 0.23] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rcond.loss import packed_conditional_loss  # noqa: E402

SHAPES = "4096x192x4106,1024x768x50257"


def inputs(n: int, d: int, v: int, masked: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g)                                   # [N, D]
    weight = torch.randn(v, d, generator=g) / d ** 0.5                        # [V, D]
    targets = torch.randint(0, v, (n,), generator=g)                          # [N]
    loss_weight = (torch.rand(n, generator=g) >= masked).float()              # [N]
    return hidden, weight, targets, loss_weight


def rcond_step(hidden, weight, targets, loss_weight) -> float:
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = packed_conditional_loss(h, w, targets, loss_weight, impl="torch").loss_sum
    loss.backward()
    return loss.item()


def eager_step(hidden, weight, targets, loss_weight) -> float:
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logits = h @ w.T                                                          # [N, V]
    loss = (F.cross_entropy(logits, targets, reduction="none") * loss_weight).sum()
    loss.backward()
    return loss.item()


def timed(step, args, repeats: int) -> tuple[list[float], float]:
    value = step(*args)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step(*args)
        times.append(time.perf_counter() - t)
    return times, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=SHAPES, help="comma-separated NxDxV (default: %(default)s)")
    ap.add_argument("--masked", type=float, default=0.23, help="fraction of tokens at loss weight 0 "
                    "(the demo corpus trains 77%% of its tokens)")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per job, after one warm-up")
    a = ap.parse_args()
    print(f"device: CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads), torch {torch.__version__}, fp32; forward + backward "
          f"of the weighted loss sum, {a.masked:.0%} of tokens at weight 0, {a.repeats} runs per job")
    print(f"{'N x D x V':>18} {'eager s (best)':>15} {'rcond s (best)':>15} {'eager / rcond':>14} {'loss eager / rcond':>30}")
    for shape in a.shapes.split(","):
        n, d, v = (int(x) for x in shape.lower().split("x"))
        args = inputs(n, d, v, a.masked)
        eager, eager_loss = timed(eager_step, args, a.repeats)
        ours, our_loss = timed(rcond_step, args, a.repeats)
        if abs(eager_loss - our_loss) > 1e-4 * abs(eager_loss):
            sys.exit(f"loss_cpu.py: the loss sums differ at {shape}: eager {eager_loss}, rcond {our_loss}")
        e, o = statistics.median(eager), statistics.median(ours)
        print(f"{shape:>18} {e:>7.3f} ({min(eager):.3f}) {o:>7.3f} ({min(ours):.3f}) {e / o:>13.2f}x "
              f"{eager_loss:>14.2f} / {our_loss:.2f}")
    print("ratio: median eager seconds / median rcond seconds (above 1: rcond faster)")


if __name__ == "__main__":
    main()
