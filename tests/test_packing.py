"""rcond.packing: streaming best fit against a brute-force reference placement, positions and
segments from a table's layout, and the spill file."""

import numpy as np
import pytest


def reference_best_fit(lengths, block_size, open_rows):
    """Best fit one piece at a time with plain loops: rows as lists of piece numbers, in the order
    they leave. Ties go to the older row; over ``open_rows`` open rows, the fullest leaves."""
    open_, out, rows_made = {}, [], 0  # open_: row key (creation order) -> [free space, pieces]
    for q, n in enumerate(lengths):
        fits = [(space, key) for key, (space, _) in open_.items() if space >= n]
        if fits:
            key = min(fits)[1]
        else:
            key, rows_made = rows_made, rows_made + 1
            open_[key] = [block_size, []]
        open_[key][0] -= n
        open_[key][1].append(q)
        if open_[key][0] == 0:
            out.append(open_.pop(key)[1])
        elif len(open_) > open_rows:
            fullest = min((space, k) for k, (space, _) in open_.items())[1]
            out.append(open_.pop(fullest)[1])
    out += [pieces for _, (_, pieces) in sorted(open_.items())]
    return out


@pytest.mark.parametrize("compact", [False, True])
def test_packer_matches_reference_across_pools(compact, monkeypatch):
    """Pieces of many pools, few open rows (so rows hold pieces of older pools), after an empty
    pool: every row equals the one built by hand from the reference placement; the same when
    every pool is compacted to its waiting pieces."""
    from rcond import packing
    from rcond.conditioning import _next_weights
    from rcond.packing import BestFitPacker, Pool

    if compact:
        monkeypatch.setattr(packing, "COMPACT_TOKENS", 0)

    rng = np.random.default_rng(0)
    B, pools, lengths = 16, [], []
    emitted = []  # the tables as they go out: full ones of 4 rows, then the rest
    packer = BestFitPacker(B, pad_id=0, open_rows=3, table_rows=4,
                           emit=lambda t: emitted.append({k: v.copy() for k, v in t.items()}))
    empty = np.zeros(0, np.int64)
    packer.add(Pool(empty.astype(np.int32), empty.astype(np.float32), empty.astype(np.int32), empty, empty,
                    empty.astype(bool)))
    for _ in range(6):
        n = rng.integers(1, B + 1, size=int(rng.integers(1, 9)))
        start = np.concatenate([[0], np.cumsum(n)[:-1]])
        T = int(n.sum())
        tw = rng.random(T).astype(np.float32)  # target weights; the pool holds them shifted to loss weights
        pool = Pool(rng.integers(1, 1000, T).astype(np.int32), _next_weights(tw, start, n),
                    rng.integers(-1, 5, T).astype(np.int32), start, n, np.ones(len(n), bool))
        pools += [(pool, tw, q) for q in range(len(n))]
        lengths += n.tolist()
        packer.add(pool)
    packer.flush()
    assert [len(e["input_ids"]) // B for e in emitted[:-1]] == [4] * (len(emitted) - 1)
    assert 1 <= len(emitted[-1]["input_ids"]) // B <= 4
    for e in emitted:  # the layout describes the table's own rows
        assert len(e["pieces"]) == len(e["input_ids"]) // B and e["pieces"].sum() == len(e["lengths"])
    got = {k: np.concatenate([e[k] for e in emitted]).reshape(-1, B) for k in ("input_ids", "loss_weight", "marker")}
    want = reference_best_fit(lengths, B, 3)
    assert len(got["input_ids"]) == len(want)
    assert np.concatenate([e["pieces"] for e in emitted]).tolist() == [len(pieces) for pieces in want]
    assert np.concatenate([e["lengths"] for e in emitted]).tolist() == [lengths[g] for pieces in want for g in pieces]
    for r, pieces in enumerate(want):
        ids, lw, markers = [], [], []
        for g in pieces:
            pool, tw, q = pools[g]
            a, n = int(pool.start[q]), int(pool.length[q])
            ids += pool.ids[a:a + n].tolist()
            lw += tw[a + 1:a + n].tolist() + [0.0]
            markers += pool.marker[a:a + n].tolist()
        pad = B - len(ids)
        assert got["input_ids"][r].tolist() == ids + [0] * pad
        np.testing.assert_array_equal(got["loss_weight"][r], np.array(lw + [0.0] * pad, np.float32))
        assert got["marker"][r].tolist() == markers + [-1] * pad
    assert not packer.pools and not packer.first  # every pool released once its pieces are written


def packed_by_piece(lengths, B, open_rows, **packer_state):
    """``lengths`` packed by a BestFitPacker (its attributes set from ``packer_state`` first) from
    one pool whose every token is its piece's number + 1: the rows as lists of piece numbers."""
    from rcond.packing import BestFitPacker, Pool

    emitted = []
    packer = BestFitPacker(B, pad_id=0, open_rows=open_rows, table_rows=8,
                           emit=lambda t: emitted.append(t["input_ids"].copy()))
    vars(packer).update(packer_state)
    n = np.array(lengths)
    ids = np.repeat(np.arange(1, len(n) + 1), n).astype(np.int32)
    packer.add(Pool(ids, np.ones(len(ids), np.float32), np.zeros(len(ids), np.int32),
                    np.cumsum(n) - n, n, np.ones(len(n), bool)))
    packer.flush()
    return [[int(g) - 1 for g in dict.fromkeys(row) if g] for row in np.concatenate(emitted).reshape(-1, B)]


def test_row_keys_far_past_a_billion_rows_still_pack_best_fit():
    """Open rows are ints of free slots << KEY_BITS | row key; keys count every row of the build.
    Rows numbered from 2**39 (a corpus far beyond any real one) pack as the reference does: the
    key never spills into the free-slot bits."""
    lengths = np.random.default_rng(3).integers(1, 9, size=60).tolist()
    assert packed_by_piece(lengths, 8, 3, next_key=2 ** 39) == reference_best_fit(lengths, 8, 3)


def test_a_flushed_packer_starts_afresh():
    """After flush no row is open: the next pieces go into new rows, as in a fresh packer."""
    from rcond.packing import BestFitPacker, Pool

    emitted = []
    packer = BestFitPacker(4, pad_id=0, open_rows=4, table_rows=4,
                           emit=lambda t: emitted.append(t["input_ids"].tolist()))
    one = np.ones(1, bool)
    packer.add(Pool(np.array([1, 2, 3], np.int32), np.zeros(3, np.float32), np.zeros(3, np.int32), np.array([0]),
                    np.array([3]), one))
    packer.flush()
    packer.add(Pool(np.array([7], np.int32), np.zeros(1, np.float32), np.zeros(1, np.int32), np.array([0]),
                    np.array([1]), one))
    packer.flush()
    assert emitted == [[1, 2, 3, 0], [7, 0, 0, 0]]


def test_pack_options_defaults_are_those_of_the_design():
    """DESIGN §3: 5% unconditional records, prompts not trained on by default; nothing truncated
    unless asked."""
    from rcond.packing import PackOptions

    o = PackOptions()
    assert (o.uncond_fraction, o.train_on_prompt, o.truncate) == (0.05, False, False)


def test_a_large_pool_keeps_only_the_tokens_of_its_waiting_pieces(monkeypatch):
    """A pool of three full rows and a piece of 3 tokens: the rows are written at once, and the
    packer holds the 3 tokens only (not the pool's 51); the piece is written from them when its
    row fills."""
    from rcond import packing
    from rcond.packing import BestFitPacker, Pool

    monkeypatch.setattr(packing, "COMPACT_TOKENS", 8)
    B, emitted = 16, []
    packer = BestFitPacker(B, pad_id=0, open_rows=4, table_rows=8,
                           emit=lambda t: emitted.append({k: v.copy() for k, v in t.items()}))
    n = np.array([16, 16, 16, 3])
    start = np.array([0, 16, 32, 48])
    big = Pool(np.arange(1, 52, dtype=np.int32), np.ones(51, np.float32), np.full(51, 7, np.int32), start, n,
               np.ones(1, bool))
    packer.add(big)
    [held] = packer.pools.values()
    assert held.ids.tolist() == [49, 50, 51] and held.marker.tolist() == [7, 7, 7] and len(held.lw) == 3
    assert packer.filled == 3  # the full rows are in the table already
    small = Pool(np.arange(100, 113, dtype=np.int32), np.ones(13, np.float32), np.full(13, 2, np.int32),
                 np.array([0]), np.array([13]), np.ones(1, bool))
    packer.add(small)
    packer.flush()
    rows = emitted[0]["input_ids"].reshape(-1, B)
    assert rows[3].tolist() == [49, 50, 51] + list(range(100, 113))
    assert emitted[0]["marker"].reshape(-1, B)[3].tolist() == [7] * 3 + [2] * 13
    assert not packer.pools


def test_padding_slots_hold_the_pad_id_with_weight_0_and_no_marker():
    """Pieces of 3 and 2 tokens in rows of 4 (the 2 does not fit beside the 3): each row is its
    piece, then padding of the pad id given (not 0), loss weight 0 and marker -1."""
    from rcond.packing import BestFitPacker, Pool

    emitted = []
    packer = BestFitPacker(4, pad_id=9, open_rows=4, table_rows=4,
                           emit=lambda t: emitted.append({k: v.copy() for k, v in t.items()}))
    packer.add(Pool(np.array([1, 2, 3, 4, 5], np.int32), np.array([0.5, 0.5, 0, 0.25, 0], np.float32),
                    np.array([0, 0, 0, 1, 1], np.int32), np.array([0, 3]), np.array([3, 2]), np.ones(2, bool)))
    packer.flush()
    [t] = emitted
    assert t["input_ids"].tolist() == [1, 2, 3, 9] + [4, 5, 9, 9]
    assert t["loss_weight"].tolist() == [0.5, 0.5, 0, 0] + [0.25, 0, 0, 0]
    assert t["marker"].tolist() == [0, 0, 0, -1] + [1, 1, -1, -1]
    assert t["pieces"].tolist() == [1, 1] and t["lengths"].tolist() == [3, 2]


def test_positions_and_segments_from_a_layout_by_hand():
    """Rows of 6 slots holding pieces [2, 3], [6] and [1]: positions restart at 0 in every piece
    and in the padding run, segments count the pieces of a row and padding is -1."""
    from rcond.packing import fill_layout

    pos, seg = np.full(18, 99, np.int32), np.full(18, 99, np.int32)
    fill_layout(np.array([2, 1, 1], np.int32), np.array([2, 3, 6, 1], np.int32), 6, pos, seg)
    assert pos.tolist() == [0, 1, 0, 1, 2, 0] + [0, 1, 2, 3, 4, 5] + [0, 0, 1, 2, 3, 4]
    assert seg.tolist() == [0, 0, 1, 1, 1, -1] + [0] * 6 + [0, -1, -1, -1, -1, -1]


def test_positions_and_segments_of_random_layouts_against_a_loop():
    """Random tables, full rows (no padding run) and rows of one piece among them: every slot's
    position and segment as a plain loop over the rows gives them."""
    from rcond.packing import fill_layout

    rng = np.random.default_rng(1)
    B = 8
    for _ in range(200):
        pieces, lengths = [], []
        for _ in range(int(rng.integers(0, 6))):
            cuts = sorted(rng.choice(np.arange(1, B + 1), size=int(rng.integers(1, 5)), replace=False).tolist())
            if rng.random() < 0.3:
                cuts[-1] = B  # a full row
            row = np.diff([0] + cuts).tolist()
            pieces.append(len(row))
            lengths += row
        pos, seg = [], []
        at = 0
        for n in pieces:
            row = lengths[at:at + n]
            at += n
            for s, length in enumerate(row):
                pos += list(range(length))
                seg += [s] * length
            pos += list(range(B - sum(row)))
            seg += [-1] * (B - sum(row))
        got_pos, got_seg = np.full(len(pieces) * B, 99, np.int32), np.full(len(pieces) * B, 99, np.int32)
        fill_layout(np.array(pieces, np.int32), np.array(lengths, np.int32), B, got_pos, got_seg)
        assert got_pos.tolist() == pos and got_seg.tolist() == seg


def test_positions_and_segments_past_the_int16_range():
    """Rows of 40000 slots (a long-context block size): one piece of 39000 tokens with its padding
    run, then 40000 pieces of one token. The running sums count past 32767 without wrapping."""
    from rcond.packing import fill_layout

    B = 40_000
    pos, seg = np.empty(2 * B, np.int32), np.empty(2 * B, np.int32)
    fill_layout(np.array([1, B], np.int32), np.array([39_000] + [1] * B, np.int32), B, pos, seg)
    np.testing.assert_array_equal(pos[:B], np.r_[np.arange(39_000), np.arange(1_000)])
    np.testing.assert_array_equal(seg[:B], np.r_[np.zeros(39_000), np.full(1_000, -1)])
    np.testing.assert_array_equal(pos[B:], np.zeros(B))
    np.testing.assert_array_equal(seg[B:], np.arange(B))


@pytest.mark.parametrize("pieces, lengths", [([2, 1], [4, 3, 2]),  # row 0 holds 7 tokens in 6 slots
                                             ([2, 2], [1, 2, 3]),  # one piece length missing
                                             ([1], [2, 1]),        # one too many
                                             ([2], [-1, 4])])      # a negative length
def test_a_layout_that_does_not_fit_its_rows_is_an_error(pieces, lengths):
    from rcond.packing import CorpusError, fill_layout

    n = 6 * len(pieces)
    with pytest.raises(CorpusError, match="layout does not match"):
        fill_layout(np.array(pieces, np.int32), np.array(lengths, np.int32), 6, np.empty(n, np.int32),
                    np.empty(n, np.int32))


def test_position_and_segment_arrays_not_of_the_layouts_rows_are_an_error():
    """Arrays of two rows for a layout of one: refused, not filled past the layout's rows."""
    from rcond.packing import CorpusError, fill_layout

    with pytest.raises(CorpusError, match="layout does not match"):
        fill_layout(np.array([1], np.int32), np.array([6], np.int32), 6, np.empty(12, np.int32), np.empty(12, np.int32))


def test_spill_round_trip_and_a_truncated_file(tmp_path):
    """Pass 1's tables come back from the spill file column for column, in order, with their
    dtypes, whatever their row counts, and with the positions and segments of their layout, into
    fresh buffers or into arrays given; a file cut short is an error, not a short table."""
    from rcond.packing import PACKED_DTYPES, CorpusError, Spill

    B = 4
    layouts = [([1, 2, 1], [4, 1, 2, 3]), ([2], [2, 2]), ([1, 3], [1, 1, 1, 1])]  # (pieces per row, lengths)
    tables = [{k: (np.arange(len(pieces) * B) * (j + 1) - j).astype(dtype)
               for j, (k, dtype) in enumerate(PACKED_DTYPES.items())}
              | {"pieces": np.array(pieces, np.int32), "lengths": np.array(lengths, np.int32)}
              for pieces, lengths in layouts]
    positions = [[0, 1, 2, 3, 0, 0, 1, 0, 0, 1, 2, 0], [0, 1, 0, 1], [0, 0, 1, 2, 0, 0, 0, 0]]
    segments = [[0, 0, 0, 0, 0, 1, 1, -1, 0, 0, 0, -1], [0, 0, 1, 1], [0, -1, -1, -1, 0, 1, 2, -1]]
    with Spill(tmp_path / "s.bin", B) as spill:
        for t in tables:
            spill.write(t)
    assert (tmp_path / "s.bin").stat().st_size == sum(12 * len(t["input_ids"]) + 4 * (len(p) + len(n))
                                                      for t, (p, n) in zip(tables, layouts))
    got = [{k: v.copy() for k, v in t.items()} for t in spill.tables()]  # copies: the buffers are reused
    assert len(got) == len(tables)
    for g, want, pos, seg in zip(got, tables, positions, segments):
        for k in PACKED_DTYPES:
            assert g[k].dtype == want[k].dtype
            np.testing.assert_array_equal(g[k], want[k])
        assert g["position_ids"].dtype == g["segment_ids"].dtype == np.int32
        assert g["position_ids"].tolist() == pos and g["segment_ids"].tolist() == seg
    into = {k: np.full(5 * B, 7, dtype) for k, dtype in PACKED_DTYPES.items()}  # longer than the largest table
    again = [{k: v.copy() for k, v in t.items()} for t in spill.tables(into)]
    for g, a in zip(got, again):
        assert g.keys() == a.keys() and all(np.array_equal(g[k], a[k]) and g[k].dtype == a[k].dtype for k in g)
    assert np.array_equal(into["input_ids"][:2 * B], tables[2]["input_ids"])  # read into the arrays given
    with pytest.raises(ValueError, match="arrays to read into"):
        next(spill.tables({**into, "marker": into["marker"].astype(np.int64)}))
    with pytest.raises(ValueError, match="arrays to read into"):
        next(spill.tables({k: v[:2 * B] for k, v in into.items()}))  # shorter than the largest table (3 rows)
    (tmp_path / "s.bin").write_bytes((tmp_path / "s.bin").read_bytes()[:-1])
    with pytest.raises(CorpusError, match="ended early"):
        list(spill.tables())
