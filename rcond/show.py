"""A corpus's rows as the model sees them (``rcond show``).

Each row of ``rows.arrow`` (DESIGN §4) is cut into its pieces by ``segment_ids``; each piece's
tokens are grouped into runs of one kind and decoded run by run:

- ``control``: the scheme's mode and RTG tokens;
- ``trained``: tokens the loss trains, i.e. whose target weight is nonzero. The target weight of
  token ``i`` is the row's ``loss_weight[i-1]`` (the weight of predicting token ``i`` at position
  ``i-1``); a piece's first token has none (nothing in the piece predicts it);
- ``context``: every other token (prompts, user turns, and what ``--truncate`` or a split left
  without a weight).

A piece is also labelled with the bins its tokens are conditioned on (``bin_ids``, in order:
one for a response, one per assistant turn of a dialog; none in ``off`` mode) and their reward
ranges. ``--level K`` (or ``off``) shows only the pieces conditioned on bin K (or on none),
row after row, so that what the model trains at one level can be read beside another. Runs are
decoded with the corpus's own tokenizer, special tokens kept, so what is shown is exactly the
text of the ids; a run that ends inside a character of a byte-level tokenizer shows a
replacement character there.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np

CONTROL, CONTEXT, TRAINED = "control", "context", "trained"


@dataclass
class Run:
    kind: str   # CONTROL, CONTEXT or TRAINED
    ids: list[int]
    text: str


@dataclass
class Piece:
    row: int
    segment: int
    bins: list[int]   # the bins in force over the piece, in order; [] in off mode
    runs: list[Run]

    @property
    def tokens(self) -> int:
        return sum(len(r.ids) for r in self.runs)

    @property
    def trained(self) -> int:
        return sum(len(r.ids) for r in self.runs if r.kind == TRAINED)


def row_pieces(row: int, columns: dict, control_ids: set[int], decode, keep=None) -> list[Piece]:
    """The pieces of one row (``columns``: its ``input_ids``, ``segment_ids``, ``loss_weight`` and
    ``bin_ids``), in order; padding (segment -1) is left out. ``decode(ids) -> str``. With
    ``keep(bins) -> bool``, only the pieces whose bins in force it accepts (decoding is most of the
    work: the others are left out before it)."""
    ids = np.asarray(columns["input_ids"])              # [B]
    seg = np.asarray(columns["segment_ids"])            # [B]
    weight = np.asarray(columns["loss_weight"])         # [B]
    bins = np.asarray(columns["bin_ids"])               # [B]
    pieces = []
    for s in np.unique(seg[seg >= 0]):
        at = np.flatnonzero(seg == s)                   # [n] positions of the piece, contiguous
        in_force = bins[at][bins[at] >= 0].tolist()
        piece_bins = [k for j, k in enumerate(in_force) if j == 0 or k != in_force[j - 1]]
        if keep is not None and not keep(piece_bins):
            continue
        target = np.concatenate([[0.0], weight[at[:-1]]])  # [n] weight of predicting each token
        tokens = ids[at].tolist()
        kinds = [CONTROL if t in control_ids else TRAINED if w > 0 else CONTEXT for t, w in zip(tokens, target)]
        runs = []
        for kind, group in groupby(zip(kinds, tokens), key=lambda pair: pair[0]):
            run_ids = [t for _, t in group]
            runs.append(Run(kind, run_ids, decode(run_ids)))
        pieces.append(Piece(row, int(s), piece_bins, runs))
    return pieces


def shown(text: str, max_chars: int) -> str:
    """``repr`` of a run's text (line breaks and spaces visible), its middle elided past ``max_chars``
    characters (0: whole)."""
    if max_chars and len(text) > max_chars:
        head, tail = text[: max_chars // 2], text[len(text) - max_chars // 2:]
        return f"{head!r} ... {len(text) - len(head) - len(tail):,} characters ... {tail!r}"
    return repr(text)


def describe(directory: str | Path, first: int = 0, rows: int = 1, max_chars: int = 300, *,
             level: int | str | None = None, pieces: int = 3) -> str:
    """The corpus in ``directory`` (checked by :func:`rcond.corpus.load`): its scheme in a few lines,
    then rows ``first`` .. ``first + rows - 1`` piece by piece, run by run; with ``level`` (a bin,
    or ``"off"``), instead the first ``pieces`` pieces from row ``first`` on that are conditioned on
    that bin (any of a dialog's) or carry none."""
    from .corpus import CorpusError, load

    data, scheme, tokenizer = load(directory)
    if not 0 <= first < len(data):
        raise CorpusError(f"{directory}: row {first} does not exist: the corpus has rows 0..{len(data) - 1}")
    for name, value, least in (("--rows", rows, 1), ("--pieces", pieces, 1), ("--max-chars", max_chars, 0)):
        if value < least:
            raise CorpusError(f"{name} must be at least {least}, got {value}"
                              + (" (0: whole runs)" if name == "--max-chars" else ""))
    wanted = None if level is None else _level(level, scheme)
    o = scheme.options
    unused = "" if any(scheme.counts) else ", none used"  # every piece off: no RTG token anywhere
    lines = [f"corpus {directory}: format {o.get('format')}, {scheme.num_bins} bins ({scheme.binning}{unused}), "
             f"{len(data):,} row(s) of {o.get('block_size')} tokens, {o.get('records', 0):,} records"]
    if o.get("built_with"):
        lines.append("  built with " + ", ".join(f"{k} {v}" for k, v in o["built_with"].items()))
    control_ids = set(tokenizer.convert_tokens_to_ids(scheme.control_tokens))

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def piece_lines(p: Piece, head: str) -> list[str]:
        condition = "; ".join(f"bin {k}, rewards in [{lo:.4g}, {hi:.4g})"
                              for k, (lo, hi) in ((k, scheme.bin_range(k)) for k in p.bins)) or "off (no reward-to-go)"
        return [f"{head}: {p.tokens} tokens, {p.trained} trained; {condition}",
                *(f"    {run.kind:<8} {shown(run.text, max_chars)}" for run in p.runs)]

    if wanted is None:
        last = min(first + rows, len(data))
        for r in range(first, last):
            columns = data[r]
            found = row_pieces(r, columns, control_ids, decode)
            padding = int(np.count_nonzero(np.asarray(columns["segment_ids"]) < 0))
            lines.append(f"row {r}: {len(found)} piece(s)" + (f", {padding} padding tokens" if padding else ""))
            for p in found:
                lines += piece_lines(p, f"  piece {p.segment}")
        if last < len(data):
            lines.append(f"({len(data) - last:,} more row(s): --from {last} shows the next)")
        return "\n".join(lines)
    name = "in off mode" if wanted == OFF else f"at level {wanted}"
    if wanted != OFF and not scheme.counts[wanted]:
        lines.append(f"(no piece is {name}: its bin holds no reward-to-go token in this corpus)")
        return "\n".join(lines)
    def conditioned(bins: list[int]) -> bool:
        return not bins if wanted == OFF else wanted in bins

    shown_pieces, left, r = 0, 0, first  # left: pieces of the last row read that match but were not shown
    while r < len(data) and shown_pieces < pieces:
        for p in row_pieces(r, data[r], control_ids, decode, keep=conditioned):
            if shown_pieces < pieces:
                lines += piece_lines(p, f"row {r}, piece {p.segment}")
                shown_pieces += 1
            else:
                left += 1
        r += 1
    if shown_pieces < pieces:
        lines.append(f"({shown_pieces} piece(s) {name} from row {first} to the last)")
        return "\n".join(lines)
    notes = [f"row {r - 1} holds {left} more piece(s) {name}: --pieces {pieces + left} shows them too"] if left else []
    if r < len(data):
        notes.append(f"--level {wanted if wanted != OFF else 'off'} --from {r} goes on from the next row")
    if notes:
        lines.append(f"({'; '.join(notes)})")
    return "\n".join(lines)


OFF = -1  # the level of a piece without a reward-to-go token


def _level(level: int | str, scheme) -> int:
    """A ``--level``: a bin of the scheme, or ``"off"`` (:data:`OFF`); SchemeError otherwise."""
    from .tokens import SchemeError

    if level == "off":
        return OFF
    try:
        k = int(level)
    except (TypeError, ValueError):
        raise SchemeError(f"--level must be a level 0..{scheme.num_bins - 1} or 'off', got {level!r}") from None
    return scheme.check_level(k)


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("show", help="a corpus's rows as the model sees them: control tokens, context, trained text",
                       description="Print a corpus's scheme and some of its rows, each piece as runs of control "
                                   "tokens, context (not trained) and trained text, decoded with the corpus's "
                                   "tokenizer.",
                       epilog="examples:\n  rcond show corpora/reviews\n  rcond show corpora/hh --from 10 --rows 3 "
                              "--max-chars 0\n  rcond show corpora/reviews --level 9 --pieces 5", formatter_class=formatter)
    p.add_argument("corpus", help="a corpus directory written by rcond preprocess")
    p.add_argument("--from", dest="first", type=int, default=0, metavar="ROW", help="first row to show")
    p.add_argument("--rows", type=int, default=1, help="how many rows to show")
    p.add_argument("--max-chars", type=int, default=300,
                   help="characters of a run shown before its middle is elided (0: whole runs)")
    p.add_argument("--level", default=None, metavar="K|off",
                   help="show only pieces conditioned on bin K (any of a dialog's bins), or without one (off), "
                        "from --from on")
    p.add_argument("--pieces", type=int, default=3, help="how many pieces --level shows")
    p.set_defaults(run=run)


def run(a) -> int:
    print(describe(a.corpus, a.first, a.rows, a.max_chars, level=a.level, pieces=a.pieces))
    return 0
