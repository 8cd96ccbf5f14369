"""Evaluation metrics that need no model: calibration of requested reward levels, diversity.

Samples are the records ``rcond sample`` writes, one JSON object per line::

    {"prompt": str, "mode": "on"|"off", "level": int|null, "reward": float|null,
     "guidance": float|null, "text": str, "score": float}

``score`` is the gold reward of the text. All arithmetic is float64.

Calibration (DESIGN §8)
-----------------------
The *requested level* of a sample is its ``level``; when that is null but a raw ``reward`` was
requested, it is ``scheme.bin_of(reward)``; a sample with neither requested nothing and is only
counted (``Calibration.unrequested``). For each level k = 0..K-1 of the scheme, over the n
scores s_1..s_n of the samples that requested k:

- mean = (1/n) Σ s_i;  sd = sqrt(Σ (s_i - mean)² / (n - 1))  (sample sd; NaN when n < 2);
- median, p10, p90: quantiles with linear interpolation between order statistics
  (``numpy.quantile``'s default, the same rule as the quantile bin edges);
- in_bin = #{i : scheme.bin_of(s_i) = k} / n.

A level with n = 0 has every statistic NaN. Two Spearman rank correlations are reported:

- ``spearman_levels``: between k and mean_k over the levels with n > 0 — the steerability
  criterion "Spearman ρ ≥ 0.8 over levels";
- ``spearman_samples``: between the requested level and the score over all individual samples
  (much lower than the former when the spread within a level is large).

Spearman ρ = the Pearson correlation of the ranks, ties given the average of the ranks they
span (rank of the i-th smallest is i, 1-based). It is NaN when fewer than two pairs are given or
either variable is constant — so with a single requested level both ρ are NaN.

Diversity (DESIGN §8; mean token entropy needs a model and is not here)
-------------------------------------------------------------------------
Texts are split on whitespace into tokens.

- distinct-n = (#distinct n-grams over all texts) / (#n-grams over all texts), n = 1, 2, 3;
  NaN when there are no n-grams.
- mean_length = mean number of tokens per text.
- self-BLEU = (1/m) Σ_i BLEU(text_i; references = the other m - 1 texts) over m texts, with
  m ≤ ``max_texts``: when more texts are given, m of them evenly spaced in the input order are
  used (deterministic, and not biased to the first levels of a level-sorted file). NaN when
  m < 2. Higher = less diverse. It grows with m (more references, more matches), so compare
  groups at equal m.

BLEU-4 of a hypothesis h against references R, as sentence-level BLEU (Papineni et al. 2002):
m_n = Σ_g min(count_h(g), max_{r∈R} count_r(g)) over the n-grams g of h (clipped matches),
l_n = the number of n-grams of h, c = |h|, r = the reference length closest to c (the shorter
on a tie), BP = 1 if c > r else exp(1 - r/c), and

    BLEU = BP · exp(¼ Σ_{n=1..4} log p_n),   p_n = m_n / l_n if m_n > 0 else ε / max(l_n, 1).

Smoothing is "method 1" of Chen & Cherry (2014), ε = 0.1: an order with no match counts as ε
matches (also when h is shorter than n and has no n-grams at all); this is what NLTK's
``SmoothingFunction().method1`` does and what self-BLEU in the literature (Texygen, Zhu et al.
2018) uses. As in NLTK, BLEU = 0 when no unigram matches (m_1 = 0), including the empty h.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from .json_errors import json_error
from .tokens import ControlScheme

BLEU_ORDER = 4
BLEU_EPSILON = 0.1
SELF_BLEU_MAX_TEXTS = 500
NAN = float("nan")


class MetricsError(ValueError):
    """Samples that the metrics cannot use (missing score, bad level, unreadable file)."""


# ---------------------------------------------------------------------------- samples

def iter_jsonl(path: str | Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for every non-blank line; a file that cannot be read, a line
    that is not UTF-8, invalid JSON and JSON that Python cannot read (nested too deeply, an
    integer past 4,300 digits) are MetricsErrors naming the file (and line)."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise MetricsError(f"{path}: cannot read this JSONL file ({e.strerror or e})") from None
    with f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise MetricsError(f"{path}:{i}: not UTF-8 text (byte {e.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                yield i, json.loads(line.rstrip("\r\n"))  # an error's column then stays on the line
            except json.JSONDecodeError as e:
                raise MetricsError(f"{path}:{i}: not valid JSON ({json_error(e)})") from None
            except RecursionError:
                raise MetricsError(f"{path}:{i}: JSON nested too deeply to read") from None
            except ValueError as e:  # an integer past Python's int-from-text limit (4,300 digits)
                raise MetricsError(f"{path}:{i}: cannot read this JSON ({e})") from None


def read_samples(path: str | Path) -> list[Mapping]:
    """Read a samples JSONL file; every record must pass ``check_sample``."""
    return [check_sample(rec, f"{path}:{i}") for i, rec in iter_jsonl(path)]


def check_sample(rec: object, where: str) -> Mapping:
    """``rec`` if it is a sample with a string ``text``, a finite ``score`` and the optional
    ``level`` (integer), ``reward`` and ``guidance`` (finite numbers) null or of their type;
    else a MetricsError naming ``where``."""
    if not isinstance(rec, Mapping) or not isinstance(rec.get("text"), str):
        raise MetricsError(f"{where}: expected a sample object with a string 'text' field")
    sample_score(rec, where)
    level = rec.get("level")
    if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
        raise MetricsError(f"{where}: level {level!r} is not an integer or null")
    for key in ("reward", "guidance"):
        value = rec.get(key)
        if value is not None and not _is_finite_number(value):
            raise MetricsError(f"{where}: {key} {value!r} is not a finite number or null")
    return rec


def _is_finite_number(x: object) -> bool:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer beyond float range
        return False


def sample_score(rec: Mapping, where: str) -> float:
    """The finite ``score`` of a sample record, or a MetricsError naming ``where``."""
    s = rec.get("score")
    if not _is_finite_number(s):
        raise MetricsError(f"{where}: score {s!r} is not a finite number "
                           "(sample with --score-with to have samples scored)")
    return float(s)


def requested_level(rec: Mapping, scheme: ControlScheme) -> int | None:
    """The level a sample asked for: ``level``, else the bin of ``reward``, else None."""
    if rec.get("level") is not None:
        return scheme.check_level(rec["level"])
    if rec.get("reward") is not None:
        return scheme.bin_of(rec["reward"])
    return None


# ---------------------------------------------------------------------------- statistics

@dataclass
class ScoreSummary:
    """Summary of a group of scores; every field but n is NaN when n = 0."""

    n: int
    mean: float
    sd: float
    median: float
    p10: float
    p90: float

    @classmethod
    def of(cls, scores: Sequence[float]) -> "ScoreSummary":
        x = np.asarray(scores, dtype=np.float64)
        if x.size == 0:
            return cls(0, NAN, NAN, NAN, NAN, NAN)
        sd = float(x.std(ddof=1)) if x.size >= 2 else NAN
        p10, median, p90 = (float(q) for q in np.quantile(x, [0.1, 0.5, 0.9]))
        return cls(int(x.size), float(x.mean()), sd, median, p10, p90)


def rankdata(x: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    i = 0
    while i < x.size:
        j = i
        while j + 1 < x.size and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ with average ranks for ties; NaN for < 2 pairs or a constant variable."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} x values but {len(y)} y values")
    if len(x) < 2:
        return NAN
    rx, ry = rankdata(x), rankdata(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / den if den > 0 else NAN


# ---------------------------------------------------------------------------- calibration

@dataclass
class LevelCalibration:
    level: int
    bin_low: float
    bin_high: float
    scores: ScoreSummary
    in_bin: float


@dataclass
class Calibration:
    levels: list[LevelCalibration]
    spearman_levels: float
    spearman_samples: float
    n: int
    unrequested: int

    def to_dict(self) -> dict:
        return asdict(self)


def calibration(samples: Iterable[Mapping], scheme: ControlScheme) -> Calibration:
    """Per requested level: score summary and in-bin fraction; Spearman ρ over levels and samples."""
    by_level: list[list[float]] = [[] for _ in range(scheme.num_bins)]
    unrequested = 0
    for i, rec in enumerate(samples):
        k = requested_level(rec, scheme)
        if k is None:
            unrequested += 1
            continue
        by_level[k].append(sample_score(rec, f"sample {i}"))
    levels = []
    for k, scores in enumerate(by_level):
        lo, hi = scheme.bin_range(k)
        in_bin = sum(scheme.bin_of(s) == k for s in scores) / len(scores) if scores else NAN
        levels.append(LevelCalibration(k, lo, hi, ScoreSummary.of(scores), in_bin))
    filled = [lc for lc in levels if lc.scores.n > 0]
    rho_levels = spearman([lc.level for lc in filled], [lc.scores.mean for lc in filled])
    ks = [k for k, scores in enumerate(by_level) for _ in scores]
    rho_samples = spearman(ks, [s for scores in by_level for s in scores])
    return Calibration(levels, rho_levels, rho_samples, len(ks), unrequested)


# ---------------------------------------------------------------------------- diversity

def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(token_lists: Sequence[Sequence[str]], n: int) -> float:
    """#distinct n-grams / #n-grams over all texts; NaN when there are none."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for toks in token_lists:
        grams = _ngrams(toks, n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else NAN


def _closest_ref_len(c: int, ref_lens: Iterable[int]) -> int:
    return min(ref_lens, key=lambda r: (abs(r - c), r))


def _bleu_from_counts(c: int, matches: Sequence[int], totals: Sequence[int], r: int) -> float:
    if matches[0] == 0:
        return 0.0
    log_p = sum(math.log(m / t if m > 0 else BLEU_EPSILON / max(t, 1)) for m, t in zip(matches, totals))
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(log_p / len(matches))


def bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Smoothed sentence BLEU-4 of a token list against reference token lists (module docstring)."""
    if not references:
        raise ValueError("bleu: at least one reference is needed")
    matches, totals = [], []
    for n in range(1, BLEU_ORDER + 1):
        hyp = Counter(_ngrams(hypothesis, n))
        best: Counter = Counter()
        for ref in references:
            best |= Counter(_ngrams(ref, n))
        matches.append(sum(min(c, best[g]) for g, c in hyp.items()))
        totals.append(sum(hyp.values()))
    return _bleu_from_counts(len(hypothesis), matches, totals, _closest_ref_len(len(hypothesis), map(len, references)))


def self_bleu(token_lists: Sequence[Sequence[str]]) -> float:
    """Mean BLEU of each text against all the others; NaN for fewer than two texts.

    Equal to averaging ``bleu(t_i, others)`` but linear in the total length: for every n-gram
    the two largest per-text counts are kept, so the maximum over the other texts is the
    largest unless text i holds it, then the second largest.
    """
    m = len(token_lists)
    if m < 2:
        return NAN
    counts = [[Counter(_ngrams(t, n)) for n in range(1, BLEU_ORDER + 1)] for t in token_lists]
    top: list[dict[tuple[str, ...], tuple[int, int, int]]] = [{} for _ in range(BLEU_ORDER)]
    for i, per_n in enumerate(counts):
        for n_idx, cnt in enumerate(per_n):
            table = top[n_idx]
            for g, c in cnt.items():
                first, owner, second = table.get(g, (0, -1, 0))
                if c > first:
                    table[g] = (c, i, first)
                elif c > second:
                    table[g] = (first, owner, c)
    length_counts = Counter(len(t) for t in token_lists)
    total = 0.0
    for i, per_n in enumerate(counts):
        matches, totals = [], []
        for n_idx, cnt in enumerate(per_n):
            table = top[n_idx]
            m_n = 0
            for g, c in cnt.items():
                first, owner, second = table[g]
                m_n += min(c, second if owner == i else first)
            matches.append(m_n)
            totals.append(sum(cnt.values()))
        c = len(token_lists[i])
        others = [r for r, k in length_counts.items() if k > (r == c)]
        total += _bleu_from_counts(c, matches, totals, _closest_ref_len(c, others))
    return total / m


def evenly_spaced(items: Sequence, limit: int) -> list:
    """At most ``limit`` items, evenly spaced over the sequence (all of them if it is short)."""
    if len(items) <= limit:
        return list(items)
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, limit)).astype(np.int64))
    return [items[i] for i in idx]


def diversity(texts: Sequence[str], max_texts: int = SELF_BLEU_MAX_TEXTS) -> dict:
    """distinct-1/2/3, self-BLEU (on at most ``max_texts`` texts) and mean length in tokens."""
    if max_texts < 2:
        raise ValueError(f"max_texts must be >= 2, got {max_texts}")
    token_lists = [t.split() for t in texts]
    subset = evenly_spaced(token_lists, max_texts)
    return {
        "n": len(token_lists),
        "distinct_1": distinct_n(token_lists, 1),
        "distinct_2": distinct_n(token_lists, 2),
        "distinct_3": distinct_n(token_lists, 3),
        "self_bleu": self_bleu(subset),
        "self_bleu_texts": len(subset),
        "mean_length": float(np.mean([len(t) for t in token_lists])) if token_lists else NAN,
    }
