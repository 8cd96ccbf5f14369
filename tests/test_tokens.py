import math

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


def test_tied_quantiles_keep_k_bins():
    s = ControlScheme.fit([0.0] * 50 + [1.0] * 50, num_bins=4)
    assert len(s.edges) == 3 and s.num_bins == 4
    assert s.bin_of(0.0) in range(4) and s.bin_of(1.0) == 3


@pytest.mark.parametrize("spec", ["edges:", "edges:1,1", "edges:2,1", "edges:a", "median"])
def test_bad_binning(spec):
    with pytest.raises(SchemeError):
        parse_binning(spec)


def test_json_round_trip(tmp_path):
    s = ControlScheme.fit([0.1, 0.4, 0.9, 0.3], num_bins=3, gamma=0.9)
    s.counts = [1, 2, 1]
    s.save(tmp_path)
    t = ControlScheme.load(tmp_path)
    assert t == s
    with pytest.raises(SchemeError, match="no scheme.json"):
        ControlScheme.load(tmp_path / "nope")


def test_tokens_added_to_tokenizer(wtok):
    s = ControlScheme.fit([], binning="edges:0")
    assert s.control_tokens == ["<|rlhf:on|>", "<|rlhf:off|>", "<|rtg:0|>", "<|rtg:1|>"]
    with pytest.raises(SchemeError, match="add_to_tokenizer"):
        s.token_ids(wtok)
    assert s.add_to_tokenizer(wtok) == 4
    assert s.add_to_tokenizer(wtok) == 0
    ids = s.token_ids(wtok)
    assert list(ids.values()) == [9, 10, 11, 12]
    # a control token is one special token, never split, and skipped when decoding
    assert wtok("<|rtg:1|> a", add_special_tokens=False).input_ids == [12, 1]
    assert wtok.decode([9, 12, 1], skip_special_tokens=True).strip() == "a"
