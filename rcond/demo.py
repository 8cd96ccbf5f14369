"""``rcond demo``: the whole flow on the embedded toy world, in one command.

Steps, each reading what the previous one wrote (all under ``--out``, default ``demo/``, which
appears only when the demo has finished):

1. ``world/``    the seeded toy world: made-up product and film reviews whose gold reward is
                 VADER's compound score of the review text;
2. ``corpus/``   the reviews as a conditioned corpus (10 quantile RTG bins, 5% unconditional),
                 with a byte-level BPE trained on the world;
3. ``run/``      a tiny Llama-style model trained from scratch on the corpus;
4. ``samples/``  reviews sampled for held-out prompts at every level in ``on`` mode, in ``off``
                 mode, and with classifier-free guidance, each scored by VADER;
5. ``report.md`` calibration (requested level vs achieved reward), loss curves, score
                 histograms, diversity and examples, with the PNG plots beside it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .atomic import OutputKind


@dataclass
class DemoSize:
    reviews: int
    vocab: int
    block_size: int
    steps: int
    batch_size: int
    prompts: int  # held-out prompts
    n: int  # samples per prompt and level
    guided_n: int  # samples per prompt and level with guidance
    max_new_tokens: int
    lr: float = 2e-3
    model: str = "tiny"


FULL = DemoSize(reviews=20000, vocab=4096, block_size=256, steps=300, batch_size=16, prompts=16, n=4, guided_n=2,
                max_new_tokens=72)
QUICK = DemoSize(reviews=20000, vocab=2048, block_size=128, steps=300, batch_size=32, prompts=8, n=3, guided_n=1,
                 max_new_tokens=48, lr=3e-3, model="micro")
GUIDANCE = 2.0
DEMO_MARKERS = ("report.md", "corpus/", "run/", "samples/")


def demo_kind() -> OutputKind:
    """What an earlier demo leaves (its steps' folders, the report's files beside them), so that
    re-running it replaces that output with no flag. Built on call: rcond.report loads matplotlib."""
    from .report import REPORT

    return OutputKind("an rcond demo", DEMO_MARKERS, extras=("world",) + REPORT.extras)


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("demo", help="the whole flow on the embedded toy world",
                       description=__doc__, formatter_class=formatter,
                       epilog="examples:\n  rcond demo\n  rcond demo --out /tmp/demo --quick")
    p.add_argument("--out", default="demo", help="output directory; an earlier demo's output there is replaced, "
                                                 "any other non-empty folder is refused")
    p.add_argument("--quick", action="store_true",
                   help="a fast look at the pipeline (micro model, ~1.5-2.5 min on 2 cores); at that size the model "
                        "is only weakly steerable (Spearman rho 0.53-0.62 measured) — the full demo reaches 0.98")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(a) -> int:
    from .atomic import atomic_dir

    size = QUICK if a.quick else FULL
    t0 = time.perf_counter()
    with atomic_dir(a.out, overwrite=True, kind=demo_kind()) as tmp:
        result = run_demo(tmp, size, seed=a.seed, progress=not a.no_progress, shown=Path(a.out))
    report = Path(a.out) / "report.md"
    print(f"demo finished in {time.perf_counter() - t0:.0f} s: Spearman rho (level vs achieved reward, over "
          f"levels) = {result['spearman_levels']:.2f}\nreport: {report}")
    return 0


def run_demo(out: Path, size: DemoSize, *, seed: int = 0, progress: bool = True, shown: Path | None = None) -> dict:
    """Run every step into ``out``; returns the headline numbers (also in ``metrics.json``). ``shown``:
    the folder the caller renames ``out`` to once it is complete, which is what the printed summaries
    name (default ``out``)."""
    from .cli import format_preprocess_summary
    from .corpus import PackOptions, build, train_tokenizer
    from .sources import SourceReader
    from .toyworld import generate

    timings = {}
    t = time.perf_counter()
    _step(1, f"generating the toy world (seed {seed}, {size.reviews:,} reviews)")
    n_held = size.prompts
    paths = generate(out / "world", seed=seed, n_reviews=size.reviews + n_held, n_dialogs=1, n_text=1,
                     progress=progress)
    train_file, prompts = _hold_out(paths["reviews"], out / "world", n_held)
    timings["world"] = time.perf_counter() - t

    t = time.perf_counter()
    _step(2, "preprocessing the reviews into a conditioned corpus")
    reader = SourceReader([str(train_file)], "scored")
    tokenizer = train_tokenizer(reader.texts(), size.vocab, progress=progress)
    opts = PackOptions(block_size=size.block_size, seed=seed)
    scheme, summary = build(reader, out / "corpus", tokenizer, opts=opts, progress=progress)
    print(format_preprocess_summary((shown or out) / "corpus", scheme, summary, opts.block_size))
    timings["preprocess"] = time.perf_counter() - t

    t = time.perf_counter()
    _step(3, f"training the {size.model} model for {size.steps} steps on {_cpu_or_gpu()}")
    run_result, params = _train(out, size, seed, progress)
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    _step(4, f"sampling {size.n * n_held} reviews per level (10 levels, on and off) and "
             f"{size.guided_n * n_held} per level with guidance {GUIDANCE}, scoring with VADER")
    files = _sample(out, prompts, size, seed, progress)
    timings["sample"] = time.perf_counter() - t

    t = time.perf_counter()
    _step(5, "writing the report")
    from .report import write_report

    facts = {"model": f"{size.model} Llama-style, {params / 1e6:.2f}M parameters, trained from scratch",
             "corpus": f"{summary.records:,} toy-world reviews, {summary.tokens:,} tokens in rows of {size.block_size}",
             "training": f"{run_result.steps_done} steps of {size.batch_size} rows, "
                         f"{run_result.tokens:,.0f} trained tokens, {run_result.seconds:.0f} s",
             "held-out prompts": n_held, "device": _cpu_or_gpu(), "seed": seed,
             "gold reward": "VADER compound score of the sampled review (-1..1)",
             **{f"time: {k}": f"{v:.0f} s" for k, v in timings.items()}}
    report_dir = out / ".report"
    write_report(report_dir, scheme=scheme, on_samples=files["on"], off_samples=files["off"],
                 guided_samples=files["guided"], train_log=out / "run" / "log.jsonl", facts=facts,
                 title="rcond demo: steering a tiny model's review sentiment with reward-to-go tokens",
                 reward_label="VADER compound (-1..1)")
    for f in report_dir.iterdir():
        os.replace(f, out / f.name)
    report_dir.rmdir()
    from .metrics import calibration, read_samples

    cal = calibration(read_samples(files["on"]), scheme)
    return {"spearman_levels": cal.spearman_levels, "spearman_samples": cal.spearman_samples,
            "means": [lv.scores.mean for lv in cal.levels]}


def _step(i: int, what: str) -> None:
    print(f"[{i}/5] {what} ...", flush=True)


def _cpu_or_gpu() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"


def _hold_out(reviews: Path, world: Path, n: int) -> tuple[Path, list[str]]:
    """Split the last ``n`` reviews off as held-out prompts; the rest is the training file."""
    lines = reviews.read_text().splitlines(keepends=True)
    train_file = world / "reviews_train.jsonl"
    train_file.write_text("".join(lines[:-n]))
    prompts = [json.loads(line)["prompt"] for line in lines[-n:]]
    (world / "heldout_prompts.txt").write_text("".join(p + "\n" for p in prompts))
    return train_file, prompts


def _train(out: Path, size: DemoSize, seed: int, progress: bool):
    from . import modeling
    from .train import Stage, TrainConfig, train

    cfg = TrainConfig(stages=[Stage(corpora=[str(out / "corpus")], steps=size.steps, name="reviews")],
                      model=size.model, batch_size=size.batch_size, lr=size.lr, warmup=20, seed=seed)
    result = train(cfg, out / "run", progress=progress)
    if result.interrupted:  # Ctrl-C / SIGTERM: train checkpointed and stopped, with no model to sample
        raise KeyboardInterrupt
    model, _, _ = modeling.load_pretrained(out / "run" / "model")
    return result, sum(p.numel() for p in model.parameters())


def _sample(out: Path, prompts: list[str], size: DemoSize, seed: int, progress: bool) -> dict[str, Path]:
    from .sample import SamplingParams, conditions, load_sampler, write_jsonl_atomic
    from .scorers import get_scorer

    sampler = load_sampler(out / "run", device="auto")
    vader = get_scorer("vader")
    params = SamplingParams(max_new_tokens=size.max_new_tokens, seed=seed)
    jobs = {"on": (conditions(sampler.scheme, level="all"), size.n, None),
            "off": (conditions(sampler.scheme, mode="off"), size.n, None),
            "guided": (conditions(sampler.scheme, level="all"), size.guided_n, GUIDANCE)}
    files = {}
    for name, (conds, n, guidance) in jobs.items():
        samples = list(sampler.sample(prompts, conds, params, n=n, guidance=guidance, batch_size=64,
                                      progress=progress))
        scores = vader([s.text for s in samples])
        records = [dict(s.to_dict(), score=score) for s, score in zip(samples, scores)]
        files[name] = write_jsonl_atomic(out / "samples" / f"{name}.jsonl", records)
    return files

