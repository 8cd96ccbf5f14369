"""rcond.packing: streaming best fit against a brute-force reference placement, and the spill file."""

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


def test_packer_matches_reference_across_pools():
    """Pieces of many pools, few open rows (so rows hold pieces of older pools), after an empty
    pool: every row equals the one built by hand from the reference placement."""
    from rcond.conditioning import _next_weights
    from rcond.packing import BestFitPacker, Pool

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
    got = {k: np.concatenate([e[k] for e in emitted]).reshape(-1, B) for k in emitted[-1]}
    want = reference_best_fit(lengths, B, 3)
    assert len(got["input_ids"]) == len(want)
    for r, pieces in enumerate(want):
        ids, pos, seg, lw, markers = [], [], [], [], []
        for s, g in enumerate(pieces):
            pool, tw, q = pools[g]
            a, n = int(pool.start[q]), int(pool.length[q])
            ids += pool.ids[a:a + n].tolist()
            pos += list(range(n))
            seg += [s] * n
            lw += tw[a + 1:a + n].tolist() + [0.0]
            markers += pool.marker[a:a + n].tolist()
        pad = B - len(ids)
        assert got["input_ids"][r].tolist() == ids + [0] * pad
        assert got["position_ids"][r].tolist() == pos + list(range(pad))
        assert got["segment_ids"][r].tolist() == seg + [-1] * pad
        np.testing.assert_array_equal(got["loss_weight"][r], np.array(lw + [0.0] * pad, np.float32))
        assert got["marker"][r].tolist() == markers + [-1] * pad
    assert not packer.pools and not packer.first  # every pool released once its pieces are written


def test_spill_round_trip_and_a_truncated_file(tmp_path):
    """Pass 1's tables come back from the spill file column for column, in order, with their
    dtypes, whatever their row counts; a file cut short is an error, not a short table."""
    from rcond.packing import PACKED_DTYPES, CorpusError, Spill

    B = 4
    tables = [{k: (np.arange(rows * B) * (j + 1) - j).astype(dtype) for j, (k, dtype) in enumerate(PACKED_DTYPES.items())}
              for rows in (3, 1, 2)]
    with Spill(tmp_path / "s.bin", B) as spill:
        for t in tables:
            spill.write(t)
    got = [{k: v.copy() for k, v in t.items()} for t in spill.tables()]  # copies: the buffers are reused
    assert len(got) == len(tables)
    for g, want in zip(got, tables):
        for k in PACKED_DTYPES:
            assert g[k].dtype == want[k].dtype
            np.testing.assert_array_equal(g[k], want[k])
    (tmp_path / "s.bin").write_bytes((tmp_path / "s.bin").read_bytes()[:-1])
    with pytest.raises(CorpusError, match="ended early"):
        list(spill.tables())
