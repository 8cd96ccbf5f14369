"""The README's Python block runs as written, on the files its commands make (small sizes here)."""

import re
from pathlib import Path

from rcond.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_block_runs(tmp_path, monkeypatch, capsys):
    """The block is taken from README.md and run in a folder holding what the README's commands
    leave there (world/, corpora/reviews, runs/tiny: a 300-review world, a 5-bin corpus, a model
    trained one step); it builds and loads a corpus and samples every level twice."""
    (block,) = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    monkeypatch.chdir(tmp_path)
    quiet = ["--no-progress"]
    assert main(["toyworld", "--out", "world", "--reviews", "300", "--dialogs", "1", "--texts", "1", *quiet]) == 0
    assert main(["preprocess", "world/reviews.jsonl", "--format", "scored", "--bins", "5", "--out", "corpora/reviews",
                 "--tokenizer", "train:400", "--block-size", "128", *quiet]) == 0
    assert main(["train", "--corpus", "corpora/reviews", "--model", "micro", "--out", "runs/tiny", "--steps", "1",
                 "--warmup", "1", "--batch-size", "2", *quiet]) == 0
    capsys.readouterr()
    exec(compile(block, str(README), "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("300 [") and "<|rlhf:" in lines[0] and "Review of" in lines[0]
    levels = [re.match(r"level (\d): ['\"]", line)[1] for line in lines[1:]]
    assert levels == [str(k) for k in range(5) for _ in range(2)]
    assert (tmp_path / "corpora" / "api" / "scheme.json").is_file()
