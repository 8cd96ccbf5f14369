"""Control-token scheme: mode tokens, reward-to-go (RTG) bins, and their (de)serialisation.

The scheme follows the Decision Transformer idea of conditioning on return-to-go, with the
return discretised into K bins so that each bin is one special token:

    <|rlhf:on|>  <|rlhf:off|>          mode: feedback-conditioned vs plain predictive data
    <|rtg:0|> ... <|rtg:K-1|>          reward-to-go bin, 0 = lowest reward, K-1 = highest

Bin edges are K-1 increasing interior cut points e_1 < ... < e_{K-1}. A value v falls in bin
k = #{j : e_j <= v}, so bin 0 is (-inf, e_1), bin k is [e_k, e_{k+1}) and bin K-1 is
[e_{K-1}, inf). Edges are fitted on the training rewards:

- ``quantile`` (default): e_j = the j/K quantile (linear interpolation) of the rewards, so
  bins hold about equal counts. Where e_j falls on a reward value v that several rewards
  share, the ties at v all go one way: up, as the rule above sends them, unless sending them
  down puts the count of rewards below the edge strictly nearer to j/K of them; then e_j is
  moved to midway between v and the next larger reward. (Plain interpolation sends ties up
  always: with rewards 0, 0, 0, 1 and K = 2 the median edge is 0 and both 0 and 1 land in bin
  1, so binary feedback with more negatives than positives lost its whole signal; the edge is
  0.5 here.) Tied rewards can still make neighbouring edges equal; duplicate edges are kept
  (the bins between them are simply empty) so K and the token set stay fixed.
- ``uniform``: K equal-width bins between the minimum and maximum reward.
- ``edges:a,b,...``: explicit, strictly increasing edges (K = len + 1).

Interpolated edges are computed exactly (in rationals) and rounded once, so an edge that is a
round number is that number: uniform edges over [-1, 1] with K = 10 include 0.6 itself, the
float a reward of 0.6 is, not 0.6000000000000001 (which put that reward one bin low).

Unlike the Decision Transformer, which feeds the raw return as a continuous input, the return
here is a token; a raw reward requested at sampling time is mapped through the stored edges.
"""

from __future__ import annotations

import bisect
import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

ON_TOKEN = "<|rlhf:on|>"
OFF_TOKEN = "<|rlhf:off|>"
RTG_TEMPLATE = "<|rtg:{k}|>"
SCHEME_FILE = "scheme.json"
FORMAT_VERSION = 1
DEFAULT_BINS = 10
MAX_BINS = 1024  # each bin is a vocabulary token that needs data of its own; bin ids are stored as int16


def is_bool(value: object) -> bool:
    """True for a Python bool, a NumPy bool or a 0-d torch bool tensor (what iterating a bool array
    gives): float() reads each as 1.0 or 0.0."""
    return isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool")


def not_a_reward(value: object) -> bool:
    """What fit and bin_of alike refuse as no reward: a string (float() reads "0.5" as 0.5) or a
    boolean (:func:`is_bool`)."""
    return isinstance(value, (str, bytes)) or is_bool(value)


class SchemeError(ValueError):
    """A control scheme is malformed or used with a value it cannot map."""


def parse_binning(spec: str) -> tuple[str, list[float] | None]:
    """``"quantile"`` | ``"uniform"`` | ``"edges:a,b,..."`` -> (kind, explicit edges or None)."""
    if spec in ("quantile", "uniform"):
        return spec, None
    if spec.startswith("edges:"):
        items = spec[len("edges:"):].split(",")
        if not "".join(items).strip():
            raise SchemeError(f"--binning {spec!r}: give at least one edge, e.g. edges:-0.5,0,0.5")
        try:
            edges = [float(x) for x in items]  # an empty item ("1,,2", "1,") is no number
        except ValueError as e:
            raise SchemeError(f"--binning {spec!r}: edges must be numbers separated by commas") from e
        if any(not math.isfinite(x) for x in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
            raise SchemeError(f"--binning {spec!r}: edges must be finite and strictly increasing")
        return "edges", edges
    raise SchemeError(f"unknown binning {spec!r}: expected quantile, uniform or edges:a,b,...")


def resolve_bins(num_bins: int | None, binning: str) -> int:
    """The number of bins K that ``--bins num_bins --binning binning`` asks for, checked before any
    input is read: explicit edges fix K (a ``--bins`` that says otherwise is a contradiction), and
    K is in [1, MAX_BINS]. ``num_bins`` None: the edges' K, else DEFAULT_BINS."""
    kind, edges = parse_binning(binning)
    if num_bins is not None and (isinstance(num_bins, bool) or not isinstance(num_bins, int)):
        raise SchemeError(f"--bins must be an integer, got {num_bins!r}")
    if edges is not None:
        if num_bins is not None and num_bins != len(edges) + 1:
            if not 2 <= num_bins <= MAX_BINS:  # no list of edges makes these: say what --bins takes
                raise SchemeError(f"--bins {num_bins} contradicts --binning {binning!r}: {len(edges)} edges make "
                                  f"{len(edges) + 1} bins; leave out --bins"
                                  + (" (one bin needs no edges: use --binning quantile)" if num_bins == 1 else ""))
            raise SchemeError(f"--bins {num_bins} contradicts --binning {binning!r}: {len(edges)} edges make "
                              f"{len(edges) + 1} bins; leave out --bins, or give {num_bins - 1} edges")
        num_bins = len(edges) + 1
    num_bins = DEFAULT_BINS if num_bins is None else num_bins
    if not 1 <= num_bins <= MAX_BINS:
        raise SchemeError(f"--bins must be between 1 and {MAX_BINS}, got {num_bins}"
                          + (" (each bin is a vocabulary token that needs training data of its own)"
                             if num_bins > MAX_BINS else ""))
    return num_bins


def quantile_edges(values: Sequence[float] | np.ndarray, num_bins: int) -> list[float]:
    """The j/K quantiles, j = 1..K-1, with linear interpolation between order statistics."""
    xs = np.sort(np.asarray(values, dtype=np.float64))                            # [n]
    if not len(xs):
        raise SchemeError("cannot fit bin edges: no rewards")
    n = len(xs)
    edges = []
    for j in range(1, num_bins):
        pos = Fraction((n - 1) * j, num_bins)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        edges.append(_ties_placed(xs, _between(float(xs[lo]), float(xs[hi]), pos - lo), n * j / num_bins))
    return _non_decreasing(edges)


def _ties_placed(xs: np.ndarray, edge: float, target: float) -> float:
    """``edge``, or where it falls on a reward value v that several of the sorted ``xs`` share
    and sending those ties below it brings the count below it strictly nearer to ``target``, the
    midpoint between v and the next larger value."""
    up = int(np.searchsorted(xs, edge, side="left"))    # rewards below the edge as it is: ties go up
    down = int(np.searchsorted(xs, edge, side="right"))  # rewards at or below it
    if down - up < 2 or down == len(xs) or abs(down - target) >= abs(up - target):
        return edge
    return _between(edge, float(xs[down]), Fraction(1, 2))


def uniform_edges(values: Sequence[float] | np.ndarray, num_bins: int) -> list[float]:
    """K equal-width bins spanning [min, max] of the values."""
    xs = np.asarray(values, dtype=np.float64)
    if not len(xs):
        raise SchemeError("cannot fit bin edges: no rewards")
    lo, hi = float(xs.min()), float(xs.max())
    if hi == lo:
        hi = lo + 1.0
    return _non_decreasing([_between(lo, hi, Fraction(j, num_bins)) for j in range(1, num_bins)])


def _between(a: float, b: float, t: Fraction | int) -> float:
    """a + (b - a) t for a <= b and t in [0, 1], computed exactly and rounded once to the nearest
    float (finite wherever a and b are: no overflow of b - a)."""
    return float(Fraction(a) + (Fraction(b) - Fraction(a)) * t)


def _non_decreasing(edges: list[float]) -> list[float]:
    """Edges made non-decreasing: an edge moved up past ties (:func:`_ties_placed`) lifts those
    after it that it passed (no reward lies between them)."""
    return np.maximum.accumulate(np.asarray(edges, dtype=np.float64)).tolist() if edges else []


@dataclass
class ControlScheme:
    """Which control tokens exist and how a reward maps to an RTG bin.

    ``edges`` has ``num_bins - 1`` entries. ``counts`` (tokens' documents per bin) and the
    fingerprints are filled in by preprocessing and stored in ``scheme.json``.
    """

    num_bins: int = 10
    edges: list[float] = field(default_factory=list)
    binning: str = "quantile"
    on_token: str = ON_TOKEN
    off_token: str = OFF_TOKEN
    rtg_template: str = RTG_TEMPLATE
    gamma: float = 1.0
    uncond_fraction: float = 0.05
    counts: list[int] = field(default_factory=list)
    tokenizer_fingerprint: str | None = None
    source_fingerprints: dict[str, str] = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        """The checks of a stored scheme (:func:`check_scheme_fields`) that apply before fitting:
        edges may still be missing, and then so may counts. A numpy integer for ``num_bins`` and a
        tuple or numpy array of edges are taken as the int and the list they hold."""
        self.num_bins = _checked_bins(self.num_bins)
        if isinstance(self.edges, (tuple, np.ndarray)):
            self.edges = self.edges.tolist() if isinstance(self.edges, np.ndarray) else list(self.edges)
        if self.edges:
            _check_edges(self.edges, self.num_bins)
            _check_binning(self.binning, self.edges)
        _check_tokens(self.on_token, self.off_token, self.rtg_template, self.num_bins)

    def learned_formats(self) -> list[str]:
        """The corpus formats a model saved with this scheme learned (sorted): ``options["formats"]``,
        which ``rcond train`` records, where it is a non-empty list (its names kept, anything else in
        it passed over); else ``options["format"]``, as a corpus's own scheme and a model saved
        before formats were recorded hold it; none where neither names one (a hand-edited file)."""
        recorded = self.options.get("formats")
        if not isinstance(recorded, list) or not recorded:
            recorded = [self.options.get("format")]
        return sorted({f for f in recorded if isinstance(f, str)})

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, rewards: Iterable[float], num_bins: int | None = None, binning: str = "quantile",
            **kw) -> "ControlScheme":
        """Fit bin edges to training rewards with the given binning spec. ``num_bins`` None: as
        many as explicit edges make, else DEFAULT_BINS; one that contradicts the edges is refused."""
        kind, explicit = parse_binning(binning)
        if num_bins is None:
            num_bins = DEFAULT_BINS if explicit is None else len(explicit) + 1
        num_bins = _checked_bins(num_bins)  # before the work of fitting
        if kind == "edges":
            assert explicit is not None
            if num_bins != len(explicit) + 1:
                raise SchemeError(f"num_bins {num_bins} contradicts binning {binning!r}: {len(explicit)} edges make "
                                  f"{len(explicit) + 1} bins")
            return cls(num_bins=num_bins, edges=list(explicit), binning=binning, **kw)
        values = _reward_values(rewards)
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise SchemeError(f"cannot fit bin edges: {bad} non-finite rewards")
        edges = quantile_edges(values, num_bins) if kind == "quantile" else uniform_edges(values, num_bins)
        return cls(num_bins=num_bins, edges=edges, binning=binning, **kw)

    # ------------------------------------------------------------------ mapping
    def bin_of(self, value: float) -> int:
        """The bin of a reward value: the number of edges <= value."""
        if not_a_reward(value):
            raise SchemeError(f"reward {value!r} is not a number")
        try:
            value = float(value)
        except (TypeError, ValueError, OverflowError):
            raise SchemeError(f"reward {value!r:.40} is not a finite number") from None
        if not math.isfinite(value):
            raise SchemeError(f"reward {value!r} is not a finite number")
        if len(self.edges) != self.num_bins - 1:
            raise SchemeError("scheme has no fitted bin edges yet")
        return bisect.bisect_right(self.edges, value)

    def bin_range(self, k: int) -> tuple[float, float]:
        """[low, high) of bin k; the outer bins are unbounded."""
        self.check_level(k)
        lo = -math.inf if k == 0 else self.edges[k - 1]
        hi = math.inf if k == self.num_bins - 1 else self.edges[k]
        return lo, hi

    def check_level(self, k: int) -> int:
        """``k`` as an int if it names a level (any integer type: a numpy one too), else SchemeError."""
        if not isinstance(k, numbers.Integral) or isinstance(k, (bool, np.bool_)):
            raise SchemeError(f"level {k!r} is not an integer: this scheme has levels 0..{self.num_bins - 1}")
        if not 0 <= k < self.num_bins:
            raise SchemeError(f"level {int(k)} does not exist: this scheme has levels 0..{self.num_bins - 1}")
        return int(k)

    # ------------------------------------------------------------------ tokens
    def rtg_token(self, k: int) -> str:
        return self.rtg_template.format(k=self.check_level(k))

    def mode_token(self, mode: str) -> str:
        if mode == "on":
            return self.on_token
        if mode == "off":
            return self.off_token
        raise SchemeError(f"mode must be 'on' or 'off', got {mode!r}")

    @property
    def rtg_tokens(self) -> list[str]:
        return [self.rtg_template.format(k=k) for k in range(self.num_bins)]

    @property
    def control_tokens(self) -> list[str]:
        """All control tokens in a fixed order: on, off, rtg:0..K-1."""
        return [self.on_token, self.off_token, *self.rtg_tokens]

    def add_to_tokenizer(self, tokenizer) -> int:
        """Register the control tokens as special tokens; returns how many were new to its vocabulary
        (one it held as an ordinary added token becomes special, and is not counted)."""
        before = len(tokenizer)
        tokenizer.add_special_tokens({"extra_special_tokens": self.control_tokens}, replace_extra_special_tokens=False)
        return len(tokenizer) - before

    def _ids_or_none(self, tokenizer) -> dict[str, int | None]:
        """Each control token's id in ``tokenizer``; None where it has no id or reads it as its unk."""
        unk = getattr(tokenizer, "unk_token_id", None)
        ids = tokenizer.convert_tokens_to_ids(self.control_tokens)
        return {tok: None if i is None or (unk is not None and i == unk) else int(i)
                for tok, i in zip(self.control_tokens, ids)}

    def missing_tokens(self, tokenizer) -> list[str]:
        """The control tokens ``tokenizer`` does not hold (it has no id for them, or reads them as its unk)."""
        return [tok for tok, i in self._ids_or_none(tokenizer).items() if i is None]

    def token_ids(self, tokenizer) -> dict[str, int]:
        """Map every control token to its id in ``tokenizer`` (error if one is missing)."""
        ids = self._ids_or_none(tokenizer)
        missing = [tok for tok, i in ids.items() if i is None]
        if missing:
            raise SchemeError(f"control token {missing[0]!r} is not in the tokenizer, so the tokenizer does not "
                              f"belong to this scheme ({self.num_bins} bins, {self.control_tokens[0]} ... "
                              f"{self.control_tokens[-1]}); use the tokenizer saved with it (from Python, "
                              f"ControlScheme.add_to_tokenizer adds the tokens)")
        return ids

    def rtg_ids(self, tokenizer) -> list[int]:
        ids = self.token_ids(tokenizer)
        return [ids[t] for t in self.rtg_tokens]

    # ------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ControlScheme":
        """A scheme from its ``to_dict`` form, every field checked; a SchemeError says which is wrong."""
        if not isinstance(d, dict):
            raise SchemeError(f"expected a JSON object of scheme fields, got {type(d).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown, missing = set(d) - known, known - set(d)
        if unknown:
            raise SchemeError(f"unknown scheme fields {sorted(unknown)}; known: {sorted(known)}")
        if missing:  # a default would stand in for what the corpus was built with, and pass its fingerprint
            raise SchemeError(f"missing scheme fields {sorted(missing)}; a scheme file holds every field")
        check_scheme_fields(d)
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "ControlScheme":
        return cls.from_dict(json.loads(text))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / SCHEME_FILE
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "ControlScheme":
        """The scheme of a corpus or model directory (or a scheme file); errors name the file."""
        path = Path(directory)
        if path.is_dir():
            path = path / SCHEME_FILE
        if not path.exists():
            raise SchemeError(f"{path}: no {SCHEME_FILE} here (is this an rcond corpus or model directory?)")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SchemeError(f"{path}: cannot read the scheme file ({e})") from None
        try:
            return cls.from_json(text)
        except json.JSONDecodeError as e:
            raise SchemeError(f"{path}: not a valid scheme file: {e}") from None
        except RecursionError:
            raise SchemeError(f"{path}: not a valid scheme file: nested too deeply to read") from None
        except SchemeError as e:
            raise SchemeError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------- checking a stored scheme

def _json(x: object) -> str:
    """``x`` as it looks in the JSON file."""
    return json.dumps(x, ensure_ascii=False, default=repr)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def check_scheme_fields(d: dict) -> None:
    """SchemeError unless the fields ``d`` (all of them, as ``to_dict`` gives them) make a usable,
    self-consistent scheme: the checks a hand-edited ``scheme.json`` must pass."""
    version = d["version"]
    if not _is_count(version) or version < 1:
        raise SchemeError(f"version: expected a positive integer, got {_json(version)}")
    if version > FORMAT_VERSION:
        raise SchemeError(f"scheme version {version} is newer than this rcond reads ({FORMAT_VERSION}): it was "
                          f"written by a newer rcond; upgrade rcond to read it")
    num_bins = d["num_bins"]
    if not _is_count(num_bins) or not 1 <= num_bins <= MAX_BINS:
        raise SchemeError(f"num_bins: expected an integer from 1 to {MAX_BINS}, got {_json(num_bins)}")
    _check_edges(d["edges"], num_bins)
    _check_binning(d["binning"], d["edges"])
    _check_counts(d["counts"], num_bins)
    _check_tokens(d["on_token"], d["off_token"], d["rtg_template"], num_bins)
    for name in ("gamma", "uncond_fraction"):
        if not _is_number(d[name]) or not 0 <= d[name] <= 1:
            raise SchemeError(f"{name}: expected a number in [0, 1], got {_json(d[name])}")
    tokenizer_fingerprint = d["tokenizer_fingerprint"]
    if tokenizer_fingerprint is not None and not isinstance(tokenizer_fingerprint, str):
        raise SchemeError(f"tokenizer_fingerprint: expected a string or null, got {_json(tokenizer_fingerprint)}")
    fingerprints = d["source_fingerprints"]
    if not isinstance(fingerprints, dict) or not all(isinstance(v, str) for v in fingerprints.values()):
        raise SchemeError(f"source_fingerprints: expected an object of strings, got {_json(fingerprints)}")
    if not isinstance(d["options"], dict):
        raise SchemeError(f"options: expected an object, got {_json(d['options'])}")


def _check_edges(edges: object, num_bins: int) -> None:
    if not isinstance(edges, list) or len(edges) != num_bins - 1:
        raise SchemeError(f"edges: {num_bins} bins need a list of {num_bins - 1} edges, got {_json(edges)}")
    if not all(_is_number(e) and _finite(e) for e in edges):
        raise SchemeError(f"edges: expected finite numbers, got {_json(edges)}")
    if any(b < a for a, b in zip(edges, edges[1:])):
        raise SchemeError(f"edges: expected non-decreasing numbers, got {_json(edges)}")


def _checked_bins(num_bins) -> int:
    """``num_bins`` as an int in [1, MAX_BINS] (a numpy integer taken as the int it holds), else an error."""
    if isinstance(num_bins, np.integer):
        num_bins = int(num_bins)
    if not _is_count(num_bins) or not 1 <= num_bins <= MAX_BINS:
        raise SchemeError(f"num_bins must be an integer between 1 and {MAX_BINS}, got {num_bins!r}")
    return num_bins


def _reward_values(rewards) -> np.ndarray:
    """Rewards to fit edges on as float64 [n]; what :meth:`ControlScheme.bin_of` would refuse as no
    number (a string, a boolean, None) is refused here too, not read as 0.5, 1 or NaN."""
    if isinstance(rewards, np.ndarray) and rewards.dtype.kind in "iuf":
        return rewards.astype(np.float64)
    if isinstance(rewards, np.ndarray) and rewards.dtype.kind != "O":
        raise SchemeError(f"cannot fit bin edges: rewards must be numbers, got an array of {rewards.dtype}")
    values = list(rewards)
    odd = [v for v in values if v is None or not_a_reward(v)]
    if odd:
        raise SchemeError(f"cannot fit bin edges: reward {odd[0]!r:.40} is not a number")
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as e:
        raise SchemeError(f"cannot fit bin edges: rewards must be finite numbers ({e})") from None


def _finite(x) -> bool:
    """Whether a number from JSON is finite as a float64 (an integer of 400 digits is not one)."""
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _check_binning(binning: object, edges: list) -> None:
    expected = f"binning: expected quantile, uniform or edges:a,b,... (finite, increasing), got {_json(binning)}"
    if not isinstance(binning, str):
        raise SchemeError(expected)
    try:
        kind, explicit = parse_binning(binning)
    except SchemeError:
        raise SchemeError(expected) from None
    if kind == "edges" and explicit != edges:
        raise SchemeError(f"edges {_json(edges)} differ from those of binning {_json(binning)}")


def _check_counts(counts: object, num_bins: int) -> None:
    if not isinstance(counts, list) or (counts and len(counts) != num_bins) or not all(map(_is_count, counts)):
        raise SchemeError(f"counts: expected a list of {num_bins} non-negative integers (one per bin), "
                          f"got {_json(counts)}")


def _check_tokens(on_token: object, off_token: object, rtg_template: object, num_bins: int) -> None:
    for name, tok in (("on_token", on_token), ("off_token", off_token), ("rtg_template", rtg_template)):
        if not isinstance(tok, str) or not tok:
            raise SchemeError(f"{name}: expected a non-empty string, got {_json(tok)}")
    bad_template = SchemeError(f"rtg_template: expected a string with the field {{k}} for the bin number, "
                               f"got {_json(rtg_template)}")
    if "{k}" not in rtg_template:
        raise bad_template
    try:
        rtg = [rtg_template.format(k=k) for k in range(num_bins)]
    except (KeyError, IndexError, ValueError, AttributeError, TypeError):  # '{x}', '{0}', '{k', '{k.a}', '{k[0]}'
        raise bad_template from None
    if len({on_token, off_token, *rtg}) != num_bins + 2:
        raise SchemeError(f"on_token {_json(on_token)}, off_token {_json(off_token)} and the {num_bins} tokens of "
                          f"rtg_template {_json(rtg_template)} must all differ")
