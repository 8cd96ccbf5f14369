"""The evaluation report: ``report.md`` with PNG plots and ``metrics.json``, in one directory.

``write_report`` takes the control scheme, the scored samples of ``rcond sample`` (``on`` mode at
the requested levels, ``off`` mode, optionally guided ``on`` samples), the training log and a few
run facts, and writes, atomically (built beside the target, then renamed into place):

- ``calibration.png``: requested level (x) vs achieved reward (y). Grey boxes are the requested
  bins, the ideal: bin k spans [e_k, e_{k+1}); the unbounded outer bins are drawn to the edge of
  the plotted range, which covers every observed score and every bin edge. Per level, the mean
  score (dots) with a bar from the 10th to the 90th percentile; guided samples as further
  series (one per guidance value), shifted right a little; the ``off``-mode mean as a dashed
  horizontal line. A level without samples has no dot.
- ``loss.png`` (when a training log is given): training loss per step in nats per loss-weighted
  token, total and per mode (``loss_on``, ``loss_off``) where logged. With L logged steps and
  w = max(1, L // 50), each series is drawn as the running mean of its last w logged values
  (bold) over the raw values (faint); steps where a mode had no tokens (null) are skipped, not
  drawn as zero; a NaN loss (a diverged step) leaves a gap in the w points whose window holds it.
  Stage changes are dotted vertical lines.
- ``scores.png``: histograms (as densities) of the achieved reward at the lowest, middle and
  highest level that have samples, and of the ``off`` mode.
- ``report.md``: run facts, the plots, a table per calibration (level, bin, n, mean ± sd, median,
  10–90% range, fraction in the requested bin), both Spearman ρ (see ``rcond.metrics``),
  diversity per mode, and the first few samples (in input order, not picked) at the lowest and
  highest level and in ``off`` mode, escaped for markdown and truncated.
- ``metrics.json``: the same numbers; NaN and the infinite outer bin bounds are ``null``.

The training log is the JSONL of ``rcond train``: lines with ``step`` and ``loss`` are plotted,
other lines are skipped; optional keys ``loss_on``, ``loss_off`` (null when a step had no such
tokens) and ``stage``. A plotted line's ``step`` must be an integer and its losses numbers (in
float range) or null.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .atomic import OutputKind, atomic_dir
from .metrics import (Calibration, MetricsError, ScoreSummary, calibration, check_sample, diversity, iter_jsonl,
                      requested_level)
from .tokens import ControlScheme, SchemeError

REPORT_FILE = "report.md"
METRICS_FILE = "metrics.json"
CALIBRATION_PNG = "calibration.png"
LOSS_PNG = "loss.png"
SCORES_PNG = "scores.png"
REPORT = OutputKind("an rcond report", (REPORT_FILE,),  # what overwrite may replace
                    extras=(METRICS_FILE, CALIBRATION_PNG, LOSS_PNG, SCORES_PNG))
EXAMPLES_PER_GROUP = 3
EXAMPLE_CHARS = 240
DPI = 120
SMOOTH_FRACTION = 50
FEW_POINTS = 30
LOSS_KEYS = ("loss", "loss_on", "loss_off")

Samples = Sequence[Mapping] | str | Path


def write_report(out_dir: str | Path, *, scheme: ControlScheme, on_samples: Samples,
                 off_samples: Samples = (), guided_samples: Samples = (),
                 train_log: str | Path | None = None, facts: Mapping[str, object] | None = None,
                 title: str = "rcond report", reward_label: str = "gold reward",
                 overwrite: bool = False) -> Path:
    """Write the report directory ``out_dir``; returns the path of its ``report.md``.

    Samples are lists of records or paths to JSONL files from ``rcond sample``; every record
    needs a finite ``score`` and fields of the types ``rcond sample`` writes (``check_sample``).
    ``on_samples`` must all be ``on`` mode and ``off_samples`` ``off`` mode; ``guided_samples``
    are grouped by their ``guidance`` value. ``facts`` (e.g. model
    size, tokens trained, wall time, device) are shown as given, in order. ``reward_label``
    names the reward on the axes, e.g. "VADER compound (−1…1)". An existing ``out_dir`` is an
    error unless ``overwrite`` and it holds an earlier report.
    """
    on = _load(on_samples, "on", scheme)
    off = _load(off_samples, "off", scheme)
    guided_records = _load(guided_samples, None, scheme)
    guided: dict[float | None, list[Mapping]] = {}
    for rec in guided_records:
        guided.setdefault(rec.get("guidance"), []).append(rec)

    cal_on = calibration(on, scheme)
    on_by_level: dict[int, list[Mapping]] = {}
    for rec in on:
        on_by_level.setdefault(requested_level(rec, scheme), []).append(rec)
    cal_guided = {g: calibration(recs, scheme) for g, recs in guided.items()}
    off_summary = ScoreSummary.of([r["score"] for r in off])
    div = {"on": diversity([r["text"] for r in on]), "off": diversity([r["text"] for r in off])}
    for g, recs in guided.items():
        div[_guided_name(g)] = diversity([r["text"] for r in recs])
    log = _read_log(Path(train_log)) if train_log is not None else None

    with atomic_dir(out_dir, overwrite, kind=REPORT) as tmp:
        _plot_calibration(tmp / CALIBRATION_PNG, scheme, cal_on, cal_guided, off_summary, on + off + guided_records,
                          reward_label)
        if log is not None:
            _plot_loss(tmp / LOSS_PNG, log)
        has_hist = bool(cal_on.n or off)
        if has_hist:
            _plot_histograms(tmp / SCORES_PNG, on_by_level, off, cal_on, reward_label)
        md = _markdown(title=title, scheme=scheme, facts=facts or {}, on_by_level=on_by_level, off=off, cal_on=cal_on,
                       cal_guided=cal_guided, off_summary=off_summary, div=div, log=log,
                       has_hist=has_hist, reward_label=reward_label)
        (tmp / REPORT_FILE).write_text(md, encoding="utf-8")
        metrics = {"calibration_on": cal_on.to_dict(),
                   "calibration_guided": {str(g): c.to_dict() for g, c in cal_guided.items()},
                   "off": asdict(off_summary), "diversity": div,
                   "facts": {str(k): v for k, v in (facts or {}).items()}}
        (tmp / METRICS_FILE).write_text(json.dumps(_finite_or_null(metrics), indent=2, default=str) + "\n")
    return Path(out_dir) / REPORT_FILE


# ---------------------------------------------------------------------------- inputs

def _load(samples: Samples, mode: str | None, scheme: ControlScheme) -> list[Mapping]:
    """Checked sample records; an error names the first bad one as ``file:line`` (or the list
    and index) and says what was expected."""
    if isinstance(samples, (str, Path)):
        located = [(f"{samples}:{i}", rec) for i, rec in iter_jsonl(samples)]
    else:
        located = [(f"{mode or 'guided'}-mode sample {i}", rec) for i, rec in enumerate(samples)]
    for where, rec in located:
        check_sample(rec, where)
        try:
            requested_level(rec, scheme)
        except SchemeError as e:
            raise MetricsError(f"{where}: {e}") from None
        if mode is not None and rec.get("mode") != mode:
            wrong = sum(isinstance(r, Mapping) and r.get("mode") != mode for _, r in located)
            raise MetricsError(f"{where}: mode {rec.get('mode')!r} among the {mode}-mode samples "
                               f"({wrong} of {len(located)} have another mode)")
    return [rec for _, rec in located]


def _read_log(path: Path) -> list[dict]:
    """The training-log records with ``step`` and ``loss``, checked (see ``_check_log_record``)."""
    return [_check_log_record(rec, f"{path}:{i}") for i, rec in iter_jsonl(path)
            if isinstance(rec, dict) and "step" in rec and "loss" in rec]


def _check_log_record(rec: dict, where: str) -> dict:
    """``rec`` if its ``step`` is an integer and its losses numbers (that a float holds) or null, else
    a MetricsError."""
    step = rec["step"]
    if isinstance(step, bool) or not isinstance(step, int):
        raise MetricsError(f"{where}: step {step!r} is not an integer")
    for key in LOSS_KEYS:
        loss = rec.get(key)
        if loss is not None and (isinstance(loss, bool) or not isinstance(loss, (int, float))):
            raise MetricsError(f"{where}: {key} {loss!r} is not a number or null")
        if isinstance(loss, int) and abs(loss) > sys.float_info.max:  # JSON's 1 and 400 zeros: no float holds it
            raise MetricsError(f"{where}: {key} is an integer too large for a float")
    return rec


def _guided_name(g) -> str:
    return f"guided g={g:g}" if isinstance(g, (int, float)) else f"guided g={g}"


def _finite_or_null(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite_or_null(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_null(v) for v in x]
    return x


# ---------------------------------------------------------------------------- plots

def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=DPI)


def _plot_range(scheme: ControlScheme, scores: Sequence[float]) -> tuple[float, float]:
    values = [*scores, *scheme.edges]
    if not values:
        return -1.0, 1.0
    lo, hi = min(values), max(values)
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    return lo - pad, hi + pad


def _plot_calibration(path: Path, scheme: ControlScheme, cal: Calibration, guided: Mapping[object, Calibration],
                      off: ScoreSummary, records: Sequence[Mapping], reward_label: str) -> None:
    fig = Figure(figsize=(8.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    ylo, yhi = _plot_range(scheme, [float(r["score"]) for r in records])
    for k in range(scheme.num_bins):
        lo, hi = scheme.bin_range(k)
        lo, hi = max(lo, ylo), min(hi, yhi)
        if hi > lo:
            ax.bar(k, hi - lo, bottom=lo, width=0.8, color="0.88", edgecolor="0.7", zorder=0,
                   label="requested bin (ideal)" if k == 0 else None)
    series = [("on mode", cal, 0.0, "tab:blue")]
    colours = ["tab:orange", "tab:green", "tab:purple", "tab:brown"]
    for j, (g, c) in enumerate(guided.items()):
        series.append((_guided_name(g), c, 0.12 * (j + 1), colours[j % len(colours)]))
    for name, c, dx, colour in series:
        x = np.array([lc.level for lc in c.levels], dtype=np.float64) + dx
        mean = np.array([lc.scores.mean for lc in c.levels])
        p10 = np.array([lc.scores.p10 for lc in c.levels])
        p90 = np.array([lc.scores.p90 for lc in c.levels])
        # the range is drawn as it is: a skewed level's mean can lie outside its 10-90% range
        ax.vlines(x, p10, p90, color=colour, linewidth=1.2)
        ax.scatter(np.concatenate([x, x]), np.concatenate([p10, p90]), marker="_", s=60, color=colour)
        ax.plot(x, mean, "o-", color=colour, markersize=5,
                label=f"{name}: mean and 10–90% range (ρ over levels {_num(c.spearman_levels, 2)})")
    if off.n:
        ax.axhline(off.mean, color="0.3", linestyle="--", linewidth=1.2,
                   label=f"off mode mean ({_num(off.mean, 2)}, n={off.n})")
    ax.set_xlim(-0.6, scheme.num_bins - 0.4 + 0.12 * len(guided))
    ax.set_ylim(ylo, yhi)
    ax.set_xticks(range(scheme.num_bins))
    ax.set_xlabel("requested level (reward-to-go bin token)")
    ax.set_ylabel(f"achieved reward ({reward_label})")
    fig.suptitle("Requested level vs achieved reward")
    ax.set_title(f"on mode: n = {cal.n}, Spearman ρ over levels {_num(cal.spearman_levels, 2)}, "
                 f"over samples {_num(cal.spearman_samples, 2)}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    _save(fig, path)


def _plot_loss(path: Path, log: Sequence[Mapping]) -> None:
    fig = Figure(figsize=(8.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    window = max(1, len(log) // SMOOTH_FRACTION)
    for key, label, colour in [("loss", "total", "black"), ("loss_on", "on mode", "tab:blue"),
                               ("loss_off", "off mode", "tab:red")]:
        pts = [(r["step"], r[key]) for r in log if r.get(key) is not None]
        if not pts:
            continue
        x, y = np.array(pts, dtype=np.float64).T
        if window > 1:
            ax.plot(x, y, color=colour, linewidth=0.6, alpha=0.25)
            label += f" (running mean of {window})"
        ax.plot(x, _running_mean(y, window), color=colour, linewidth=1.5, label=label,
                marker="o" if x.size <= FEW_POINTS else None, markersize=3)
    steps = [r["step"] for r in log]
    stages = [r.get("stage") for r in log]
    for i in range(1, len(log)):
        if stages[i] != stages[i - 1]:
            ax.axvline(steps[i], color="0.5", linestyle=":", linewidth=1)
            ax.annotate(str(stages[i]), (steps[i], 1), xycoords=("data", "axes fraction"), fontsize=8,
                        xytext=(3, -12), textcoords="offset points", color="0.3")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats / token)")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    if log:
        ax.legend(fontsize=8)
    _save(fig, path)


def _running_mean(y: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each point (fewer at the start); NaN where those
    include a non-finite value (a running sum would carry it to every later point)."""
    bad = ~np.isfinite(y)
    c = np.concatenate([[0.0], np.cumsum(np.where(bad, 0.0, y))])
    nbad = np.concatenate([[0], np.cumsum(bad)])
    i = np.arange(1, y.size + 1)
    lo = np.maximum(0, i - window)
    return np.where(nbad[i] > nbad[lo], np.nan, (c[i] - c[lo]) / (i - lo))


def _plot_histograms(path: Path, on_by_level: Mapping[int, Sequence[Mapping]], off: Sequence[Mapping],
                     cal: Calibration, reward_label: str) -> None:
    filled = [lc.level for lc in cal.levels if lc.scores.n > 0]
    shown = sorted({filled[0], filled[len(filled) // 2], filled[-1]}) if filled else []
    groups = [(f"level {k}", [float(r["score"]) for r in on_by_level[k]]) for k in shown]
    colours = {1: ["tab:blue"], 2: ["tab:red", "tab:blue"], 3: ["tab:red", "tab:purple", "tab:blue"]}.get(len(shown), [])
    styles = [dict(color=c, linestyle="-") for c in colours]
    if off:
        groups.append(("off mode", [float(r["score"]) for r in off]))
        styles.append(dict(color="0.3", linestyle="--"))
    all_scores = np.array([s for _, scores in groups for s in scores])
    n_bins = int(np.clip(np.sqrt(all_scores.size), 5, 30))
    edges = np.histogram_bin_edges(all_scores, bins=n_bins)
    fig = Figure(figsize=(8.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for (name, scores), style in zip(groups, styles):
        ax.hist(scores, bins=edges, density=True, histtype="step", linewidth=1.6, label=f"{name} (n={len(scores)})",
                **style)
    ax.set_xlabel(f"achieved reward ({reward_label})")
    ax.set_ylabel("density (per unit reward)")
    ax.set_title("Distribution of achieved reward at the lowest, middle and highest requested level")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


# ---------------------------------------------------------------------------- markdown

_MD_SPECIAL = set("\\`*_[]|<>~&")


def md_escape(text: str, limit: int = EXAMPLE_CHARS) -> str:
    """One line of literal text, for inside a line (after a list marker, heading or cell start).

    Whitespace is collapsed, the text cut at ``limit`` characters (…), and the characters that
    are markup inside a line (``\\ ` * _ [ ] | < > ~ &``) backslash-escaped; characters that are
    markup only at the start of a line (``#``, ``-``, ``1.``) are left as they are.
    """
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[:limit].rstrip() + "…"
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)


def _num(x: float, digits: int = 3) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _bin_text(scheme: ControlScheme, k: int) -> str:
    lo, hi = scheme.bin_range(k)
    if math.isinf(lo) and math.isinf(hi):
        return "all"
    if math.isinf(lo):
        return f"< {_num(hi)}"
    if math.isinf(hi):
        return f"≥ {_num(lo)}"
    return f"\\[{_num(lo)}, {_num(hi)})"


def _calibration_md(scheme: ControlScheme, cal: Calibration, heading: str) -> list[str]:
    lines = [f"### {heading}", "",
             f"Spearman ρ between requested level and achieved reward — over the per-level means "
             f"(steerability): **{_num(cal.spearman_levels)}** "
             f"({sum(lc.scores.n > 0 for lc in cal.levels)} levels with samples); "
             f"over all samples: **{_num(cal.spearman_samples)}** (n = {cal.n}).", ""]
    if cal.unrequested:
        lines += [f"{cal.unrequested} samples requested no level and are left out.", ""]
    lines += ["| level | bin range | n | mean ± sd | median | 10–90% | in bin |",
              "|---:|---|---:|---|---:|---|---:|"]
    for lc in cal.levels:
        s = lc.scores
        spread = f"{_num(s.p10)} … {_num(s.p90)}" if s.n else "—"
        in_bin = f"{100 * lc.in_bin:.0f}%" if s.n else "—"
        mean_sd = f"{_num(s.mean)} ± {_num(s.sd)}" if s.n else "—"
        lines.append(f"| {lc.level} | {_bin_text(scheme, lc.level)} | {s.n} | {mean_sd} "
                     f"| {_num(s.median)} | {spread} | {in_bin} |")
    return lines + [""]


def _examples_md(heading: str, records: Sequence[Mapping]) -> list[str]:
    lines = [f"### {heading}", ""]
    for r in records[:EXAMPLES_PER_GROUP]:
        prompt = md_escape(r.get("prompt") or "", EXAMPLE_CHARS // 2)
        text = md_escape(r.get("text", ""))
        lead = f"*{prompt}* " if prompt else ""
        lines.append(f"- score {_num(float(r['score']))}: {lead}{text or '*(empty)*'}")
    return lines + [""]


def _fact(v: object) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}" if math.isfinite(v) else "—"
    return md_escape(str(v), 200)


def _markdown(*, title, scheme, facts, on_by_level, off, cal_on, cal_guided, off_summary, div, log, has_hist,
              reward_label) -> str:
    lines = [f"# {md_escape(title, 200)}", ""]
    if facts:
        lines += ["## Run", "", "| | |", "|---|---|"]
        lines += [f"| {md_escape(str(k), 80)} | {_fact(v)} |" for k, v in facts.items()]
        lines.append("")
    lines += ["## Calibration", "",
              f"Reward: {md_escape(reward_label, 120)}. {scheme.num_bins} levels, {md_escape(scheme.binning, 80)} bins.",
              "", f"![requested level vs achieved reward]({CALIBRATION_PNG})", ""]
    lines += _calibration_md(scheme, cal_on, "on mode")
    for g, c in cal_guided.items():
        lines += _calibration_md(scheme, c, md_escape(_guided_name(g)))
    if off_summary.n:
        s = off_summary
        lines += ["### off mode (no level requested)", "",
                  f"n = {s.n}, mean ± sd {_num(s.mean)} ± {_num(s.sd)}, median {_num(s.median)}, "
                  f"10–90% {_num(s.p10)} … {_num(s.p90)}.", ""]
    else:
        lines += ["No off-mode samples were given.", ""]
    if has_hist:
        lines += [f"![achieved reward histograms]({SCORES_PNG})", ""]
    lines += ["## Training", ""]
    if log is None:
        lines += ["No training log was given.", ""]
    elif not log:
        lines += ["The training log has no steps.", ""]
    else:
        last = log[-1]
        parts = [f"{k} {_num(last[k])}" for k in LOSS_KEYS if last.get(k) is not None]
        lines += [f"![training loss]({LOSS_PNG})", "",
                  f"{len(log)} logged steps; at step {last['step']}: " + ", ".join(parts) + " (nats / token).", ""]
    lines += ["## Diversity", "",
              "distinct-n: distinct / total n-grams over all texts; self-BLEU: smoothed BLEU-4 of each text "
              "against the others (higher = less diverse; it grows with the number of texts, so compare "
              "rows with equal counts); length in whitespace tokens.", "",
              "| samples | n | distinct-1 | distinct-2 | distinct-3 | self-BLEU (texts) | mean length |",
              "|---|---:|---:|---:|---:|---|---:|"]
    for name, d in div.items():
        lines.append(f"| {md_escape(name)} | {d['n']} | {_num(d['distinct_1'])} | {_num(d['distinct_2'])} "
                     f"| {_num(d['distinct_3'])} | {_num(d['self_bleu'])} ({d['self_bleu_texts']}) "
                     f"| {_num(d['mean_length'], 1)} |")
    lines += ["", "## Examples", "",
              f"The first {EXAMPLES_PER_GROUP} samples of each group in input order; prompts in italics.", ""]
    filled = [lc.level for lc in cal_on.levels if lc.scores.n > 0]
    for k in sorted({filled[0], filled[-1]}) if filled else []:
        lines += _examples_md(f"level {k} ({_bin_text(scheme, k)})", on_by_level[k])
    if off:
        lines += _examples_md("off mode", off)
    return "\n".join(lines).rstrip() + "\n"
