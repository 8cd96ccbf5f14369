import json
import math
import re

import numpy as np
import pytest

from rcond.tokens import ControlScheme, SchemeError, parse_binning, quantile_edges, uniform_edges


def test_quantile_edges_hand_computed():
    # n = 9 sorted values 1..9, K = 4: positions (n-1)*j/K = 2, 4, 6 -> values 3, 5, 7
    assert quantile_edges(list(range(9, 0, -1)), 4) == [3.0, 5.0, 7.0]
    # interpolated: positions 4/3 and 8/3 of [0, 10, 20, 30, 40]
    e = quantile_edges([40, 0, 30, 10, 20], 3)
    assert e == pytest.approx([10 + 10 / 3, 20 + 20 / 3])


def test_quantile_edges_match_numpy_linear():
    rng = np.random.default_rng()
    xs = rng.normal(size=101)
    assert quantile_edges(xs.tolist(), 10) == pytest.approx(np.quantile(xs, np.arange(1, 10) / 10).tolist())
    assert quantile_edges(xs, 10) == quantile_edges(xs.tolist(), 10)  # an array gives the very same edges
    assert ControlScheme.fit(xs, num_bins=10).edges == ControlScheme.fit(iter(xs.tolist()), num_bins=10).edges
    with pytest.raises(SchemeError, match="2 non-finite"):
        ControlScheme.fit(np.array([0.1, np.nan, 0.3, np.inf]))


def test_uniform_edges():
    assert uniform_edges([-1.0, 1.0, 0.3], 4) == pytest.approx([-0.5, 0.0, 0.5])


@pytest.mark.parametrize("fit", [quantile_edges, uniform_edges,
                                 lambda values, k: ControlScheme.fit(values, num_bins=k),
                                 lambda values, k: ControlScheme.fit(values, num_bins=k, binning="uniform")])
def test_no_rewards_fit_no_edges(fit):
    with pytest.raises(SchemeError, match=r"^cannot fit bin edges: no rewards$"):
        fit(np.array([]), 3)


def test_uniform_edges_of_a_single_value_span_one_above_it():
    """All rewards equal: no range to split, so the K bins split [v, v + 1] (not K - 1 edges all
    at v, which would leave every bin but the last empty)."""
    assert uniform_edges([2.0, 2.0, 2.0], 4) == [2.25, 2.5, 2.75]
    assert ControlScheme.fit([2.0], num_bins=4, binning="uniform").bin_of(2.0) == 0


def test_uniform_edges_are_the_round_numbers_they_should_be():
    """K = 10 over [-1, 1]: the edges are -0.8, -0.6, ..., 0.8 as the floats those decimals are
    (-1 + 2 * 0.4 in floats is -0.19999999999999996), so a reward of 0.6 is in bin 8, [0.6, 0.8),
    and -0.2 in bin 4, as the summary prints them."""
    edges = uniform_edges([-1.0, 1.0], 10)
    assert edges == [-0.8, -0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6, 0.8]
    s = ControlScheme(num_bins=10, edges=edges)
    assert [s.bin_of(v) for v in (-0.2, 0.6, 0.5999999999999999)] == [4, 8, 7]


@pytest.mark.parametrize("rewards,k,edges,bins", [
    ([0.0, 0.0, 0.0, 1.0], 2, [0.5], [0, 1]),             # median 0 sent both 0 and 1 to bin 1
    ([0.0, 0.0, 1.0], 2, [0.5], [0, 1]),
    ([0.0] * 6 + [1.0] * 4, 2, [0.5], [0, 1]),
    ([0.0, 1.0, 1.0], 2, [1.0], [0, 1]),                  # ties already sent up, where they belong
    ([0.0] * 8 + [1.0, 2.0], 4, [0.0, 0.5, 0.5], [1, 3]),  # 8 zeros: below edge 1 (target 2.5) 0 beats 8
    ([0.0, 0.0, 1.0, 1.0], 4, [0.0, 0.5, 1.0], [1, 3]),   # edge 1 (target 1): 0 or 2 below, as near: up
    ([0.0, 0.0, 0.0, 1.0], 4, [0.0, 0.5, 0.5], [1, 3]),   # edge 2 moved to 0.5 lifts edge 3 (0.25) with it
    ([0.0] * 5 + [1.0] * 5, 10, [0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0], [2, 9]),  # ties at the maximum
])
def test_quantile_edges_send_ties_to_the_side_nearer_the_target(rewards, k, edges, bins):
    """An edge on a value several rewards share sends them all one way: up unless down puts the
    count below it strictly nearer to j/K of the rewards (then the edge is midway to the next
    value). Hand-computed: [0, 0, 0, 1], K = 2, median position 1.5 is 0; below 0 lie 0 rewards,
    below 0.5 lie 3, and the target is 2."""
    assert quantile_edges(rewards, k) == edges
    s = ControlScheme.fit(rewards, num_bins=k)
    assert s.edges == edges
    assert [s.bin_of(0.0), s.bin_of(1.0)] == bins


def test_quantile_edges_on_distinct_values_are_plain_interpolation():
    """A single value at an edge is no tie: 1..9, K = 4 keeps 7 (6 below it; 7.5 would have 7,
    nearer the target 6.75)."""
    assert quantile_edges(list(range(1, 10)), 4) == [3.0, 5.0, 7.0]


@pytest.mark.parametrize("binning", ["quantile", "uniform"])
def test_edges_stay_finite_where_the_reward_range_overflows(binning):
    """max - min of rewards near +-1.8e308 is inf; the edges must still be the exact rational
    interpolation, rounded (they were inf and NaN, written to a scheme.json nothing could load)."""
    from fractions import Fraction

    lo, hi = -1.7e308, 1.75e308
    s = ControlScheme.fit([lo, hi, 0.0] if binning == "quantile" else [lo, hi], num_bins=8, binning=binning)
    assert all(math.isfinite(e) for e in s.edges) and s.edges == sorted(s.edges)
    if binning == "uniform":
        exact = [float(Fraction(lo) + (Fraction(hi) - Fraction(lo)) * Fraction(j, 8)) for j in range(1, 8)]
    else:  # sorted (lo, 0, hi): position 2j/8 among them
        xs = [Fraction(lo), Fraction(0), Fraction(hi)]
        exact = []
        for j in range(1, 8):
            pos = Fraction(2 * j, 8)
            k = int(pos)
            exact.append(float(xs[k] + (xs[min(k + 1, 2)] - xs[k]) * (pos - k)))
    assert s.edges == pytest.approx(exact, rel=1e-15)
    assert ControlScheme.from_json(s.to_json()).edges == s.edges


def test_bin_of_and_ranges():
    s = ControlScheme.fit([], binning="edges:-0.5,0,0.5")
    assert s.num_bins == 4
    assert [s.bin_of(v) for v in (-9, -0.5, -0.1, 0.0, 0.49, 0.5, 7)] == [0, 1, 1, 2, 2, 3, 3]
    assert s.bin_range(0) == (-math.inf, -0.5)
    assert s.bin_range(2) == (0.0, 0.5)
    assert s.bin_range(3) == (0.5, math.inf)
    with pytest.raises(SchemeError, match="levels 0..3"):
        s.rtg_token(4)
    with pytest.raises(SchemeError, match="finite"):
        s.bin_of(float("nan"))


def test_bin_of_an_unfitted_scheme_is_an_error():
    """A scheme with no edges yet maps no reward (bisect on no edges would say bin 0)."""
    with pytest.raises(SchemeError, match=r"^scheme has no fitted bin edges yet$"):
        ControlScheme(num_bins=3).bin_of(0.5)
    assert ControlScheme(num_bins=1).bin_of(0.5) == 0  # one bin needs no edges


def test_tied_quantiles_keep_k_bins():
    s = ControlScheme.fit([0.0] * 50 + [1.0] * 50, num_bins=4)
    assert len(s.edges) == 3 and s.num_bins == 4
    assert s.bin_of(0.0) in range(4) and s.bin_of(1.0) == 3


def test_fit_with_explicit_edges_takes_their_k_and_refuses_another():
    assert ControlScheme.fit([], binning="edges:0").num_bins == 2
    assert ControlScheme.fit([], num_bins=2, binning="edges:0").edges == [0.0]
    with pytest.raises(SchemeError, match=r"num_bins 5 contradicts binning 'edges:0': 1 edges make 2 bins"):
        ControlScheme.fit([], num_bins=5, binning="edges:0")
    assert ControlScheme.fit([0.0, 1.0]).num_bins == 10


def test_levels_may_be_any_integer_type_and_nothing_else():
    s = ControlScheme.fit([], binning="edges:0,1")
    assert s.rtg_token(np.int64(1)) == "<|rtg:1|>" and type(s.check_level(np.int16(2))) is int
    for bad in (1.0, True, np.bool_(True), "1"):
        with pytest.raises(SchemeError, match=r"is not an integer: this scheme has levels 0\.\.2"):
            s.check_level(bad)
    with pytest.raises(SchemeError, match=r"level 3 does not exist"):
        s.check_level(np.int64(3))


@pytest.mark.parametrize("spec", ["edges:", "edges:1,1", "edges:2,1", "edges:a", "median", "edges:1,,2", "edges:1,",
                                  "edges: , "])
def test_bad_binning(spec):
    with pytest.raises(SchemeError):
        parse_binning(spec)


@pytest.mark.parametrize("spec", ["edges:nan", "edges:0,inf", "edges:-inf,0", "edges:0,nan,1"])
def test_explicit_edges_must_be_finite(spec):
    """float() reads 'nan' and 'inf'; NaN compares false with everything, so only the finiteness
    check keeps such an edge out of a scheme.json."""
    with pytest.raises(SchemeError, match=r"edges must be finite and strictly increasing$"):
        parse_binning(spec)


@pytest.mark.parametrize("spec", ["edges:", "edges: ", "edges: , "])
def test_no_edges_at_all_says_to_give_one(spec):
    with pytest.raises(SchemeError, match=r"give at least one edge, e\.g\. edges:-0\.5,0,0\.5"):
        parse_binning(spec)


@pytest.mark.parametrize("bins, message", [
    (0, r"--bins 0 contradicts --binning 'edges:0': 1 edges make 2 bins; leave out --bins$"),
    (1, r"1 edges make 2 bins; leave out --bins \(one bin needs no edges: use --binning quantile\)$"),
    (4, r"1 edges make 2 bins; leave out --bins, or give 3 edges$"),
])
def test_bins_that_contradict_explicit_edges_suggest_only_what_can_be_given(bins, message):
    from rcond.tokens import resolve_bins

    with pytest.raises(SchemeError, match=message):
        resolve_bins(bins, "edges:0")


def test_resolve_bins_takes_every_k_from_1_to_max_bins():
    from rcond.tokens import MAX_BINS, resolve_bins

    assert MAX_BINS == 1024
    assert resolve_bins(None, "quantile") == 10 and resolve_bins(None, "edges:0,1") == 3
    assert [resolve_bins(k, "uniform") for k in (1, 2, 1024)] == [1, 2, 1024]
    with pytest.raises(SchemeError, match=r"^--bins must be between 1 and 1024, got 1025 \(each bin is a vocabulary"):
        resolve_bins(1025, "quantile")
    with pytest.raises(SchemeError, match=r"^--bins must be between 1 and 1024, got 0$"):
        resolve_bins(0, "quantile")
    with pytest.raises(SchemeError, match=r"^--bins must be an integer, got True$"):  # True is 1 to a comparison
        resolve_bins(True, "quantile")


def test_json_round_trip(tmp_path):
    s = ControlScheme.fit([0.1, 0.4, 0.9, 0.3], num_bins=3, gamma=0.9)
    s.counts = [1, 2, 1]
    s.save(tmp_path)
    t = ControlScheme.load(tmp_path)
    assert t == s
    with pytest.raises(SchemeError, match="no scheme.json"):
        ControlScheme.load(tmp_path / "nope")


def test_defaults_are_those_of_the_design():
    """DESIGN §3: K = 10 quantile bins, gamma 1, 5% unconditional records, the token strings."""
    s = ControlScheme()
    assert (s.num_bins, s.binning, s.gamma, s.uncond_fraction) == (10, "quantile", 1.0, 0.05)
    assert s.control_tokens == ["<|rlhf:on|>", "<|rlhf:off|>"] + [f"<|rtg:{k}|>" for k in range(10)]


def test_mode_token_names_on_and_off_and_nothing_else():
    s = ControlScheme(num_bins=2)
    assert (s.mode_token("on"), s.mode_token("off")) == ("<|rlhf:on|>", "<|rlhf:off|>")
    with pytest.raises(SchemeError, match=r"^mode must be 'on' or 'off', got 'ON'$"):
        s.mode_token("ON")


def test_tokens_added_to_tokenizer(wtok):
    s = ControlScheme.fit([], binning="edges:0")
    assert s.control_tokens == ["<|rlhf:on|>", "<|rlhf:off|>", "<|rtg:0|>", "<|rtg:1|>"]
    with pytest.raises(SchemeError, match=r"control token '<\|rlhf:on\|>' is not in the tokenizer, so the tokenizer "
                                          r"does not belong to this scheme \(2 bins, <\|rlhf:on\|> \.\.\. <\|rtg:1\|>\); "
                                          r"use the tokenizer saved with it"):
        s.token_ids(wtok)
    assert s.add_to_tokenizer(wtok) == 4
    assert s.add_to_tokenizer(wtok) == 0
    ids = s.token_ids(wtok)
    assert list(ids.values()) == [9, 10, 11, 12]
    # a control token is one special token, never split, and skipped when decoding
    assert wtok("<|rtg:1|> a", add_special_tokens=False).input_ids == [12, 1]
    assert wtok.decode([9, 12, 1], skip_special_tokens=True).strip() == "a"


def stored(**changes):
    """A fitted, preprocessed scheme's dict form with some fields changed."""
    s = ControlScheme.fit([], binning="edges:-0.5,0,0.5")
    s.counts = [3, 1, 4, 1]
    s.options = {"block_size": 64}
    return {**s.to_dict(), **changes}


@pytest.mark.parametrize("changes, message", [
    (dict(num_bins=0), "num_bins: expected an integer from 1 to 1024, got 0"),
    (dict(num_bins="4"), 'num_bins: expected an integer from 1 to 1024, got "4"'),
    (dict(num_bins=True), "num_bins: expected an integer from 1 to 1024, got true"),
    (dict(num_bins=2000), "num_bins: expected an integer from 1 to 1024, got 2000"),
    (dict(num_bins=3), "edges: 3 bins need a list of 2 edges, got [-0.5, 0.0, 0.5]"),
    (dict(edges=None), "edges: 4 bins need a list of 3 edges, got null"),
    (dict(edges=[-0.5, "0", 0.5]), 'edges: expected finite numbers, got [-0.5, "0", 0.5]'),
    (dict(edges=[-0.5, float("nan"), 0.5]), "edges: expected finite numbers, got [-0.5, NaN, 0.5]"),
    (dict(edges=[0.5, 0, -0.5]), "edges: expected non-decreasing numbers, got [0.5, 0, -0.5]"),
    (dict(edges=[-0.5, 0, 0.6]), 'edges [-0.5, 0, 0.6] differ from those of binning "edges:-0.5,0,0.5"'),
    (dict(binning="median"), 'binning: expected quantile, uniform or edges:a,b,... (finite, increasing), '
                             'got "median"'),
    (dict(binning="edges:1,1"), 'binning: expected quantile, uniform or edges:a,b,... (finite, increasing), '
                                'got "edges:1,1"'),
    (dict(counts=[3, 1, 4]), "counts: expected a list of 4 non-negative integers (one per bin), got [3, 1, 4]"),
    (dict(counts=[3, 1, -4, 1]), "counts: expected a list of 4 non-negative integers (one per bin), got [3, 1, -4, 1]"),
    (dict(counts=[3, 1, 4.5, 1]), "counts: expected a list of 4 non-negative integers (one per bin), "
                                  "got [3, 1, 4.5, 1]"),
    (dict(counts=None), "counts: expected a list of 4 non-negative integers (one per bin), got null"),
    (dict(on_token=""), 'on_token: expected a non-empty string, got ""'),
    (dict(off_token=7), "off_token: expected a non-empty string, got 7"),
    (dict(rtg_template="<|rtg|>"), 'rtg_template: expected a string with the field {k} for the bin number, '
                                   'got "<|rtg|>"'),
    (dict(rtg_template="<|rtg:{k}{j}|>"), 'rtg_template: expected a string with the field {k} for the bin number, '
                                          'got "<|rtg:{k}{j}|>"'),
    (dict(rtg_template="<{k}{k.foo}>"), 'rtg_template: expected a string with the field {k} for the bin number, '
                                        'got "<{k}{k.foo}>"'),
    (dict(rtg_template="<{k}{k[0]}>"), 'rtg_template: expected a string with the field {k} for the bin number, '
                                       'got "<{k}{k[0]}>"'),
    (dict(edges=[-0.5, 10 ** 400, 1e300]), "edges: expected finite numbers, got [-0.5, " + "1" + "0" * 400 + ", 1e+300]"),
    (dict(on_token="<|rtg:2|>"), 'on_token "<|rtg:2|>", off_token "<|rlhf:off|>" and the 4 tokens of rtg_template '
                                 '"<|rtg:{k}|>" must all differ'),
    (dict(gamma=1.5), "gamma: expected a number in [0, 1], got 1.5"),
    (dict(uncond_fraction=None), "uncond_fraction: expected a number in [0, 1], got null"),
    (dict(tokenizer_fingerprint=5), "tokenizer_fingerprint: expected a string or null, got 5"),
    (dict(source_fingerprints={"a.jsonl": None}), 'source_fingerprints: expected an object of strings, '
                                                  'got {"a.jsonl": null}'),
    (dict(options=None), "options: expected an object, got null"),
    (dict(options=[1]), "options: expected an object, got [1]"),
    (dict(version="1"), 'version: expected a positive integer, got "1"'),
    (dict(version=0), "version: expected a positive integer, got 0"),
    (dict(version=2), "scheme version 2 is newer than this rcond reads (1): it was written by a newer rcond; upgrade rcond to read it"),
])
def test_from_dict_checks_every_field(changes, message):
    with pytest.raises(SchemeError) as e:
        ControlScheme.from_dict(stored(**changes))
    assert str(e.value) == message


def test_from_dict_accepts_what_save_writes():
    assert ControlScheme.from_dict(stored()).counts == [3, 1, 4, 1]
    assert ControlScheme.from_dict(stored(counts=[], options={})).counts == []  # not preprocessed yet
    tied = ControlScheme.fit([0.0] * 50 + [1.0] * 50, num_bins=4)  # quantile ties: equal edges
    assert ControlScheme.from_json(tied.to_json()) == tied
    one = ControlScheme(num_bins=1, binning="uniform")
    assert ControlScheme.from_json(one.to_json()) == one
    most = ControlScheme(num_bins=1024, edges=[float(j) for j in range(1023)], binning="uniform")  # MAX_BINS
    assert ControlScheme.from_json(most.to_json()) == most
    with pytest.raises(SchemeError, match=r"^expected a JSON object of scheme fields, got list$"):
        ControlScheme.from_dict([1, 2])


def test_load_names_the_file(tmp_path):
    path = tmp_path / "scheme.json"
    cases = [(json.dumps([1, 2]), "expected a JSON object of scheme fields, got list"),
             (json.dumps(stored(options=None)), "options: expected an object, got null"),
             (json.dumps(stored(foo=1)), "unknown scheme fields ['foo']"),
             ("{oops", "not a valid scheme file: Expecting property name")]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(SchemeError, match=rf"^{re.escape(f'{path}: {message}')}"):
            ControlScheme.load(tmp_path)
    path.write_bytes(b'{"num_bins": "\xff"}')
    with pytest.raises(SchemeError, match=rf"^{re.escape(str(path))}: cannot read the scheme file \(.*utf-8"):
        ControlScheme.load(path)
    path.unlink()
    path.mkdir()
    with pytest.raises(SchemeError, match=rf"^{re.escape(str(path))}: cannot read the scheme file \(.*directory"):
        ControlScheme.load(tmp_path)


def test_bin_of_rejects_a_non_number():
    s = ControlScheme.fit([], binning="edges:0")
    for value in (None, [1]):
        with pytest.raises(SchemeError, match=rf"^reward {re.escape(repr(value))} is not a finite number$"):
            s.bin_of(value)
    for value in ("x", "0.5", True):  # float() would read the last two as 0.5 and 1
        with pytest.raises(SchemeError, match=rf"^reward {re.escape(repr(value))} is not a number$"):
            s.bin_of(value)
    with pytest.raises(SchemeError, match=r"^reward 1000000000000000000000000000000000000000 is not a finite number$"):
        s.bin_of(10 ** 400)  # beyond float range: float() raises OverflowError


def test_bin_of_refuses_a_numpy_boolean_as_fit_does():
    """A NumPy bool (what a comparison in a NumPy scorer gives) is no reward: fit refuses it, and
    bin_of took it as 1.0 and answered a bin."""
    s = ControlScheme.fit([], binning="edges:0.5")
    for value in (np.bool_(True), np.bool_(False)):
        with pytest.raises(SchemeError, match=rf"^reward {re.escape(repr(value))} is not a number$"):
            s.bin_of(value)


def test_bin_of_and_fit_refuse_a_torch_boolean_and_take_a_torch_number():
    """A 0-d torch bool tensor (what iterating a torch comparison gives) is no reward either: bin_of
    took it as 1.0; a 0-d torch float tensor is a number, for both."""
    import torch

    s = ControlScheme.fit([], binning="edges:0.5")
    for value in (torch.tensor(True), torch.tensor([False, True])[0]):
        with pytest.raises(SchemeError, match=rf"^reward {re.escape(repr(value))} is not a number$"):
            s.bin_of(value)
    with pytest.raises(SchemeError, match=re.escape(f"reward {torch.tensor(True)!r} is not a number")):
        ControlScheme.fit(list(torch.tensor([0.5]) > 0) + [0.5], num_bins=2)
    assert s.bin_of(torch.tensor(0.75)) == 1 and s.bin_of(torch.tensor(0.25, dtype=torch.float64)) == 0
    assert ControlScheme.fit(list(torch.tensor([0.0, 1.0, 2.0])), num_bins=2).edges == [1.0]


def test_a_scheme_is_checked_when_made_not_only_when_loaded():
    """The constructor refuses what a stored scheme.json may not hold: NaN or unsorted edges, edges
    that differ from binning's explicit ones, a bin count that is no integer, clashing tokens."""
    for kw, message in [(dict(num_bins=3, edges=[0.0, float("nan")]), "edges: expected finite numbers"),
                        (dict(num_bins=3, edges=[1.0, 0.0]), "edges: expected non-decreasing"),
                        (dict(num_bins=3, edges=[0.0, 1.0], binning="edges:5,6"), r"differ from those of binning"),
                        (dict(num_bins=3.0), "num_bins must be an integer"), (dict(num_bins=True), "num_bins must"),
                        (dict(num_bins=0), r"num_bins must be an integer between 1 and 1024, got 0$"),
                        (dict(on_token="<a>", off_token="<a>"), "must all differ")]:
        with pytest.raises(SchemeError, match=message):
            ControlScheme(**kw)
    for binning, shown in ((5, "5"), (None, "null"), (["quantile"], '["quantile"]')):  # a hand-edited scheme.json's
        with pytest.raises(SchemeError, match=re.escape("binning: expected quantile, uniform or edges:a,b,... "
                                                        f"(finite, increasing), got {shown}")):
            ControlScheme(num_bins=3, edges=[0.0, 1.0], binning=binning)


def test_a_stored_scheme_missing_a_field_is_refused(tmp_path):
    """A field deleted from scheme.json is not filled with its default: the default would stand in
    for what the corpus was built with and pass the scheme's own fingerprint."""
    import json

    d = ControlScheme.fit([0.0, 1.0, 2.0], num_bins=2).to_dict()
    del d["gamma"], d["version"]
    with pytest.raises(SchemeError, match=r"missing scheme fields \['gamma', 'version'\]"):
        ControlScheme.from_json(json.dumps(d))


@pytest.mark.parametrize("rewards, message", [
    (["0.5", "1"], "reward '0.5' is not a number"),
    ([True, False, False], "reward True is not a number"),
    ([None, 1.0], "reward None is not a number"),
    ([np.bool_(True), 0.5], f"reward {np.bool_(True)!r} is not a number"),
    (np.array([True, False]), "rewards must be numbers, got an array of bool"),
    ([1, 10 ** 400], "rewards must be finite numbers"),
])
def test_fit_refuses_what_bin_of_refuses(rewards, message):
    """A string, a boolean or None is no reward for bin_of; fit took them as 0.5, 1 or NaN."""
    with pytest.raises(SchemeError, match=re.escape(message)):
        ControlScheme.fit(rewards, num_bins=2)


def test_numpy_integers_and_sequences_of_edges_are_taken_and_num_bins_is_checked_before_fitting():
    assert ControlScheme.fit([1, 2, 3], num_bins=np.int64(3)).num_bins == 3
    assert ControlScheme(num_bins=np.int64(3), edges=(0.1, 0.2)).edges == [0.1, 0.2]
    assert ControlScheme(num_bins=3, edges=np.array([0.1, 0.2])).edges == [0.1, 0.2]
    from_ints = ControlScheme(num_bins=3, edges=np.array([1, 2]), binning="uniform")  # plain ints, not np.int64
    assert from_ints.edges == [1, 2] and ControlScheme.from_json(from_ints.to_json()) == from_ints
    assert ControlScheme.fit(np.array([1, 2, 3]), num_bins=2).edges == [2.0]
    with pytest.raises(SchemeError, match="num_bins must be an integer between 1 and 1024, got 2000000"):
        ControlScheme.fit(np.arange(10), num_bins=2_000_000, binning="uniform")  # no edges computed first


def test_add_to_tokenizer_counts_only_tokens_new_to_the_vocabulary(wtok):
    before = len(wtok)
    wtok.add_tokens(["<|rtg:0|>", "<|rlhf:on|>"])  # two of a 3-bin scheme's tokens, as ordinary added tokens
    assert ControlScheme(num_bins=3).add_to_tokenizer(wtok) == 3
    assert len(wtok) == before + 5 and ControlScheme(num_bins=3).add_to_tokenizer(wtok) == 0


def test_add_to_tokenizer_keeps_the_tokenizers_own_special_tokens(wtok):
    """The control tokens join the tokenizer's extra special tokens, not replace them (a chat
    model's turn markers would stop being special)."""
    wtok.add_special_tokens({"extra_special_tokens": ["<|user|>"]})
    ControlScheme(num_bins=2).add_to_tokenizer(wtok)
    assert wtok.extra_special_tokens == ["<|user|>", "<|rlhf:on|>", "<|rlhf:off|>", "<|rtg:0|>", "<|rtg:1|>"]
    assert "<|user|>" in wtok.all_special_tokens


def test_a_control_token_read_as_the_unk_token_is_missing():
    """A tokenizer with an unk token gives the unk's id for a string it lacks: that is no id of
    the control token's own."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>")),
                                  unk_token="<unk>")
    s = ControlScheme(num_bins=2)
    assert s.missing_tokens(tok) == s.control_tokens
    with pytest.raises(SchemeError, match=r"control token '<\|rlhf:on\|>' is not in the tokenizer"):
        s.token_ids(tok)
    s.add_to_tokenizer(tok)
    assert s.missing_tokens(tok) == [] and list(s.token_ids(tok).values()) == [2, 3, 4, 5]


@pytest.mark.parametrize("options,want", [
    ({"format": "scored", "formats": ["scored", "dialog"]}, ["dialog", "scored"]),   # recorded by rcond train
    ({"format": "pairs"}, ["pairs"]),                                                # a corpus; an older model
    ({"format": "pairs", "formats": []}, ["pairs"]),
    ({"format": "pairs", "formats": "dialog"}, ["pairs"]),                           # hand-edited: not a list
    ({"format": "pairs", "formats": 5}, ["pairs"]),
    ({"formats": ["dialog", 3, None, ["text"]]}, ["dialog"]),                       # only the names
    ({"format": 7}, []), ({}, [])])
def test_the_formats_a_model_learned_are_read_as_a_list_of_names(options, want):
    assert ControlScheme(num_bins=2, edges=[0.0], options=options).learned_formats() == want
