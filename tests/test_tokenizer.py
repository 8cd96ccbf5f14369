"""Tests of rcond.tokenizer: loading (the direct path for a tokenizer directory must give what
AutoTokenizer gives, and must not import torch), pad = eos, the fingerprint."""

import json
import re
import shutil
import subprocess
import sys

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from conftest import word_tokenizer, write_jsonl
from rcond import hub
from rcond.tokenizer import TokenizerError, _generic_tokenizer_dir, load_tokenizer, tokenizer_fingerprint


@pytest.fixture
def tokenizer_dir(tmp_path):
    word_tokenizer().save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


def _edit_config(directory, drop=(), **changes):
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    for key in drop:
        del config[key]
    path.write_text(json.dumps(config))


def test_load_tokenizer_pads_with_eos(tokenizer_dir):
    _edit_config(tokenizer_dir, pad_token=None)
    tokenizer = load_tokenizer(tokenizer_dir)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.eos_token == "<eos>"
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.pad_token_id == 0


def test_load_tokenizer_without_eos_is_an_error(tokenizer_dir):
    _edit_config(tokenizer_dir, eos_token=None)
    with pytest.raises(ValueError, match="no eos token"):
        load_tokenizer(tokenizer_dir)


def test_a_tokenizer_folder_without_its_config_says_so(tokenizer_dir):
    """Without tokenizer_config.json there is no eos to find, and no file to set one in: the error
    says the file is missing instead of asking to edit it."""
    (tokenizer_dir / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match=rf"no eos token.*There is no {tokenizer_dir}/tokenizer_config.json to set "
                                         rf"it in"):
        load_tokenizer(str(tokenizer_dir))


def test_a_tokenizer_that_cannot_be_loaded_says_why(tokenizer_dir, tmp_path, monkeypatch):
    """No traceback from deep in transformers: the error names the path or id and what is wrong."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.json").write_text("{}")
    broken = tmp_path / "broken"
    shutil.copytree(tokenizer_dir, broken)
    (broken / "tokenizer.json").write_text("not json")
    corpus = tmp_path / "corpus"
    shutil.copytree(tokenizer_dir, corpus / "tokenizer")
    run = tmp_path / "run"
    shutil.copytree(tokenizer_dir, run / "model")
    (run / "tokenizer").mkdir()  # an empty folder is not suggested
    cases = {tmp_path / "nope": "no such directory",
             tmp_path / "empty": "no tokenizer in this directory \\(no tokenizer.json\\); expected tokenizer.json",
             corpus: f"no tokenizer in this directory \\(no tokenizer.json\\); did you mean {corpus / 'tokenizer'}\\?",
             run: f"no tokenizer in this directory \\(no tokenizer.json\\); did you mean {run / 'model'}\\? \\(a corpus",
             broken: "cannot load a tokenizer from this directory \\(JSONDecodeError",
             tmp_path / "file.json": "is a file; give the directory",
             "C:\\tokenizers\\mine": "no such directory \\(and not a hub id",  # a Windows path, on this system
             "owner/name/extra": "no such directory \\(and not a hub id"}
    for spec, why in cases.items():
        with pytest.raises(TokenizerError, match=f"^{re.escape(str(spec))}: {why}"):
            load_tokenizer(spec)

    def unreachable(*args, **kwargs):  # what transformers raises for a hub id with no network (none is used here)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", unreachable)
    monkeypatch.setattr(hub, "unreachable", lambda: None)  # the hub's name resolves, the fetch fails (rcond.hub: offline)
    with pytest.raises(TokenizerError, match="^some-org/some-tokenizer: not a local directory, and loading it as a "
                                             "hub id failed: We couldn't connect"):
        load_tokenizer("some-org/some-tokenizer")


@pytest.mark.parametrize("config,why", [
    ("[]", "expected a JSON object of tokenizer settings, got list \\[\\]$"),
    ("null", "expected a JSON object of tokenizer settings, got NoneType null$"),
    ("{oops", "cannot read it as JSON \\(Expecting property name"),
    (json.dumps(list(range(40))), "expected a JSON object of tokenizer settings, got list "
                                  + re.escape(json.dumps(list(range(40)))[:60]) + "$"),  # cut to 60 characters
    ('{"tokenizer_class": 5}', None),
    ('{"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": 7}', None),
])
def test_a_damaged_tokenizer_config_names_the_file(tokenizer_dir, tmp_path, config, why):
    """Settings of the wrong shape give a TokenizerError naming the file or folder, not an
    AttributeError from inside transformers."""
    damaged = tmp_path / "damaged"
    shutil.copytree(tokenizer_dir, damaged)
    (damaged / "tokenizer_config.json").write_text(config)
    if why is None:
        why = "cannot load a tokenizer from this directory \\((AttributeError|TypeError)"
        spec = damaged
    else:
        spec = damaged / "tokenizer_config.json"
    with pytest.raises(TokenizerError, match=f"^{spec}: {why}"):
        load_tokenizer(damaged)


def test_fingerprint_survives_save_load_and_calls_but_not_a_new_token(tokenizer_dir, tmp_path):
    tokenizer = load_tokenizer(tokenizer_dir)
    fp = tokenizer_fingerprint(tokenizer)
    assert len(fp) == 64
    tokenizer(["a b", "c"], padding="max_length", max_length=8, truncation=True)
    assert tokenizer_fingerprint(tokenizer) == fp          # call-time padding/truncation state ignored
    tokenizer.save_pretrained(tmp_path / "again")
    assert tokenizer_fingerprint(load_tokenizer(tmp_path / "again")) == fp
    tokenizer.add_special_tokens({"extra_special_tokens": ["<|new|>"]})
    assert tokenizer_fingerprint(tokenizer) != fp


def test_the_direct_path_gives_what_autotokenizer_gives(tokenizer_dir):
    tokenizer = word_tokenizer()
    tokenizer.add_special_tokens({"extra_special_tokens": ["<|on|>", "<|rtg:0|>"]})
    tokenizer.save_pretrained(tokenizer_dir)
    assert _generic_tokenizer_dir(tokenizer_dir)
    ours, theirs = load_tokenizer(tokenizer_dir), AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert type(ours) is type(theirs)
    assert tokenizer_fingerprint(ours) == tokenizer_fingerprint(theirs)
    assert (ours.eos_token_id, ours.pad_token_id, len(ours)) == (theirs.eos_token_id, theirs.pad_token_id, len(theirs))
    assert ours.convert_tokens_to_ids(["<|on|>", "<|rtg:0|>"]) == theirs.convert_tokens_to_ids(["<|on|>", "<|rtg:0|>"])
    text = "a b <|on|> c <|rtg:0|> h"
    assert ours(text)["input_ids"] == theirs(text)["input_ids"] == [1, 2, 9, 3, 10, 8]


def test_only_a_lone_tokenizer_of_the_generic_class_takes_the_direct_path(tokenizer_dir, tmp_path):
    assert _generic_tokenizer_dir(tokenizer_dir)
    _edit_config(tokenizer_dir, tokenizer_class="PreTrainedTokenizerFast")  # older saves name the alias
    assert _generic_tokenizer_dir(tokenizer_dir)
    _edit_config(tokenizer_dir, tokenizer_class="GPT2Tokenizer")           # a specialised class
    assert not _generic_tokenizer_dir(tokenizer_dir)
    _edit_config(tokenizer_dir, tokenizer_class="TokenizersBackend", auto_map={"AutoTokenizer": ["x.Y", None]})
    assert not _generic_tokenizer_dir(tokenizer_dir)                        # remote code
    _edit_config(tokenizer_dir, drop=["auto_map"])
    assert _generic_tokenizer_dir(tokenizer_dir)
    (tokenizer_dir / "config.json").write_text("{}")                         # a model directory
    assert not _generic_tokenizer_dir(tokenizer_dir)
    assert not _generic_tokenizer_dir(tmp_path / "absent")                   # a hub id, say
    assert not _generic_tokenizer_dir(tmp_path)                              # no tokenizer files


def test_preprocess_never_imports_torch(tokenizer_dir, tmp_path):
    """``rcond preprocess`` with a trained tokenizer and with a tokenizer directory, in a fresh
    interpreter: torch (2–3 s to import) must not be loaded, not even for a dataset saved with
    ``set_format("torch")``."""
    import datasets

    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"a b c {w} d"} for w in "efgh" * 20])
    saved = datasets.Dataset.from_list([{"text": f"a b c {w} d"} for w in "efgh" * 20])
    saved.set_format("torch")
    saved.save_to_disk(str(tmp_path / "saved"))
    code = (
        "import sys\nfrom rcond.cli import main\n"
        f"assert main(['preprocess', {str(data)!r}, '--format', 'text', '--out', {str(tmp_path / 'c1')!r}, "
        "'--tokenizer', 'train:300', '--no-progress']) == 0\n"
        f"assert main(['preprocess', {str(data)!r}, '--format', 'text', '--out', {str(tmp_path / 'c2')!r}, "
        f"'--tokenizer', {str(tokenizer_dir)!r}, '--no-progress']) == 0\n"
        f"assert main(['preprocess', {str(tmp_path / 'saved')!r}, '--format', 'text', '--out', "
        f"{str(tmp_path / 'c3')!r}, '--tokenizer', {str(tokenizer_dir)!r}, '--no-progress']) == 0\n"
        "from rcond.corpus import load\nload(" + repr(str(tmp_path / "c2")) + ")\n"
        "print('torch loaded:', 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "torch loaded: False" in out.stdout


def test_training_with_a_progress_bar_counts_the_texts_and_learns_the_same_tokenizer(capsys):
    from rcond.corpus import train_tokenizer

    texts = [f"review {i}: the lamp was bright and the fan was loud" for i in range(300)]
    quiet = train_tokenizer(texts, 300)
    assert capsys.readouterr().err == ""
    shown = train_tokenizer(iter(texts), 300, progress=True)
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "tokenizer: reading" in err and "tokenizer: learning the merges (vocabulary 300): 300text" in err
    assert shown.get_vocab() == quiet.get_vocab()


def test_a_tokenizer_json_that_is_json_but_no_tokenizer_says_so(tokenizer_dir, tmp_path):
    """tokenizers raises a plain Exception for a tokenizer.json that is JSON but no tokenizer (an
    unknown model type, merges of tokens the vocabulary lacks): a TokenizerError naming the
    directory, not a traceback."""
    broken = tmp_path / "broken"
    shutil.copytree(tokenizer_dir, broken)
    state = json.loads((broken / "tokenizer.json").read_text())
    state["model"]["type"] = "Nope"
    (broken / "tokenizer.json").write_text(json.dumps(state))
    with pytest.raises(TokenizerError, match=rf"^{broken}: cannot load a tokenizer from this directory"):
        load_tokenizer(broken)


def test_a_tokenizer_path_may_start_with_the_home_directory(tokenizer_dir, tmp_path, monkeypatch):
    """'~/tok' is the tokenizer in the home directory, as input paths are (the shell leaves the '~'
    in ``--tokenizer=~/tok``): it loaded as a hub id and said it could not load 'this directory'.
    A '~' folder without a tokenizer is told apart the same way."""
    monkeypatch.setenv("HOME", str(tmp_path))
    tokenizer = load_tokenizer("~/tok")
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(load_tokenizer(tokenizer_dir))
    shutil.copytree(tokenizer_dir, tmp_path / "corpus" / "tokenizer")
    with pytest.raises(TokenizerError, match=rf"^~/corpus: no tokenizer in this directory \(no tokenizer.json\); did "
                                             rf"you mean {tmp_path / 'corpus' / 'tokenizer'}\?"):
        load_tokenizer("~/corpus")
    shutil.copytree(tokenizer_dir, tmp_path / "listed")
    (tmp_path / "listed" / "tokenizer_config.json").write_text("[]")  # the config checked is the one in the home folder
    with pytest.raises(TokenizerError, match=rf"^{tmp_path / 'listed' / 'tokenizer_config.json'}: expected a JSON object"):
        load_tokenizer("~/listed")
    shutil.copytree(tokenizer_dir, tmp_path / "bare")
    (tmp_path / "bare" / "tokenizer_config.json").unlink()
    with pytest.raises(TokenizerError, match=rf"no eos token.*There is no {tmp_path / 'bare' / 'tokenizer_config.json'} "):
        load_tokenizer("~/bare")


def test_the_direct_path_needs_both_files_and_a_config_object(tokenizer_dir, tmp_path):
    """A folder with tokenizer_config.json alone, or whose config is no JSON object, is no lone
    generic tokenizer; loading the folder with the config alone says tokenizer.json is missing."""
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tokenizer_dir / "tokenizer_config.json", alone)
    assert not _generic_tokenizer_dir(alone)
    with pytest.raises(TokenizerError, match=rf"^{alone}: no tokenizer in this directory \(no tokenizer.json\); "
                                             rf"expected tokenizer.json and tokenizer_config.json"):
        load_tokenizer(alone)
    for config in ("{oops", "[]", '"TokenizersBackend"'):
        (tokenizer_dir / "tokenizer_config.json").write_text(config)
        assert not _generic_tokenizer_dir(tokenizer_dir)


def test_a_tokenizer_without_eos_is_told_to_set_it_in_its_config(tokenizer_dir, monkeypatch):
    """With a tokenizer_config.json (a folder's, or a hub id's) the error says to set eos there."""
    _edit_config(tokenizer_dir, eos_token=None)
    with pytest.raises(TokenizerError, match=rf"^{tokenizer_dir}: the tokenizer has no eos token; rcond ends every "
                                             r"document with eos\. Set `eos_token` in its tokenizer_config\.json\.$"):
        load_tokenizer(tokenizer_dir)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: word_tokenizer(eos_token=None, pad_token=None))
    monkeypatch.setattr(hub, "unreachable", lambda: None)
    with pytest.raises(TokenizerError, match=r"^some-org/no-eos: the tokenizer has no eos token; .* Set `eos_token` in "
                                             r"its tokenizer_config\.json\.$"):
        load_tokenizer("some-org/no-eos")


def test_a_tokenizer_keeps_its_own_pad_token(tmp_path):
    """eos becomes pad only for a tokenizer without one: a pad token of its own stays."""
    word_tokenizer(pad_token="h").save_pretrained(tmp_path / "tok")
    tokenizer = load_tokenizer(tmp_path / "tok")
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.pad_token_id) == ("<eos>", "h", 8)


def test_a_hub_error_over_several_lines_is_given_on_one(monkeypatch):
    """transformers' download errors run over several lines; the message gives them on one."""
    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection\n    or go offline.")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", unreachable)
    monkeypatch.setattr(hub, "unreachable", lambda: None)
    with pytest.raises(TokenizerError, match=r"^some-org/some-tokenizer: not a local directory, and loading it as a hub "
                                             r"id failed: We couldn't connect to 'https://huggingface\.co'\. Check your "
                                             r"connection or go offline\.$"):
        load_tokenizer("some-org/some-tokenizer")


def test_a_tokenizer_without_a_rust_backend_is_refused(monkeypatch):
    """AutoTokenizer can give a Python-only tokenizer (a class without a tokenizer.json); rcond
    needs the Rust backend (no such class is installed here: AutoTokenizer is made to return one)."""
    class SlowTokenizer:
        eos_token = "<eos>"

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: SlowTokenizer())
    monkeypatch.setattr(hub, "unreachable", lambda: None)
    with pytest.raises(TokenizerError, match=r"^some-org/slow: got a SlowTokenizer; rcond needs a tokenizer with a "
                                             r"`tokenizers` backend"):
        load_tokenizer("some-org/slow")


def test_remote_code_in_a_tokenizer_folder_is_not_run_unless_trusted(tokenizer_dir, tmp_path):
    """A tokenizer_config.json whose auto_map names code in the folder: without trust_remote_code
    loading refuses, naming the folder, and the code is not run."""
    ran = tmp_path / "ran"
    (tokenizer_dir / "rcond_custom_tok.py").write_text(
        f"open({str(ran)!r}, 'w').close()\nfrom transformers import PreTrainedTokenizerFast\n\n\n"
        "class CustomTok(PreTrainedTokenizerFast):\n    pass\n")
    _edit_config(tokenizer_dir, tokenizer_class="CustomTok", auto_map={"AutoTokenizer": [None, "rcond_custom_tok.CustomTok"]})
    with pytest.raises(TokenizerError, match=rf"^{tokenizer_dir}: cannot load a tokenizer from this directory "
                                             r"\(ValueError: .*trust_remote_code=True"):
        load_tokenizer(tokenizer_dir)
    assert not ran.exists()


@pytest.mark.parametrize("setting", [
    {"padding_side": "left"}, {"truncation_side": "left"}, {"chat_template": "{{ messages }}"},
    {"clean_up_tokenization_spaces": True}, {"model_max_length": 8}, {"split_special_tokens": True},
    {"bos_token": "a"}, {"extra_special_tokens": ["b"]},
])
def test_each_setting_of_the_config_changes_the_fingerprint(tokenizer_dir, setting):
    """Each setting tokenizer_config.json gives that changes what the tokenizer does (sides,
    lengths, template, special tokens and whether they split) gives another fingerprint."""
    before = tokenizer_fingerprint(load_tokenizer(tokenizer_dir))
    _edit_config(tokenizer_dir, **setting)
    tokenizer = load_tokenizer(tokenizer_dir)
    [(name, value)] = setting.items()
    assert getattr(tokenizer, name) == value
    assert tokenizer_fingerprint(tokenizer) != before


def test_which_special_token_is_eos_and_which_are_extra_is_in_the_fingerprint(tmp_path):
    """Moving eos to another token that is already special, or dropping a token from the extra
    special tokens, leaves tokenizer.json as it was: only the config's settings tell them apart."""
    tokenizer = word_tokenizer()
    tokenizer.add_special_tokens({"extra_special_tokens": ["b"]})
    tokenizer.save_pretrained(tmp_path / "tok")
    before = tokenizer_fingerprint(load_tokenizer(tmp_path / "tok"))
    for setting in ({"eos_token": "b"}, {"extra_special_tokens": []}):
        shutil.copytree(tmp_path / "tok", tmp_path / "edited", dirs_exist_ok=True)
        _edit_config(tmp_path / "edited", **setting)
        assert (tmp_path / "edited" / "tokenizer.json").read_bytes() == (tmp_path / "tok" / "tokenizer.json").read_bytes()
        assert tokenizer_fingerprint(load_tokenizer(tmp_path / "edited")) != before


def test_an_unreadable_tokenizer_config_names_the_file(tokenizer_dir, monkeypatch):
    """A tokenizer_config.json that cannot be read (no permission) is a TokenizerError naming it,
    not an OSError (the tests run as root, whom permissions do not stop: reading it is made to fail)."""
    from pathlib import Path

    config = tokenizer_dir / "tokenizer_config.json"
    read_text = Path.read_text

    def denied(self, *args, **kwargs):
        if self == config:
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(TokenizerError, match=rf"^{config}: cannot read it as JSON \(\[Errno 13\] Permission denied: "):
        load_tokenizer(tokenizer_dir)
