"""Sampling from a reward-conditioned model: chosen reward levels, on/off mode, guidance.

Prompts are built exactly as the corpus builds training documents (``rcond.conditioning``): the
control-token ids, then the prompt encoded on its own with the backend tokenizer and
``add_special_tokens=False`` (no BOS), and the model continues from there:

    on,  level k:   <|rlhf:on|> <|rtg:k|> prompt   -> response <eos>
    off:            <|rlhf:off|> prompt            -> response <eos>

except where the prompt is a dialog's, for a model that learned a dialog corpus: a dialog corpus
puts each assistant turn's RTG token right before that turn, after the user's, so the prompt is
the conversation so far and the RTG token follows it:

    on,  level k:   <|rlhf:on|> prompt <|rtg:k|>   -> assistant turn <eos>

Which corpora a model learned is read from its scheme.json: ``options["formats"]``, every
corpus format of its training (``rcond train`` records them), or for a model saved before they
were recorded ``options["format"]``, its scheme's own corpus's (the first corpus of the last
stage). A prompt made from dialog turns (:class:`Prompt`, and every dialog row of a prompts
file) gets the layout above where the model learned a dialog corpus; a prompt of plain text gets
it where every corpus the model learned with conditioning was a dialog corpus, and the RTG token
before it where it learned preference pairs or scored responses too (a mixture: there a prompt of
text is read as theirs). A conversation that already holds assistant turns is laid out as the
dialog corpus laid out its dialogs, each turn encoded on its own and an RTG token before every
assistant turn, the earlier ones included:

    on,  level k:   <|rlhf:on|> user <|rtg:k|> assistant user <|rtg:k|>   -> assistant turn <eos>

Every earlier assistant turn gets the requested level k. The corpus gave each turn the bin of its
reward-to-go R_t = r_t + γ R_{t+1}, so this is the corpus's own rule where the earlier turns'
rewards are 0 and γ = 1 (their reward-to-go is then the new turn's). Decision Transformer
(Chen et al., 2021) instead lowers the return-to-go by each reward observed; that needs the
earlier turns' rewards and the requested level as a value, and a bin is a range, not a value, so
rcond does not do it and reads no reward written on a prompt's turns. In off mode, as in the
corpus's unconditional records, the conversation carries no RTG token at all.

A level may be requested as a raw reward x, mapped to the bin ``scheme.bin_of(x)`` through the
edges stored with the model.

Decoding (``Sampler.generate``) is a batched loop over the model's forward with a KV cache
(``DynamicCache``). Rows are left-padded to a common length; the 2-D attention mask hides the
padding and ``position_ids = cumsum(mask) - 1`` starts every row at position 0, as in training.
The first forward runs the whole prompt, each later one the single token just chosen, and only
the last position's logits are computed (``logits_to_keep=1``). Per step, on the logits of
the last position (float32, ``[B, V]``):

1. guidance (optional, below);
2. control tokens and ids the tokenizer cannot decode set to −inf (eos stays allowed, except
   before ``min_new_tokens``);
3. temperature 0: argmax. Otherwise divide by the temperature, keep the ``top_k`` largest
   logits, keep the smallest set of tokens whose probability reaches ``top_p`` (the most likely
   token always stays, so a tiny ``top_p`` is greedy), and draw one token per row by inverting
   the cumulative distribution at one uniform number from a seeded ``torch.Generator`` (B random
   numbers per step instead of the B×V of an exponential or Gumbel race; on CPU this is ~15×
   cheaper than ``torch.multinomial``). A row whose distribution is not finite (the model's
   logits hold inf or NaN) raises ``SampleError`` instead of drawing, so no id outside the
   vocabulary is ever produced;
4. a row that has produced eos is finished: its rows of the batch and of the cache are dropped
   (``DynamicCache.batch_select_indices``), so later steps cost only the rows still running. For
   caches whose layers cannot drop rows (recurrent or linear-attention layers) finished rows keep
   running and their tokens after eos are discarded. The loop ends when every row is finished
   or after ``max_new_tokens``.

Classifier-free guidance with weight G. Each prompt runs twice in the same batch, as rows
``[0, B)`` (conditioned: ``<on> <rtg:k> prompt``) and ``[B, 2B)`` (unconditioned: ``<off>
prompt``, the branch the corpus trains with its unconditional fraction), each with its own
cache rows, both fed the token chosen for the pair. One forward of 2B rows per step, then

    l = l_uncond + G · (l_cond − l_uncond)           (torch.lerp(l_uncond, l_cond, G))

``torch.lerp`` is exact at both ends, so G = 1 gives the conditioned logits bit for bit and
G = 0 the unconditioned ones. ``Sampler.sample`` pads every batch to the length of its longest
prompt's ``on``-mode input (control tokens included), in either mode and with or without
guidance, so a row sees the same padded input whichever of those runs it is in; with the same
seed, G = 1 reproduces unguided sampling and G = 0 the ``off`` mode exactly (tested), where no
prompt is cut to the context (a cut fits the conditions asked for, and an ``off``-mode input
needs less room than an ``on``-mode one, so the two runs may keep different tokens of a prompt
too long), and provided the matmul kernels
round a row alike in a batch of B and of 2B rows, as the CPU kernels here do. Where they do not,
logits differ in the last bit and a token can differ only at a near tie.

Where this deviates from the usual CFG for language models (Sanchez et al., 2023, "Stay on
topic with classifier-free guidance"): there the unconditional branch drops the *prompt* and
guidance strengthens prompt adherence; here both branches keep the prompt and differ only in
the control tokens, so guidance strengthens the reward condition. The formula is applied to
raw logits instead of log-softmax outputs: the two differ by a per-row constant, which the
softmax, top-k and top-p all ignore, so the sampled distribution is the same.

Settings are refused (``SampleError``) outside the ranges where the float32 arithmetic above
stays finite and the setting still means something:

- temperature 0 (greedy) or in [1e-4, 1e4]: logits differ by a few units, so below 1e-4 the
  draw is greedy except at exact ties, and above 1e4 it is uniform over the allowed tokens;
  the range keeps ``logits / temperature`` finite (a float32 cannot hold 1e-300 or 1e300);
- guidance G with |G| <= 100: the usual weights are 0..5; far beyond, ``G · (l_cond −
  l_uncond)`` swamps everything and, near 1e38, overflows float32;
- seed in [0, 2**63 − 1] (``torch.Generator.manual_seed`` takes [−2**63, 2**64 − 1] but maps
  a negative seed onto a large one, so two spellings would give the same samples);
- max_new_tokens at most 2**20 (the loop allocates ``[rows, prompt + max_new_tokens]`` up
  front), and control tokens + the longest prompt + max_new_tokens at most the model's context
  (``config.max_position_embeddings``, the positions it was trained on), checked before any
  token is generated. A prompt that does not fit is refused, the message naming the longest one,
  unless truncation is asked for (``truncate_prompts``, ``--truncate-prompts``): then each prompt
  too long loses the fewest of its first ids that make its input under every condition asked
  for fit ``context − max_new_tokens`` (an earlier assistant turn's RTG token counts in ``on``
  mode, not in ``off``), keeping the end the response follows, and opens as a corpus piece of a
  document longer than a block opens mid-text (after the mode token, the RTG token in force
  where the RTG token follows the prompt); its sample records how many content tokens it lost
  (``prompt_tokens_cut``).
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from .atomic import (OutputExistsError, OutputPathError, file_in_the_way, missing_folders, raise_if_interrupted,
                     remove_if_empty, temp_file_beside)
from .content_encoder import ContentEncoder
from .tokens import ControlScheme, SchemeError

# cache layers whose rows can be dropped when a sequence ends (others keep running with padding)
PRUNABLE_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)
TEMPERATURE_RANGE = (1e-4, 1e4)   # see the module docstring for the reasons of these limits
GUIDANCE_LIMIT = 100.0
EARLIER_TURN = -1  # in an encoded dialog prompt: where an earlier assistant turn's RTG token goes
SEED_MAX = 2**63 - 1
MAX_NEW_TOKENS = 2**20
PROMPT_FILES = (".txt (one prompt per line), or .jsonl, .json, .csv (each optionally .gz, .bz2, .xz, .zst), "
                ".parquet, .arrow, a dataset saved by datasets' save_to_disk or a hub dataset id with a string "
                "field 'prompt' per row (or an HH-RLHF 'chosen' dialogue, whose prompt is taken as --format pairs "
                "takes it, or 'turns', a dialog: a conversation ending with a user or system turn after an assistant "
                "turn is taken whole, any other the turns before its first assistant turn)")


class SampleError(ValueError):
    """A sampling setting is out of range (the message names it)."""


# ---------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen. ``temperature == 0`` is greedy (``top_p``/``top_k`` unused)."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0          # 0 = no top-k cut
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise SampleError(f"max_new_tokens must be in [1, {MAX_NEW_TOKENS}] (and fit the model's context), "
                              f"got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise SampleError(f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                              f"got {self.min_new_tokens}")
        low, high = TEMPERATURE_RANGE
        if not (self.temperature == 0 or low <= self.temperature <= high):
            raise SampleError(f"temperature must be 0 (greedy) or in [{low:g}, {high:g}] (below, sampling is "
                              f"greedy but for exact ties; above, uniform), got {self.temperature:g}")
        if not 0 < self.top_p <= 1:
            raise SampleError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise SampleError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 <= self.seed <= SEED_MAX:
            raise SampleError(f"seed must be in [0, 2**63-1 = {SEED_MAX}], got {self.seed}")


def check_guidance(guidance: float | None) -> None:
    """None (no guidance) or a weight G with |G| <= 100 (module docstring)."""
    if guidance is not None and not abs(guidance) <= GUIDANCE_LIMIT:
        raise SampleError(f"guidance must be in [-{GUIDANCE_LIMIT:g}, {GUIDANCE_LIMIT:g}] (1 = the conditioned "
                          f"model, 0 = off mode; usual weights are 0..5), got {guidance:g}")


@dataclass(frozen=True)
class Condition:
    """What a sample is conditioned on: ``on`` with an RTG level (and the raw reward it came
    from, if one was requested), or ``off`` with neither."""

    mode: str = "on"
    level: int | None = None
    reward: float | None = None

    @property
    def label(self) -> str:
        if self.mode == "off":
            return "off"
        return f"level {self.level}" + ("" if self.reward is None else f" (reward {self.reward:g})")


def conditions(scheme: ControlScheme, *, level: int | str | None = None, reward: float | None = None,
               mode: str = "on") -> list[Condition]:
    """The conditions a request names: ``level`` k (an int or its digits) or ``"all"``, or a raw
    ``reward``; ``mode`` on/off.

    Raises ``SchemeError`` for a level the scheme does not have, a non-finite reward, an unknown
    mode, or a level/reward given in ``off`` mode (which has no RTG token).
    """
    scheme.mode_token(mode)
    if level is not None and reward is not None:
        raise SchemeError("give a level or a reward, not both")
    if mode == "off":
        if level is not None or reward is not None:
            raise SchemeError("off mode has no reward level (no RTG token); drop --level/--reward or use --mode on")
        return [Condition("off")]
    if reward is not None:
        return [Condition("on", scheme.bin_of(reward), float(reward))]
    if level is None:
        raise SchemeError(f"on mode needs a level (0..{scheme.num_bins - 1} or 'all') or a reward")
    if level == "all":
        return [Condition("on", k) for k in range(scheme.num_bins)]
    if isinstance(level, str):
        try:
            level = int(level)
        except ValueError:
            raise SchemeError(f"level {level!r} is neither a number (0..{scheme.num_bins - 1}) nor 'all'") from None
    return [Condition("on", scheme.check_level(level))]


@dataclass
class Sample:
    """One generated response and what it was conditioned on (one line of the output JSONL)."""

    prompt: str
    mode: str
    level: int | None
    reward: float | None         # the requested raw reward, when the level came from one
    guidance: float | None
    text: str
    num_tokens: int              # generated tokens, eos excluded
    finished: bool               # ended with eos (False: cut at max_new_tokens)
    score: float | None = None
    prompt_tokens_cut: int = 0   # the prompt's first content tokens left out to fit the context (truncate_prompts)

    def to_dict(self) -> dict:
        d = {"prompt": self.prompt, "mode": self.mode, "level": self.level, "guidance": self.guidance,
             "text": self.text, "num_tokens": self.num_tokens, "finished": self.finished}
        if self.reward is not None:
            d["reward"] = self.reward
        if self.score is not None:
            d["score"] = self.score
        if self.prompt_tokens_cut:
            d["prompt_tokens_cut"] = self.prompt_tokens_cut
        return d


# ---------------------------------------------------------------------------- the sampler
def _other_rtg_ids(tokenizer, scheme: ControlScheme) -> list[int]:
    """Ids of RTG tokens the tokenizer holds beyond the scheme's levels (one reused from a corpus
    with more bins): control tokens too, banned like the scheme's own."""
    shaped = re.compile(re.escape(scheme.rtg_template).replace(re.escape("{k}"), r"\d+"))
    own = set(scheme.rtg_tokens)
    return [i for tok, i in tokenizer.get_added_vocab().items() if shaped.fullmatch(tok) and tok not in own]


class Sampler:
    """Batched, KV-cached generation from a control-token model (see the module docstring)."""

    def __init__(self, model, tokenizer, scheme: ControlScheme):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.scheme = scheme
        ids = scheme.token_ids(tokenizer)
        self.on_id, self.off_id = ids[scheme.on_token], ids[scheme.off_token]
        self.rtg_ids = [ids[t] for t in scheme.rtg_tokens]
        learned = set(scheme.learned_formats())                  # the formats of its corpora
        self.dialog_turns = "dialog" in learned                  # prompts of turns: laid out as a dialog corpus
        self.rtg_after_prompt = self.dialog_turns and not learned & {"pairs", "scored"}   # prompts of text
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token; rcond documents end with eos")
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = self.eos_id if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id)
        vocab = model.get_output_embeddings().weight.shape[0]
        if self.eos_id in ids.values():
            raise SchemeError(f"eos {tokenizer.eos_token!r} is also a control token")
        banned = torch.zeros(vocab, dtype=torch.bool)                  # [V]
        banned[list(ids.values())] = True
        banned[_other_rtg_ids(tokenizer, scheme)] = True
        banned[len(tokenizer):] = True                                 # embedding rows past the tokenizer
        self.banned = banned.to(self.device)
        self._encoder = ContentEncoder(tokenizer.backend_tokenizer)
        self._keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def context(self) -> int | None:
        """The positions the model was built for (``config.max_position_embeddings``); None if it declares none."""
        return getattr(self.model.config, "max_position_embeddings", None)

    # ------------------------------------------------------------------ prompts
    def control_ids(self, cond: Condition) -> list[int]:
        """``[on, rtg:k]`` or ``[off]``."""
        if cond.mode == "off":
            return [self.off_id]
        return [self.on_id, self.rtg_ids[self.scheme.check_level(cond.level)]]

    def rtg_after(self, prompt: str) -> bool:
        """Whether the on-mode RTG token follows ``prompt`` (as in a dialog corpus) rather than
        opening it: for a prompt of dialog turns where the model learned a dialog corpus, for any
        other prompt where every corpus the model learned with conditioning was a dialog corpus."""
        return self.dialog_turns if getattr(prompt, "turns", None) is not None else self.rtg_after_prompt

    def input_ids(self, cond: Condition, prompt_ids: list[int], rtg_after: bool | None = None,
                  cut: bool = False) -> list[int]:
        """Control ids and an encoded prompt (:meth:`encode_prompts`), the RTG token after the
        prompt where ``rtg_after`` (:meth:`rtg_after`; None: as for a prompt of text) and before it
        otherwise; each ``EARLIER_TURN`` mark of a dialog prompt becomes the RTG token of
        ``cond``'s level (on mode) or is dropped (off mode, where the corpus has no RTG token).
        A prompt ``cut`` from the left (:meth:`cut_to_context`) with its RTG token after it opens,
        as a dialog corpus's later pieces of a split dialog do, with the mode and the RTG token in
        force (all at ``cond``'s level here), unless what is kept opens with an RTG token itself."""
        control = self.control_ids(cond)
        if cond.mode == "off":
            return control + [i for i in prompt_ids if i != EARLIER_TURN]
        after = self.rtg_after_prompt if rtg_after is None else rtg_after
        lead = self._led(prompt_ids, after, cut)
        prompt_ids = [control[1] if i == EARLIER_TURN else i for i in prompt_ids]
        if not after:
            return control + prompt_ids
        return (control if lead else control[:1]) + prompt_ids + control[1:]

    def _led(self, prompt_ids: Sequence[int], rtg_after: bool | None, cut: bool) -> bool:
        """Whether an on-mode input opens with the RTG token in force before ``prompt_ids`` besides
        the one after them: a cut prompt whose RTG token follows it, unless what is kept opens
        with an earlier turn's mark (:meth:`input_ids`)."""
        after = self.rtg_after_prompt if rtg_after is None else rtg_after
        return bool(after and cut and len(prompt_ids) > 0 and prompt_ids[0] != EARLIER_TURN)

    def input_length(self, cond: Condition, prompt_ids: Sequence[int], rtg_after: bool | None = None,
                     cut: bool = False, marks: int | None = None) -> int:
        """``len(self.input_ids(cond, prompt_ids, rtg_after, cut))`` without building it (``marks``:
        the ``EARLIER_TURN`` marks in ``prompt_ids``, when the caller has counted them)."""
        if cond.mode == "off":
            return 1 + len(prompt_ids) - (prompt_ids.count(EARLIER_TURN) if marks is None else marks)
        return 2 + len(prompt_ids) + self._led(prompt_ids, rtg_after, cut)

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Prompt texts -> token ids, encoded as the corpus encodes them (no special tokens added,
        a special-token string typed in a prompt is text, never a control token, and no truncation or
        padding the tokenizer carries is applied)."""
        if not prompts:
            return []
        offsets, flat = self._encoder(list(prompts))
        return [flat[a:b].tolist() for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        """Prompts -> token ids as :meth:`encode` gives them, except a :class:`Prompt` made from
        dialog turns given to a model trained on a dialog corpus: there each turn is encoded on its
        own, as the corpus encodes a dialog's turns, and an ``EARLIER_TURN`` mark stands before each
        assistant turn, where the corpus put that turn's RTG token (:meth:`input_ids` fills it in).
        Other models get such a prompt's text, its turns joined, encoded as one, as a corpus of
        prompts holding whole conversations (HH-RLHF's) encodes them."""
        dialog = [self.dialog_turns and getattr(p, "turns", None) is not None for p in prompts]
        plain = iter(self.encode([p for p, d in zip(prompts, dialog) if not d]))
        turns = iter(self.encode([content for p, d in zip(prompts, dialog) if d for _, content in p.turns]))
        out = []
        for p, d in zip(prompts, dialog):
            if not d:
                out.append(next(plain))
                continue
            ids: list[int] = []
            for role, _ in p.turns:
                ids += ([EARLIER_TURN] if role == "assistant" else []) + next(turns)
            out.append(ids)
        return out

    def prompt_ids(self, prompt: str, cond: Condition) -> list[int]:
        """The full model input of one prompt under ``cond``: control ids and prompt ids."""
        return self.input_ids(cond, self.encode_prompts([prompt])[0], self.rtg_after(prompt))

    def check_context(self, prompts: Sequence[str], encoded: Sequence[Sequence[int]], conds: Sequence[Condition],
                      max_new_tokens: int, cut: Sequence[bool] | None = None) -> None:
        """Refuse a request whose longest input (control ids + prompt, :meth:`input_ids`; ``cut``:
        which prompts :meth:`cut_to_context` cut) and ``max_new_tokens`` do not fit the model's
        context; the message names that prompt (its ``file:line`` when it is a :class:`Prompt`)."""
        if self.context is None or not encoded or not conds:
            return
        cut = cut or [False] * len(encoded)
        lengths = [max(self.input_length(c, e, self.rtg_after(p), k) for c in conds)
                   for p, e, k in zip(prompts, encoded, cut)]
        i = max(range(len(encoded)), key=lambda j: lengths[j])
        length = lengths[i]
        controls = length - (len(encoded[i]) - list(encoded[i]).count(EARLIER_TURN))
        if length + max_new_tokens <= self.context:
            return
        where = getattr(prompts[i], "origin", None) or f"prompt {i + 1} of {len(prompts)}"
        fix = (f"use max_new_tokens <= {self.context - length} or a shorter prompt" if length < self.context
               else f"shorten that prompt to under {self.context - controls} tokens")
        raise SampleError(f"the longest prompt ({where}) is {length} tokens with its {controls} control token(s); "
                          f"with max_new_tokens={max_new_tokens} that makes {length + max_new_tokens}, beyond the "
                          f"model's context of {self.context} tokens (config.max_position_embeddings): {fix} (or "
                          f"--truncate-prompts, truncate_prompts=True: each prompt keeps its last tokens)")

    def cut_to_context(self, encoded: Sequence[Sequence[int]], conds: Sequence[Condition], max_new_tokens: int,
                       prompts: Sequence[str] | None = None) -> list[list[int]]:
        """Encoded prompts, each cut from the left by the fewest ids that make its input under every
        condition of ``conds`` (:meth:`input_ids`, laid out for ``prompts[i]``: by default as
        prompts of text) fit the model's context beside ``max_new_tokens``; the end, which the
        response follows, is kept. As given where the model declares no context."""
        if self.context is None or not conds:
            return [list(e) for e in encoded]
        budget = self.context - max_new_tokens
        controls = max(len(self.control_ids(c)) for c in conds)
        if budget < controls:
            raise SampleError(f"max_new_tokens={max_new_tokens} and {controls} control token(s) leave no room for a "
                              f"prompt in the model's context of {self.context} tokens "
                              f"(config.max_position_embeddings): use max_new_tokens <= {self.context - controls}")
        out = []
        for i, e in enumerate(encoded):
            e = list(e)
            after = self.rtg_after(prompts[i]) if prompts is not None else None
            before = list(itertools.accumulate((t == EARLIER_TURN for t in e), initial=0))  # marks in e[:k]

            def fits(k: int) -> bool:
                return all(self.input_length(c, e[k:], after, k > 0, int(before[-1] - before[k])) <= budget
                           for c in conds)

            if fits(0):
                out.append(e)
                continue
            low, high = 1, len(e)              # inputs shrink as k grows past 1: the fewest k that fits
            while low < high:
                mid = (low + high) // 2
                low, high = (low, mid) if fits(mid) else (mid + 1, high)
            out.append(e[low:])
        return out

    # ------------------------------------------------------------------ decoding
    def _forward(self, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
        """[R, t] new tokens -> float32 logits of the last position [R, V]; extends ``cache``."""
        kw = {"logits_to_keep": 1} if self._keep_last else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True, **kw)
        return out.logits[:, -1].float()

    @staticmethod
    def choose(scores: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
        """[B, V] logits (banned = −inf) -> [B] token ids: greedy, or temperature/top-k/top-p sampling."""
        if params.temperature == 0:
            return scores.argmax(-1)
        scores = scores / params.temperature
        if 0 < params.top_k < scores.shape[-1]:
            kth = torch.topk(scores, params.top_k, dim=-1).values[:, -1:]          # [B, 1]
            scores = scores.masked_fill(scores < kth, -math.inf)
        if params.top_p < 1:
            sorted_scores, order = scores.sort(dim=-1, descending=True)           # [B, V]
            probs = sorted_scores.softmax(-1)
            drop = probs.cumsum(-1) - probs >= params.top_p                        # the better tokens reach top_p
            drop[:, 0] = False                                                     # the most likely token stays
            sorted_scores = sorted_scores.masked_fill(drop, -math.inf)
            scores = scores.scatter(-1, order, sorted_scores)
        cdf = scores.softmax(-1).cumsum(-1)                                        # [B, V]
        if not bool(torch.isfinite(cdf[:, -1]).all()):
            raise SampleError(f"the next-token distribution is not finite at temperature={params.temperature:g}, "
                              f"top_p={params.top_p:g}, top_k={params.top_k}: the model's logits (after guidance, "
                              f"if any) hold inf or NaN")
        u = torch.rand((cdf.shape[0], 1), generator=generator, device=cdf.device)  # [B, 1] in [0, 1)
        # the first token whose cdf reaches x in (0, total]: the cdf rises there, so p > 0
        return torch.searchsorted(cdf, (1 - u) * cdf[:, -1:]).squeeze(-1)

    @torch.inference_mode()
    def generate(self, rows: Sequence[Sequence[int]], params: SamplingParams, *,
                 uncond_rows: Sequence[Sequence[int]] | None = None, guidance: float | None = None,
                 generator: torch.Generator | None = None, width: int = 0) -> list[tuple[list[int], bool]]:
        """Continue every row of token ids; returns (new ids without eos, ended with eos) per row.

        With ``guidance`` G, ``uncond_rows[i]`` is the unconditional twin of ``rows[i]`` and the
        logits are ``lerp(l_uncond, l_cond, G)``. Rows are left-padded to the longest row, or to
        ``width`` tokens if that is more. The model's context is not checked here (``sample`` does).
        """
        guided = guidance is not None
        if guided and (uncond_rows is None or len(uncond_rows) != len(rows)):
            raise ValueError("guidance needs one unconditional row per conditioned row")
        check_guidance(guidance)
        B = len(rows)
        if B == 0:
            return []
        every = list(rows) + (list(uncond_rows) if guided else [])
        if min(map(len, every)) == 0:
            raise ValueError("every row needs at least one token (its control ids)")
        R, T, N = len(every), max(width, *map(len, every)), params.max_new_tokens
        device = self.device
        ids = torch.full((R, T), self.pad_id, dtype=torch.long)                   # [R, T] left-padded
        mask = torch.zeros((R, T + N), dtype=torch.long)                          # [R, T+N] grows per step
        for i, r in enumerate(every):
            ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, T - len(r):T] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask[:, :T].cumsum(-1) - 1).clamp(min=0)                     # [R, T]
        next_pos = positions[:, -1:] + 1                                          # [R, 1]
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask[:, :T], positions, cache)                # [R, V]
        prunable = all(type(layer) in PRUNABLE_LAYERS for layer in cache.layers)
        banned = self.banned.to(device)                                           # [V]
        eos_banned = banned.clone()
        eos_banned[self.eos_id] = True
        out = torch.full((B, N), self.pad_id, dtype=torch.long, device=device)    # [B, N]
        live = torch.arange(B, device=device)                                     # [A] rows still in the batch
        done = torch.zeros(B, dtype=torch.bool, device=device)                    # [A] has produced eos
        A, steps = B, 0
        for step in range(N):
            scores = torch.lerp(logits[A:], logits[:A], guidance) if guided else logits   # [A, V]
            scores = scores.masked_fill(eos_banned if step < params.min_new_tokens else banned, -math.inf)
            token = self.choose(scores, params, generator)                        # [A]
            out[live, step] = token
            steps = step + 1
            done |= token == self.eos_id
            finished = int(done.sum())
            if steps == N or finished == A:
                break
            if prunable and finished:
                keep = (~done).nonzero().squeeze(1)                               # [A'] rows that go on
                pick = torch.cat([keep, keep + A]) if guided else keep            # [R'] with their twins
                live, token, done, A = live[keep], token[keep], done[keep], keep.numel()
                cache.batch_select_indices(pick)
                mask, next_pos = mask[pick], next_pos[pick]
            feed = torch.cat([token, token]) if guided else token                 # [R]
            mask[:, T + step] = 1
            logits = self._forward(feed[:, None], mask[:, :T + steps], next_pos, cache)
            next_pos += 1
        results = []
        for row in out[:, :steps].tolist():
            end = row.index(self.eos_id) if self.eos_id in row else len(row)
            results.append((row[:end], end < len(row)))
        return results

    # ------------------------------------------------------------------ requests
    def sample(self, prompts: Sequence[str], conds: Sequence[Condition], params: SamplingParams, *,
               n: int = 1, guidance: float | None = None, batch_size: int = 32, truncate_prompts: bool = False,
               progress: bool = False) -> Iterator[Sample]:
        """``n`` samples for every (condition, prompt), in that order, ``batch_size`` rows per forward
        (``2 * batch_size`` with guidance). One generator seeded with ``params.seed`` runs through
        all batches, so results depend on the seed and the batch size, not on the device's state.
        The longest prompt is checked against the model's context before the first batch; with
        ``truncate_prompts`` the prompts too long are cut to fit first (:meth:`cut_to_context`)."""
        if n < 1 or batch_size < 1:
            raise SampleError(f"n and batch_size must be at least 1, got n={n}, batch_size={batch_size}")
        if guidance is not None and any(c.mode == "off" for c in conds):
            raise SchemeError("guidance contrasts the on mode with the off mode; it needs --mode on")
        prompts = list(prompts)
        full = self.encode_prompts(prompts)
        encoded = self.cut_to_context(full, conds, params.max_new_tokens, prompts) if truncate_prompts else full
        lost = [len(f) - len(e) for f, e in zip(full, encoded)]                 # ids cut, marks among them
        self.check_context(prompts, encoded, conds, params.max_new_tokens, [k > 0 for k in lost])
        off, widest = Condition("off"), Condition("on", 0)
        content_lost = [k - f[:k].count(EARLIER_TURN) for f, k in zip(full, lost)]   # RTG tokens not counted
        jobs = [(c, p, e, k, q) for c in conds for p, e, k, q in zip(prompts, encoded, lost, content_lost)
                for _ in range(n)]
        generator = torch.Generator(device=self.device).manual_seed(params.seed)
        with tqdm(total=len(jobs), desc="sample", unit="sample", disable=not progress, dynamic_ncols=True,
                  leave=False) as bar:
            for at in range(0, len(jobs), batch_size):
                raise_if_interrupted()  # a Ctrl-C Python dropped stops the sampling here, not at the end
                batch = jobs[at:at + batch_size]
                rows = [self.input_ids(c, e, self.rtg_after(p), k > 0) for c, p, e, k, _ in batch]
                uncond = [self.input_ids(off, e) for _, _, e, _, _ in batch] if guidance is not None else None
                # every batch as wide as its longest on-mode input, whatever the mode: see the module docstring
                width = max(self.input_length(widest, e, self.rtg_after(p), k > 0) for _, p, e, k, _ in batch)
                results = self.generate(rows, params, uncond_rows=uncond, guidance=guidance, generator=generator,
                                        width=width)
                texts = self.tokenizer.batch_decode([r for r, _ in results], skip_special_tokens=True)
                for (c, p, _, _, q), (new, finished), text in zip(batch, results, texts):
                    yield Sample(p, c.mode, c.level, c.reward, guidance, text, len(new), finished,
                                 prompt_tokens_cut=q)
                bar.update(len(batch))


# ---------------------------------------------------------------------------- files
class Prompt(str):
    """A prompt's text that remembers where it was read (``file:line``, ``file:row i``), for messages.

    A prompt made from dialog turns (:meth:`dialog`) also keeps them, as ``(role, content)`` pairs:
    its text is their contents joined as written, and a model trained on a dialog corpus is given
    each turn encoded on its own with an RTG token before every assistant turn, as its corpus laid
    the turns out (:meth:`Sampler.encode_prompts`)."""

    origin: str | None
    turns: tuple[tuple[str, str], ...] | None = None

    def __new__(cls, text: str, origin: str | None = None) -> Prompt:
        prompt = super().__new__(cls, text)
        prompt.origin = origin
        return prompt

    @classmethod
    def dialog(cls, turns: Sequence[tuple[str, str] | Mapping], origin: str | None = None) -> Prompt:
        """The prompt of a conversation given as ``(role, content)`` pairs or ``{"role", "content"}``
        objects (role ``user``, ``system`` or ``assistant``), for the assistant turn that follows
        its last turn; no turns is the empty prompt. A ``ValueError`` for any other role or a
        content that is no string, or for a conversation that ends with an assistant turn. A
        string operation on the prompt (``strip``, ``+``) gives a plain ``str``, without the turns."""
        read = []
        for turn in turns:
            pair = (turn.get("role"), turn.get("content")) if isinstance(turn, Mapping) else turn
            role, content = pair if isinstance(pair, (tuple, list)) and len(pair) == 2 else (pair, None)
            if role not in ("user", "system", "assistant") or not isinstance(content, str):
                raise ValueError(f"a dialog turn is a (role, content) pair or a {{'role', 'content'}} object with "
                                 f"role 'user', 'system' or 'assistant' and a string content, got ({role!r}, "
                                 f"{type(content).__name__})")
            read.append((role, content))
        if read and read[-1][0] == "assistant":
            raise ValueError("a dialog prompt ends with a user or system turn: the sample is the assistant's "
                             "next turn")
        prompt = cls("".join(content for _, content in read), origin)
        prompt.turns = tuple(read)
        return prompt


def read_prompts(path: str | os.PathLike | None) -> list[str]:
    """``None`` -> one empty prompt; ``.txt`` -> one prompt per non-empty line; ``.jsonl``, ``.json``,
    ``.csv`` (optionally compressed), ``.parquet``, ``.arrow``, a dataset saved by ``save_to_disk``
    (``DIR`` or ``DIR:SPLIT``) or a hub dataset id -> the ``prompt`` field of every row, or where a
    row has none (or a null one), the prompt of its HH-RLHF ``chosen`` dialogue, up to and including
    its last ``"\\n\\nAssistant:"``, as ``rcond preprocess --format pairs`` takes it, or a
    prompt of its ``turns`` (a dialog as ``--format dialog`` reads it, :func:`_dialog_prompt`): the
    whole conversation where it ends with a user or system turn after an assistant turn, else the
    turns before its first assistant turn (all of them if none), what the corpus put before the
    dialog's first RTG token. Every prompt read is a :class:`Prompt`; one from turns keeps them.
    Any other folder or a ``.zip`` (inputs of ``preprocess``, not prompts) and any other file type
    are refused, with the list of what is accepted."""
    from .sources import ROW_SUFFIXES, SourceError, data_suffix, iter_rows, saved_dataset

    if path is None:
        return [""]
    p = Path(path)
    if p.is_dir() and saved_dataset(str(p)) is None:
        raise SourceError(f"{p}: is a folder; --prompts takes one file: {PROMPT_FILES}")
    if p.is_file() and data_suffix(p) != ".txt" and data_suffix(p) not in ROW_SUFFIXES:
        raise SourceError(f"{p}: not a prompts file type; expected {PROMPT_FILES}")
    if data_suffix(p) == ".txt":
        if not p.is_file():
            raise SourceError(f"{p}: no such prompts file")
        # one prompt per line; iter_rows reads the file as a plain-text document (bad UTF-8 named by line)
        [(_, text)] = iter_rows(str(p))
        lines = text.split("\n")  # a byte-order mark is already gone
        prompts = [Prompt(line.rstrip("\r"), f"{p}:{i}") for i, line in enumerate(lines, 1) if line.strip()]
    else:
        prompts = [_prompt_field(origin, row) for origin, row in iter_rows(str(p))]
    if not prompts:
        raise SourceError(f"{p}: no prompts in the file")
    return prompts


def _most_of(options: dict, part: str, whole: str, what: str) -> str | None:
    """``"all N of this model's training {what}"`` or ``"K of this model's N training {what}"`` where
    the corpus counts ``options[part]`` of ``options[whole]`` are more than half; None where they are
    not, or are not integer counts (a corpus built before they were recorded, a hand-edited
    scheme.json): then there is nothing to say."""
    some, every = options.get(part), options.get(whole)
    if not all(type(n) is int for n in (some, every)) or 2 * some <= every:
        return None
    return (f"all {every:,} of this model's training {what}" if some == every
            else f"{some:,} of this model's {every:,} training {what}")


def empty_prompt_note(scheme: ControlScheme) -> str | None:
    """What to tell a user who samples with no prompts (one empty prompt) from a model most of whose
    corpus's records opened with a prompt or user turn (``scheme.options["prompts"]`` of
    ``["records"]``, counts a build records) at loss weight 0 (no ``train_on_prompt``): such a model
    learned what follows a prompt, never to write one, so from nothing it writes text few training
    documents showed it. None where at most half the records had a prompt, the corpus trained on
    prompts, or it does not say (built before the counts were recorded)."""
    share = _most_of(scheme.options, "prompts", "records", "records")
    if share is None or scheme.options.get("train_on_prompt"):
        return None
    return (f"note: no --prompts: every sample starts from an empty prompt, but {share} opened with a prompt it was "
            f"not trained to write (loss weight 0); it learned what follows a prompt, not what follows nothing. "
            f"Give --prompts FILE with prompts like its corpus's")


def one_line_prompts_note(scheme: ControlScheme, path: str | os.PathLike) -> str | None:
    """What to tell a user who gives prompts in a ``.txt`` file (one a line, so none spans lines) to
    a model most of whose corpus's prompts held a line break (``scheme.options["multiline_prompts"]``
    of ``["prompts"]``: every HH-RLHF prompt does): its prompts are unlike those the model learned
    to answer. None where at most half did, or the corpus does not say (built before the count)."""
    share = _most_of(scheme.options, "multiline_prompts", "prompts", "prompts")
    if share is None:
        return None
    return (f"note: {path} holds one prompt per line, but {share} spanned several lines (as HH-RLHF's "
            f"'\\n\\nHuman: ...\\n\\nAssistant:' do), so these prompts are unlike the ones it learned to answer. "
            f"Give such prompts as rows with a 'prompt' field (.jsonl), or give the HH-RLHF pairs themselves "
            f"(the prompt of each 'chosen' dialogue is read)")


def _prompt_field(origin: str, row: dict) -> Prompt:
    """A row's ``prompt`` field, else (none, or a null one) the prompt of its HH-RLHF ``chosen``
    dialogue (:func:`~rcond.sources.split_hh`) or of its dialog ``turns`` (:func:`_dialog_prompt`);
    or a SourceError naming the row and what it holds."""
    from .sources import SourceError, split_hh

    value = row.get("prompt")
    if isinstance(value, str):
        return Prompt(value, origin)
    if value is None and isinstance(row.get("chosen"), str):  # an HH-RLHF pair, as --format pairs reads it
        return Prompt(split_hh(row["chosen"], f"{origin} (chosen)")[0], origin)
    if value is None and isinstance(row.get("turns"), list):  # a dialog, as --format dialog reads it
        return _dialog_prompt(row["turns"], origin)
    if "prompt" in row:
        raise SourceError(f"{origin}: field 'prompt' is {type(value).__name__} {value!r:.40}, expected a string")
    raise SourceError(f"{origin}: expected a string field 'prompt' (or an HH-RLHF 'chosen' dialogue, or a "
                      f"dialog's 'turns'); fields present: {sorted(row)}")


def _dialog_prompt(turns: list, origin: str) -> Prompt:
    """The prompt a dialog row gives (a :class:`Prompt` that keeps its turns): where it ends with a
    user or system turn after an assistant turn, the whole conversation, for the assistant turn
    that follows; otherwise its opening, the turns before its first assistant turn (all of them
    where no turn is the assistant's), for its first assistant turn. A SourceError names the turn
    that is no ``{"role", "content"}`` object of strings with a role the corpus knows."""
    from .sources import SourceError

    read = []
    for j, turn in enumerate(turns, start=1):
        role, content = (turn.get("role"), turn.get("content")) if isinstance(turn, dict) else (None, None)
        if not (isinstance(role, str) and isinstance(content, str)):
            raise SourceError(f"{origin} turn {j}: expected an object with a string 'role' and 'content'")
        if role not in ("user", "system", "assistant"):
            raise SourceError(f"{origin} turn {j}: role must be 'user', 'system' or 'assistant', got {role!r}")
        read.append((role, content))
    roles = [role for role, _ in read]
    waiting = "assistant" in roles and roles[-1] != "assistant"   # for the assistant's next turn
    if "assistant" in roles and not waiting:
        read = read[:roles.index("assistant")]
    return Prompt.dialog(read, origin)


def conversations_note(sampler: Sampler, prompts: Sequence[str], conds: Sequence[Condition]) -> str | None:
    """What to tell a user whose prompts include conversations (prompts of dialog turns holding an
    assistant turn) sampled in on mode: the level their earlier assistant turns are given (module
    docstring), or, from a model that learned no dialog corpus, that they are read as text. None
    without any, or in off mode alone (no RTG token anywhere)."""
    n = sum("assistant" in dict(getattr(p, "turns", None) or ()) for p in prompts)
    if not n or all(c.mode == "off" for c in conds):
        return None
    if sampler.dialog_turns:
        return (f"note: {n:,} prompts are conversations with earlier assistant turns; each such turn is given the RTG "
                f"token of the requested level, as its corpus's reward-to-go would be if the earlier turns' rewards "
                f"were 0 at gamma 1 (rewards written on the turns are not read)")
    formats = sampler.scheme.learned_formats()
    learned = f" (formats {formats})" if formats else ""
    return (f"note: {n:,} prompts are conversations with assistant turns, but this model learned no dialog corpus"
            f"{learned}: each is given as its turns' text joined as written, a prompt of text with no "
            f"RTG token before its earlier assistant turns")


def check_out_file(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """The output file, refused before any work when it cannot be written: an empty path, a folder
    (even with ``overwrite``: the output is one file), a path below a file, or an existing file
    without ``overwrite``."""
    if not str(path).strip():
        raise OutputPathError("the output path is empty; give a FILE.jsonl to write")
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path}: is a folder; the output is one file, e.g. {path / 'samples.jsonl'}")
    blocking = file_in_the_way(path)
    if blocking is not None:
        raise OutputPathError(f"{path}: cannot create the output there: {blocking} is a file, not a folder")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    return path


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write one JSON object per line to a temp file beside ``path``, flush it, rename it into place
    (replacing a file there; a path :func:`check_out_file` refuses even with overwrite is refused first).
    A write that fails removes the folders it made for the file, as ``atomic_dir`` does."""
    path = check_out_file(path, overwrite=True)
    made = missing_folders(path)
    try:
        fd, tmp = temp_file_beside(path)
    except BaseException:
        remove_if_empty(made)
        raise
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        raise_if_interrupted()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        remove_if_empty(made)
        raise
    return path


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A saved model directory, or a training run directory holding one in ``model/``. A corpus, and
    a run that has no model yet, are SampleErrors that say what to do instead."""
    from .corpus import ROWS_FILE
    from .modeling import MODEL_CONFIG_FILE
    from .tokens import SCHEME_FILE
    from .train import CHECKPOINT_DIR, CONFIG_FILE, MODEL_DIR, STATE_FILE

    p = Path(path).expanduser()
    if not (p / MODEL_CONFIG_FILE).is_file() and (p / MODEL_DIR / MODEL_CONFIG_FILE).is_file():
        return p / MODEL_DIR
    if (p / SCHEME_FILE).is_file() and (p / ROWS_FILE).exists() and not (p / MODEL_CONFIG_FILE).exists():
        raise SampleError(f"{p}: is an rcond corpus (scheme.json, rows.arrow, tokenizer/), not a model; train on "
                          f"it (rcond train --corpus {p} --out RUN) and sample with --model RUN (its model is in "
                          f"RUN/model)")
    if (p / CONFIG_FILE).is_file() and not (p / MODEL_DIR).exists():
        if (p / CHECKPOINT_DIR / STATE_FILE).is_file():
            raise SampleError(f"{p}: a training run that has not saved its model yet (no {p / MODEL_DIR}); let it "
                              f"finish, or continue it with: rcond train --out {p} --resume")
        raise SampleError(f"{p}: a training run that saved no model and no checkpoint (it stopped before its "
                          f"first one); there is nothing to sample or resume: start it again with rcond train "
                          f"--out {p} and its --corpus or --config")
    return p


def check_device(spec: str) -> torch.device:
    """``auto`` (cuda if available, else cpu), ``cpu``, or an accelerator torch can use on this machine
    (``cuda[:N]``, ``mps``, ...); a SampleError naming the device otherwise, before anything is loaded."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise SampleError(f"--device {spec!r}: not a device; use auto, cpu, cuda[:N] or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "meta":
        raise SampleError(f"--device {spec}: meta tensors hold no values, so nothing can be sampled there; "
                          f"use auto, cpu or an accelerator")
    here = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if here is None or here.type != dev.type:
        use = "cpu" + (f" or {here.type}" if here is not None else "")
        raise SampleError(f"--device {spec}: {dev.type.upper()} is not available here; use --device {use}")
    if dev.index is not None and dev.index >= torch.accelerator.device_count():
        raise SampleError(f"--device {spec}: this machine has {torch.accelerator.device_count()} {dev.type} "
                          f"device(s), numbered from 0")
    return dev


def load_sampler(path: str | os.PathLike, device: str = "auto", *, trust_remote_code: bool = False) -> Sampler:
    """Load a saved model (or a run directory's ``model/``) onto ``device`` (:func:`check_device`);
    ``trust_remote_code`` for a model trained from a hub model with its own code."""
    from .modeling import load_pretrained

    dev = check_device(device)
    model, tokenizer, scheme = load_pretrained(resolve_model_dir(path), device=dev, trust_remote_code=trust_remote_code)
    return Sampler(model, tokenizer, scheme)


# ---------------------------------------------------------------------------- summary
def format_summary(samples: Sequence[Sample], conds: Sequence[Condition], out, seconds: float, device,
                   scorer_name: str | None) -> str:
    """One screen: totals and speed, then per condition n, mean length, share ended by eos, score mean ± sd."""
    tokens = sum(s.num_tokens for s in samples)
    lines = [f"wrote {len(samples):,} samples to {out}; sampled in {seconds:.1f} s on {device} "
             f"({len(samples) / max(seconds, 1e-9):,.1f} samples/s, {tokens / max(seconds, 1e-9):,.0f} tokens/s)"]
    score_head = f"  score ({scorer_name})" if scorer_name else ""
    lines.append(f"  {'condition':<24}{'n':>7}{'tokens':>9}{'eos':>7}{score_head}")
    for c in conds:
        group = [s for s in samples if (s.mode, s.level) == (c.mode, c.level)]
        if not group:
            continue
        line = (f"  {c.label:<24}{len(group):>7,}{sum(s.num_tokens for s in group) / len(group):>9.1f}"
                f"{sum(s.finished for s in group) / len(group):>7.0%}")
        scores = [s.score for s in group if s.score is not None]
        if scores:
            mean = sum(scores) / len(scores)
            sd = math.sqrt(sum((x - mean) ** 2 for x in scores) / (len(scores) - 1)) if len(scores) > 1 else 0.0
            line += f"  {mean:+.3f} ± {sd:.3f}"
        lines.append(line)
    cut = [x.prompt_tokens_cut for x in samples if x.prompt_tokens_cut]
    if cut:
        lines.append(f"  prompts cut to fit the context: {len(cut):,} of {len(samples):,} samples kept only their "
                     f"prompt's last tokens ({min(cut):,} to {max(cut):,} left out; prompt_tokens_cut in the output)")
    return "\n".join(lines)
