"""`rcond demo`: the whole flow produces its report, and the trained model is steerable."""

import dataclasses
import json

from conftest import write_jsonl
from rcond import demo
from rcond.metrics import read_samples
from rcond.modeling import save_pretrained_atomic
from rcond.sample import SamplingParams, conditions, load_sampler
from rcond.scorers import get_scorer
from rcond.tokens import ControlScheme
from test_sample import make_model, make_tokenizer

TINY_RUN = demo.DemoSize(reviews=600, vocab=400, block_size=64, steps=6, batch_size=4, prompts=2, n=1, guided_n=1,
                         max_new_tokens=8, model="micro")


def test_demo_writes_every_step_and_the_report(tmp_path, capsys):
    result = demo.run_demo(tmp_path, TINY_RUN, seed=0, progress=False)
    for name in ("report.md", "calibration.png", "loss.png", "scores.png", "metrics.json",
                 "corpus/scheme.json", "run/model/model.safetensors", "run/log.jsonl"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "world" / "heldout_prompts.txt").read_text().count("\n") == 2
    on = read_samples(tmp_path / "samples" / "on.jsonl")
    assert sorted({s["level"] for s in on}) == list(range(10)) and len(on) == 10 * 2
    assert all(s["mode"] == "on" and -1 <= s["score"] <= 1 for s in on)
    assert {s["mode"] for s in read_samples(tmp_path / "samples" / "off.jsonl")} == {"off"}
    assert {s["guidance"] for s in read_samples(tmp_path / "samples" / "guided.jsonl")} == {demo.GUIDANCE}
    report = (tmp_path / "report.md").read_text()
    assert "![requested level vs achieved reward](calibration.png)" in report
    assert "steps of 4 rows" in report
    assert "spearman_levels" in result and len(result["means"]) == 10
    held = (tmp_path / "world" / "heldout_prompts.txt").read_text().splitlines()
    trained = {json.loads(l)["prompt"] for l in open(tmp_path / "world" / "reviews_train.jsonl")}
    assert len(held) == 2 and held[0] and trained  # prompts come from reviews kept out of training
    assert len(open(tmp_path / "world" / "reviews_train.jsonl").readlines()) == TINY_RUN.reviews  # as many as asked
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # the report's files moved up, its work folder gone
        "calibration.png", "corpus", "loss.png", "metrics.json", "report.md", "run", "samples", "scores.png", "world"]


def test_demo_cli_is_atomic(tmp_path, monkeypatch, capsys):
    from rcond.cli import main

    def fail(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_sample", fail)
    monkeypatch.setattr(demo, "QUICK", TINY_RUN)
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "--no-progress"]) == 130
    assert not (tmp_path / "d").exists() and list(tmp_path.iterdir()) == []


def test_demo_interrupted_while_training_is_an_interrupt(tmp_path, monkeypatch, capsys):
    """A Ctrl-C or SIGTERM during training makes train checkpoint and return (interrupted); the demo
    must stop there as interrupted (exit 130, nothing left), not go on to load a model that was never
    saved ("run/model: no such model directory", seen when a SIGTERM hit the demo's training).
    Injected: the signal's timing cannot be set up reliably in a test."""
    from rcond import train as train_module
    from rcond.cli import main

    real = train_module.train
    monkeypatch.setattr(train_module, "train", lambda *a, **kw: dataclasses.replace(real(*a, **kw), interrupted=True))
    monkeypatch.setattr(demo, "QUICK", TINY_RUN)
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "--no-progress"]) == 130
    assert "no such model directory" not in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_demo_model_is_steerable(tmp_path):
    """The full demo (tiny model, 300 steps; ~4 min on 2 cores, the longest test, kept in the
    default run because it is the issue's acceptance check): achieved reward rises with the
    requested level, Spearman rho >= 0.8 over the 10 levels."""
    result = demo.run_demo(tmp_path, demo.FULL, seed=0, progress=False)
    assert result["spearman_levels"] >= 0.8, result


def test_demo_replaces_only_an_earlier_demo(tmp_path, monkeypatch, capsys):
    """Re-running the demo replaces its own output, unless a user's file is in it; any other
    non-empty folder is refused (exit 2, left as it was), even one that holds a report.md and a
    file named like one of its folders."""
    from rcond.cli import main

    monkeypatch.setattr(demo, "QUICK", TINY_RUN)
    out = tmp_path / "d"
    args = ["demo", "--quick", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out  # the corpus named where it ends up, not in the temporary folder it is built in
    assert f"corpus written to {out / 'corpus'}\n" in printed and ".tmp-" not in printed
    assert main(args) == 0
    (out / "mine.txt").write_text("keep me")  # an earlier demo with a user's file in it is kept whole
    capsys.readouterr()
    assert main(args) == 2
    assert "holds an rcond demo and also mine.txt, which an rcond demo does not hold" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me" and (out / "report.md").is_file()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    (other / "report.md").write_text("mine")
    (other / "corpus").mkdir()
    (other / "run").mkdir()
    (other / "samples").write_text("a file, not the demo's folder")
    before = sorted(p.name for p in other.iterdir())
    assert main(["demo", "--quick", "--out", str(other), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is not an rcond demo (which holds report.md, corpus/, run/, samples/)" in err and "Traceback" not in err
    assert sorted(p.name for p in other.iterdir()) == before and (other / "notes.txt").read_text() == "keep me"


def test_hold_out_keeps_the_held_out_prompts_out_of_training(tmp_path):
    """The last n reviews are the held-out prompts and only the others are trained on (fast: no model)."""
    write_jsonl(tmp_path / "reviews.jsonl", [{"prompt": f"p{i}", "response": "r", "reward": 0.1 * i} for i in range(5)])
    train, prompts = demo._hold_out(tmp_path / "reviews.jsonl", tmp_path, 2)
    assert prompts == ["p3", "p4"]
    assert [json.loads(line)["prompt"] for line in train.read_text().splitlines()] == ["p0", "p1", "p2"]
    assert (tmp_path / "heldout_prompts.txt").read_text() == "p3\np4\n"


def test_demo_samples_every_level_on_and_off_and_with_guidance(tmp_path):
    """The sampling step on a tiny saved model (fast: no training): n samples per prompt and level in
    on mode, n per prompt in off mode, guided_n per prompt and level with guidance, all at the
    demo's seed, each scored by VADER (its own text's score: words with a sentiment in the vocabulary
    make the scores differ)."""
    tok, scheme = make_tokenizer(), ControlScheme(num_bins=4, edges=[-0.5, 0.0, 0.5])
    tok.add_tokens(["great", "awful", "love", "hate", "terrible", "wonderful"])
    save_pretrained_atomic(make_model(tok, scheme), tok, scheme, tmp_path / "run" / "model")
    size = demo.DemoSize(reviews=0, vocab=0, block_size=0, steps=0, batch_size=0, prompts=2, n=2, guided_n=1,
                         max_new_tokens=4)
    prompts = ["w1 awful", "w3"]                                      # the review is scored, not its prompt
    files = demo._sample(tmp_path, prompts, size, seed=5, progress=False)
    assert files == {k: tmp_path / "samples" / f"{k}.jsonl" for k in ("on", "off", "guided")}
    on, off, guided = (read_samples(files[k]) for k in ("on", "off", "guided"))
    assert [(s["mode"], s["level"], s["prompt"], s["guidance"]) for s in on] == [
        ("on", k, p, None) for k in range(4) for p in prompts for _ in range(2)]
    assert [(s["mode"], s["level"], s["prompt"], s["guidance"]) for s in off] == [
        ("off", None, p, None) for p in prompts for _ in range(2)]
    assert [(s["mode"], s["level"], s["prompt"], s["guidance"]) for s in guided] == [
        ("on", k, p, demo.GUIDANCE) for k in range(4) for p in prompts]
    sampler = load_sampler(tmp_path / "run", device="cpu")
    seeded = sampler.sample(prompts, conditions(scheme, level="all"), SamplingParams(max_new_tokens=4, seed=5), n=2,
                            batch_size=64)
    assert [s["text"] for s in on] == [s.text for s in seeded]
    vader = get_scorer("vader")
    assert all(s["score"] == vader([s["text"]])[0] for s in on + off + guided)
    assert all(len({s["score"] for s in samples}) > 1 for samples in (on, off, guided))
