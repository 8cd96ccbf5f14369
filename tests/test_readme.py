"""The README's commands parse and its Python block runs as written (small sizes here)."""

import re
import shlex
from pathlib import Path

import pytest

from rcond.cli import build_parser, main

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



def _commands(text: str) -> list[str]:
    """Every rcond (or torchrun) command line in a text's shell blocks, its trailing comment cut."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines += [line.split("  #")[0].strip() for line in block.splitlines() if re.match(r"(rcond|torchrun) ", line)]
    return lines


def test_every_readme_and_help_example_command_parses():
    """Each `rcond ...` line of the README (the torchrun line's rcond part too) and of every
    command's --help examples is accepted by the command's parser: no documented flag renamed or
    dropped."""
    import argparse

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    examples = [line.strip() for p in sub.choices.values() for line in (p.epilog or "").splitlines()
                if line.strip().startswith("rcond ")]
    commands = _commands(README.read_text(encoding="utf-8")) + examples
    assert len(examples) >= 12 and len(commands) >= 24
    for line in commands:
        words = shlex.split(line)
        args = words[words.index("rcond.cli") + 1:] if words[0] == "torchrun" else words[1:]
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"the documented command does not parse: {line}")


def test_every_module_is_on_a_map():
    """Every module of the package is named in DESIGN.md's layout map or, beyond it, in the
    README's Layout section: a new module cannot go unexplained (skipped without ../shared)."""
    design = README.parents[1] / "shared" / "DESIGN.md"
    if not design.is_file():
        pytest.skip(f"{design} is not here")
    text = README.read_text(encoding="utf-8")
    layout = text[text.index("## Layout"):]
    mapped = re.search(r"## 2\. Layout.*?```(.*?)```", design.read_text(encoding="utf-8"), re.S)[1]
    modules = sorted(p.name for p in (README.parent / "rcond").glob("*.py") if p.name != "__init__.py")
    assert len(modules) > 20
    assert [m for m in modules if not re.search(rf"\b{re.escape(m)}\b", mapped + layout)] == []
