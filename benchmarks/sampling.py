"""Sampling throughput: rcond's sampler vs plain ``model.generate``, and the cost of guidance.

Compared in one process, on the same model and the same left-padded prompts, at equal batch:

- **rcond**: ``rcond.sample.Sampler.generate`` (its KV-cached decode loop; control tokens banned);
- **generate**: transformers' ``model.generate(do_sample=True, temperature=1, top_k=0, top_p=1)``,
  plain: no logits processor beyond the one ``min_new_tokens`` adds;
- **guided**: rcond with classifier-free guidance (``--guidance``, default 1.5): every step is one
  forward of 2B rows, the conditioned prompts and their ``<|rlhf:off|>`` twins.

Every run generates exactly ``--max-new-tokens`` tokens per row: ``min_new_tokens`` equal to it
bans eos in both samplers (so rcond never drops finished rows here, and both do the same work).
Pure sampling at temperature 1 on both sides.

Model: an rcond preset (``tiny`` on CPU, ``small`` on CUDA by default) built by
``rcond.modeling.build_model`` with seed 0 for a word-level tokenizer of ``--vocab`` entries plus
the 12 control tokens; fp32. Prompts: ``<|rlhf:on|> <|rtg:5|>`` + random word ids, lengths
uniform in [L/2, 3L/2]. Methods are timed interleaved (the order rotates every repeat), after one
warm-up run each; reported are the median seconds per run, samples/s = B / median, and ratios as
the median over repeats of the per-repeat ratio, which cancels slow drifts of a shared machine.
Targets (DESIGN §9, issue 3): rcond >= 0.9x generate; guided <= 2.2x unguided time.

On CPU the default is one intra-op thread: the tiny model gains little from more, and on a shared
machine OpenMP threads spin-wait against other processes (seen here with 2 threads on 2 busy
cores: single runs 30x slower, at random, for every method alike), which makes timings meaningless.

    python benchmarks/sampling.py [--device auto|cpu|cuda] [--preset tiny|small] [--batch-sizes 1 8 32]
        [--max-new-tokens 64] [--prompt-len 16] [--vocab 4096] [--repeats 5] [--threads N] [--guidance 1.5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def word_tokenizer(vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<eos>": 0, **{f"w{i}": i + 1 for i in range(vocab - 1)}}
    backend = Tokenizer(models.WordLevel(words, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {cpu}, {torch.get_num_threads()} torch threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    ap.add_argument("--preset", default=None, help="rcond model preset (default: tiny on CPU, small on CUDA)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 8 32 (CPU), 1 16 64 (CUDA)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=16, help="mean prompt length L in tokens")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (0 = torch's default)")
    ap.add_argument("--guidance", type=float, default=1.5)
    a = ap.parse_args()

    import transformers

    from rcond.modeling import build_model
    from rcond.sample import Condition, Sampler, SamplingParams
    from rcond.tokens import ControlScheme

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error(f"--device {a.device}: no CUDA device is available")
    if a.threads and not cuda:
        torch.set_num_threads(a.threads)
    preset = a.preset or ("small" if cuda else "tiny")
    batch_sizes = a.batch_sizes or ([1, 16, 64] if cuda else [1, 8, 32])
    N = a.max_new_tokens

    tok = word_tokenizer(a.vocab)
    scheme = ControlScheme(num_bins=10, edges=[float(j) for j in range(9)])
    model = build_model(preset, tok, scheme, seed=0).to(device).eval()
    sampler = Sampler(model, tok, scheme)
    params = SamplingParams(max_new_tokens=N, min_new_tokens=N, temperature=1.0)
    n_params = sum(p.numel() for p in model.parameters())

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    print(f"device     {device_name(device)}")
    print(f"versions   torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model      rcond preset {preset!r}: {n_params / 1e6:.1f}M parameters, vocabulary {len(tok)}, "
          f"{model.config._attn_implementation} attention, {model.dtype}")
    print(f"work       {N} new tokens per row (eos banned until then in both), temperature 1, prompts "
          f"{a.prompt_len // 2}..{3 * a.prompt_len // 2} tokens + 2 control tokens; median of {a.repeats} "
          f"interleaved repeats")
    print(f"compared   rcond Sampler.generate vs model.generate at equal batch; guided = rcond with "
          f"guidance {a.guidance} (2B rows per forward)\n")
    header = (f"{'batch':>5}  {'rcond/s':>9}  {'generate/s':>10}  {'guided/s':>9}  "
              f"{'rcond/generate':>14}  {'guided cost':>11}")
    print(header + "\n" + "-" * len(header))

    g = torch.Generator().manual_seed(0)
    worst_speed, worst_cost = float("inf"), 0.0
    for B in batch_sizes:
        lengths = torch.randint(a.prompt_len // 2, 3 * a.prompt_len // 2 + 1, (B,), generator=g).tolist()
        prompts = [torch.randint(1, a.vocab, (n,), generator=g).tolist() for n in lengths]
        cond = [sampler.control_ids(Condition("on", 5)) + p for p in prompts]
        uncond = [sampler.control_ids(Condition("off")) + p for p in prompts]
        T = max(map(len, cond))
        ids = torch.tensor([[sampler.pad_id] * (T - len(r)) + r for r in cond], device=device)            # [B, T]
        mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in cond], device=device)           # [B, T]

        def rcond():
            out = sampler.generate(cond, params, generator=torch.Generator(device).manual_seed(0))
            assert all(len(r) == N for r, _ in out)

        def guided():
            out = sampler.generate(cond, params, uncond_rows=uncond, guidance=a.guidance,
                                   generator=torch.Generator(device).manual_seed(0))
            assert all(len(r) == N for r, _ in out)

        def generate():
            torch.manual_seed(0)
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                     top_p=1.0, max_new_tokens=N, min_new_tokens=N, pad_token_id=sampler.pad_id)
            assert out.shape == (B, T + N)

        methods = [rcond, generate, guided]
        times: dict[str, list[float]] = {f.__name__: [] for f in methods}
        for f in methods:
            f()
        for r in range(a.repeats):
            for f in methods[r % 3:] + methods[:r % 3]:
                sync()
                t0 = time.perf_counter()
                f()
                sync()
                times[f.__name__].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        speed = statistics.median(gen / rc for gen, rc in zip(times["generate"], times["rcond"]))
        cost = statistics.median(gd / rc for gd, rc in zip(times["guided"], times["rcond"]))
        worst_speed, worst_cost = min(worst_speed, speed), max(worst_cost, cost)
        print(f"{B:>5}  {B / med['rcond']:>9.2f}  {B / med['generate']:>10.2f}  {B / med['guided']:>9.2f}  "
              f"{speed:>13.2f}x  {cost:>10.2f}x")
    print(f"\nrcond vs generate (samples/s ratio, worst batch): {worst_speed:.2f}x   target >= 0.9x: "
          f"{'met' if worst_speed >= 0.9 else 'NOT met'}")
    print(f"guided vs unguided (time ratio, worst batch):     {worst_cost:.2f}x   target <= 2.2x: "
          f"{'met' if worst_cost <= 2.2 else 'NOT met'}")


if __name__ == "__main__":
    main()
