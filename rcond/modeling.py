"""Models and tokenizers for rcond: build or load, add control tokens, the packed forward, save/load.

Packed forward (DESIGN §5). A packed row holds several documents back to back; ``position_ids``
restart at 0 at every document. A token must attend only to earlier tokens of its own document,
so the packed row gives the same per-token log-probabilities as running each document alone.
``packed_hidden`` calls the decoder with ``position_ids``, ``use_cache=False`` and no
``attention_mask``, and returns ``last_hidden_state``; ``output_head`` hands the loss the output
weight (plus bias, logit scale and softcap where the architecture has them) so that the
``[tokens x vocab]`` logits are never built in training.

A new document starts at column 0 of every row and wherever ``position_ids[t] !=
position_ids[t-1] + 1`` (``document_starts``). This is the rule transformers uses for sdpa/eager,
and the one ``flash_varlen_kwargs`` applies for flash-attention, so both backends see the same
documents (a document continued from the previous row, positions not starting at 0, included).

Transformers 5.x facts relied on (read in the installed source, 5.23):

- ``masking_utils._preprocess_mask_arguments`` looks for packed sequences only when the
  attention mask is ``None`` *and* ``past_key_values`` is ``None``; ``find_packed_sequence_indices``
  then numbers documents by ``cumsum(diff(position_ids) != 1)`` and the sdpa/eager/flex mask
  becomes "causal in position ids AND same document".
- ``use_cache`` defaults to ``config.use_cache`` (True) through ``merge_with_config_defaults``; the
  decoder then creates an empty ``DynamicCache``, so ``past_key_values`` is not ``None``, packing
  is not detected and the mask is plain causal over the whole row. An all-ones 2-D attention
  mask has the same effect. Both are silent: shapes and losses look normal.
- With flash-attention the mask is ``None`` and ``_flash_attention_forward`` infers documents from
  ``position_ids`` only when the batch size is 1; with several rows and no ``cu_seq_lens_*`` it
  runs dense causal attention over each row. So on flash the rows are flattened to
  ``[1, B*T]`` and ``cu_seq_lens_q/k`` (int32) and ``max_length_q/k`` (a Python int, so that no
  layer syncs the device to read it) are passed explicitly.
- ``resize_token_embeddings(mean_resizing=True)`` samples new rows from a Gaussian with the old
  rows' mean and covariance (random); rcond resizes with ``mean_resizing=False`` and writes the
  exact mean of the existing rows.
- ``from_pretrained`` defaults to ``dtype="auto"`` (the checkpoint's dtype, often bf16), so
  ``build_model`` asks for float32 master weights explicitly; ``save_pretrained`` always writes
  safetensors.
"""

from __future__ import annotations

import difflib
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.utils.generic import is_flash_attention_requested

from rcond import hub
from rcond.atomic import raise_if_interrupted, temp_dir_beside
from rcond.tokenizer import TOKENIZER_FILES, TokenizerError, load_tokenizer
from rcond.tokens import SCHEME_FILE, ControlScheme, SchemeError

# Llama-style presets (RoPE, RMSNorm, SwiGLU, tied input/output embeddings); the vocabulary
# size always comes from the tokenizer.
PRESETS: dict[str, dict] = {
    # ~0.6M parameters + 128 per vocabulary entry: `rcond demo --quick` and quick tests.
    "micro": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
                  max_position_embeddings=1024),
    # ~1.8M parameters + 192 per vocabulary entry: trains on 2 CPU cores in minutes.
    "tiny": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 max_position_embeddings=1024),
    # GPT-2-small scale (~85M parameters + 768 per vocabulary entry), for a GPU.
    "small": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                  max_position_embeddings=1024),
}

MODEL_CONFIG_FILE = "config.json"
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")


class ModelDirError(OSError):
    """A saved rcond model directory is missing, incomplete or unreadable."""


class ModelSpecError(ValueError):
    """A model path or hub id to start from that transformers cannot load, or whose context is
    shorter than the rows it would be fed."""


# ---------------------------------------------------------------------------- model
def preset_config(name: str, tokenizer: PreTrainedTokenizerFast, **overrides) -> LlamaConfig:
    """The ``LlamaConfig`` of a preset, sized to ``tokenizer`` and carrying its special-token ids."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    kwargs = dict(PRESETS[name], vocab_size=len(tokenizer), tie_word_embeddings=True,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def build_model(
    spec: str,
    tokenizer: PreTrainedTokenizerFast,
    scheme: ControlScheme | None = None,
    *,
    seed: int = 0,
    max_position_embeddings: int | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A causal LM for ``tokenizer``: a preset (``tiny``/``small``) built from scratch with ``seed``,
    or any other ``spec`` loaded as a local path or hub id (safetensors weights only).

    ``max_position_embeddings`` sets a preset's context length; for a pretrained model it is the
    longest row the caller will feed, checked against the model's limit. With ``scheme`` the
    control tokens are added (``add_control_tokens``). ``attn_implementation`` is passed to
    transformers (``sdpa`` by default; ``flash_attention_2`` etc. on GPU). A mistyped preset
    (``Tiny``) is refused before any hub call, and a checkpoint whose weights do not fit its
    config.json is refused (``check_weights_fit``) rather than started from random weights.
    """
    if spec in PRESETS:
        overrides = {} if max_position_embeddings is None else {"max_position_embeddings": max_position_embeddings}
        config = preset_config(spec, tokenizer, **overrides)
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        model.to(dtype)
    else:
        check_not_a_mistyped_preset(spec)
        try:
            model, info = _from_pretrained(spec, dtype=dtype, attn_implementation=attn_implementation,
                                           trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:  # no such path or id, no model config or weights in it, no network
            why = " ".join(str(e).split())
            raise ModelSpecError(f"{spec}: cannot load a causal LM from it ({type(e).__name__}: {why}); expected a "
                                 f"preset ({', '.join(PRESETS)}), a model directory with config.json and "
                                 f"safetensors weights, or a hub id") from e
        check_weights_fit(spec, model, info)
        limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        if max_position_embeddings is not None and limit is not None and max_position_embeddings > limit:
            raise ModelSpecError(f"{spec}: rows of {max_position_embeddings} tokens exceed the model's "
                                 f"max_position_embeddings={limit}; lower --block-size")
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None and model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    if scheme is not None:
        add_control_tokens(model, tokenizer, scheme)
    return model


def check_not_a_mistyped_preset(spec: str) -> None:
    """ModelSpecError for a bare name (no ``/``, not a local path) that is a preset in other case or
    close to one (``Tiny``, ``smal``): refused at once, instead of after the hub's minute of retries."""
    if spec in PRESETS or "/" in spec or Path(spec).exists():
        return
    close = difflib.get_close_matches(spec.lower(), PRESETS, n=1, cutoff=0.75)
    if close:
        raise ModelSpecError(f"unknown preset {spec!r}; presets are {', '.join(PRESETS)} (did you mean {close[0]}?)")


def load_spec_tokenizer(spec: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerFast:
    """The tokenizer of a model directory or hub id to start from. A mistyped preset, or a name that is
    neither a local path nor a hub id that loads, is a ModelSpecError that lists the presets."""
    check_not_a_mistyped_preset(spec)
    try:
        return load_tokenizer(spec, trust_remote_code=trust_remote_code)
    except TokenizerError as e:
        if Path(spec).exists():
            raise
        raise ModelSpecError(f"{str(e).rstrip('.')}; expected a preset ({', '.join(PRESETS)}), a model directory "
                             f"or a hub id") from e


class _WithoutLoadReport(logging.Filter):
    """Drops transformers' table of missing/unexpected/mismatched weights: ``check_weights_fit``
    turns every such load into an error that names the keys."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


def _from_pretrained(spec: str | os.PathLike, **kwargs) -> tuple[PreTrainedModel, dict]:
    """``AutoModelForCausalLM.from_pretrained`` (safetensors only) and its loading info; weights of
    another shape than the config's are reported there, not raised as a RuntimeError."""
    logger = logging.getLogger("transformers.modeling_utils")
    quiet = _WithoutLoadReport()
    logger.addFilter(quiet)
    try:
        return AutoModelForCausalLM.from_pretrained(hub.local_or_id(spec), use_safetensors=True, output_loading_info=True,
                                                    ignore_mismatched_sizes=True,
                                                    **{**hub.pretrained_kwargs(spec), **kwargs})
    finally:
        logger.removeFilter(quiet)


def check_weights_fit(spec: str | os.PathLike, model: PreTrainedModel, info: dict) -> None:
    """ModelDirError naming ``spec`` and a few keys when the checkpoint's weights do not fit the model
    its config.json describes (a config.json edited, or copied from another model): transformers
    would start the missing or reshaped weights from random values."""
    problems = {"missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
                "of another shape": sorted(key for key, *_ in info["mismatched_keys"])}
    found = [f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})" for what, keys in problems.items() if keys]
    if found:
        raise ModelDirError(f"{spec}: the weights do not fit the {type(model).__name__} that its config.json "
                            f"describes: {'; '.join(found)}; expected the config.json saved with these weights")


def add_control_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, scheme: ControlScheme) -> int:
    """Add the scheme's control tokens to ``tokenizer`` and ``model``; returns how many tokens were new.

    Rows are initialised for every control token this call adds and for every tokenizer id beyond
    the model's embedding matrix (e.g. a tokenizer that already carries the control tokens,
    paired with a base model that lacks them): each such input-embedding row, output row (when
    untied) and output bias entry is set to the mean over the rows of the tokens that existed
    before, so the new tokens start as an "average token" rather than noise. Rows of tokens that
    the tokenizer and the model both already had are left untouched.
    """
    n_rows = model.get_input_embeddings().weight.shape[0]
    vocab_before = len(tokenizer)
    known = tokenizer.get_vocab()
    missing = [tok for tok in scheme.control_tokens if tok not in known]
    added = scheme.add_to_tokenizer(tokenizer)
    ids = scheme.token_ids(tokenizer)
    fresh = sorted({ids[tok] for tok in missing} | set(range(n_rows, len(tokenizer))))
    if len(tokenizer) > n_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if fresh:
        n_ref = min(n_rows, vocab_before)
        input_weight = model.get_input_embeddings().weight      # [V, D]
        output = model.get_output_embeddings()
        tensors = [input_weight]
        if output is not None and output.weight is not input_weight:
            tensors.append(output.weight)                       # [V, D]
        if output is not None and getattr(output, "bias", None) is not None:
            tensors.append(output.bias)                         # [V]
        index = torch.tensor(fresh, device=input_weight.device)
        with torch.no_grad():
            for t in tensors:
                mean = t[:n_ref].float().mean(dim=0)            # [D] or []
                t[index] = mean.to(t.dtype)
    return added


# ---------------------------------------------------------------------------- packed forward
def document_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: True where a document starts (column 0, or a position that does not continue +1)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)                 # [B, T]
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts


def cu_seq_lens(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Flash-attention varlen boundaries of the rows flattened to one sequence of B*T tokens.

    Returns ``cu`` ([n_docs + 1] int32: start offset of every document, then B*T) and the
    longest document's length.
    """
    starts = document_starts(position_ids).reshape(-1)                       # [B*T]
    offsets = starts.nonzero().squeeze(1)                                    # [n_docs]
    end = torch.tensor([starts.numel()], device=offsets.device, dtype=offsets.dtype)
    cu = torch.cat([offsets, end]).to(torch.int32)                           # [n_docs + 1]
    return cu, int(cu.diff().max())


def flash_varlen_kwargs(position_ids: torch.Tensor) -> dict:
    """The ``cu_seq_lens_q/k``, ``max_length_q/k`` keyword arguments for flattened packed rows."""
    cu, longest = cu_seq_lens(position_ids)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def _packed_call(module: nn.Module, config, input_ids: torch.Tensor, position_ids: torch.Tensor,
                 field: str) -> torch.Tensor:
    """Run ``module`` on packed rows and return ``field`` of its output as [B, T, ...]."""
    if input_ids.ndim != 2 or input_ids.shape != position_ids.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and position_ids {tuple(position_ids.shape)} "
                         f"must both be [batch, tokens]")
    batch, length = input_ids.shape
    if is_flash_attention_requested(config):
        out = module(input_ids=input_ids.reshape(1, batch * length),                  # [1, B*T]
                     position_ids=position_ids.reshape(1, batch * length),
                     use_cache=False, **flash_varlen_kwargs(position_ids))
        return out[field].reshape(batch, length, -1)                                  # [B, T, ...]
    return module(input_ids=input_ids, position_ids=position_ids, use_cache=False)[field]


def packed_hidden(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Final hidden states [B, T, D] of packed rows, each document attending only to itself.

    ``model`` is a causal LM, its decoder (``model.base_model``), or a ``DistributedDataParallel``
    wrapping the decoder. DDP must wrap the decoder, not the causal LM: only calls that go through
    the wrapper synchronise gradients, and this function never calls the LM head.
    """
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    decoder = inner.base_model
    if decoder is inner:
        call = model
    elif inner is model:
        call = decoder
    else:
        raise TypeError("DistributedDataParallel wraps the whole causal LM, but the packed forward runs only its "
                        "decoder and would bypass the wrapper's gradient sync: wrap `model.base_model` instead")
    return _packed_call(call, inner.config, input_ids, position_ids, "last_hidden_state")


class OutputHead(NamedTuple):
    """The LM head as plain tensors: ``logits = softcap * tanh(logit_scale * (h @ weight.T + bias) / softcap)``,
    where a ``None`` scale, bias or softcap is left out."""

    weight: torch.Tensor                 # [V, D]
    bias: torch.Tensor | None            # [V]
    softcap: float | None
    logit_scale: float | None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., V]; materialises the logits (evaluation and tests only)."""
        logits = nn.functional.linear(hidden, self.weight, self.bias)          # [..., V]
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def _logit_scale(config) -> float | None:
    """The factor an architecture multiplies its logits by, read from its config."""
    if getattr(config, "logit_scale", None) is not None:           # Cohere family: logits * logit_scale
        return float(config.logit_scale)
    if getattr(config, "lm_head_multiplier", None) is not None:    # Falcon-H1: logits * lm_head_multiplier
        return float(config.lm_head_multiplier)
    if getattr(config, "logits_scaling", None) is not None:
        if config.model_type.startswith("hyperclovax"):            # HyperCLOVA X: logits * logits_scaling
            return float(config.logits_scaling)
        return 1.0 / float(config.logits_scaling)                  # Granite, MiniCPM3: logits / logits_scaling
    return None


def output_head(model: PreTrainedModel) -> OutputHead:
    """The output weight, bias, softcap and logit scale of a causal LM, for the fused loss."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{type(model).__name__} has no linear LM head (got {type(head).__name__})")
    config = model.config.get_text_config()
    softcap = getattr(config, "final_logit_softcapping", None)
    return OutputHead(head.weight, head.bias, None if softcap is None else float(softcap), _logit_scale(config))


def packed_token_logprobs(model: PreTrainedModel, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t+1] | row up to t), [B, T-1] float32, through the model's own forward.

    Materialises the logits. Entries whose target starts a new document (``document_starts``)
    score a token across a boundary and carry no meaning; callers mask them.
    """
    logits = _packed_call(model, model.config, input_ids, position_ids, "logits")   # [B, T, V]
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)                     # [B, T-1, V]
    return logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)                   # [B, T-1]


# ---------------------------------------------------------------------------- save / load
def _looks_like_model_dir(path: Path) -> bool:
    return path.is_dir() and (not any(path.iterdir()) or (path / MODEL_CONFIG_FILE).exists())


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_pretrained_atomic(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    scheme: ControlScheme,
    out_dir: str | os.PathLike,
    *,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write model (safetensors), tokenizer and ``scheme.json`` to ``out_dir`` all at once.

    Everything goes to a temporary directory beside ``out_dir`` (``extra(tmp)`` may add files,
    e.g. optimizer state), is flushed to disk, and is then renamed into place, so a reader sees
    the old directory or the complete new one. An existing ``out_dir`` is replaced only if it is
    empty or holds a saved model (``config.json``); it is first renamed aside and deleted after
    the new one is in place (a crash between the two renames leaves it as ``.NAME.old-*``).
    """
    out = Path(out_dir)
    if out.exists() and not _looks_like_model_dir(out):
        raise FileExistsError(f"{out}: exists and is not a saved model directory (no {MODEL_CONFIG_FILE}); "
                              f"refusing to replace it")
    tmp = temp_dir_beside(out)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        scheme.save(tmp)
        if extra is not None:
            extra(tmp)
        _fsync_tree(tmp)
        raise_if_interrupted()
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}" if out.exists() else None
        if old is not None:
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            if old is not None:
                os.rename(old, out)
            raise
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)
    return out


def load_pretrained(
    directory: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    *,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, ControlScheme]:
    """Load what ``save_pretrained_atomic`` wrote; ``dtype=None`` keeps the saved dtype;
    ``trust_remote_code`` as when the model was first loaded (a remote-code model saves its
    ``auto_map``, which transformers refuses to follow without it).

    Raises ``ModelDirError`` naming the directory and the missing or unreadable file.
    """
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise ModelDirError(f"{path}: no such model directory")
    missing = [name for name in (MODEL_CONFIG_FILE, SCHEME_FILE, *TOKENIZER_FILES) if not (path / name).is_file()]
    if not any((path / name).is_file() for name in WEIGHTS_FILES):
        missing.append(WEIGHTS_FILES[0])
    if missing:
        raise ModelDirError(f"{path}: not a complete rcond model directory, missing {', '.join(missing)} "
                            f"(was the save interrupted?)")
    try:
        scheme = ControlScheme.load(path)
    except SchemeError as e:
        raise ModelDirError(str(e)) from e
    try:
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        raise ModelDirError(f"{path}: cannot load the tokenizer: {e}") from e
    try:
        model, info = _from_pretrained(path, local_files_only=True, dtype="auto" if dtype is None else dtype,
                                       trust_remote_code=trust_remote_code)
    except Exception as e:  # safetensors, json and config errors have no common base class
        raise ModelDirError(f"{path}: cannot load the model weights/config: {type(e).__name__}: {e}") from e
    check_weights_fit(path, model, info)
    try:
        ids = scheme.token_ids(tokenizer)
    except SchemeError as e:
        raise ModelDirError(f"{path}: {e}") from e
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ModelDirError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only "
                            f"{rows} rows (control token ids {min(ids.values())}..{max(ids.values())})")
    if device is not None:
        model.to(device)
    return model, tokenizer, scheme
