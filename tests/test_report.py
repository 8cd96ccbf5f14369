import json
import re

import numpy as np
import pytest
from matplotlib import image as mpimg

from rcond.atomic import OutputExistsError
from rcond.metrics import MetricsError
from rcond.report import md_escape, write_report
from rcond.tokens import ControlScheme

from conftest import write_jsonl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def scheme4():
    """Bins (-inf, -0.5), [-0.5, 0), [0, 0.5), [0.5, inf)."""
    return ControlScheme.fit([], binning="edges:-0.5,0,0.5")


def samples(levels=(0, 1, 2, 3), n=12, mode="on", guidance=None, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in levels:
        for i in range(n):
            out.append({"prompt": "Review:", "mode": mode, "level": k if mode == "on" else None, "reward": None,
                        "guidance": guidance, "text": f"text {k} {i} " + " ".join(rng.choice(list("abcdef"), 8)),
                        "score": float(np.clip(-0.9 + 0.55 * (k if mode == "on" else 1.5) + rng.normal(0, 0.2), -1, 1))})
    return out


def write_log(path, steps=40):
    rows = [{"step": s, "stage": "first" if s < 25 else "second", "loss": 5 - s / 20, "loss_on": 5.1 - s / 20,
             "loss_off": None if s % 4 else 4.8 - s / 20} for s in range(steps)]
    return write_jsonl(path, [*rows, {"event": "checkpoint"}])


def check_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 600
    assert img[..., :3].std() > 0.05  # something is drawn


def no_nan(text):
    def fail(c):
        raise AssertionError(f"{c} in metrics.json")
    return json.loads(text, parse_constant=fail)


def test_full_report(tmp_path):
    off = samples(levels=(0,), n=20, mode="off", seed=1)
    guided = samples(n=6, guidance=2.0, seed=2)
    md_path = write_report(tmp_path / "report", scheme=scheme4(), on_samples=samples(), off_samples=off,
                           guided_samples=guided, train_log=write_log(tmp_path / "log.jsonl"),
                           facts={"model": "tiny (3.1M parameters)", "tokens trained": 1234567, "device": "cpu"},
                           title="demo | test", reward_label="VADER compound")
    out = tmp_path / "report"
    assert md_path == out / "report.md"
    assert sorted(p.name for p in out.iterdir()) == ["calibration.png", "loss.png", "metrics.json", "report.md",
                                                     "scores.png"]
    for name in ("calibration.png", "loss.png", "scores.png"):
        check_png(out / name)
    md = md_path.read_text()
    assert md.startswith("# demo \\| test\n")
    for link in ("![requested level vs achieved reward](calibration.png)", "![training loss](loss.png)",
                 "![achieved reward histograms](scores.png)"):
        assert link in md
    assert "| 0 | < -0.500 | 12 | " in md and "| 3 | ≥ 0.500 | 12 | " in md
    assert "| 1 | \\[-0.500, 0.000) | 12 | " in md
    assert "| tokens trained | 1,234,567 |" in md
    assert "### on mode" in md and "### guided g=2" in md and "### off mode (no level requested)" in md
    assert "over the per-level means (steerability): **1.000**" in md
    for row in ("| on | 48 |", "| off | 20 |", "| guided g=2 | 24 |"):
        assert row in md
    assert "### level 0 (< -0.500)" in md and "### level 3 (≥ 0.500)" in md
    assert "40 logged steps; at step 39:" in md
    metrics = no_nan((out / "metrics.json").read_text())
    assert metrics["calibration_on"]["spearman_levels"] == pytest.approx(1.0)
    assert metrics["calibration_on"]["levels"][0]["bin_low"] is None
    assert metrics["diversity"]["off"]["n"] == 20
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.tmp")]


def test_no_off_samples_empty_level_no_log(tmp_path):
    on = samples(levels=(0, 2, 3))  # level 1 got no samples
    write_report(tmp_path / "r", scheme=scheme4(), on_samples=on)
    out = tmp_path / "r"
    assert sorted(p.name for p in out.iterdir()) == ["calibration.png", "metrics.json", "report.md", "scores.png"]
    check_png(out / "calibration.png")
    md = (out / "report.md").read_text()
    assert md.startswith("# rcond report\n\n## Calibration\n")  # the default title; no facts, no "## Run"
    assert "Reward: gold reward. 4 levels, edges:-0.5,0,0.5 bins." in md
    assert "| 1 | \\[-0.500, 0.000) | 0 | — | — | — | — |" in md
    assert "No off-mode samples were given." in md and "No training log was given." in md
    assert "| off | 0 | — | — | — | — (0) | — |" in md
    assert "(3 levels with samples)" in md
    metrics = no_nan((out / "metrics.json").read_text())
    assert metrics["calibration_on"]["levels"][1]["scores"]["mean"] is None


def test_skewed_level_whose_mean_lies_outside_its_10_90_range(tmp_path):
    """19 scores of 0.5 and one of -1.0: p10 = 0.5 > mean 0.425 (the usual shape at an end level
    where the reward saturates); the plot draws the range as it is instead of a negative error bar."""
    on = [{"prompt": "", "mode": "on", "level": 1, "text": "a b", "score": 0.5} for _ in range(19)]
    on += [{"prompt": "", "mode": "on", "level": 1, "text": "c", "score": -1.0},
           {"prompt": "", "mode": "on", "level": 0, "text": "d", "score": -0.2},
           {"prompt": "", "mode": "on", "level": 0, "text": "e", "score": -0.3}]
    write_report(tmp_path / "r", scheme=ControlScheme(num_bins=2, edges=[0.0]), on_samples=on)
    check_png(tmp_path / "r" / "calibration.png")
    level = json.loads((tmp_path / "r" / "metrics.json").read_text())["calibration_on"]["levels"][1]["scores"]
    assert level["mean"] == pytest.approx((19 * 0.5 - 1.0) / 20) and level["mean"] < level["p10"]


def test_single_level_and_files_as_input(tmp_path):
    on = write_jsonl(tmp_path / "on.jsonl", samples(levels=(2,), n=5))
    off = write_jsonl(tmp_path / "off.jsonl", samples(levels=(0,), n=5, mode="off"))
    write_report(tmp_path / "r", scheme=scheme4(), on_samples=on, off_samples=off)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "(steerability): **—** (1 levels with samples)" in md  # rho undefined with one level
    assert "### level 2 ([0.000, 0.500))".replace("[", "\\[") in md


def test_refuses_existing_dir_and_wrong_mode(tmp_path):
    target = tmp_path / "r"
    write_report(target, scheme=scheme4(), on_samples=samples(n=2))
    with pytest.raises(OutputExistsError):
        write_report(target, scheme=scheme4(), on_samples=samples(n=2))
    write_report(target, scheme=scheme4(), on_samples=samples(n=3), overwrite=True)
    assert "| 0 | < -0.500 | 3 | " in (target / "report.md").read_text()
    n_on = len(samples(n=2))
    with pytest.raises(MetricsError, match=rf"^off-mode sample 0: mode 'on' among the off-mode samples "
                                           rf"\({n_on} of {n_on} have another mode\)$"):
        write_report(tmp_path / "r2", scheme=scheme4(), on_samples=samples(n=2), off_samples=samples(n=2))
    unscored = [dict(samples(levels=(0,), n=1, mode="off")[0], score=None)]
    with pytest.raises(MetricsError, match="off-mode sample 0: score None"):
        write_report(tmp_path / "r2", scheme=scheme4(), on_samples=samples(n=2), off_samples=unscored)
    # from a file: the error names the file and the line (blank lines counted)
    path = write_jsonl(tmp_path / "on.jsonl", [samples(n=1)[0], "", dict(samples(n=1)[0], mode="off")])
    with pytest.raises(MetricsError, match=rf"^{re.escape(str(path))}:3: mode 'off' among the on-mode"):
        write_report(tmp_path / "r2", scheme=scheme4(), on_samples=path)
    beyond = [dict(samples(n=1)[0], level=7)]
    with pytest.raises(MetricsError, match=r"^on-mode sample 0: level 7 does not exist: this scheme has levels 0\.\.3"):
        write_report(tmp_path / "r2", scheme=scheme4(), on_samples=beyond)
    assert not (tmp_path / "r2").exists()


def test_bad_input_files_name_file_and_line(tmp_path):
    """Every unusable input is a MetricsError naming the file and line, and nothing is written."""
    on = write_jsonl(tmp_path / "on.jsonl", samples(n=2))
    log = write_jsonl(tmp_path / "log.jsonl", [{"step": 1, "loss": 2.0, "loss_on": None}, {"event": "checkpoint"},
                                               {"step": 2, "loss": "x"}])
    step_log = write_jsonl(tmp_path / "step.jsonl", [{"step": "a", "loss": 2.0}])
    on_loss_log = write_jsonl(tmp_path / "on_loss.jsonl", [{"step": 1, "loss": 2.0, "loss_on": [1.0]}])
    bool_log = write_jsonl(tmp_path / "bool.jsonl", [{"step": 1, "loss": 2.0}, {"step": True, "loss": 2.0}])
    bool_loss_log = write_jsonl(tmp_path / "bool_loss.jsonl", [{"step": 1, "loss": 2.0, "loss_off": False}])
    huge_log = write_jsonl(tmp_path / "huge.jsonl", [{"step": 1, "loss": 2.0, "loss_on": 10 ** 400}])
    guided = write_jsonl(tmp_path / "guided.jsonl", [samples(n=1, guidance=2.0)[0],
                                                     samples(n=1, guidance="abc")[0]])
    reward = write_jsonl(tmp_path / "reward.jsonl", [dict(samples(n=1)[0], level=None, reward="x")])
    cases = [
        (dict(on_samples=tmp_path / "nope.jsonl"),
         f"{tmp_path / 'nope.jsonl'}: cannot read this JSONL file (No such file or directory)"),
        (dict(on_samples=tmp_path), f"{tmp_path}: cannot read this JSONL file (Is a directory)"),
        (dict(on_samples=on, train_log=tmp_path / "nolog.jsonl"),
         f"{tmp_path / 'nolog.jsonl'}: cannot read this JSONL file (No such file or directory)"),
        (dict(on_samples=on, train_log=log), f"{log}:3: loss 'x' is not a number or null"),
        (dict(on_samples=on, train_log=step_log), f"{step_log}:1: step 'a' is not an integer"),
        (dict(on_samples=on, train_log=on_loss_log), f"{on_loss_log}:1: loss_on [1.0] is not a number or null"),
        (dict(on_samples=on, train_log=bool_log), f"{bool_log}:2: step True is not an integer"),
        (dict(on_samples=on, train_log=bool_loss_log), f"{bool_loss_log}:1: loss_off False is not a number or null"),
        (dict(on_samples=on, train_log=huge_log), f"{huge_log}:1: loss_on is an integer too large for a float"),
        (dict(on_samples=on, guided_samples=guided), f"{guided}:2: guidance 'abc' is not a finite number or null"),
        (dict(on_samples=reward), f"{reward}:1: reward 'x' is not a finite number or null"),
        (dict(on_samples=[dict(samples(n=1)[0], level="3")]),
         "on-mode sample 0: level '3' is not an integer or null"),
    ]
    for kwargs, message in cases:
        with pytest.raises(MetricsError) as e:
            write_report(tmp_path / "r", scheme=scheme4(), **kwargs)
        assert str(e.value) == message
    assert not [p for p in tmp_path.iterdir() if p.name == "r" or p.name.startswith(".r.tmp")]


def test_md_escape():
    assert md_escape("a|b*c\n_d  <x> [l](u) `c` ~s~ & \\") == "a\\|b\\*c \\_d \\<x\\> \\[l\\](u) \\`c\\` \\~s\\~ \\& \\\\"
    assert md_escape("x" * 10, limit=4) == "xxxx…"
    assert md_escape("# not a heading - 1. fine") == "# not a heading - 1. fine"


def test_md_escape_cuts_only_longer_text():
    """Text of exactly ``limit`` characters is kept whole; a cut drops the space before the "…"."""
    assert md_escape("xxxx", limit=4) == "xxxx"
    assert md_escape("ab cd", limit=3) == "ab…"


def on_rec(level, score, text="t", prompt="", reward=None):
    return {"prompt": prompt, "mode": "on", "level": level, "reward": reward, "guidance": None, "text": text,
            "score": score}


def off_rec(score, text):
    return {"prompt": "", "mode": "off", "level": None, "reward": None, "guidance": None, "text": text, "score": score}


def test_tables_hand_computed(tmp_path):
    """Every cell of the calibration table, the off-mode line and a diversity row, against values
    worked out by hand (numpy.quantile's linear rule; sample sd):
    level 0 scores -0.8, -0.6, -0.2: mean -0.533, sd sqrt(0.18667 / 2) = 0.306, p10 -0.76,
    p90 -0.28, 2 of 3 below -0.5; level 3 scores 0.9, 0.7, 0.9, 0.7: sd sqrt(0.04 / 3) = 0.115;
    off scores 0.1, 0.4, 0.2: mean 0.233, sd sqrt(0.07 / 3) = 0.153, p10 0.12, p90 0.36; off texts "x y", "x z", "w": distinct-1 4/5,
    distinct-2 2/2, self-BLEU ((0.5 · 0.1³)^¼ · 2 + 0) / 3 = 0.0997, mean length 5/3; Spearman ρ over
    the 7 samples: level ranks 2 (x3), 5.5 (x4), score ranks 1, 2, 3, 6.5, 4.5, 6.5, 4.5 ->
    21 / sqrt(21 · 27) = 0.882, over the two level means 1."""
    on = [on_rec(0, -0.8), on_rec(0, -0.6), on_rec(0, -0.2), on_rec(None, 0.0)]  # the last requested nothing
    on += [on_rec(3, s) for s in (0.9, 0.7, 0.9, 0.7)]
    off = [off_rec(0.1, "x y"), off_rec(0.4, "x z"), off_rec(0.2, "w")]
    write_report(tmp_path / "r", scheme=scheme4(), on_samples=on, off_samples=off)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "1 samples requested no level and are left out." in md
    assert ("(steerability): **1.000** (2 levels with samples); over all samples: **0.882** (n = 7)." in md)
    assert "| 0 | < -0.500 | 3 | -0.533 ± 0.306 | -0.600 | -0.760 … -0.280 | 67% |" in md
    assert "| 1 | \\[-0.500, 0.000) | 0 | — | — | — | — |" in md
    assert "| 3 | ≥ 0.500 | 4 | 0.800 ± 0.115 | 0.800 | 0.700 … 0.900 | 100% |" in md
    assert "n = 3, mean ± sd 0.233 ± 0.153, median 0.200, 10–90% 0.120 … 0.360." in md
    assert "| off | 3 | 0.800 | 1.000 | — | 0.100 (3) | 1.7 |" in md
    metrics = no_nan((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["off"] == pytest.approx({"n": 3, "mean": 0.7 / 3, "sd": (0.07 / 3) ** 0.5, "median": 0.2,
                                            "p10": 0.12, "p90": 0.36})
    assert metrics["calibration_on"]["unrequested"] == 1 and metrics["calibration_on"]["n"] == 7


def test_examples_are_the_first_in_input_order(tmp_path):
    """The examples of a level are its first three samples as given (the fourth is not shown),
    the prompt cut at half the text limit (120 characters) in italics, a text cut at 240, an empty
    text marked; the off-mode examples follow."""
    on = [on_rec(3, 0.9, "first", prompt="p" * 130), on_rec(3, 0.8, ""), on_rec(3, 0.7, "t" * 241),
          on_rec(3, 0.6, "fourth"), on_rec(0, -0.9, "low one")]
    write_report(tmp_path / "r", scheme=scheme4(), on_samples=on, off_samples=[off_rec(0.1, "plain <b>")])
    md = (tmp_path / "r" / "report.md").read_text()
    examples = md[md.index("## Examples"):]
    level3 = examples[examples.index("### level 3 (≥ 0.500)"):examples.index("### off mode")]
    assert level3.splitlines()[2:5] == [f"- score 0.900: *{'p' * 120}…* first", "- score 0.800: *(empty)*",
                                        f"- score 0.700: {'t' * 240}…"]
    assert "fourth" not in md
    assert "### level 0 (< -0.500)\n\n- score -0.900: low one\n" in examples
    assert examples.endswith("### off mode\n\n- score 0.100: plain \\<b\\>\n")


def test_facts_are_formatted_and_kept_in_metrics_json(tmp_path):
    """A bool fact reads True (not 1), a NaN one "—" (null in metrics.json), an int has thousands
    separators and a float four significant digits with them, a text is cut at 200 characters
    (kept whole in metrics.json), a key is escaped; guided samples are grouped by their guidance value, in
    metrics.json under its string."""
    facts = {"resumed": True, "loss": float("nan"), "tokens": 1234567, "a|b": 0.25, "seconds": 4321.5, "note": "n" * 250}
    guided = [dict(on_rec(0, -0.7), guidance=1.5), dict(on_rec(3, 0.7), guidance=2.0), dict(on_rec(3, 0.8), guidance=2.0)]
    write_report(tmp_path / "r", scheme=scheme4(), on_samples=[on_rec(0, -0.9)], guided_samples=guided, facts=facts)
    md = (tmp_path / "r" / "report.md").read_text()
    for row in ("| resumed | True |", "| loss | — |", "| tokens | 1,234,567 |", "| a\\|b | 0.25 |", "| seconds | 4,322 |",
                f"| note | {'n' * 200}… |"):
        assert row in md
    assert "### guided g=1.5" in md and "### guided g=2" in md
    metrics = no_nan((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["facts"] == {"resumed": True, "loss": None, "tokens": 1234567, "a|b": 0.25, "seconds": 4321.5,
                                "note": "n" * 250}
    assert sorted(metrics["calibration_guided"]) == ["1.5", "2.0"]
    assert metrics["calibration_guided"]["2.0"]["n"] == 2 and metrics["calibration_guided"]["1.5"]["n"] == 1


def test_training_log_lines_without_loss_are_skipped(tmp_path):
    """Only log objects with both ``step`` and ``loss`` count (not an eval line with a step only,
    nor a line that is not an object); the last one's null losses are left out of its line."""
    log = write_jsonl(tmp_path / "log.jsonl", [{"step": 10, "loss": 3.0}, {"step": 11, "eval": 1.0},
                                               '["step", "loss"]', '"step loss"',
                                               {"step": 12, "loss": 2.0, "loss_on": 2.5, "loss_off": None}])
    write_report(tmp_path / "r", scheme=scheme4(), on_samples=[on_rec(0, -0.9)], train_log=log)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "2 logged steps; at step 12: loss 2.000, loss_on 2.500 (nats / token)." in md


def test_training_log_without_steps(tmp_path):
    """A log given but with no steps: loss.png is still written (it is written whenever a log is
    given) and the report says the log has no steps instead of linking it."""
    log = write_jsonl(tmp_path / "log.jsonl", [{"event": "start"}])
    write_report(tmp_path / "r", scheme=scheme4(), on_samples=[on_rec(0, -0.9)], train_log=log)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "The training log has no steps." in md and "loss.png" not in md
    assert (tmp_path / "r" / "loss.png").read_bytes().startswith(PNG_MAGIC)


def test_single_bin_and_off_mode_only(tmp_path):
    """A one-bin scheme's bin is "all" (and with no samples at all, no edge and no score to set
    the plotted range, the report is still written); with no on-mode samples the histogram of
    the off mode is still drawn and linked."""
    write_report(tmp_path / "none", scheme=ControlScheme.fit([0.1, 0.2], num_bins=1), on_samples=[])
    assert "| 0 | all | 0 | — |" in (tmp_path / "none" / "report.md").read_text()
    write_report(tmp_path / "one", scheme=ControlScheme.fit([0.1, 0.2], num_bins=1), on_samples=[on_rec(0, 0.5)])
    assert "| 0 | all | 1 | 0.500 ± — |" in (tmp_path / "one" / "report.md").read_text()
    write_report(tmp_path / "off", scheme=scheme4(), on_samples=[], off_samples=[off_rec(0.1, "a"), off_rec(0.2, "b")])
    assert "![achieved reward histograms](scores.png)" in (tmp_path / "off" / "report.md").read_text()
    check_png(tmp_path / "off" / "scores.png")


def test_wrong_mode_names_the_first_and_counts(tmp_path):
    """Of several samples in the wrong mode the first is named, and the count is of those alone;
    a sample without a mode is in the wrong mode too (not a KeyError)."""
    path = write_jsonl(tmp_path / "on.jsonl", [on_rec(0, -0.9), off_rec(0.1, "a"), off_rec(0.2, "b")])
    with pytest.raises(MetricsError) as e:
        write_report(tmp_path / "r", scheme=scheme4(), on_samples=path)
    assert str(e.value) == f"{path}:2: mode 'off' among the on-mode samples (2 of 3 have another mode)"
    no_mode = {k: v for k, v in on_rec(0, -0.9).items() if k != "mode"}  # a record without a mode is in none
    with pytest.raises(MetricsError) as e:
        write_report(tmp_path / "r", scheme=scheme4(), on_samples=[on_rec(0, -0.9), no_mode])
    assert str(e.value) == "on-mode sample 1: mode None among the on-mode samples (1 of 2 have another mode)"


def test_the_first_bad_sample_is_named_whatever_is_wrong_with_it(tmp_path):
    """A sample in the wrong mode before one with a bad score is the one named (the docstring's
    "the first bad one"), and the other way round; the count is of the samples in another mode."""
    bad_score = on_rec(0, "high")
    with pytest.raises(MetricsError) as e:
        write_report(tmp_path / "r", scheme=scheme4(), on_samples=[on_rec(0, 0.1), off_rec(0.1, "a"), bad_score])
    assert str(e.value) == "on-mode sample 1: mode 'off' among the on-mode samples (1 of 3 have another mode)"
    with pytest.raises(MetricsError, match=r"^on-mode sample 1: "):
        write_report(tmp_path / "r", scheme=scheme4(), on_samples=[on_rec(0, 0.1), bad_score, off_rec(0.1, "a")])


@pytest.fixture
def figures(monkeypatch):
    """The figures the report draws, by file name, captured as they are saved (and still saved)."""
    from rcond import report

    saved = {}
    real_save = report._save

    def save(fig, path):
        saved[path.name] = fig
        real_save(fig, path)

    monkeypatch.setattr(report, "_save", save)
    return saved


def test_loss_plot_running_mean_null_steps_and_stages(tmp_path, figures):
    """100 logged steps: window w = 100 // 50 = 2, so each bold line is the mean of the last two
    logged values of its series (the first point alone), over the raw values; off-mode steps
    with a null loss are left out (not drawn as 0) and the window counts logged values of that
    series; a stage change at step 60 is one vertical line; a legend names the series."""
    rows = [{"step": s, "stage": "a" if s < 60 else "b", "loss": float(s % 3),
             "loss_off": None if s % 4 else 10.0 + s} for s in range(100)]
    write_report(tmp_path / "r", scheme=scheme4(), on_samples=[on_rec(0, -0.9)],
                 train_log=write_jsonl(tmp_path / "log.jsonl", rows))
    ax = figures["loss.png"].axes[0]
    by_label = {line.get_label(): line for line in ax.lines}
    total, off = by_label["total (running mean of 2)"], by_label["off mode (running mean of 2)"]
    raw_total, off_steps = [s % 3 for s in range(100)], list(range(0, 100, 4))
    raw_off = [10.0 + s for s in off_steps]
    assert list(total.get_xdata()) == list(range(100)) and list(off.get_xdata()) == off_steps
    assert list(total.get_ydata()) == pytest.approx([(raw_total[i - 1] + raw_total[i]) / 2 if i else raw_total[0]
                                                     for i in range(100)])
    assert list(off.get_ydata()) == pytest.approx([(raw_off[i - 1] + raw_off[i]) / 2 if i else raw_off[0]
                                                   for i in range(len(raw_off))])
    faint = [line for line in ax.lines if line.get_label().startswith("_") and len(line.get_xdata()) > 2]
    assert [list(line.get_ydata()) for line in faint] == [raw_total, raw_off]
    assert [list(line.get_xdata()) for line in ax.lines if len(set(line.get_xdata())) == 1] == [[60, 60]]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["total (running mean of 2)",
                                                                   "off mode (running mean of 2)"]


def test_calibration_plot_range_bins_and_series(tmp_path, figures):
    """The y range covers every score (on, guided and off) and every edge, padded by 5%: scores
    from -0.95 (guided) to 0.97 (off) give (-0.95 - 0.096, 0.97 + 0.096); the grey bins are the
    requested bins cut to that range; the per-level means are dots at the levels (none at the
    empty level 2), each guided series (in input order) 0.12 further right, the x range widened by
    as much; the off-mode mean is a horizontal line; the y axis names the reward."""
    on = [on_rec(0, -0.8), on_rec(0, -0.6), on_rec(1, -0.3), on_rec(3, 0.9)]
    guided = [dict(on_rec(0, -0.95), guidance=2.0), dict(on_rec(3, 0.7), guidance=2.0),
              dict(on_rec(1, -0.2), guidance=1.0)]
    write_report(tmp_path / "r", scheme=scheme4(), on_samples=on, guided_samples=guided,
                 off_samples=[off_rec(0.97, "a"), off_rec(0.5, "b")], reward_label="VADER")
    ax = figures["calibration.png"].axes[0]
    assert ax.get_ylabel() == "achieved reward (VADER)"
    assert ax.get_xlim() == pytest.approx((-0.6, 4 - 0.4 + 2 * 0.12))
    ylo, yhi = -0.95 - 0.096, 0.97 + 0.096
    assert ax.get_ylim() == pytest.approx((ylo, yhi))
    bins = [(p.get_x() + p.get_width() / 2, p.get_y(), p.get_y() + p.get_height()) for p in ax.patches]
    np.testing.assert_allclose(bins, [(0, ylo, -0.5), (1, -0.5, 0.0), (2, 0.0, 0.5), (3, 0.5, yhi)], atol=1e-12)
    by_name = {line.get_label().split(":")[0]: line for line in ax.lines}
    np.testing.assert_allclose(by_name["on mode"].get_xdata(), [0, 1, 2, 3])
    np.testing.assert_allclose(by_name["on mode"].get_ydata(), [-0.7, -0.3, np.nan, 0.9])
    np.testing.assert_allclose(by_name["guided g=2"].get_xdata(), [0.12, 1.12, 2.12, 3.12])
    np.testing.assert_allclose(by_name["guided g=2"].get_ydata(), [-0.95, np.nan, np.nan, 0.7])
    np.testing.assert_allclose(by_name["guided g=1"].get_xdata(), [0.24, 1.24, 2.24, 3.24])
    np.testing.assert_allclose(by_name["guided g=1"].get_ydata(), [np.nan, -0.2, np.nan, np.nan])
    assert list(by_name["off mode mean (0.73, n=2)"].get_ydata()) == pytest.approx([0.735, 0.735])


def test_histograms_show_lowest_middle_and_highest_level(tmp_path, figures):
    """With levels 0..3 filled the histograms are of levels 0, 2 (index 4 // 2 of the filled
    levels) and 3, and the off mode; each is a density (the area under its outline is 1, by the
    shoelace formula) over the named reward, all on the same bins so that they compare."""
    on = [on_rec(k, -0.9 + 0.5 * k + 0.01 * i) for k in range(4) for i in range(k + 1)]
    write_report(tmp_path / "r", scheme=scheme4(), on_samples=on, off_samples=[off_rec(0.1, "a")], reward_label="VADER")
    ax = figures["scores.png"].axes[0]
    handles, labels = ax.get_legend_handles_labels()
    assert labels == ["level 0 (n=1)", "level 2 (n=3)", "level 3 (n=4)", "off mode (n=1)"]
    assert ax.get_xlabel() == "achieved reward (VADER)"
    for outline in handles:
        x, y = np.asarray(outline.get_xy()).T
        assert 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) == pytest.approx(1.0)
    assert len({tuple(np.unique(np.asarray(outline.get_xy())[:, 0])) for outline in handles}) == 1


def test_report_md_is_utf8_whatever_the_locale(tmp_path):
    """report.md holds ρ, ±, … and is written as UTF-8 even where the locale's encoding is ASCII
    (the C locale with its coercion to UTF-8 turned off), not a UnicodeEncodeError."""
    import os
    import subprocess
    import sys

    code = ("import sys; from rcond.report import write_report; from rcond.tokens import ControlScheme; "
            "write_report(sys.argv[1], scheme=ControlScheme(num_bins=2, edges=[0.0]), on_samples=[{'mode': 'on', "
            "'level': 1, 'text': 'caf\\u00e9', 'score': 0.5}], title='r\\u00e9sum\\u00e9')")
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0", PYTHONUTF8="0", MPLBACKEND="Agg")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], env=env, check=True, timeout=60)
    md = (tmp_path / "r" / "report.md").read_bytes().decode("utf-8")
    assert md.startswith("# résumé\n") and "- score 0.500: café" in md and "0.500 ± —" in md


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_loss_plot_a_nan_step_blanks_only_its_windows(tmp_path, figures, bad):
    """A step whose loss is NaN or infinite (a diverged step: ``rcond train`` logs it as it is)
    leaves a gap only where the last w values include it: with 10 steps (w = 1) just that point,
    with 100 steps (w = 2) that point and the next; the running mean does not stay NaN for the
    rest of the run."""
    for steps, gap in ((10, [3]), (100, [3, 4])):
        rows = [{"step": s, "loss": bad if s == 3 else 5.0 - s / 100} for s in range(steps)]
        write_report(tmp_path / f"r{steps}", scheme=scheme4(), on_samples=[on_rec(0, -0.9)],
                     train_log=write_jsonl(tmp_path / f"log{steps}.jsonl", rows))
        label = "total" if steps == 10 else "total (running mean of 2)"
        y = next(line for line in figures["loss.png"].axes[0].lines if line.get_label() == label).get_ydata()
        assert [i for i in range(steps) if not np.isfinite(y[i])] == gap
        assert y[-1] == pytest.approx(5.0 - (steps - 1) / 100 if steps == 10 else 5.0 - (steps - 1.5) / 100)


def test_calibration_plot_of_a_single_value(tmp_path, figures):
    """With no edge (one bin) and one score there is no spread to pad by 5%: the y range is the
    score ± 0.5, not an empty range."""
    write_report(tmp_path / "r", scheme=ControlScheme.fit([0.1, 0.2], num_bins=1), on_samples=[on_rec(0, 0.3)])
    assert figures["calibration.png"].axes[0].get_ylim() == pytest.approx((-0.2, 0.8))
