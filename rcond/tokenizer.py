"""Tokenizers for rcond: load one (local directory or hub id) and fingerprint it, without torch.

``rcond preprocess`` needs a tokenizer but no model. transformers' ``AutoTokenizer`` imports
torch on its way to choosing a class (it reads the model config to learn the model type), which
costs a command about 2–3 s before any work starts. A directory that holds a tokenizer alone,
as rcond writes them (``tokenizer_config.json`` naming the generic Rust-backed class, no
``auto_map``, no model ``config.json`` beside it), gets that generic class from every path
through ``AutoTokenizer``, so it is loaded with that class directly. Everything else — hub ids,
model directories, specialised tokenizer classes, remote code — goes through ``AutoTokenizer``.

Transformers 5.x facts relied on (read in the installed source, 5.23): ``AutoTokenizer`` ignores
``use_fast`` and always returns a Rust-backed tokenizer; ``PreTrainedTokenizerFast`` is an alias
of ``TokenizersBackend``; for a directory without a model config it falls back to an empty
config (no model type) and takes the class named in ``tokenizer_config.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from . import hub

GENERIC_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")  # what AutoTokenizer resolves them to: one class
TOKENIZER_FILE, TOKENIZER_CONFIG_FILE = "tokenizer.json", "tokenizer_config.json"
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE)  # what save_pretrained writes for a Rust-backed tokenizer
EXPECTED = f"expected {TOKENIZER_FILE} and {TOKENIZER_CONFIG_FILE} as save_pretrained writes them"


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded or used: no such directory or hub id, an unreadable file, no
    Rust backend, no eos token. The message names the path or id."""


def _generic_tokenizer_dir(path: Path) -> bool:
    """``path`` is a local directory holding only a tokenizer of the generic Rust-backed class."""
    config_file = path / TOKENIZER_CONFIG_FILE
    if not (path.is_dir() and config_file.is_file() and (path / TOKENIZER_FILE).is_file()):
        return False
    if (path / "config.json").exists():  # a model directory: its model type may pick a specialised class
        return False
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # let AutoTokenizer report it
    return isinstance(config, dict) and config.get("tokenizer_class") in GENERIC_CLASSES and "auto_map" not in config


def load_tokenizer(path_or_id: str | os.PathLike, *, trust_remote_code: bool = False) -> PreTrainedTokenizerFast:
    """Load a Rust-backed tokenizer from a local directory or a hub id; pad defaults to eos.
    Raises :class:`TokenizerError` when it cannot. A path may start with ``~`` (the home directory),
    as the input paths may: the shell leaves it as it is in ``--tokenizer=~/tok``."""
    local, source = Path(path_or_id).expanduser(), hub.local_or_id(path_or_id)
    _check_config_file(local / TOKENIZER_CONFIG_FILE)
    try:
        if _generic_tokenizer_dir(local):
            tokenizer = PreTrainedTokenizerFast.from_pretrained(source)
        else:
            from transformers import AutoTokenizer  # imports torch

            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                      **hub.pretrained_kwargs(path_or_id))
    except Exception as e:
        # transformers: OSError for a bad path, id or download; ValueError for a bad file; others for
        # settings of the wrong type (a class name that is a number, an eos token that is an id), and
        # tokenizers' own plain Exception for a tokenizer.json that is JSON but no tokenizer
        raise TokenizerError(_cannot_load(str(path_or_id), e)) from e
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise TokenizerError(f"{path_or_id}: got a {type(tokenizer).__name__}; rcond needs a tokenizer with a "
                             f"`tokenizers` backend (a tokenizer.json)")
    if tokenizer.eos_token is None:
        config = local / TOKENIZER_CONFIG_FILE
        where = (f"Set `eos_token` in its {TOKENIZER_CONFIG_FILE}" if config.is_file() or not local.is_dir()
                 else f"There is no {config} to set it in: save the tokenizer with save_pretrained, or write that "
                      f"file with an `eos_token`")
        raise TokenizerError(f"{path_or_id}: the tokenizer has no eos token; rcond ends every document with eos. "
                             f"{where}.")
    pad_with_eos(tokenizer)
    return tokenizer


def pad_with_eos(tokenizer: PreTrainedTokenizerFast) -> None:
    """Give a tokenizer without a pad token its eos as pad (rcond pads rows and batches with it).
    Loading and building both do it, so a corpus's saved tokenizer loads as it was fingerprinted."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def _check_config_file(config_file: Path) -> None:
    """A local ``tokenizer_config.json`` must be a JSON object: transformers reads any other JSON
    value with an AttributeError that names neither the file nor the fault."""
    if not config_file.is_file():
        return
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{config_file}: cannot read it as JSON ({e}); {EXPECTED}") from None
    if not isinstance(config, dict):
        raise TokenizerError(f"{config_file}: expected a JSON object of tokenizer settings, got "
                             f"{type(config).__name__} {json.dumps(config)[:60]}")


def _cannot_load(spec: str, e: Exception) -> str:
    """Why ``spec`` gave no tokenizer, in words: a local directory that holds none (or a broken
    one), a local path that does not exist, or a hub id that could not be fetched."""
    why = " ".join(str(e).split())
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / TOKENIZER_FILE).is_file():
        inside = [path / sub for sub in ("tokenizer", "model") if (path / sub / TOKENIZER_FILE).is_file()]
        return (f"{spec}: no tokenizer in this directory (no {TOKENIZER_FILE})"
                + (f"; did you mean {inside[0]}? (a corpus keeps its tokenizer in tokenizer/, a training run "
                   f"its model in model/)" if inside else f"; {EXPECTED}"))
    if path.is_dir():
        return f"{spec}: cannot load a tokenizer from this directory ({type(e).__name__}: {why}); {EXPECTED}"
    if path.exists():
        return f"{spec}: is a file; give the directory that holds {TOKENIZER_FILE} and {TOKENIZER_CONFIG_FILE}"
    if not hub.looks_like_hub_id(spec):
        return f"{spec}: no such directory (and not a hub id of the form 'name' or 'owner/name')"
    return f"{spec}: not a local directory, and loading it as a hub id failed: {why}"


FINGERPRINTED_SETTINGS = ("special_tokens_map", "extra_special_tokens", "split_special_tokens", "add_bos_token",
                          "add_eos_token", "model_max_length", "padding_side", "truncation_side", "chat_template",
                          "clean_up_tokenization_spaces")  # tokenizer_config.json's settings that change what it does


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """sha256 of the backend tokenizer's canonical JSON (vocabulary, merges, added tokens, pipeline)
    and of the settings ``tokenizer_config.json`` gives it (:data:`FINGERPRINTED_SETTINGS`: which
    tokens are special, whether they are split, bos/eos added, lengths, sides, chat template).

    The backend's ``padding`` and ``truncation`` entries are left out: they are call-time state
    that the tokenizer rewrites whenever it is called with ``padding=``/``truncation=``.
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("padding", None)
    state.pop("truncation", None)
    state["settings"] = {name: getattr(tokenizer, name, None) for name in FINGERPRINTED_SETTINGS}
    canonical = json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
