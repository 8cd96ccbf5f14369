"""Pieces of documents -> packed rows of ``block_size`` tokens, and pass 1's spill file (DESIGN §4).

*Streaming best fit*: each piece goes into the open row with the least free space that still
fits it (a new row if none does); a row leaves when full, or, when more than ``open_rows`` rows
are open, the fullest leaves. Only the fitting looks at one piece at a time, and only at its
length; the rows that leave are assembled from their pools' tokens with a few gathers, in place,
into one reused table of rows. Unfilled slots are padding (``pad_id``, weight 0, no marker).

A table holds three columns per token (ids, loss weights, markers) and the rows' *layout*: how
many pieces each row holds and each piece's length. Position ids (from 0 in every piece and in
the padding run) and segment ids (0, 1, ... per piece, −1 for padding) follow from the layout
alone, so they are not gathered in pass 1 nor kept on disk: full tables go to a :class:`Spill`, a
raw temporary file of 12 bytes per token (20 with the two columns), which pass 2 of
:func:`rcond.corpus.build` reads back, rebuilding both columns (:func:`fill_layout`), to resolve
the control tokens.

Also here, shared by every stage of a build: its options (:class:`PackOptions`) and its error
(:class:`CorpusError`).
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

PACKED_DTYPES = {"input_ids": np.int32, "loss_weight": np.float32, "marker": np.int32}  # per token: [R * B] a table
PACKED_COLUMNS = tuple(PACKED_DTYPES)
LAYOUT_COLUMNS = ("pieces", "lengths")  # int32: pieces in each row [R], each piece's length, row after row [M]
KEY_BITS = 40  # the packer's open rows are ints: free slots << KEY_BITS | row key (keys below 2**40)
KEY_MASK = (1 << KEY_BITS) - 1
COMPACT_TOKENS = 1 << 18  # a pool of more tokens keeps only those of its pieces left waiting in open rows


class CorpusError(ValueError):
    pass


@dataclass
class PackOptions:
    block_size: int = 1024
    uncond_fraction: float = 0.05
    train_on_prompt: bool = False
    truncate: bool = False
    seed: int = 0
    open_rows: int = 64
    encode_batch: int = 1000
    workers: int = 1  # processes that encode and condition batches (rcond.parallel); 1 = this process


@dataclass
class Pool:
    """The token streams of a batch of documents, cut into pieces: piece q is
    ``[start[q], start[q] + length[q])`` of the flat columns."""

    ids: np.ndarray  # [T] int32; control tokens as RTG_SLOT / ON_SLOT / OFF_SLOT
    lw: np.ndarray  # [T] float32 loss weight: the target weight of the next token in its piece, 0 at a piece's end
    marker: np.ndarray  # [T] int32 index of the marker in force (its bin comes in pass 2), -1 none
    start: np.ndarray  # [Q] int64
    length: np.ndarray  # [Q] int64
    on: np.ndarray  # [D] bool: each document's mode after the unconditional draw


def index_within_runs(lengths: np.ndarray) -> np.ndarray:
    """Runs of ``lengths`` [R] laid end to end -> each element's index within its run [Σ lengths]."""
    return np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def fill_layout(pieces: np.ndarray, lengths: np.ndarray, block_size: int, position_ids: np.ndarray,
                segment_ids: np.ndarray) -> None:
    """A table's layout -> its ``position_ids`` and ``segment_ids`` (written into the two
    ``[R * B]`` int32 arrays given). ``pieces`` [R]: pieces in each row; ``lengths`` [M]: each
    piece's length, row after row. Each row is its pieces, then a padding run of the slots left:
    positions count from 0 in every run, segments are 0, 1, ... per piece and −1 for padding.

    Both columns are running sums written in place: every slot adds 1 to the position and 0 to
    the segment, except the first slot of each run, which steps the position back to 0 and the
    segment to the run's own. No ``[R * B]`` temporary is made: on a machine where fresh memory is
    slow to touch, a table's worth of int64 temporaries cost pass 2 several times this work."""
    R, B = len(pieces), block_size
    damaged = CorpusError("a table's layout does not match its rows (the temporary file of packed rows is damaged)")
    end = np.cumsum(pieces)                                                          # [R] one past each row's last piece
    if len(position_ids) != R * B or (end[-1] if R else 0) != len(lengths) or (lengths < 0).any():
        raise damaged
    filled = np.concatenate(([0], np.cumsum(lengths)))                               # [M + 1]
    pad = B - (filled[end] - filled[end - pieces])                                   # [R] padding slots per row
    if (pad < 0).any():
        raise damaged
    run_len = np.insert(lengths, end, pad)                                           # [M + R] pieces, then padding
    run_seg = np.insert(index_within_runs(pieces), end, -1)                          # [M + R] piece within its row
    slots = run_len > 0                                                              # a full row's padding run is empty
    run_len, run_seg = run_len[slots], run_seg[slots]                                # [S] the runs that hold slots
    first = np.cumsum(run_len) - run_len                                             # [S] each run's first slot
    position_ids.fill(1)
    position_ids[first[1:]] = 1 - run_len[:-1]  # back to 0 after the run before: its last position was len - 1
    if R:
        position_ids[0] = 0
    np.cumsum(position_ids, dtype=np.int32, out=position_ids)                        # [R * B]
    segment_ids.fill(0)
    segment_ids[first] = np.diff(run_seg, prepend=0)                                 # [S] steps between runs
    np.cumsum(segment_ids, dtype=np.int32, out=segment_ids)                          # [R * B]


class BestFitPacker:
    """Streaming best-fit bin packing of pieces into rows of ``block_size`` tokens.

    Each piece goes into the open row with the least free space that still fits it (a new row if
    none does); a row leaves when full, or when more than ``open_rows`` rows are open (the
    fullest leaves). Only lengths are handled one piece at a time; the rows that leave are
    assembled from their pools' tokens with a few gathers (:meth:`_assemble`), in place, into a
    table of ``table_rows`` rows that is reused: each time it is full it goes to ``emit`` as
    ``{column: [table_rows * B] array}`` for ``PACKED_COLUMNS`` and the layout's ``pieces`` [R]
    and ``lengths`` [M] (the last table, from :meth:`flush`, may be shorter). ``emit`` must be
    done with the arrays when it returns. A pool is held until its last piece is written; a large
    one keeps only the tokens of its pieces still waiting in open rows (:meth:`_compact`).
    """

    def __init__(self, block_size: int, pad_id: int, open_rows: int, table_rows: int,
                 emit: Callable[[dict[str, np.ndarray]], None]):
        self.B, self.pad_id, self.max_open = block_size, pad_id, open_rows
        self.free: list[int] = []  # open rows, sorted, each as free slots << KEY_BITS | row key
        self.rows: dict[int, list[int]] = {}  # row key -> its pieces in order, by global piece number
        self.next_key = 0
        self.pools: dict[int, Pool] = {}  # pool id -> pool, while some piece of it is not written
        self.first: dict[int, int] = {}  # pool id -> global number of its first piece
        self.live: dict[int, int] = {}  # pool id -> its pieces not yet written
        self.next_pool = self.next_piece = 0
        self.table_rows, self.emit, self.filled = table_rows, emit, 0
        self.table = {k: np.empty(table_rows * block_size, dtype)
                      for k, dtype in PACKED_DTYPES.items()}  # [table_rows * B] each, reused
        self.layout: list[tuple[np.ndarray, np.ndarray]] = []  # the table's rows so far: (pieces [r], lengths [m])

    def add(self, pool: Pool) -> None:
        """Place every piece of ``pool``; the rows that leave go into the table."""
        if not len(pool.length):  # nothing to place, and nothing would ever release it
            return
        pid = self.next_pool
        self.next_pool += 1
        self.pools[pid], self.first[pid], self.live[pid] = pool, self.next_piece, len(pool.length)
        done: list[list[int]] = []
        free, rows, B, g = self.free, self.rows, self.B, self.next_piece
        for n in pool.length.tolist():  # one int per open row keeps the search a plain int compare
            i = bisect.bisect_left(free, n << KEY_BITS)
            if i < len(free):
                slot = free.pop(i)
                space, key = slot >> KEY_BITS, slot & KEY_MASK
            else:
                space, key = B, self.next_key
                self.next_key += 1
                rows[key] = []
            rows[key].append(g)
            g += 1
            space -= n
            if space == 0:
                done.append(rows.pop(key))
                continue
            bisect.insort(free, space << KEY_BITS | key)
            if len(free) > self.max_open:
                done.append(rows.pop(free.pop(0) & KEY_MASK))
        self.next_piece = g
        self._place(done)
        if pid in self.pools and len(pool.ids) > COMPACT_TOKENS:
            self._compact(pid)

    def _compact(self, pid: int) -> None:
        """Pool ``pid`` (the one just added) -> a copy holding only the tokens of its pieces that
        wait in open rows, where those are less than half of it. Without this, each of up to
        ``open_rows`` rows could hold a whole batch's pool for one short piece (the end of a long
        document): memory ``open_rows`` times a batch's tokens."""
        pool, first = self.pools[pid], self.first[pid]
        waiting = np.array(sorted(g - first for row in self.rows.values() for g in row if g >= first),
                           dtype=np.int64)                                                 # [w] pieces within the pool
        n = pool.length[waiting]                                                          # [w]
        if 2 * int(n.sum()) > len(pool.ids):
            return
        src = np.repeat(pool.start[waiting], n) + index_within_runs(n)                    # [s] their tokens
        start = np.zeros_like(pool.start)                                                 # [Q]; pieces written: unused
        start[waiting] = np.cumsum(n) - n
        self.pools[pid] = Pool(pool.ids[src], pool.lw[src], pool.marker[src], start, pool.length, pool.on)

    def flush(self) -> None:
        """Every open row leaves, in the order they were opened; the table goes out as it is."""
        self._place([self.rows.pop(key) for key in sorted(slot & KEY_MASK for slot in self.free)])
        self.free = []
        if self.filled:
            self._emit({k: v[:self.filled * self.B] for k, v in self.table.items()})

    def _place(self, done: list[list[int]]) -> None:
        """Rows into the table, as many as fit; a full table goes out and is refilled."""
        while done:
            room = self.table_rows - self.filled
            head, done = done[:room], done[room:]
            a, b = self.filled * self.B, (self.filled + len(head)) * self.B
            self._assemble(head, {k: v[a:b] for k, v in self.table.items()})
            self.filled += len(head)
            if self.filled == self.table_rows:
                self._emit(self.table)

    def _emit(self, columns: dict[str, np.ndarray]) -> None:
        pieces, lengths = (np.concatenate(parts) for parts in zip(*self.layout))
        self.emit({**columns, "pieces": pieces, "lengths": lengths})
        self.filled, self.layout = 0, []

    def _assemble(self, done: list[list[int]], out: dict[str, np.ndarray]) -> None:
        """Rows (lists of global piece numbers) -> padded rows written into ``out`` (flat
        ``[R * B]`` views, row after row) and their layout onto ``self.layout``; drops pools no
        row still uses."""
        R, B = len(done), self.B
        counts = np.fromiter(map(len, done), dtype=np.int64, count=R)               # [R] pieces per row
        number = np.fromiter(itertools.chain.from_iterable(done), dtype=np.int64, count=int(counts.sum()))  # [M]
        live = list(self.first)                                                       # [L] live pool ids, ascending
        first = np.fromiter(self.first.values(), dtype=np.int64, count=len(live))    # [L] their first pieces
        at = np.searchsorted(first, number, side="right") - 1                         # [M] index into live
        piece = number - first[at]                                                    # [M] within its pool
        used = [(live[i], at == i) for i in np.unique(at).tolist()]                  # (pool id, its pieces [M])
        length = np.empty(len(number), dtype=np.int64)                               # [M]
        for p, sel in used:
            length[sel] = self.pools[p].length[piece[sel]]
        row = np.repeat(np.arange(R), counts)                                         # [M]
        row_first = np.cumsum(counts) - counts                                        # [R] first piece of each row
        end = np.cumsum(length)                                                       # [M]
        offset = end - length - (end - length)[row_first][row]                        # [M] where it sits in the row
        ids, lw, mk = (out[k] for k in PACKED_COLUMNS)                                # [R * B] each
        for p, sel in used:  # the tokens of each pool's pieces, gathered in one go
            pool = self.pools[p]
            n = length[sel]                                                           # [m]
            k = index_within_runs(n)                                                 # [s] index within its piece
            dst = np.repeat(row[sel] * B + offset[sel], n) + k                        # [s] into the [R*B] rows
            src = np.repeat(pool.start[piece[sel]], n) + k                            # [s] into the pool
            ids[dst], lw[dst], mk[dst] = pool.ids[src], pool.lw[src], pool.marker[src]
            self.live[p] -= len(n)
            if not self.live[p]:
                del self.pools[p], self.first[p], self.live[p]
        pad = B - np.bincount(row, weights=length, minlength=R).astype(np.int64)     # [R] free slots per row
        k = index_within_runs(pad)                                                   # [f] index within the padding
        dst = np.repeat(np.arange(R) * B + B - pad, pad) + k                          # [f] the padding slots
        ids[dst], lw[dst], mk[dst] = self.pad_id, 0, -1
        self.layout.append((counts.astype(np.int32), length.astype(np.int32)))


class Spill:
    """Pass 1's tables of packed rows in a temporary file of the build's own, raw: each table's
    per-token columns one after another (``PACKED_DTYPES`` order, ``rows * B`` values each), then
    its layout (``pieces``, ``lengths``). Pass 2 reads the tables back into one reused set of
    buffers, with ``position_ids`` and ``segment_ids`` rebuilt from the layout: nothing to
    decode, no fresh memory per table."""

    def __init__(self, path: Path, block_size: int):
        self.path, self.B = path, block_size
        self.sizes: list[tuple[int, int]] = []  # (rows, pieces) of each table, in file order
        self.f = open(path, "wb")

    def __enter__(self) -> "Spill":
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, table: dict[str, np.ndarray]) -> None:
        """Append a table: ``{column: [R * B] array}`` for ``PACKED_COLUMNS``, and its layout."""
        for k in PACKED_COLUMNS + LAYOUT_COLUMNS:
            self.f.write(table[k])
        self.sizes.append((len(table["pieces"]), len(table["lengths"])))

    def tables(self, into: dict[str, np.ndarray] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Each table back as ``{column: [R * B] array}`` for ``PACKED_COLUMNS``, ``position_ids``
        and ``segment_ids``: views into buffers that the next table overwrites. ``into``: arrays
        to read the ``PACKED_COLUMNS`` into, of their dtypes and at least the largest table long
        (the packer's own table, done with by then): memory already touched, where fresh buffers
        cost a page fault per 4 KB on first use (on the 2-core CI machine up to ~10 us each while
        its memory is cold: ~15 ms for a table of 512K tokens)."""
        rows = max((r for r, _ in self.sizes), default=0)
        pieces = max((m for _, m in self.sizes), default=0)
        buffers = {k: np.empty(rows * self.B, dtype) if into is None else into[k][:rows * self.B]
                   for k, dtype in PACKED_DTYPES.items()}
        if any(b.dtype != PACKED_DTYPES[k] or len(b) != rows * self.B for k, b in buffers.items()):
            raise ValueError(f"Spill.tables: the arrays to read into must be {PACKED_DTYPES} of at least "
                             f"{rows * self.B} values")
        buffers.update(position_ids=np.empty(rows * self.B, np.int32), segment_ids=np.empty(rows * self.B, np.int32))
        layout = {"pieces": np.empty(rows, np.int32), "lengths": np.empty(pieces, np.int32)}
        with open(self.path, "rb") as f:
            for r, m in self.sizes:
                table = {k: b[:r * self.B] for k, b in buffers.items()}
                read = {**{k: table[k] for k in PACKED_COLUMNS}, "pieces": layout["pieces"][:r],
                        "lengths": layout["lengths"][:m]}
                for column in read.values():
                    if f.readinto(column) != column.nbytes:
                        raise CorpusError(f"{self.path}: the temporary file of packed rows ended early")
                fill_layout(read["pieces"], read["lengths"], self.B, table["position_ids"], table["segment_ids"])
                yield table
