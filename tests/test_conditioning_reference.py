"""The corpus rows checked against a deliberately simple, pure-Python reference of DESIGN §3–§4.

The reference below is written from the written rules (DESIGN §3, the docstrings of
``rcond.conditioning`` and ``rcond.corpus``), one record and one token at a time, and shares no
code with the vectorised builder:

- a document is ``mode [rtg] part [rtg] part ... eos``: the mode token, in ``on`` mode an RTG token
  before every part that carries a reward-to-go (the prompt of a scored or pairs record, every
  assistant turn of a dialog), the part's words, and ``eos`` last;
- target weights: 1 for response / assistant words, 0 for prompt / user / system words (1 with
  ``train_on_prompt``), 0 for control tokens; the closing ``eos`` weighs what the part it closes
  weighs (1 after a response or an assistant turn);
- a document longer than ``block_size`` is cut: with ``truncate`` its first ``block_size`` tokens
  stay; otherwise the first piece is its first ``block_size`` tokens and every later piece
  re-opens with ``mode [RTG in force]`` (in ``on`` mode the RTG token in force at the cut, left
  out when the piece's first token is an RTG token of its own) and takes as many of the following
  tokens as fit;
- loss weights within a piece: ``loss_weight[i]`` = target weight of token ``i+1``, 0 at the
  piece's last position; a piece with no nonzero loss weight is left out;
- the bin of a token: that of the RTG token in force in its document (the latest one at or before
  it; tokens before a dialog's first RTG token take the first one, and none (-1) once truncation
  cut that one away); a re-opening prefix carries the RTG in force at the cut, or, when the piece
  opens with an RTG token of its own, that one (its mode token comes before it, as a document's
  first tokens come before its first RTG); -1 for ``off``;
- scheme.counts: per bin, the markers (RTG values) with at least one RTG token, original or
  re-opening copy, in a piece that is kept;
- the unconditional draw: one uniform draw per document in record order from
  ``default_rng(seed)``; an ``on`` document whose draw is below ``uncond_fraction`` is built
  ``off``, without its RTG tokens;
- the rewards quantile edges are fitted on: every marker's with an RTG token in a kept piece,
  and every reward of an unconditional document with a kept piece (with ``truncate``, only where
  its RTG token would have sat inside the block); the rest count as left out; when that leaves
  nothing, every marker's reward, none left out (unscored pair sides are never fitted).

The rows of the built corpus are taken apart into pieces by their ``segment_ids`` and compared
with the reference's pieces as a multiset (packing may put pieces in any row and order). Word
ids come from ``conftest.word_tokenizer`` (a=1 ... h=8, any other word -> 0 = eos); with K bins
the control ids are on=9, off=10, rtg:k=11+k.
"""

import bisect
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest

from conftest import WORDS, word_tokenizer, write_jsonl
from rcond.corpus import CorpusError, PackOptions, build, load
from rcond.sources import SourceReader
from rcond.tokens import ControlScheme

ON, OFF, EOS, PAD = 9, 10, 0, 0
LETTERS = list("abcdefgh")


def rtg_id(k: int) -> int:
    return 11 + k


def word_ids(text: str) -> list[int]:
    return [WORDS.index(w) if w in WORDS else 0 for w in text.split()]  # unknown words -> unk = <eos> = 0


# ============================================================================ the reference
@dataclass
class Doc:
    on: bool
    tokens: list  # ("mode",) | ("rtg", marker) | ("word", id) | ("eos",)
    weights: list  # target weight of each token
    off_rewards: list = field(default_factory=list)  # drawn unconditional: (reward, where its RTG token would be)


@dataclass
class Reference:
    """Every document of a corpus, its pieces and the summary the reference expects."""

    edges: list
    num_bins: int
    block_size: int
    truncate: bool
    train_on_prompt: bool
    uncond_fraction: float = 0.0
    seed: int = 0
    marker_bin: list = field(default_factory=list)
    marker_reward: list = field(default_factory=list)  # per marker: its reward-to-go, None for a fixed pair side
    dropped: set = field(default_factory=set)  # markers of documents drawn unconditional: no RTG token
    docs: list = field(default_factory=list)
    pieces: list = field(default_factory=list)  # kept: (ids, loss weights, positions, bins), tuples
    left_out: list = field(default_factory=list)  # lengths of the pieces with nothing to train
    truncated: int = 0
    present: set = field(default_factory=set)  # markers with an RTG token in a kept piece
    reopened_with_own_rtg: int = 0  # later pieces whose first token is an RTG token (no prefix RTG)
    prefix_rtg_ahead: int = 0  # prefix RTG tokens of a marker whose own RTG token comes later
    off_kept: list = field(default_factory=list)  # rewards of unconditional documents the rows hold
    off_cut: int = 0  # rewards of unconditional documents the rows do not hold

    def __post_init__(self):
        # one draw per document in record order, from the seeded generator (the builder draws the
        # same stream a batch at a time): an on document stays on when its draw >= uncond_fraction
        self.draws = iter(np.random.default_rng(self.seed).random(100_000))

    # ---------------------------------------------------------------- records -> documents
    def bin_of(self, reward: float) -> int:
        return bisect.bisect_right(self.edges, reward)  # the number of edges <= reward

    def marker(self, bin_: int, reward: float | None) -> tuple:
        self.marker_bin.append(bin_)
        self.marker_reward.append(reward)
        return ("rtg", len(self.marker_bin) - 1)

    def drawn(self, doc: Doc) -> Doc:
        """The document after its draw: an on document drawn unconditional loses its RTG tokens
        (their markers are dropped) and becomes off, keeping each scored reward with the
        position its RTG token would have had."""
        draw = next(self.draws)
        if not doc.on or draw >= self.uncond_fraction:
            return doc
        rtg = [i for i, t in enumerate(doc.tokens) if t[0] == "rtg"]
        rewards = [(self.marker_reward[doc.tokens[i][1]], i) for i in rtg]
        self.dropped.update(doc.tokens[i][1] for i in rtg)
        keep = [i for i, t in enumerate(doc.tokens) if t[0] != "rtg"]
        return Doc(False, [doc.tokens[i] for i in keep], [doc.weights[i] for i in keep],
                   [(r, at) for r, at in rewards if r is not None])

    def context_weight(self) -> float:
        return 1.0 if self.train_on_prompt else 0.0

    def single(self, prompt: str, response: str, bin_: int, reward: float | None) -> Doc:
        """``on rtg prompt response eos`` (scored records, each side of a pair)."""
        p, r = word_ids(prompt), word_ids(response)
        tokens = [("mode",), self.marker(bin_, reward)] + [("word", i) for i in p] + [("word", i) for i in r] + [("eos",)]
        weights = [0.0, 0.0] + [self.context_weight()] * len(p) + [1.0] * len(r) + [1.0]
        return Doc(True, tokens, weights)

    def scored(self, row: dict) -> list[Doc]:
        response = row["response"] if "response" in row else row["text"]
        return [self.single(row.get("prompt") or "", response, self.bin_of(row["reward"]), row["reward"])]

    def pairs(self, row: dict) -> list[Doc]:
        sides = []
        for name, fixed in (("chosen", self.num_bins - 1), ("rejected", 0)):
            text = row[name]
            if "prompt" in row:
                prompt, response = row["prompt"], text
            else:  # HH-RLHF dialogue: the prompt runs through the last "\n\nAssistant:"
                cut = text.rfind("\n\nAssistant:") + len("\n\nAssistant:")
                prompt, response = text[:cut], text[cut:]
            score = row.get(f"{name}_score")
            sides.append(self.single(prompt, response, fixed if score is None else self.bin_of(score), score))
        return sides

    def dialog(self, row: dict, gamma: float) -> list[Doc]:
        turns = row["turns"]
        rewards = [t.get("reward") or 0.0 for t in turns if t["role"] == "assistant"]
        tokens, weights, a = [("mode",)], [0.0], 0
        for t in turns:
            ids = word_ids(t["content"])
            if t["role"] == "assistant":
                rtg = sum(gamma ** k * r for k, r in enumerate(rewards[a:]))
                a += 1
                tokens += [self.marker(self.bin_of(rtg), rtg)] + [("word", i) for i in ids]
                weights += [0.0] + [1.0] * len(ids)
            else:
                tokens += [("word", i) for i in ids]
                weights += [self.context_weight()] * len(ids)
        last_weight = 1.0 if turns[-1]["role"] == "assistant" else self.context_weight()
        return [Doc(True, tokens + [("eos",)], weights + [last_weight])]

    def text(self, row: dict) -> list[Doc]:
        ids = word_ids(row["text"])
        return [Doc(False, [("mode",)] + [("word", i) for i in ids] + [("eos",)], [0.0] + [1.0] * (len(ids) + 1))]

    # ---------------------------------------------------------------- documents -> pieces
    def in_force(self, tokens: list) -> list:
        """Per token, the marker in force: the latest RTG token at or before it, else the first
        RTG token of the document, else None."""
        rtgs = [t[1] for t in tokens if t[0] == "rtg"]
        latest, out = None, []
        for t in tokens:
            if t[0] == "rtg":
                latest = t[1]
            out.append(latest if latest is not None else (rtgs[0] if rtgs else None))
        return out

    def add(self, doc: Doc) -> None:
        doc = self.drawn(doc)
        self.docs.append(doc)
        B = self.block_size
        tokens, weights = doc.tokens, doc.weights
        if self.truncate and len(tokens) > B:
            self.truncated += len(tokens) - B
            tokens, weights = tokens[:B], weights[:B]  # the document as it survives
        force = self.in_force(tokens)
        at = B - 1 if len(tokens) == B + 1 else B  # no piece of the eos alone after a prefix: one token stays with it
        pieces = [(tokens[:at], weights[:at], force[:at])]
        while at < len(tokens):
            m = force[at - 1]  # the RTG in force at the cut
            if not doc.on:
                prefix = [("mode",)]
            elif tokens[at][0] == "rtg":  # the piece opens with an RTG token of its own, in force from its mode token
                prefix = [("mode",)]
                m = tokens[at][1]
                self.reopened_with_own_rtg += 1
            else:
                prefix = [("mode",), ("rtg", m)]
                if m not in [t[1] for t in tokens[:at] if t[0] == "rtg"]:
                    self.prefix_rtg_ahead += 1
            take = B - len(prefix)
            if len(tokens) - (at + take) == 1 and take > 1:
                take -= 1
            pieces.append((prefix + tokens[at:at + take], [0.0] * len(prefix) + weights[at:at + take],
                           [m] * len(prefix) + force[at:at + take]))
            at += take
        held = False  # some piece of the document is kept
        for toks, tw, mk in pieces:
            lw = tw[1:] + [0.0]
            if not any(lw):
                self.left_out.append(len(toks))
                continue
            held = True
            ids, bins = [], []
            for t, m in zip(toks, mk):
                bins.append(self.marker_bin[m] if doc.on and m is not None else -1)
                if t[0] == "mode":
                    ids.append(ON if doc.on else OFF)
                elif t[0] == "rtg":
                    ids.append(rtg_id(self.marker_bin[t[1]]))
                    self.present.add(t[1])
                elif t[0] == "eos":
                    ids.append(EOS)
                else:
                    ids.append(t[1])
            self.pieces.append((tuple(ids), tuple(lw), tuple(range(len(toks))), tuple(bins)))
        for r, at in doc.off_rewards:  # truncated where its RTG token would be: cut with it
            if held and not (self.truncate and at >= B):
                self.off_kept.append(r)
            else:
                self.off_cut += 1

    def fit(self) -> tuple[list, int]:
        """The rewards the bin edges are fitted on and how many were left out: the reward-to-go of
        every marker with an RTG token in a kept piece, the rewards of unconditional documents the
        rows hold; when that leaves nothing, every marker's (none of them then counted out)."""
        scored = [m for m, r in enumerate(self.marker_reward) if r is not None and m not in self.dropped]
        kept = [self.marker_reward[m] for m in scored if m in self.present]
        if not kept and not self.off_kept:
            return [self.marker_reward[m] for m in scored], self.off_cut
        return self.off_kept + kept, self.off_cut + len(scored) - len(kept)

    @property
    def counts(self) -> list[int]:
        out = [0] * self.num_bins
        for m in self.present:
            out[self.marker_bin[m]] += 1
        return out


def reference(fmt: str, rows: list[dict], *, edges: list | None = None, quantile_bins: int | None = None,
              block_size: int, truncate: bool = False, train_on_prompt: bool = False, gamma: float = 1.0,
              uncond_fraction: float = 0.0, seed: int = 0) -> Reference:
    """The reference corpus with explicit ``edges``, or with ``quantile_bins`` edges fitted on the
    rewards :meth:`Reference.fit` picks (which pieces are kept does not depend on the bins: a
    first pass with any edges finds those rewards, a second uses the edges fitted on them; turning
    rewards into quantile edges is ``ControlScheme.fit``'s, tested against hand-computed cases in
    tests/test_tokens.py)."""
    def run(e: list) -> Reference:
        ref = Reference(list(e), len(e) + 1, block_size, truncate, train_on_prompt, uncond_fraction, seed)
        for row in rows:
            for d in ref.dialog(row, gamma) if fmt == "dialog" else getattr(ref, fmt)(row):
                ref.add(d)
        return ref

    if quantile_bins is None:
        return run(edges)
    values, _ = run([0.0] * (quantile_bins - 1)).fit()
    scheme = (ControlScheme.fit(values, quantile_bins, "quantile") if values
              else ControlScheme.fit([-1.0, 1.0], quantile_bins, "uniform"))  # nothing to fit: edges span [-1, 1]
    return run(scheme.edges)


# ============================================================================ the built corpus
def pieces_of(rows: dict, block_size: int) -> list:
    """The rows taken apart by segment id: (ids, loss weights, positions, bins) per piece. Also
    checks the rows' shape: pieces numbered 0, 1, ... from the row's start, each one run,
    padding (segment -1) only at the end, with the pad id, positions from 0, weight 0, bin -1."""
    out = []
    for r in range(len(rows["input_ids"])):
        ids, pos, seg, lw, bins = (rows[k][r] for k in ("input_ids", "position_ids", "segment_ids",
                                                         "loss_weight", "bin_ids"))
        assert len(ids) == block_size
        used = int(np.count_nonzero(seg >= 0))
        assert used > 0 and (seg[used:] == -1).all() and (seg[:used] >= 0).all(), seg
        assert (np.diff(seg[:used]) >= 0).all() and set(seg[:used].tolist()) == set(range(seg[used - 1] + 1)), seg
        for s in range(int(seg[used - 1]) + 1):
            at = np.flatnonzero(seg == s)
            out.append((tuple(ids[at].tolist()), tuple(lw[at].tolist()), tuple(pos[at].tolist()),
                        tuple(bins[at].tolist())))
        pad = block_size - used
        assert ids[used:].tolist() == [PAD] * pad and pos[used:].tolist() == list(range(pad))
        assert lw[used:].tolist() == [0.0] * pad and bins[used:].tolist() == [-1] * pad
    return out


def built(tmp_path, fmt: str, rows: list[dict], *, edges: list | None = None, quantile_bins: int | None = None,
          block_size: int, truncate: bool = False, train_on_prompt: bool = False, gamma: float = 1.0,
          uncond_fraction: float = 0.0, seed: int = 0, encode_batch: int = 5, workers: int = 1, name: str = "c"):
    src = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    opts = PackOptions(block_size=block_size, uncond_fraction=uncond_fraction, seed=seed, truncate=truncate,
                       train_on_prompt=train_on_prompt, encode_batch=encode_batch, workers=workers)
    reader = SourceReader([str(src)], fmt, gamma=gamma)
    binning = "quantile" if quantile_bins is not None else "edges:" + ",".join(map(str, edges))
    _, summary = build(reader, tmp_path / name, word_tokenizer(), num_bins=quantile_bins, binning=binning,
                       opts=opts, progress=False)
    ds, scheme, tok = load(tmp_path / name)
    assert scheme.token_ids(tok) == {scheme.on_token: ON, scheme.off_token: OFF,
                                     **{t: rtg_id(k) for k, t in enumerate(scheme.rtg_tokens)}}
    return {k: np.array(ds[k]) for k in ds.column_names}, scheme, summary


def differences(got: list, want: list) -> str:
    g, w = Counter(got), Counter(want)
    extra, missing = g - w, w - g
    lines = [f"{sum(extra.values())} pieces in the rows the reference has not, {sum(missing.values())} the other way"]
    lines += [f"  rows only: {p}" for p in list(extra.elements())[:6]]
    lines += [f"  reference only: {p}" for p in list(missing.elements())[:6]]
    return "\n".join(lines)


def check_against_reference(tmp_path, fmt: str, rows: list[dict], **kw) -> Reference:
    ref = reference(fmt, rows, **{k: v for k, v in kw.items() if k not in ("encode_batch", "workers", "name")})
    if not ref.pieces:  # nothing left to train: the build must refuse, leaving no corpus behind
        with pytest.raises(CorpusError, match="no token is left to train"):
            built(tmp_path, fmt, rows, **kw)
        return ref
    got_rows, scheme, s = built(tmp_path, fmt, rows, **kw)
    got = pieces_of(got_rows, kw["block_size"])
    assert Counter(got) == Counter(ref.pieces), differences(got, ref.pieces)
    on = sum(d.on for d in ref.docs)
    assert (s.documents, s.on_docs, s.off_docs) == (len(ref.docs), on, len(ref.docs) - on)
    assert (s.pieces, s.untrained_pieces, s.untrained_tokens, s.truncated_tokens) == (
        len(ref.pieces), len(ref.left_out), sum(ref.left_out), ref.truncated)
    assert (s.rows, s.tokens) == (len(got_rows["input_ids"]), sum(len(p[0]) for p in ref.pieces))
    assert s.content_tokens == sum(t[0] in ("word", "eos") for d in ref.docs for t in d.tokens)
    assert s.trained_tokens == sum(sum(p[1]) for p in ref.pieces)
    assert scheme.counts == ref.counts
    assert scheme.edges == ref.edges and s.cut_rewards == ref.fit()[1]
    return ref


# ============================================================================ random inputs
def words(rng, lo: int, hi: int) -> str:
    return " ".join(rng.choice(LETTERS, int(rng.integers(lo, hi + 1))))


def reward(rng) -> float:
    return float(rng.integers(-6, 7)) / 2  # halves: exact in binary, and edges at 0 / ±0.5 / 1.5 are hit exactly


def random_rows(fmt: str, rng, block_size: int, n: int) -> list[dict]:
    """``n`` records of ``fmt`` with lengths around and beyond ``block_size``; a few recurring
    prompts, so that the build's cache of recurring texts is used across batches."""
    B = block_size
    pool = [words(rng, 1, 3) for _ in range(3)]
    rows = []
    for _ in range(n):
        if fmt == "scored":
            row = {"reward": reward(rng)}
            kind = rng.integers(0, 4)
            if kind == 1:
                row["prompt"] = ""
            elif kind == 2:
                row["prompt"] = pool[int(rng.integers(0, len(pool)))]
            elif kind == 3:
                row["prompt"] = words(rng, 1, B + 3)
            row["response"] = words(rng, 1, 2 * B)
        elif fmt == "pairs":
            chosen, rejected = words(rng, 1, B + 2), words(rng, 1, B + 2)
            if rng.random() < 0.3:  # HH-RLHF dialogues; "Human:" and "Assistant:" are unknown words (id 0)
                history = words(rng, 1, B)
                if rng.random() < 0.5:
                    history += f"\n\nAssistant: {words(rng, 1, 3)}\n\nHuman: {words(rng, 1, 3)}"
                row = {"chosen": f"\n\nHuman: {history}\n\nAssistant: {chosen}",
                       "rejected": f"\n\nHuman: {history}\n\nAssistant: {rejected}"}
            else:
                row = {"prompt": pool[int(rng.integers(0, len(pool)))] if rng.random() < 0.4
                       else ("" if rng.random() < 0.2 else words(rng, 1, B + 2)),
                       "chosen": chosen, "rejected": rejected}
            if rng.random() < 0.5:
                row["chosen_score"], row["rejected_score"] = reward(rng), reward(rng)
        elif fmt == "dialog":
            turns = []
            if rng.random() < 0.2:
                turns.append({"role": "system", "content": words(rng, 1, 3)})
            for _ in range(int(rng.integers(1, 4))):
                turns.append({"role": "user", "content": words(rng, 1, B + 2)})
                turn = {"role": "assistant", "content": words(rng, 1, B)}
                if rng.random() < 0.7:
                    turn["reward"] = reward(rng)
                turns.append(turn)
            if rng.random() < 0.3:
                turns = turns[1:] if turns[0]["role"] == "user" else turns  # opens with the assistant
            if rng.random() < 0.25:
                turns.append({"role": "user", "content": words(rng, 1, 4)})  # ends with the user
            if all("reward" not in t for t in turns):
                next(t for t in turns if t["role"] == "assistant")["reward"] = reward(rng)
            row = {"turns": turns}
        else:
            row = {"text": words(rng, 1, 2 * B + 3)}
        rows.append(row)
    return rows


FORMATS = ["scored", "pairs", "dialog", "text"]
EDGES = {"scored": [0.0], "pairs": [-0.5, 1.5], "dialog": [-1.0, 0.0, 1.5], "text": [0.0]}
CASES = [(fmt, B, truncate, top) for fmt in FORMATS for B in (4, 6, 8, 12)
         for truncate in (False, True) for top in (False, True)]


def case_rows(fmt: str, B: int, truncate: bool, top: bool) -> list[dict]:
    seed = [FORMATS.index(fmt), B, int(truncate), int(top)]
    return random_rows(fmt, np.random.default_rng(seed), B, 32)


@pytest.mark.parametrize("fmt,B,truncate,top", CASES,
                         ids=[f"{f}-B{B}-{'truncate' if t else 'split'}-{'prompt' if p else 'noprompt'}"
                              for f, B, t, p in CASES])
def test_random_records_match_the_reference(tmp_path, fmt, B, truncate, top):
    rows = case_rows(fmt, B, truncate, top)
    gamma = 0.5 if fmt == "dialog" and B == 8 else 1.0  # dialogs at block 8: discounted reward-to-go
    check_against_reference(tmp_path, fmt, rows, edges=EDGES[fmt], block_size=B, truncate=truncate,
                            train_on_prompt=top, gamma=gamma)


def test_the_random_inputs_reach_every_rule():
    """The random records above are not too tame: over all cases the reference meets every rule
    it implements (checked on the reference alone, no build)."""
    seen = Counter()
    for fmt, B, truncate, top in CASES:
        gamma = 0.5 if fmt == "dialog" and B == 8 else 1.0
        ref = reference(fmt, case_rows(fmt, B, truncate, top), edges=EDGES[fmt], block_size=B,
                        truncate=truncate, train_on_prompt=top, gamma=gamma)
        mode = "truncate" if truncate else "split"
        seen[f"{fmt} {mode} pieces"] += len(ref.pieces)
        seen[f"{fmt} {mode} left out"] += len(ref.left_out)
        seen[f"{fmt} {mode} truncated tokens"] += ref.truncated
        seen[f"{fmt} {mode} docs longer than B"] += sum(len(d.tokens) > B for d in ref.docs)
        seen[f"{fmt} reopened with own rtg"] += ref.reopened_with_own_rtg
        seen[f"{fmt} prefix rtg ahead"] += ref.prefix_rtg_ahead
        seen[f"{fmt} {mode} markers not counted"] += len(ref.marker_bin) - len(ref.present)
        seen[f"{fmt} pieces with bin -1 in on docs"] += sum(
            p[0][0] == ON and -1 in p[3] for p in ref.pieces)
        for b in range(len(EDGES[fmt]) + 1):
            seen[f"{fmt} bin {b}"] += ref.counts[b]
    for fmt in FORMATS:
        for mode in ("split", "truncate"):
            assert seen[f"{fmt} {mode} pieces"] > 100 and seen[f"{fmt} {mode} docs longer than B"] > 20
        assert seen[f"{fmt} truncate truncated tokens"] > 0
        if fmt != "text":
            assert seen[f"{fmt} split left out"] > 0 and seen[f"{fmt} truncate left out"] > 0
            assert seen[f"{fmt} truncate markers not counted"] > 0
            assert all(seen[f"{fmt} bin {b}"] > 0 for b in range(len(EDGES[fmt]) + 1))
    assert seen["dialog reopened with own rtg"] > 0 and seen["dialog prefix rtg ahead"] > 0
    # split, never: a marker's RTG token is followed by trained text, in its piece or after the next piece's prefix copy
    assert all(seen[f"{fmt} split markers not counted"] == 0 for fmt in FORMATS)
    assert seen["dialog pieces with bin -1 in on docs"] > 0  # truncation cut the first RTG token


# ============================================================================ hand-computed cases
def test_the_reference_reproduces_hand_computed_rows():
    """The reference itself, on cases of tests/test_corpus.py worked out by hand."""
    ref = reference("scored", [{"prompt": "a", "response": "b c d e f", "reward": 1}], edges=[0.0], block_size=6)
    assert sorted(ref.pieces) == [((ON, 12, 1, 2, 3, 4), (0, 0, 1, 1, 1, 0), (0, 1, 2, 3, 4, 5), (1,) * 6),
                                  ((ON, 12, 5, 6, 0), (0, 1, 1, 1, 0), (0, 1, 2, 3, 4), (1,) * 5)]
    ref = reference("scored", [{"prompt": "a a a a a a", "response": "b", "reward": 1}], edges=[0.0], block_size=6)
    assert [p[0] for p in ref.pieces] == [(ON, 12, 1, 1, 2, 0)] and ref.left_out == [6] and ref.counts == [0, 1]
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "reward": -1},
             {"role": "user", "content": "c c c c c"}, {"role": "assistant", "content": "d", "reward": 2}]
    ref = reference("dialog", [{"turns": turns}], edges=[1.5], block_size=6, truncate=True)
    assert [p[0] for p in ref.pieces] == [(ON, 1, 11, 2, 3, 3)] and ref.counts == [1, 0] and ref.truncated == 6
    # split: [on a r0 b c c] + [on r0 c c c r1] (nothing trained: left out) + [on r1 d eos]
    ref = reference("dialog", [{"turns": turns}], edges=[1.5], block_size=6)
    assert [p[0] for p in ref.pieces] == [(ON, 1, 11, 2, 3, 3), (ON, 12, 4, 0)] and ref.left_out == [6]
    assert ref.counts == [1, 1]
    long = [{"role": "user", "content": "a a a a a a a"}, {"role": "assistant", "content": "b", "reward": 2}]
    ref = reference("dialog", [{"turns": long}], edges=[1.5], block_size=6, truncate=True, train_on_prompt=True)
    assert ref.pieces == [((ON, 1, 1, 1, 1, 1), (1, 1, 1, 1, 1, 0), tuple(range(6)), (-1,) * 6)]
    assert ref.counts == [0, 0]


DIALOG_EDGE_CASES = {
    # a piece that opens with an RTG token of its own: [on c r1 a a c] + [on r2 b eos]
    "reopens-with-own-rtg": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "a a", "reward": -1},
                             {"role": "user", "content": "c"}, {"role": "assistant", "content": "b", "reward": 2}],
    # a first user turn longer than the block: the re-opening prefix carries the RTG token ahead
    "prefix-rtg-ahead": [{"role": "user", "content": "a b c d e f g h a b c"},
                         {"role": "assistant", "content": "d e", "reward": 1}],
    # the remainder after the cut is the eos alone: [on r eos]
    "eos-alone": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b c d", "reward": 1}],
    # ends with a user turn: its eos weighs what the user turn weighs
    "ends-with-user": [{"role": "assistant", "content": "a b", "reward": 1}, {"role": "user", "content": "c d e f"}],
    # the first RTG token truncated away behind a long system + user opening
    "first-rtg-cut": [{"role": "system", "content": "a b c"}, {"role": "user", "content": "d e f"},
                      {"role": "assistant", "content": "g", "reward": 3}],
}


@pytest.mark.parametrize("truncate", [False, True], ids=["split", "truncate"])
@pytest.mark.parametrize("top", [False, True], ids=["noprompt", "prompt"])
@pytest.mark.parametrize("case", list(DIALOG_EDGE_CASES))
def test_dialog_edge_cases_match_the_reference(tmp_path, case, top, truncate):
    B = 6
    ref = check_against_reference(tmp_path, "dialog", [{"turns": DIALOG_EDGE_CASES[case]}], edges=[0.0, 1.5],
                                  block_size=B, truncate=truncate, train_on_prompt=top)
    if case == "reopens-with-own-rtg" and not truncate:
        assert ref.reopened_with_own_rtg == 1
        # the mode token takes the bin of the RTG token that opens the piece, as a document's first tokens do
        assert ((ON, rtg_id(2), 2, 0), (0, 1, 1, 0), (0, 1, 2, 3), (2, 2, 2, 2)) in ref.pieces
    if case == "prefix-rtg-ahead" and not truncate:
        assert ref.prefix_rtg_ahead >= 1


def test_many_records_in_small_batches_match_the_reference(tmp_path):
    """All four formats' records with batches of 1 and 3 records: markers numbered across batches."""
    rng = np.random.default_rng(11)
    for fmt in FORMATS:
        rows = random_rows(fmt, rng, 8, 12)
        for batch in (1, 3):
            check_against_reference(tmp_path, fmt, rows, edges=EDGES[fmt], block_size=8, encode_batch=batch,
                                    name=f"{fmt}{batch}")


def test_worker_processes_match_the_reference(tmp_path):
    """Two worker processes encode and condition the batches (rcond.parallel): the same pieces."""
    rows = random_rows("dialog", np.random.default_rng(5), 6, 40)
    check_against_reference(tmp_path, "dialog", rows, edges=EDGES["dialog"], block_size=6, encode_batch=4, workers=2)


# ============================================================================ unconditional draws, fitted edges
UNCOND_CASES = [(fmt, B, truncate) for fmt in FORMATS for B in (4, 8) for truncate in (False, True)]


def uncond_rows(fmt: str, B: int, truncate: bool) -> list[dict]:
    return random_rows(fmt, np.random.default_rng([7, FORMATS.index(fmt), B, int(truncate)]), B, 40)


@pytest.mark.parametrize("fmt,B,truncate", UNCOND_CASES,
                         ids=[f"{f}-B{B}-{'truncate' if t else 'split'}" for f, B, t in UNCOND_CASES])
def test_unconditional_draws_and_quantile_edges_match_the_reference(tmp_path, fmt, B, truncate):
    """A seeded fraction of on documents drawn unconditional (off, no RTG token), and quantile
    edges fitted on the rewards the rows hold: the rows, the summary, the edges and the count of
    rewards left out as the reference has them."""
    check_against_reference(tmp_path, fmt, uncond_rows(fmt, B, truncate), quantile_bins=3, block_size=B,
                            truncate=truncate, uncond_fraction=0.4, seed=B + 3, encode_batch=3)


def test_the_unconditional_cases_reach_every_rule():
    """Over the cases above, the reference meets every rule of the unconditional accounting: on
    documents drawn off, their rewards kept and (with --truncate) cut where the RTG token would
    sit past the block, markers cut beside them, for every format that carries rewards."""
    seen = Counter()
    for fmt, B, truncate in UNCOND_CASES:
        ref = reference(fmt, uncond_rows(fmt, B, truncate), quantile_bins=3, block_size=B, truncate=truncate,
                        uncond_fraction=0.4, seed=B + 3)
        mode = "truncate" if truncate else "split"
        seen[f"{fmt} drawn off"] += len(ref.dropped)
        seen[f"{fmt} {mode} off kept"] += len(ref.off_kept)
        seen[f"{fmt} {mode} off cut"] += ref.off_cut
        seen[f"{fmt} {mode} fitted"] += len(ref.fit()[0])
        seen[f"{fmt} {mode} cut"] += ref.fit()[1]
        seen[f"{fmt} on docs"] += sum(d.on for d in ref.docs)
    for fmt in ("scored", "pairs", "dialog"):
        assert seen[f"{fmt} drawn off"] > 10 and seen[f"{fmt} on docs"] > 10
        assert seen[f"{fmt} split off kept"] > 10 and seen[f"{fmt} truncate off kept"] > 5
        assert seen[f"{fmt} truncate off cut"] > 0 and seen[f"{fmt} truncate cut"] > seen[f"{fmt} truncate off cut"]
    assert seen["text drawn off"] == 0 and seen["text split fitted"] == 0


def test_quantile_edges_fitted_on_markers_alone_when_nothing_else_is_left(tmp_path):
    """Every marker's RTG token cut by --truncate and no unconditional reward in the rows: the
    edges follow all the markers' rewards, none counted out (the reference's fallback, built)."""
    rows = [{"turns": [{"role": "user", "content": "a a a a a a"}, {"role": "assistant", "content": "b", "reward": r}]}
            for r in (-1.0, 0.5, 2.0)]  # kept: [on a a a], trained on the prompt; cut: [a a a rtg b eos]
    ref = check_against_reference(tmp_path, "dialog", rows, quantile_bins=3, block_size=4, truncate=True,
                                  train_on_prompt=True)
    assert ref.present == set() and ref.fit() == ([-1.0, 0.5, 2.0], 0)
    assert ref.edges == ControlScheme.fit([-1.0, 0.5, 2.0], 3, "quantile").edges


def test_an_unconditional_reward_is_cut_where_its_rtg_token_would_sit_at_the_block_end(tmp_path):
    """uncond_fraction 1: every dialog drawn off. At block 4 with --truncate, ``on a a a | rtg b``
    would put the RTG token at position 4, past the block: its reward is cut though ``[off a a a]``
    is kept (trained on the prompt); ``on a a rtg`` puts it at 3: kept. Hand-computed: the edges
    are fitted on [2.0] alone and one reward is left out."""
    rows = [{"turns": [{"role": "user", "content": "a a a"}, {"role": "assistant", "content": "b", "reward": -1.0}]},
            {"turns": [{"role": "user", "content": "a a"}, {"role": "assistant", "content": "b", "reward": 2.0}]}]
    ref = check_against_reference(tmp_path, "dialog", rows, quantile_bins=2, block_size=4, truncate=True,
                                  train_on_prompt=True, uncond_fraction=1.0)
    assert (ref.off_kept, ref.off_cut, ref.fit(), ref.edges) == ([2.0], 1, ([2.0], 1), [2.0])


def test_an_unconditional_reward_alone_is_fitted_when_every_marker_is_cut(tmp_path):
    """Seed 8's first two draws are 0.33 and 0.99: at uncond_fraction 0.5 the first dialog is drawn
    off (its reward, RTG token at position 2, is held) and the second stays on, its RTG token cut
    by --truncate behind six prompt words. Something is left to fit, so the fallback to every
    marker does not apply: the edges follow [1.0] alone and the cut marker counts as left out."""
    assert np.random.default_rng(8).random(2).round(2).tolist() == [0.33, 0.99]
    rows = [{"turns": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "reward": 1.0}]},
            {"turns": [{"role": "user", "content": "a a a a a a"}, {"role": "assistant", "content": "b", "reward": 3.0}]}]
    ref = check_against_reference(tmp_path, "dialog", rows, quantile_bins=2, block_size=4, truncate=True,
                                  train_on_prompt=True, uncond_fraction=0.5, seed=8)
    assert [d.on for d in ref.docs] == [False, True] and ref.fit() == ([1.0], 1) and ref.edges == [1.0]
