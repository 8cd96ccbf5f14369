"""Training throughput: `rcond train` vs TRL's `SFTTrainer` on the same model, data and tokens per step.

Data: toy-world reviews (``scored`` format) preprocessed by rcond (``rcond.corpus.build``) into a
corpus of rows of ``T`` tokens. TRL gets the same conditioned token streams: every document piece
of the corpus (a segment of a row: mode token, RTG token, prompt, response, eos) becomes one
pre-tokenized example whose ``labels`` are its tokens where rcond's loss weight is 1 and -100
elsewhere, so both train on the same tokens with the same loss mask.

Model: the same rcond preset (``tiny`` on CPU, ``small`` on CUDA by default) built with the same
seed by ``rcond.modeling.build_model`` for every run; fp32 weights, bf16 autocast on CUDA. Every
run: AdamW (betas 0.9/0.95, weight decay 0.1, clip 1.0; fused on CUDA), linear warmup then cosine
to 0.1 x lr, no evaluation, no checkpoint inside the timed window, each run in a fresh process.

Runs (``B`` rows of ``T`` tokens per optimizer step for rcond):

- **rcond**: ``rcond.train.train`` with ``batch_size=B``; per-step seconds from its log
  (batch assembly, forward, loss, backward, optimizer step).
- **trl-padfree**: ``SFTConfig(packing=True, packing_strategy="bfd")`` (which turns on TRL's
  padding-free collator: the ``B`` packed sequences of a batch are flattened to one row with
  ``position_ids`` and ``cu_seq_lens``), ``per_device_train_batch_size=B``.
- **trl-padfree-accum**: the same packing with one packed sequence per micro-batch and ``B``
  accumulation steps; run only when TRL's attention is not flash-attention. With sdpa/eager the
  flattened row of ``B*T`` tokens gets one block-diagonal ``[B*T, B*T]`` mask (TRL documents
  padding-free for flash-attention only), i.e. ``B`` times rcond's attention work; this run
  shows TRL's padding-free figure without that penalty.
- **trl-padded**: no packing, examples padded to the longest in the batch, the per-device batch
  chosen so that its real tokens per step match rcond's (``B*T*fill / mean document length``).

TRL is left at its defaults otherwise (its chunked fused LM head, entropy and token-accuracy
metrics), except ``gradient_checkpointing=False`` (TRL's default is True; rcond does not
recompute), ``bf16`` only on CUDA and ``logging_strategy="no"``. TRL step seconds are the
intervals between ``on_step_end`` callbacks (data loading included, synchronised on CUDA).

Reported per run: rows per step, slots per step (tokens the model computes, padding included),
real (non-pad) tokens per step, trained tokens per step, the median per-step seconds after
``--warmup`` steps, and real tokens/s = mean real tokens per step / median step seconds (rcond's
real tokens per step are ``B*T`` times the corpus fill). Ratios: rcond / the faster TRL
padding-free run and rcond / trl-padded. Target on GPU (DESIGN §9): rcond >= 1.3x TRL padding-free.

TRL is imported from wherever ``PYTHONPATH`` finds it; when it is missing or fails to import the
TRL runs are skipped, said so, and rcond's own figure is still reported. A TRL run that fails is
reported with its error, and the others still run.

    PYTHONPATH=/tmp/trlsite python benchmarks/train_throughput.py [--device auto|cpu|cuda]
        [--preset tiny|small] [--block-size T] [--batch-size B] [--steps N] [--warmup W]
        [--repeats R] [--records N] [--tokenizer train:8192|PATH_OR_ID] [--trl-attn auto|sdpa|...]
        [--threads N]

On a CPU shared with other jobs, ``--threads 1`` keeps the step times steady (several OpenMP
threads per process on oversubscribed cores make them swing by 10x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LR, MIN_LR_RATIO, WEIGHT_DECAY, BETAS, CLIP = 1e-3, 0.1, 0.1, (0.9, 0.95), 1.0


# ---------------------------------------------------------------------------- data
def prepare(work: Path, a: argparse.Namespace) -> dict:
    """Toy-world reviews -> rcond corpus (rows of T) -> the same document pieces as a TRL dataset."""
    import numpy as np
    import pyarrow as pa

    from rcond.corpus import PackOptions, build, load, resolve_tokenizer
    from rcond.sources import SourceReader
    from rcond.toyworld import generate

    paths = generate(work / "world", seed=a.seed, n_reviews=a.records, n_dialogs=1, n_text=1, progress=False)
    reader = SourceReader([str(paths["reviews"])], "scored")
    tokenizer = resolve_tokenizer(a.tokenizer, reader)
    corpus = work / "corpus"
    _, summary = build(reader, corpus, tokenizer, opts=PackOptions(block_size=a.block_size, seed=a.seed),
                       progress=False)
    rows, _, _ = load(corpus)
    rows = rows.with_format("numpy")
    ids_all, labels_all = [], []
    for start in range(0, len(rows), 512):
        chunk = rows[start:start + 512]
        for ids, seg, lw in zip(chunk["input_ids"], chunk["segment_ids"], chunk["loss_weight"]):
            for s in range(int(seg.max()) + 1):
                at = np.flatnonzero(seg == s)
                piece, w = ids[at], lw[at]
                labels = np.full(len(piece), -100, dtype=np.int64)
                trained = np.flatnonzero(w[:-1] > 0) + 1  # w[i] weighs the prediction of piece[i + 1]
                labels[trained] = piece[trained]
                ids_all.append(piece.tolist())
                labels_all.append(labels.tolist())
    # Written with pyarrow and opened with Dataset.from_file, the way rcond.corpus.load opens rows:
    # an in-memory datasets.Dataset is fingerprinted by pickling its table, which failed on one
    # Python 3.12 image (dill could not pickle pyarrow 26's MonthDayNano type).
    table = pa.table({"input_ids": pa.array(ids_all, pa.list_(pa.int64())),
                      "labels": pa.array(labels_all, pa.list_(pa.int64()))})
    with pa.OSFile(str(work / "docs.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    lengths = [len(x) for x in ids_all]
    trained = sum(sum(1 for t in lab if t != -100) for lab in labels_all)
    if trained != round(summary.trained_tokens) or sum(lengths) != summary.tokens:
        raise AssertionError(f"TRL documents ({sum(lengths)} tokens, {trained} trained) differ from the corpus "
                             f"({summary.tokens} tokens, {summary.trained_tokens:.0f} trained)")
    return {"corpus": str(corpus), "docs": str(work / "docs.arrow"), "rows": summary.rows, "pieces": len(lengths),
            "tokens": summary.tokens, "fill": summary.efficiency(a.block_size),
            "mean_doc": sum(lengths) / len(lengths), "vocab": len(tokenizer)}


# ---------------------------------------------------------------------------- children (fresh processes)
def _schedule(spec: dict) -> tuple[int, int]:
    return spec["warmup"] + spec["steps"], spec["warmup"]


def _threads(spec: dict) -> None:
    if spec["threads"]:
        import torch

        torch.set_num_threads(spec["threads"])


def child_rcond(spec: dict) -> dict:
    from rcond.train import Stage, TrainConfig, train

    _threads(spec)
    total, warm = _schedule(spec)
    cfg = TrainConfig(stages=[Stage(corpora=[spec["corpus"]], steps=total, name="bench")], model=spec["preset"],
                      batch_size=spec["batch"], grad_accum=1, lr=LR, min_lr_ratio=MIN_LR_RATIO, warmup=warm,
                      weight_decay=WEIGHT_DECAY, beta1=BETAS[0], beta2=BETAS[1], clip=CLIP, seed=spec["seed"],
                      device=spec["device"])
    result = train(cfg, Path(spec["out"]), progress=False)
    slots = spec["batch"] * spec["block_size"]
    return {"seconds": [r["seconds"] for r in result.log], "slots": [slots] * len(result.log),
            "real": [slots * spec["fill"]] * len(result.log),
            "trained": [r["trained_tokens"] for r in result.log], "rows": spec["batch"], "attn": spec["rcond_attn"]}


def child_trl(spec: dict) -> dict:
    import time

    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from rcond.corpus import load
    from rcond.modeling import build_model

    _threads(spec)
    cuda = spec["device"] == "cuda"
    _, scheme, tokenizer = load(spec["corpus"])
    model = build_model(spec["preset"], tokenizer, scheme, seed=spec["seed"], max_position_embeddings=spec["block_size"],
                        attn_implementation=spec["trl_attn"])
    total, warm = _schedule(spec)
    packing = spec["mode"] != "padded"
    args = SFTConfig(
        output_dir=spec["out"], max_steps=total, per_device_train_batch_size=spec["micro_batch"],
        gradient_accumulation_steps=spec["accum"], learning_rate=LR, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": MIN_LR_RATIO}, warmup_steps=warm, weight_decay=WEIGHT_DECAY,
        adam_beta1=BETAS[0], adam_beta2=BETAS[1], max_grad_norm=CLIP,
        optim="adamw_torch_fused" if cuda else "adamw_torch", bf16=cuda, use_cpu=not cuda,
        activation_checkpointing=False, max_length=spec["block_size"], packing=packing,
        packing_strategy="bfd", padding_free=packing, logging_strategy="no", save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, seed=spec["seed"], data_seed=spec["seed"], dataloader_num_workers=0)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_train_begin(self, *_, **__):
            sync()
            self.marks.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            sync()
            self.marks.append(time.perf_counter())

    class CountingSFTTrainer(SFTTrainer):
        """Records, per micro-batch, the real (non-pad) tokens, the slots and the trained tokens."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.micro: list[tuple[int, int, int]] = []

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            slots = inputs["input_ids"].numel()
            real = int(mask.sum()) if mask is not None else slots
            self.micro.append((real, slots, int((inputs["labels"][:, 1:] != -100).sum())))
            return super().training_step(model, inputs, num_items_in_batch)

    clock = StepClock()
    trainer = CountingSFTTrainer(model=model, args=args, train_dataset=Dataset.from_file(spec["docs"]),
                                 processing_class=tokenizer, callbacks=[clock])
    if trainer.args.activation_checkpointing:
        raise AssertionError("TRL run would recompute activations; rcond does not")
    trainer.train()
    per_step = [trainer.micro[i:i + spec["accum"]] for i in range(0, len(trainer.micro), spec["accum"])]
    return {"seconds": [b - a for a, b in zip(clock.marks, clock.marks[1:])],
            "real": [sum(m[0] for m in s) for s in per_step], "slots": [sum(m[1] for m in s) for s in per_step],
            "trained": [sum(m[2] for m in s) for s in per_step], "rows": spec["micro_batch"] * spec["accum"],
            "attn": model.config._attn_implementation, "trl": trl.__version__}


def run_child(kind: str, spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, f"child_{kind}", json.dumps(spec)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- parent
def trl_status() -> tuple[str | None, str]:
    """(TRL version or None, a line saying what was found), checked in a fresh process."""
    probe = subprocess.run([sys.executable, "-c", "import trl, accelerate; from trl import SFTConfig, SFTTrainer; "
                            "print(trl.__version__, accelerate.__version__)"], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"TRL not importable ({last}); TRL runs skipped"
    trl_v, acc_v = probe.stdout.split()
    return trl_v, f"trl {trl_v}, accelerate {acc_v}"


def summarise(runs: list[dict], warmup: int) -> dict:
    """Per run: drop warmup steps, median step seconds; keep the run with the lowest median."""
    best = None
    for r in runs:
        if len(r["seconds"]) != len(r["real"]):
            raise AssertionError(f"{len(r['seconds'])} step times for {len(r['real'])} steps")
        timed = slice(warmup, None)
        seconds = r["seconds"][timed]
        s = {"median_s": statistics.median(seconds), "real": statistics.fmean(r["real"][timed]),
             "slots": statistics.fmean(r["slots"][timed]), "trained": statistics.fmean(r["trained"][timed]),
             "rows": r["rows"], "attn": r["attn"], "steps": len(seconds),
             "spread": (min(seconds), max(seconds))}
        s["tok_s"] = s["real"] / s["median_s"]
        if best is None or s["median_s"] < best["median_s"]:
            best = s
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--preset", default=None, choices=("tiny", "small"), help="default: tiny on CPU, small on CUDA")
    ap.add_argument("--block-size", type=int, default=None, help="T; default 256 on CPU, 1024 on CUDA")
    ap.add_argument("--batch-size", type=int, default=8, help="B: rcond rows per step, TRL packed sequences per step")
    ap.add_argument("--steps", type=int, default=None, help="timed steps; default 8 on CPU, 30 on CUDA")
    ap.add_argument("--warmup", type=int, default=None, help="untimed first steps; default 3 on CPU, 10 on CUDA")
    ap.add_argument("--repeats", type=int, default=1, help="runs per configuration, interleaved; the best is kept")
    ap.add_argument("--records", type=int, default=None, help="toy-world reviews; default: enough for one epoch")
    ap.add_argument("--tokenizer", default="train:8192", help="train:VOCAB (byte-level BPE on the reviews) or a "
                                                              "tokenizer path / hub id")
    ap.add_argument("--trl-attn", default="auto", help="TRL's attention implementation; auto: flash_attention_2 on "
                                                       "CUDA when flash-attn is installed, else sdpa (rcond's own)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads per run; 0: torch's default")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch
    import transformers
    from transformers.utils import is_flash_attn_2_available

    cuda = torch.cuda.is_available() if a.device == "auto" else a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    device = "cuda" if cuda else "cpu"
    a.preset = a.preset or ("small" if cuda else "tiny")
    a.block_size = a.block_size or (1024 if cuda else 256)
    a.steps = a.steps or (30 if cuda else 8)
    a.warmup = a.warmup if a.warmup is not None else (10 if cuda else 3)
    trl_attn = a.trl_attn if a.trl_attn != "auto" else (
        "flash_attention_2" if cuda and is_flash_attn_2_available() else "sdpa")
    # about 45 tokens per review: enough documents that no run repeats data
    a.records = a.records or max(2000, (a.steps + a.warmup) * a.batch_size * a.block_size // 40)
    trl_version, trl_line = trl_status()

    with tempfile.TemporaryDirectory(prefix="rcond-train-bench-") as tmp:
        work = Path(tmp)
        data = prepare(work, a)
        from rcond.corpus import load
        from rcond.modeling import build_model

        _, scheme, tokenizer = load(data["corpus"])
        model = build_model(a.preset, tokenizer, scheme, seed=a.seed, max_position_embeddings=a.block_size)
        params = sum(p.numel() for p in model.parameters())
        rcond_attn = model.config._attn_implementation
        del model
        base = {"corpus": data["corpus"], "docs": data["docs"], "preset": a.preset, "block_size": a.block_size,
                "batch": a.batch_size, "steps": a.steps, "warmup": a.warmup, "seed": a.seed, "device": device,
                "fill": data["fill"], "threads": a.threads, "rcond_attn": rcond_attn, "trl_attn": trl_attn}
        pad_batch = max(1, round(a.batch_size * a.block_size * data["fill"] / data["mean_doc"]))
        configs = {"rcond": ("rcond", {})}
        if trl_version is not None:
            configs["trl-padfree"] = ("trl", {"mode": "padfree", "micro_batch": a.batch_size, "accum": 1})
            if "flash" not in trl_attn:
                configs["trl-padfree-accum"] = ("trl", {"mode": "padfree", "micro_batch": 1, "accum": a.batch_size})
            configs["trl-padded"] = ("trl", {"mode": "padded", "micro_batch": pad_batch, "accum": 1})
        runs = {name: [] for name in configs}
        failed: dict[str, str] = {}  # a TRL run that fails is reported, and rcond's figure still stands
        for rep in range(a.repeats):
            for name, (kind, extra) in configs.items():
                if name in failed:
                    continue
                spec = dict(base, **extra, out=str(work / f"{name}-{rep}"))
                try:
                    runs[name].append(run_child(kind, spec))
                except RuntimeError as e:
                    if kind == "rcond":
                        raise
                    failed[name] = (str(e).strip().splitlines() or ["no output"])[-1]
                    print(f"  FAILED: {name}: {failed[name]}", file=sys.stderr, flush=True)
                    continue
                print(f"  done: {name} (repeat {rep + 1}/{a.repeats})", file=sys.stderr, flush=True)
        results = {name: summarise(r, a.warmup) for name, r in runs.items() if name not in failed}

    where = torch.cuda.get_device_name() if cuda else (
        f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {a.threads or torch.get_num_threads()} "
        f"torch threads")
    print(f"device: {where}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {trl_line}, "
          f"python {platform.python_version()}")
    print(f"model: rcond preset {a.preset!r}, {params / 1e6:.2f}M parameters (vocabulary {data['vocab']}), "
          f"{'bf16 autocast' if cuda else 'fp32'}; T = {a.block_size}, B = {a.batch_size} rows/step")
    print(f"data: {a.records:,} toy-world reviews -> {data['pieces']:,} documents, {data['tokens']:,} tokens, "
          f"mean {data['mean_doc']:.1f} tokens; rcond corpus {data['rows']:,} rows, fill {data['fill']:.1%}")
    print(f"timing: median of {a.steps} steps after {a.warmup} warmup steps, best of {a.repeats} run(s) per "
          f"configuration")
    header = (f"{'run':<18} {'attention':<18} {'rows/step':>9} {'slots/step':>10} {'real tok/step':>13} "
              f"{'trained/step':>12} {'median s':>9} {'min-max s':>13} {'real tok/s':>11}")
    print(header)
    for name, r in results.items():
        print(f"{name:<18} {r['attn']:<18} {r['rows']:>9} {r['slots']:>10,.0f} {r['real']:>13,.0f} "
              f"{r['trained']:>12,.0f} {r['median_s']:>9.3f} {r['spread'][0]:>6.3f}-{r['spread'][1]:<6.3f} "
              f"{r['tok_s']:>11,.0f}")
    for name, why in failed.items():
        print(f"{name}: FAILED, no figure ({why})")
    ours = results["rcond"]["tok_s"]
    if trl_version is None:
        print(f"rcond: {ours:,.0f} real tokens/s; {trl_line}")
        return
    padfree = [n for n in results if n.startswith("trl-padfree")]
    if padfree:
        best = max(padfree, key=lambda n: results[n]["tok_s"])
        print(f"rcond / TRL padding-free ({best}) = {ours / results[best]['tok_s']:.2f}x"
              f"{' (target on GPU >= 1.3x)' if cuda else ''}")
    if "trl-padded" in results:
        print(f"rcond / TRL padded = {ours / results['trl-padded']['tok_s']:.2f}x")
    if padfree and "flash" not in trl_attn:
        print(f"note: TRL padding-free ran on {trl_attn}, not flash-attention: trl-padfree attends over one "
              f"flattened row of B*T tokens with a block-diagonal mask (B times rcond's attention work)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("child_"):
        print(json.dumps(globals()[sys.argv[1]](json.loads(sys.argv[2]))))
    else:
        main()
