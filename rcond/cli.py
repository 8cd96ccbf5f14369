"""The ``rcond`` command: one subcommand per stage of the flow (DESIGN §2b).

Every subcommand prints a one-screen summary and exits 0 only on success. Known input errors
print ``error: <file:line: what was expected>`` and exit 2; Ctrl-C exits 130. Outputs are
written atomically, so a failed or interrupted run leaves nothing half-written behind.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shlex
import sys
import textwrap
from pathlib import Path

EXIT_FAILED = 1  # the machine could not do it: a disk full, a folder it may not write to
EXIT_BAD_INPUT = 2
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO}  # said in one line, no traceback
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away


USER_ERRORS = {  # module -> the exceptions it raises for bad input, which end a command with "error: ..."
    "rcond.atomic": ("OutputExistsError", "OutputPathError"), "rcond.packing": ("CorpusError",),
    "rcond.modeling": ("ModelDirError", "ModelSpecError"), "rcond.scorers": ("ScorerError",),
    "rcond.sources": ("SourceError",), "rcond.sample": ("SampleError",), "rcond.tokenizer": ("TokenizerError",),
    "rcond.tokens": ("SchemeError",), "rcond.toyworld": ("ToyWorldError",), "rcond.train": ("TrainError",),
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """The classes of :data:`USER_ERRORS` whose modules the command has imported: only those can
    have been raised, and importing the others (``rcond.train`` imports torch, ~5 s) would slow
    every error exit of ``rcond preprocess``."""
    return tuple(getattr(sys.modules[m], name) for m, names in USER_ERRORS.items() if m in sys.modules
                 for name in names)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless it has none to show (None, a flag) or its help names it."""

    def add_argument(self, action: argparse.Action) -> None:
        """As argparse's, but a command's subcommands are measured at the indent they are shown at
        (argparse measures them one indent short, so the longest, ``preprocess``, wrapped its help)."""
        super().add_argument(action)
        if action.help is not argparse.SUPPRESS:
            for sub in self._iter_indented_subactions(action):
                width = len(self._format_action_invocation(sub)) + self._current_indent
                self._action_max_length = max(self._action_max_length, width)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if nothing or "default" in text:
            return text
        return super()._get_help_string(action)


# ---------------------------------------------------------------------------- preprocess
PREPROCESS_EXAMPLES = """\
examples:
  rcond preprocess hh.jsonl.gz --format pairs --bins 2 --out corpora/hh --tokenizer train:8192 --on-error skip
  rcond preprocess Anthropic/hh-rlhf/harmless-base:test --format pairs --bins 2 --out corpora/hh-hub
  rcond preprocess reviews.jsonl --format scored --score-with vader --score-workers 4 --out corpora/reviews --tokenizer gpt2
  rcond preprocess dialogs.jsonl --format dialog --bins 5 --binning uniform --out corpora/dlg
  rcond preprocess notes.txt --format text --out corpora/plain --tokenizer corpora/dlg/tokenizer
"""


def add_preprocess(sub) -> None:
    p = sub.add_parser("preprocess", help="input data -> conditioned, packed corpus",
                       description="Read preference pairs, scored responses, dialogs or plain text; insert "
                                   "control tokens (mode, reward-to-go bins); pack into fixed-size rows.",
                       epilog=PREPROCESS_EXAMPLES, formatter_class=_Formatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="files (.jsonl/.json/.csv/.txt, optionally .gz/.bz2/.xz/.zst; .parquet; .arrow; .zip or folder of .txt), "
                        "datasets saved by datasets' save_to_disk (DIR, or DIR:SPLIT of a DatasetDict), or hub "
                        "datasets: OWNER/NAME[@REVISION][/FOLDER...][:SPLIT | :CONFIG:SPLIT] (split: train)")
    p.add_argument("--format", required=True, choices=["pairs", "scored", "dialog", "text"],
                   help="what one input record is (README: Input formats)")
    p.add_argument("--out", required=True, help="output corpus directory")
    p.add_argument("--tokenizer", default="train:8192", help="PATH_OR_ID, or train:VOCAB to train a byte-level BPE")
    p.add_argument("--bins", type=int, default=None,
                   help="number of reward-to-go bins K (default: 10, or as many as --binning edges: make)")
    p.add_argument("--binning", default="quantile", help="quantile | uniform | edges:a,b,...")
    p.add_argument("--block-size", type=int, default=1024, help="tokens per packed row")
    p.add_argument("--uncond-fraction", type=float, default=0.05, help="share of records emitted unconditioned (off)")
    p.add_argument("--score-with", default=None,
                   help="vader | module:function | file.py:function — reward from a scorer, in place of the "
                        "input's reward or score fields (those are not read)")
    p.add_argument("--score-workers", type=int, default=1, metavar="N",
                   help="processes that run the --score-with scorer side by side (each builds its own copy: keep 1 "
                        "for a scorer that loads a large model)")
    p.add_argument("--score-batch", type=int, default=None, metavar="N",
                   help="texts per call of the --score-with scorer (default: 256)")
    p.add_argument("--gamma", type=float, default=1.0, help="discount of reward-to-go across dialog turns, in [0, 1]")
    p.add_argument("--train-on-prompt", action="store_true", help="give prompt / user tokens loss weight 1")
    p.add_argument("--truncate", action="store_true", help="truncate long documents instead of splitting them (a document cut before its "
                   "first trained token is left out)")
    p.add_argument("--on-error", default="fail", choices=["fail", "skip"],
                   help="fail: stop at the first bad record; skip: skip bad records, name five in the summary and "
                        "all in skipped.txt in the corpus")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier corpus")
    p.add_argument("--seed", type=int, default=0, help="seed of the unconditional-fraction draw")
    p.add_argument("--workers", type=int, default=1,
                   help="processes that encode and condition batches (the corpus is the same for any number); "
                        "starting them costs a few tenths of a second, so use them for large corpora on many cores")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    for name in ("prompt", "response", "reward", "chosen", "rejected", "chosen_score", "rejected_score",
                 "turns", "text"):
        p.add_argument(f"--{name.replace('_', '-')}-field", default=name, metavar="NAME",
                       help=f"input field holding the {name.replace('_', ' ')}")
    p.set_defaults(run=run_preprocess)


def run_preprocess(a) -> int:
    from .atomic import check_output
    from .corpus import CORPUS, PackOptions, build, check_options, resolve_tokenizer, trained_vocab_size
    from .sources import FieldNames, SourceReader, check_reading
    from .tokens import resolve_bins

    opts = PackOptions(block_size=a.block_size, uncond_fraction=a.uncond_fraction, train_on_prompt=a.train_on_prompt,
                       truncate=a.truncate, seed=a.seed, workers=a.workers)
    check_options(opts)
    num_bins = resolve_bins(a.bins, a.binning)
    trained_vocab_size(a.tokenizer)
    check_output(a.out, a.overwrite, keep=tuple(a.inputs), kind=CORPUS)  # before the input is read or a tokenizer trained
    score_batch = check_scoring(a.score_with, a.score_workers, a.score_batch)
    fields = FieldNames(**{k: getattr(a, f"{k}_field") for k in FieldNames.__dataclass_fields__})
    check_reading(a.inputs, a.format, fields, scored=bool(a.score_with), gamma=a.gamma, on_error=a.on_error,
                  score_batch=score_batch)  # before a scorer is built (a model, in --score-workers processes)
    with _scorer(a.score_with, a.score_workers) as scorer:
        reader = SourceReader(a.inputs, a.format, fields=fields, scorer=scorer, gamma=a.gamma, on_error=a.on_error,
                              score_batch=score_batch)
        tokenizer = resolve_tokenizer(a.tokenizer, reader, progress=not a.no_progress)
        scheme, s = build(reader, a.out, tokenizer, num_bins=num_bins, binning=a.binning, opts=opts,
                          overwrite=a.overwrite, progress=not a.no_progress)
    print(format_preprocess_summary(a.out, scheme, s, opts.block_size, pairs=a.format == "pairs"))
    if a.format == "scored" and a.prompt_field != "prompt" and not s.prompts:
        print(f"  note: no record has a {a.prompt_field!r} field with text (--prompt-field): every response was read "
              f"without a prompt; check the field's name")
    return 0


def check_scoring(spec: str | None, workers: int, batch: int | None) -> int:
    """``--score-workers`` (at least 1, at most 4 per core) and ``--score-batch`` (at least 1), each
    only with a ``--score-with`` scorer to run, checked before any worker starts; the batch size."""
    from .parallel import too_many_processes
    from .sources import SourceError

    if workers < 1:
        raise SourceError(f"--score-workers must be at least 1, got {workers}")
    if batch is not None and batch < 1:
        raise SourceError(f"--score-batch must be at least 1, got {batch}")
    for flag, given in (("--score-workers", workers > 1), ("--score-batch", batch is not None)):
        if given and not spec:
            raise SourceError(f"{flag} sets how the scorer of --score-with runs; give --score-with too")
    if too_many := too_many_processes("--score-workers", workers):
        raise SourceError(f"{too_many}; beyond one per core the workers only wait")
    return 256 if batch is None else batch


def _scorer(spec: str | None, workers: int):
    """A context giving the scorer of ``--score-with`` to read with (None without one): built here,
    or run in ``workers`` processes (the pool builds it once here too, to check the spec)."""
    if not spec:
        return contextlib.nullcontext(None)
    if workers < 2:
        from .scorers import get_scorer

        return contextlib.nullcontext(get_scorer(spec))
    from .scorer_pool import ScorerPool

    return ScorerPool(spec, workers)


def format_preprocess_summary(out, scheme, s, block_size: int, pairs: bool = False) -> str:
    """The summary a build prints; ``pairs``: its input rows were preference pairs, two records each."""
    lines = [f"corpus written to {out}",
             f"  records        {s.records:,}  ({s.on_docs:,} on, {s.off_docs:,} off"
             + (f"; the two sides of {s.records // 2:,} preference pairs" if pairs else "") + ")"
             + (f"; skipped {s.skipped:,} bad" + (" pairs" if pairs else "") if s.skipped else ""),
             f"  tokens         {s.tokens:,} in {s.rows:,} rows of {block_size}  "
             f"(packing efficiency {s.efficiency(block_size):.1%}; {s.trained_tokens:,.0f} trained)",
             f"  pieces         {s.pieces:,} from {s.documents:,} documents"
             + (f"; {s.truncated_tokens:,} tokens truncated" if s.truncated_tokens else "")
             + (f"; {s.untrained_pieces:,} left out ({s.untrained_tokens:,} tokens of prompt or user text "
                f"alone: nothing in them is trained)" if s.untrained_pieces else ""),
             f"  speed          {s.content_tokens / max(s.seconds, 1e-9):,.0f} tokens/s ({s.seconds:.1f} s)"]
    unscored = s.on_docs and not s.rewards  # preference pairs without scores: chosen top, rejected bottom bin
    if not s.on_docs:
        lines.append("  bins           none used: every record is 'off' mode, with no reward-to-go token")
    elif unscored and not scheme.binning.startswith("edges:"):
        lines.append(f"  bins ({scheme.binning} over [-1, 1]: the pairs carry no scores, so each chosen response "
                     f"takes the top bin and each rejected one the bottom bin)")
    elif s.cut_rewards and not scheme.binning.startswith("edges:"):
        lines.append(f"  bins ({scheme.binning}; fitted on {s.rewards - s.cut_rewards:,} rewards, those of the RTG "
                     f"tokens below and of the unconditional records, leaving out the {s.cut_rewards:,} whose RTG "
                     f"tokens or records were cut)")
    else:
        lines.append(f"  bins ({scheme.binning})")
    for k in range(scheme.num_bins if s.on_docs else 0):
        lo, hi = scheme.bin_range(k)
        lines.append(f"    {scheme.rtg_token(k):<12} [{lo:>9.4g}, {hi:<9.4g})  {scheme.counts[k]:>9,}")
    empty = sum(1 for c in scheme.counts if c == 0)
    if empty and unscored:
        lines.append(f"  note: {empty} of {scheme.num_bins} bins hold no reward-to-go token (pairs without scores "
                     f"fill only the top and bottom bins); nothing trains those levels. Use --bins 2, or give the "
                     f"pairs scores (chosen_score / rejected_score fields, or --score-with)")
    elif sum(1 for c in scheme.counts if c) == 1 and scheme.num_bins > 1 and scheme.binning in ("quantile", "uniform"):
        lines.append("  note: every reward-to-go token is in one bin: the rewards the edges were fitted on are all "
                     "the same, so the tokens tell the model nothing; check the reward field or the scorer")
    elif empty and any(scheme.counts):
        why, instead = {"quantile": ("rewards tie at the quantile edges, or there are too few of them",
                                     "fewer --bins, or --binning uniform / edges:..."),
                        "uniform": ("no reward falls in their equal-width ranges: the rewards are spread unevenly",
                                    "fewer --bins, or --binning quantile")
                        }.get(scheme.binning, ("no reward falls between their edges", "other edges, or --binning "
                                               "quantile"))
        lines.append(f"  note: {empty} of {scheme.num_bins} bins hold no reward-to-go token ({why}); nothing "
                     f"trains those levels. Use {instead}")
    if s.rewards and s.unscored_sides:
        lines.append(f"  note: {s.unscored_sides:,} pair sides carry no score beside {s.rewards:,} that do: the "
                     f"unscored take the top and bottom bins of the scale the scored set; give every pair scores, "
                     f"or none")
    if s.same_pairs:
        lines.append(f"  note: {s.same_pairs:,} preference pairs have the same chosen and rejected text: each trains "
                     f"that response at the level of both sides (no preference); drop them from the input, or give "
                     f"them equal scores")
    if s.split_prompts:
        lines.append(f"  note: {s.split_prompts:,} preference pairs split into different prompts for their two sides "
                     f"(the dialogues differ before their last '\\n\\nAssistant:' turn, or a response holds one): each "
                     f"side trains only what follows its own last Assistant turn; give such pairs a prompt field")
    if s.ignored_files:
        names = ", ".join(s.ignored_examples[:3]) + (", ..." if s.ignored_files > 3 else "")
        lines.append(f"  note: {s.ignored_files:,} file(s) in the input folders or archives are no .txt documents "
                     f"and were not read: {names}")
    for ex in s.skipped_examples[:5]:
        lines.append(f"  skipped: {ex}")
    if s.skipped > 5:
        lines.append(f"  ... and {s.skipped - 5:,} more skipped")
    if s.skipped:
        from .corpus import SKIPPED_FILE

        lines.append(f"  every skipped record, with why: {Path(out) / SKIPPED_FILE}")
    lines.append(f"  its rows as the model sees them: rcond show {shlex.quote(str(out))}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- train
TRAIN_EXAMPLES = """\
examples:
  rcond train --corpus corpora/reviews --model tiny --out runs/tiny --steps 300
  rcond train --corpus corpora/a --corpus corpora/b --weights 0.3 0.7 --model small --out runs/mix
  rcond train --config stages.toml --model tiny --out runs/staged
  rcond train --out runs/tiny --resume
  torchrun --nproc_per_node=2 -m rcond.cli train --corpus corpora/reviews --out runs/ddp

stages.toml:
  lr = 1e-3
  [[stage]]
  name = "sentiment"
  corpora = ["corpora/sentiment"]
  steps = 200
  [[stage]]
  name = "both, sentiment kept in the mix"
  corpora = ["corpora/sentiment", "corpora/helpful"]
  weights = [0.3, 0.7]
  steps = 200
"""


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model on conditioned corpora (stages, mixtures, resume)",
                       description="Next-token training on packed conditioned corpora with the fused packed "
                                   "loss; per-bin and per-mode losses logged to OUT/log.jsonl.",
                       epilog=TRAIN_EXAMPLES, formatter_class=_Formatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--corpus", action="append", metavar="DIR", help="corpus directory (repeat to mix)")
    src.add_argument("--config", metavar="STAGES.toml", help="stages file (see below)")
    p.add_argument("--weights", type=float, nargs="+", help="mixture weights of the --corpus list")
    p.add_argument("--model", default=None, help="micro | tiny | small | PATH_OR_HUB_ID (default tiny)")
    p.add_argument("--out", required=True, help="run directory: model/, checkpoint/, log.jsonl")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (with --corpus; default 200)")
    p.add_argument("--loss", default=None, choices=["auto", "torch", "triton"],
                   help="loss implementation (default auto: triton on CUDA, torch elsewhere)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    for name, typ, hlp in (("batch-size", int, "rows per micro-batch per process (default 8)"),
                           ("grad-accum", int, "micro-batches per optimizer step (default 1)"),
                           ("lr", float, "peak learning rate (default 1e-3)"),
                           ("warmup", int, "warmup steps (default 20)"),
                           ("weight-decay", float, "AdamW weight decay (default 0.1)"),
                           ("clip", float, "gradient-norm clip (default 1.0)"),
                           ("seed", int, "seed of model init and data order (default 0)"),
                           ("save-every", int, "checkpoint every N steps (default: end and interrupt only)"),
                           ("device", str, "auto | cpu | cuda[:N] (default auto)")):
        p.add_argument(f"--{name}", type=typ, default=None, help=hlp)
    p.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run_train)


def run_train(a) -> int:
    from .train import Stage, TrainConfig, TrainError, load_config_file, train

    overrides = {k: getattr(a, k) for k in ("model", "batch_size", "grad_accum", "lr", "warmup", "weight_decay",
                                            "clip", "seed", "save_every", "device", "loss")}
    overrides["trust_remote_code"] = a.trust_remote_code or None
    if a.resume:
        given = [k for k, v in overrides.items() if v is not None] + (["corpus"] if a.corpus else []) + \
                (["config"] if a.config else []) + (["steps"] if a.steps is not None else []) + \
                (["weights"] if a.weights else [])
        if given:
            raise TrainError(f"--resume continues with the run's saved settings; drop {', '.join('--' + g for g in given)}")
        cfg = None
    elif a.config:
        if a.steps is not None or a.weights:
            raise TrainError("--steps and --weights belong to the stages file when --config is given")
        cfg = load_config_file(a.config, overrides)
    elif a.corpus:
        stage = Stage.from_options(a.corpus, 200 if a.steps is None else a.steps, a.weights)
        cfg = TrainConfig(stages=[stage], **{k: v for k, v in overrides.items() if v is not None})
    else:
        raise TrainError("give --corpus DIR (repeatable), --config STAGES.toml, or --resume")
    r = train(cfg, a.out, resume=a.resume, progress=not a.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, one summary (rank 0's)
        return EXIT_INTERRUPTED if r.interrupted else 0
    if r.interrupted:
        print(f"interrupted at step {r.steps_done}; checkpoint saved in {Path(a.out) / 'checkpoint'}\n"
              f"continue with: rcond train --out {a.out} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"trained {r.steps_done} steps ({r.tokens:,.0f} trained tokens) in {r.seconds:.0f} s; final loss "
          f"{r.last_loss:.4f}\n  model       {Path(a.out) / 'model'}\n  log         {Path(a.out) / 'log.jsonl'}\n"
          f"  checkpoint  {Path(a.out) / 'checkpoint'} (optimizer and data state: what --resume continues from)")
    return 0


# ---------------------------------------------------------------------------- toyworld
def add_toyworld(sub) -> None:
    p = sub.add_parser("toyworld", help="generate the embedded synthetic corpus (reviews, dialogs, text)",
                       description="Seeded generator of made-up product and film reviews, customer dialogs and "
                                   "plain descriptions; rewards are VADER compound scores of the responses.",
                       epilog="example:\n  rcond toyworld --out toy --seed 0 --reviews 20000",
                       formatter_class=_Formatter)
    p.add_argument("--out", required=True, help="output folder: reviews.jsonl, dialogs.jsonl, text.jsonl, meta.json")
    p.add_argument("--seed", type=int, default=0, help="same seed, byte-identical files")
    p.add_argument("--reviews", type=int, default=20000, help="scored reviews (prompt, response, VADER reward)")
    p.add_argument("--dialogs", type=int, default=2000, help="multi-turn dialogs with a reward per assistant turn")
    p.add_argument("--texts", type=int, default=2000, help="plain descriptions (text format)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier toy world")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run_toyworld)


def run_toyworld(a) -> int:
    from .toyworld import check_counts, generate

    check_counts({"--seed": a.seed, "--reviews": a.reviews, "--dialogs": a.dialogs, "--texts": a.texts})
    paths = generate(a.out, seed=a.seed, n_reviews=a.reviews, n_dialogs=a.dialogs, n_text=a.texts,
                     progress=not a.no_progress, overwrite=a.overwrite)
    print(f"toy world written to {a.out}")
    for name, path in paths.items():
        print(f"  {name:<8} {path}")
    return 0


# ---------------------------------------------------------------------------- sample
def add_sample(sub) -> None:
    examples = """\
examples:
  rcond sample --model runs/tiny --level all --n 8 --prompts prompts.txt --out samples.jsonl --score-with vader
  rcond sample --model runs/tiny/model --reward 0.8 --prompts prompts.txt --out high.jsonl
  rcond sample --model runs/tiny --mode off --prompts prompts.jsonl --n 4 --out base.jsonl
  rcond sample --model runs/tiny --level 9 --guidance 1.5 --temperature 0.7 --top-p 0.9 --prompts p.txt --out g.jsonl
  rcond sample --model runs/hh --level all --prompts hh_rlhf_test.jsonl.gz --truncate-prompts --out hh.jsonl
  rcond sample --model runs/dlg --level all --prompts conversations.jsonl --out replies.jsonl

output: one JSON object per line with prompt, mode, level, reward (when --reward was given), guidance,
text, num_tokens, finished (ended with eos), score (with --score-with) and prompt_tokens_cut (when
--truncate-prompts cut the prompt).
"""
    p = sub.add_parser("sample", help="sample at chosen reward levels, on/off mode, with guidance",
                       description="Generate from a trained model conditioned on a reward level (<|rlhf:on|> "
                                   "<|rtg:k|> prompt; a dialog-trained model gets <|rlhf:on|> prompt <|rtg:k|>, "
                                   "as its corpus laid turns out) or unconditioned (<|rlhf:off|> prompt); "
                                   "control tokens are never generated. Guidance G samples from l_off + G * (l_on - l_off).",
                       epilog=examples, formatter_class=_Formatter)
    p.add_argument("--model", required=True, metavar="DIR", help="saved model, or a train --out directory holding model/")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--level", metavar="K|all", help="reward-to-go level 0..K-1, or all levels")
    cond.add_argument("--reward", type=float, metavar="X", help="raw reward, mapped to a level by the stored bin edges")
    p.add_argument("--mode", default="on", choices=["on", "off"], help="off: the unconditioned model, no level")
    p.add_argument("--guidance", type=float, default=None, metavar="G",
                   help="classifier-free guidance weight: 1 = the conditioned model, 0 = off mode, >1 = stronger "
                        "conditioning; None = no unconditioned branch")
    p.add_argument("--prompts", metavar="FILE", help=".txt (one prompt per line), or rows with a 'prompt' field, or "
                                                     "HH-RLHF pairs (the prompt of each 'chosen' dialogue), or "
                                                     "dialogs ('turns': a conversation ending with a user or system turn whole, "
                                                     "with an RTG token of the level before each assistant turn "
                                                     "for a dialog-trained model; else the turns before the first "
                                                     "assistant turn) "
                                                     "(.jsonl/.json/.csv/.parquet/.arrow, a saved dataset, a hub id); "
                                                     "None = one empty prompt (a note says when the model's corpus "
                                                     "mostly opened with prompts it never learned to write, or a "
                                                     ".txt's one-line prompts are unlike its multi-line ones)")
    p.add_argument("--truncate-prompts", action="store_true",
                   help="a prompt too long for the model's context beside --max-new-tokens keeps its last tokens "
                        "(the output's prompt_tokens_cut says how many it lost); without it such a prompt is refused")
    p.add_argument("--n", type=int, default=1, help="samples per prompt and level")
    p.add_argument("--out", required=True, metavar="FILE.jsonl", help="output file (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--score-with", default=None, help="vader | module:function | file.py:function — score every sample")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated at most per sample")
    p.add_argument("--min-new-tokens", type=int, default=0, help="eos is banned before this many tokens")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward (twice that with --guidance)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the code of a model trained with train --trust-remote-code")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run_sample)


def run_sample(a) -> int:
    import time

    from .sample import (SamplingParams, check_out_file, conditions, conversations_note, empty_prompt_note,
                         format_summary, load_sampler, one_line_prompts_note, read_prompts, write_jsonl_atomic)
    from .scorers import get_scorer
    from .sources import data_suffix

    params = SamplingParams(max_new_tokens=a.max_new_tokens, min_new_tokens=a.min_new_tokens,
                            temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, seed=a.seed)
    check_out_file(a.out, a.overwrite)  # before the model is loaded or anything sampled
    prompts = read_prompts(a.prompts)
    scorer = get_scorer(a.score_with) if a.score_with else None
    sampler = load_sampler(a.model, a.device, trust_remote_code=a.trust_remote_code)
    conds = conditions(sampler.scheme, level=a.level, reward=a.reward, mode=a.mode)
    if a.prompts is None:
        note = empty_prompt_note(sampler.scheme)
    else:
        note = one_line_prompts_note(sampler.scheme, a.prompts) if data_suffix(Path(a.prompts)) == ".txt" else None
    for note in (note, conversations_note(sampler, prompts, conds)):
        if note:
            print(note, file=sys.stderr)
    t0 = time.perf_counter()
    samples = list(sampler.sample(prompts, conds, params, n=a.n, guidance=a.guidance, batch_size=a.batch_size,
                                  truncate_prompts=a.truncate_prompts, progress=not a.no_progress))
    seconds = time.perf_counter() - t0
    if scorer is not None:
        for s, score in zip(samples, scorer.score_batched((s.text for s in samples), batch_size=256)):
            s.score = score
    write_jsonl_atomic(a.out, (s.to_dict() for s in samples))
    print(format_summary(samples, conds, a.out, seconds, sampler.device, scorer.name if scorer else None))
    return 0


# ---------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcond", formatter_class=_Formatter,
        description="Reward-conditioned fine-tuning with control tokens.",
        epilog=textwrap.dedent("""\
            flow: preprocess -> train -> sample (rcond demo adds the report)
            start with:  rcond demo   (the whole flow on the embedded toy world)"""))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_preprocess(sub)
    add_train(sub)
    add_toyworld(sub)
    add_sample(sub)
    from . import demo, show

    demo.add_parser(sub, _Formatter)
    show.add_parser(sub, _Formatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "preprocess":  # inputs may follow the options (a shell glob at the end), in command-line order
        args.inputs += [x for x in extra if not x.startswith("-")]
        extra = [x for x in extra if x.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")  # exits 2
    from .atomic import raise_if_interrupted, recording_interrupts

    try:
        with recording_interrupts():  # every signal counts, even one whose KeyboardInterrupt Python drops
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # rcond draws its own bars; transformers' per-save bar is noise
            code = args.run(args)
            raise_if_interrupted()
            return code
    except KeyboardInterrupt:
        from .atomic import outputs_published

        done = outputs_published()  # an interrupt after an output is in place (the summary printing) does not undo it
        print(f"\ninterrupted after {', '.join(map(str, done))} had been written in full; nothing was left "
              "half-written" if done else "\ninterrupted; no output was left half-written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _user_errors() as e:
        from .sources import RecordError

        hint = ""
        if getattr(args, "on_error", None) == "fail" and isinstance(e, RecordError):
            hint = "\n(to skip bad records and report them instead, pass --on-error skip)"
        print(f"error: {e}{hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        if e.errno in STORAGE_ERRORS:  # the output is written atomically: nothing was left half-written
            where = e.filename if e.filename is not None else getattr(args, "out", None)
            print(f"error: {f'{where}: ' if where else ''}{e.strerror}; nothing was left half-written", file=sys.stderr)
            return EXIT_FAILED
        if e.errno != errno.ENAMETOOLONG:  # a path given on the command line that no file system can hold,
            raise                          # wherever it is first looked at
        from .atomic import name_max

        limit = f"{name_max(e.filename)} bytes" if e.filename is not None else "the system's limit"
        print(f"error: {e.filename}: file name too long; expected a path whose every name has at most {limit}, "
              f"and a shorter path as a whole", file=sys.stderr)
        return EXIT_BAD_INPUT



def entry() -> None:
    """The ``rcond`` command: :func:`main`, then exit with its code. After an interrupt, the exit
    handlers run but Python's own shutdown does not: an interrupt can leave compiled code running
    in other threads (the Rust tokenizer trainer and its worker threads, an encode call), and that
    shutdown ends any of them that asks for the GIL with a forced unwind through Rust frames, which
    aborts the process (SIGABRT, a core file) after the clean-up is done.

    A reader that stops reading (``rcond preprocess ... | head``) ends the command quietly with
    the exit status of a process killed by SIGPIPE, as other command-line tools do: what the
    command wrote is complete or absent as after any other stop."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit would fail again
        sys.exit(EXIT_BROKEN_PIPE)
    if code == EXIT_INTERRUPTED:
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
