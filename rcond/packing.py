"""Pieces of documents -> packed rows of ``block_size`` tokens, and pass 1's spill file (DESIGN §4).

*Streaming best fit*: each piece goes into the open row with the least free space that still
fits it (a new row if none does); a row leaves when full, or, when more than ``open_rows`` rows
are open, the fullest leaves. Only the fitting looks at one piece at a time, and only at its
length; the rows that leave are assembled from their pools' tokens with a few gathers, in place,
into one reused table of rows. Unfilled slots are padding (``pad_id``, position ids from 0,
segment −1, weight 0, no marker). Full tables go to a :class:`Spill`, a raw temporary file that
pass 2 of :func:`rcond.corpus.build` reads back to resolve the control tokens.

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

PACKED_DTYPES = {"input_ids": np.int32, "position_ids": np.int32, "segment_ids": np.int32,
                 "loss_weight": np.float32, "marker": np.int32}  # pass 1's rows: flat, [R * B] per table
PACKED_COLUMNS = tuple(PACKED_DTYPES)
KEY_BITS = 40  # the packer's open rows are ints: free slots << KEY_BITS | row key (keys below 2**40)
KEY_MASK = (1 << KEY_BITS) - 1


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


class BestFitPacker:
    """Streaming best-fit bin packing of pieces into rows of ``block_size`` tokens.

    Each piece goes into the open row with the least free space that still fits it (a new row if
    none does); a row leaves when full, or when more than ``open_rows`` rows are open (the
    fullest leaves). Only lengths are handled one piece at a time; the rows that leave are
    assembled from their pools' tokens with a few gathers (:meth:`_assemble`), in place, into a
    table of ``table_rows`` rows that is reused: each time it is full it goes to ``emit`` as
    ``{column: [table_rows * B] array}`` (the last one, from :meth:`flush`, may be shorter).
    ``emit`` must be done with the arrays when it returns.
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

    def flush(self) -> None:
        """Every open row leaves, in the order they were opened; the table goes out as it is."""
        self._place([self.rows.pop(key) for key in sorted(slot & KEY_MASK for slot in self.free)])
        self.free = []
        if self.filled:
            self.emit({k: v[:self.filled * self.B] for k, v in self.table.items()})
            self.filled = 0

    def _place(self, done: list[list[int]]) -> None:
        """Rows into the table, as many as fit; a full table goes out and is refilled."""
        while done:
            room = self.table_rows - self.filled
            head, done = done[:room], done[room:]
            a, b = self.filled * self.B, (self.filled + len(head)) * self.B
            self._assemble(head, {k: v[a:b] for k, v in self.table.items()})
            self.filled += len(head)
            if self.filled == self.table_rows:
                self.emit(self.table)
                self.filled = 0

    def _assemble(self, done: list[list[int]], out: dict[str, np.ndarray]) -> None:
        """Rows (lists of global piece numbers) -> padded rows written into ``out`` (flat
        ``[R * B]`` views, row after row); drops pools no row still uses."""
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
        seg = np.arange(len(piece)) - row_first[row]                                  # [M] segment within its row
        end = np.cumsum(length)                                                       # [M]
        offset = end - length - (end - length)[row_first][row]                        # [M] where it sits in the row
        ids, pos, seg_ids, lw, mk = (out[k] for k in PACKED_COLUMNS)                  # [R * B] each
        for p, sel in used:  # the tokens of each pool's pieces, gathered in one go
            pool = self.pools[p]
            n = length[sel]                                                           # [m]
            k = index_within_runs(n)                                                 # [s] index within its piece
            dst = np.repeat(row[sel] * B + offset[sel], n) + k                        # [s] into the [R*B] rows
            src = np.repeat(pool.start[piece[sel]], n) + k                            # [s] into the pool
            ids[dst], lw[dst], mk[dst], pos[dst], seg_ids[dst] = (pool.ids[src], pool.lw[src], pool.marker[src], k,
                                                                   np.repeat(seg[sel], n))
            self.live[p] -= len(n)
            if not self.live[p]:
                del self.pools[p], self.first[p], self.live[p]
        pad = B - np.bincount(row, weights=length, minlength=R).astype(np.int64)     # [R] free slots per row
        k = index_within_runs(pad)                                                   # [f] index within the padding
        dst = np.repeat(np.arange(R) * B + B - pad, pad) + k                          # [f] the padding slots
        ids[dst], pos[dst], seg_ids[dst], lw[dst], mk[dst] = self.pad_id, k, -1, 0, -1  # padding runs from 0


class Spill:
    """Pass 1's tables of packed rows in a temporary file of the build's own, raw: each table's
    columns one after another (``PACKED_DTYPES`` order, ``rows * B`` values each). Pass 2 reads
    the tables back into one reused set of buffers: nothing to decode, no fresh memory per table."""

    def __init__(self, path: Path, block_size: int):
        self.path, self.B = path, block_size
        self.table_rows: list[int] = []  # rows in each table, in file order
        self.f = open(path, "wb")

    def __enter__(self) -> "Spill":
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, rows: dict[str, np.ndarray]) -> None:
        """Append a table ``{column: [R * B] array}``."""
        for k in PACKED_COLUMNS:
            self.f.write(rows[k])
        self.table_rows.append(len(rows["input_ids"]) // self.B)

    def tables(self) -> Iterator[dict[str, np.ndarray]]:
        """Each table back, as views into buffers that the next table overwrites."""
        most = max(self.table_rows, default=0)
        buffers = {k: np.empty(most * self.B, dtype) for k, dtype in PACKED_DTYPES.items()}
        with open(self.path, "rb") as f:
            for n in self.table_rows:
                table = {k: b[:n * self.B] for k, b in buffers.items()}
                for k, column in table.items():
                    if f.readinto(column) != column.nbytes:
                        raise CorpusError(f"{self.path}: the temporary file of packed rows ended early")
                yield table
