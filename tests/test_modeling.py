"""Tests of rcond.modeling: packed forward equivalence (and its failure modes), control-token
mean init, output heads, flash-attention varlen boundaries, save/load."""

import json
import logging
import sys

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import (
    AttentionInterface,
    CohereConfig,
    CohereForCausalLM,
    FalconH1Config,
    FalconH1ForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    HyperCLOVAXConfig,
    HyperCLOVAXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.masking_utils import find_packed_sequence_indices

from rcond.modeling import (
    ModelDirError,
    ModelSpecError,
    OutputHead,
    add_control_tokens,
    build_model,
    check_not_a_mistyped_preset,
    cu_seq_lens,
    document_starts,
    flash_varlen_kwargs,
    load_pretrained,
    load_spec_tokenizer,
    output_head,
    packed_hidden,
    packed_token_logprobs,
    preset_config,
    save_pretrained_atomic,
)
from rcond.tokenizer import TokenizerError, load_tokenizer, tokenizer_fingerprint
from rcond.tokens import ControlScheme

VOCAB_WORDS = [f"w{i}" for i in range(120)]
DOC_LENGTHS = (7, 12, 5)           # three documents of different lengths in one packed row
ATOL = 1e-5


def _write_tokenizer(directory, *, eos=True):
    """A word-level tokenizer over VOCAB_WORDS, saved as a transformers tokenizer directory."""
    vocab = {"<unk>": 0, "<|endoftext|>": 1, **{w: i + 2 for i, w in enumerate(VOCAB_WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = {"eos_token": "<|endoftext|>"} if eos else {}
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **special).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return _write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture
def scheme():
    return ControlScheme.fit([0.1 * i for i in range(20)], num_bins=4)


@pytest.fixture
def model(tokenizer, scheme):
    return build_model("tiny", tokenizer, scheme, seed=0).eval()


def _packed(lengths, vocab_size, seed):
    """One packed row of documents: (input_ids [1, T], position_ids [1, T], the documents)."""
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(2, vocab_size, (n,), generator=g) for n in lengths]
    input_ids = torch.cat(docs)[None]                                             # [1, T]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]            # [1, T]
    return input_ids, position_ids, docs


def _docwise_logprobs(model, docs):
    """Per-token log-probs of each document run alone (no packing), concatenated: [sum(n-1)]."""
    out = []
    for doc in docs:
        logits = model(input_ids=doc[None]).logits[0, :-1].float()                # [n-1, V]
        out.append(torch.log_softmax(logits, -1).gather(-1, doc[1:, None]).squeeze(-1))
    return torch.cat(out)


def _within_docs(logprobs, position_ids):
    """Drop the entries whose target starts a new document: [B, T-1] -> [kept]."""
    return logprobs[~document_starts(position_ids)[:, 1:]]


def _logprobs_from_hidden(hidden, head, input_ids):
    logp = torch.log_softmax(head.logits(hidden[:, :-1]).float(), -1)             # [B, T-1, V]
    return logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)                    # [B, T-1]


# ---------------------------------------------------------------------------- presets
def test_tiny_preset_is_sized_to_the_tokenizer_and_seeded(tokenizer, scheme):
    a = build_model("tiny", tokenizer, seed=3)
    assert a.config.vocab_size == len(tokenizer)
    assert a.lm_head.weight is a.model.embed_tokens.weight
    assert a.config.eos_token_id == tokenizer.eos_token_id and a.config.pad_token_id == tokenizer.pad_token_id
    b = build_model("tiny", tokenizer, seed=3)
    c = build_model("tiny", tokenizer, seed=4)
    assert torch.equal(a.model.layers[0].mlp.up_proj.weight, b.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, c.model.layers[0].mlp.up_proj.weight)
    assert build_model("tiny", tokenizer, max_position_embeddings=64).config.max_position_embeddings == 64


def test_preset_sizes(tokenizer):
    def body_params(name):
        with torch.device("meta"):
            m = LlamaForCausalLM(preset_config(name, tokenizer))
        return sum(p.numel() for p in m.parameters()) - m.model.embed_tokens.weight.numel()

    assert 1e6 < body_params("tiny") < 4e6
    assert 80e6 < body_params("small") < 90e6                      # GPT-2 small: 85M without embeddings
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("huge", tokenizer)


def test_pretrained_path_loads_and_checks_context_length(model, tokenizer, scheme, tmp_path):
    save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "m")
    loaded = build_model(str(tmp_path / "m"), tokenizer, scheme)
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    with pytest.raises(ModelSpecError, match="max_position_embeddings"):
        build_model(str(tmp_path / "m"), tokenizer, max_position_embeddings=10**6)


def test_a_model_path_may_start_with_the_home_directory(model, tokenizer, scheme, tmp_path, monkeypatch):
    """'~/m' is the model in the home directory, for a model to start from and for a saved one, as
    for tokenizers and inputs (the shell leaves the '~' in --model=~/m; transformers reads it as a
    hub id)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "m")
    started = build_model("~/m", tokenizer, scheme)
    assert torch.equal(started.model.embed_tokens.weight, model.model.embed_tokens.weight)
    loaded, _, scheme2 = load_pretrained("~/m")
    assert scheme2 == scheme and torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_a_model_that_cannot_be_loaded_says_why(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tokenizer_only")
    for spec in (tmp_path / "tokenizer_only", tmp_path / "nothing_here"):
        with pytest.raises(ModelSpecError, match=f"^{spec}: cannot load a causal LM from it .*expected a preset"):
            build_model(str(spec), tokenizer)


def test_a_mistyped_preset_is_refused_without_asking_the_hub(tokenizer, tmp_path, monkeypatch):
    """A bare name that is a preset in other case, or close to one, and no local path: refused at
    once, naming the presets. A local folder of that name is still loaded as a path."""
    monkeypatch.chdir(tmp_path)
    for spec, meant in (("Tiny", "tiny"), ("MICRO", "micro"), ("smal", "small"), ("tinny", "tiny")):
        with pytest.raises(ModelSpecError, match=rf"^unknown preset '{spec}'; presets are micro, tiny, small "
                                                 rf"\(did you mean {meant}\?\)$"):
            build_model(spec, tokenizer)
    (tmp_path / "Tiny").mkdir()
    with pytest.raises(ModelSpecError, match="^Tiny: cannot load a causal LM from it"):
        build_model("Tiny", tokenizer)


def test_preset_config_carries_the_tokenizers_special_ids(tokenizer):
    """bos, eos and pad ids of a preset's config are the tokenizer's own, each a different token
    here (generation stops at eos and pads with pad), and vocab_size counts the added ones."""
    tokenizer.add_special_tokens({"bos_token": "<s>", "pad_token": "<pad>"})
    config = preset_config("micro", tokenizer)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (122, 1, 123)
    assert config.vocab_size == len(tokenizer) == 124


def test_building_a_preset_leaves_the_global_random_stream_alone(tokenizer):
    """The preset's weights come from `seed` alone, and the caller's random stream continues as if
    build_model had not run (a training script seeds its own data order before building)."""
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    model = build_model("micro", tokenizer, seed=5)
    assert torch.equal(torch.rand(4), expected)
    torch.manual_seed(99)
    assert torch.equal(build_model("micro", tokenizer, seed=5).model.embed_tokens.weight,
                       model.model.embed_tokens.weight)


def test_a_preset_is_built_in_the_dtype_asked(tokenizer):
    """dtype applies to presets as to pretrained models: every parameter in bf16 when asked, fp32 by default."""
    assert {p.dtype for p in build_model("micro", tokenizer, dtype=torch.bfloat16).parameters()} == {torch.bfloat16}
    assert {p.dtype for p in build_model("micro", tokenizer).parameters()} == {torch.float32}


def test_a_pretrained_model_may_use_its_whole_context(model, tokenizer, scheme, tmp_path):
    """Rows exactly as long as max_position_embeddings fit the model (the limit itself is allowed);
    one token more is refused, naming both numbers."""
    save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "m")
    assert build_model(str(tmp_path / "m"), tokenizer, max_position_embeddings=1024).config.max_position_embeddings == 1024
    with pytest.raises(ModelSpecError, match="rows of 1025 tokens exceed the model's max_position_embeddings=1024"):
        build_model(str(tmp_path / "m"), tokenizer, max_position_embeddings=1025)


def test_a_pretrained_model_without_a_pad_id_takes_the_tokenizers(model, tokenizer, scheme, tmp_path):
    """A checkpoint whose config.json and generation_config.json have no pad_token_id (common for
    base models) gets the tokenizer's pad id in both: batched sampling pads with it."""
    out = save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "m")
    for name in ("config.json", "generation_config.json"):
        config = json.loads((out / name).read_text())
        (out / name).write_text(json.dumps({**config, "pad_token_id": None}))
    loaded = build_model(str(out), tokenizer)
    assert loaded.config.pad_token_id == tokenizer.pad_token_id == 1
    assert loaded.generation_config.pad_token_id == 1


def test_pickled_weights_are_not_loaded(model, tokenizer, tmp_path):
    """A checkpoint with only a pytorch_model.bin (a pickle, which can run code when loaded) is
    refused as having no safetensors weights, and the loading-report filter is removed afterwards."""
    model.config.save_pretrained(tmp_path / "m")
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(ModelSpecError, match="cannot load a causal LM from it"):
        build_model(str(tmp_path / "m"), tokenizer)
    assert not logging.getLogger("transformers.modeling_utils").filters


@pytest.mark.parametrize("spec", ["gpt2", "distilgpt2", "tinyllama", "smollm", "me/small", "org/tiny"])
def test_names_not_close_to_a_preset_are_not_taken_for_typos(spec):
    """Only a bare name within a typo of a preset is refused: hub ids and names that merely share
    letters with one (tinyllama, smollm) or whose repository is called like one (me/small) go on."""
    check_not_a_mistyped_preset(spec)


def test_the_spec_tokenizer_names_what_is_wrong(tmp_path):
    """A mistyped preset is refused before anything is loaded; a local folder without a tokenizer
    is the tokenizer's own error (naming the folder, not a list of presets); a name that is neither
    a folder nor a loadable id lists what was expected."""
    with pytest.raises(ModelSpecError, match=r"^unknown preset 'Micro'; presets are micro, tiny, small \(did you mean micro\?\)$"):
        load_spec_tokenizer("Micro")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError) as raised:
        load_spec_tokenizer(str(tmp_path / "empty"))
    assert not isinstance(raised.value, ModelSpecError) and str(tmp_path / "empty") in str(raised.value)
    with pytest.raises(ModelSpecError, match=r"expected a preset \(micro, tiny, small\), a model directory or a hub id$"):
        load_spec_tokenizer(str(tmp_path / "nothing_here"))


def test_a_pretrained_model_takes_the_dtype_and_attention_asked(model, tokenizer, scheme, tmp_path):
    """dtype and attn_implementation reach from_pretrained for a model to start from, as for presets."""
    save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "m")
    loaded = build_model(str(tmp_path / "m"), tokenizer, dtype=torch.bfloat16, attn_implementation="eager")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded.config._attn_implementation == "eager"


# ---------------------------------------------------------------------------- control tokens
def test_new_control_token_rows_are_the_mean_of_the_old_rows(tokenizer, scheme):
    model = build_model("tiny", tokenizer)
    old = model.get_input_embeddings().weight.detach().clone()                    # [V, D]
    assert add_control_tokens(model, tokenizer, scheme) == len(scheme.control_tokens)
    new = model.get_input_embeddings().weight.detach()                            # [V + 6, D]
    ids = list(scheme.token_ids(tokenizer).values())
    assert sorted(ids) == list(range(old.shape[0], new.shape[0]))
    assert torch.equal(new[: old.shape[0]], old)
    torch.testing.assert_close(new[ids], old.mean(0).expand(len(ids), -1))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.config.vocab_size == len(tokenizer)
    assert add_control_tokens(model, tokenizer, scheme) == 0                      # idempotent
    assert torch.equal(model.get_input_embeddings().weight, new)


def test_mean_init_of_untied_output_rows_and_bias(tokenizer, scheme):
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.lm_head = nn.Linear(32, len(tokenizer), bias=True)
    nn.init.normal_(model.lm_head.bias)
    old_w, old_b = model.lm_head.weight.detach().clone(), model.lm_head.bias.detach().clone()
    add_control_tokens(model, tokenizer, scheme)
    ids = list(scheme.token_ids(tokenizer).values())
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    torch.testing.assert_close(model.lm_head.weight[ids].detach(), old_w.mean(0).expand(len(ids), -1))
    torch.testing.assert_close(model.lm_head.bias[ids].detach(), old_b.mean().expand(len(ids)))


def test_rows_are_added_when_the_tokenizer_already_has_the_control_tokens(tokenizer, scheme):
    model = build_model("tiny", tokenizer)                                        # base vocabulary only
    old = model.get_input_embeddings().weight.detach().clone()
    scheme.add_to_tokenizer(tokenizer)                                            # e.g. the corpus's tokenizer
    assert add_control_tokens(model, tokenizer, scheme) == 0
    new = model.get_input_embeddings().weight.detach()
    assert new.shape[0] == len(tokenizer)
    torch.testing.assert_close(new[old.shape[0]:], old.mean(0).expand(new.shape[0] - old.shape[0], -1))


def test_control_tokens_in_padded_embedding_rows(tokenizer, scheme):
    """An embedding with spare rows beyond the tokenizer (vocab padded to a round size, 136 rows for
    122 tokens): the control tokens take ids 122..127 inside it, those rows get the mean of the
    122 real tokens' rows (not of the spare ones), and nothing is resized or otherwise changed."""
    model = LlamaForCausalLM(preset_config("micro", tokenizer, vocab_size=136))
    old = model.get_input_embeddings().weight.detach().clone()                    # [136, D]
    add_control_tokens(model, tokenizer, scheme)
    new = model.get_input_embeddings().weight.detach()
    ids = sorted(scheme.token_ids(tokenizer).values())
    assert ids == list(range(122, 128)) and new.shape == old.shape
    torch.testing.assert_close(new[ids], old[:122].mean(0).expand(len(ids), -1))
    assert torch.equal(new[:122], old[:122]) and torch.equal(new[128:], old[128:])


# ---------------------------------------------------------------------------- packed forward
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_matches_documents_run_one_by_one(tokenizer, scheme, attn):
    model = build_model("tiny", tokenizer, scheme, attn_implementation=attn).eval()
    assert model.config._attn_implementation == attn
    row1 = _packed(DOC_LENGTHS, len(tokenizer), seed=0)
    row2 = _packed((10, 14), len(tokenizer), seed=1)                              # same T = 24
    input_ids = torch.cat([row1[0], row2[0]])                                     # [2, 24]
    position_ids = torch.cat([row1[1], row2[1]])                                  # [2, 24]
    with torch.no_grad():
        expected = _docwise_logprobs(model, row1[2] + row2[2])
        via_forward = packed_token_logprobs(model, input_ids, position_ids)      # [2, 23]
        hidden = packed_hidden(model, input_ids, position_ids)                    # [2, 24, D]
        via_head = _logprobs_from_hidden(hidden, output_head(model), input_ids)
    assert hidden.shape == (2, 24, model.config.hidden_size)
    assert via_forward.shape == (2, 23) and via_forward.dtype == torch.float32
    torch.testing.assert_close(_within_docs(via_forward, position_ids), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(_within_docs(via_head, position_ids), expected, atol=ATOL, rtol=0)


def test_cache_default_and_all_ones_mask_leak_across_documents(model, tokenizer):
    """The failure modes of DESIGN §5: same row, same position ids, different log-probs."""
    input_ids, position_ids, docs = _packed(DOC_LENGTHS, len(tokenizer), seed=0)
    first = DOC_LENGTHS[0] - 1                                # targets inside document 1
    with torch.no_grad():
        expected = _docwise_logprobs(model, docs)
        leaky = {
            "default use_cache": model(input_ids=input_ids, position_ids=position_ids).logits,
            "all-ones attention mask": model(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                                             attention_mask=torch.ones_like(input_ids)).logits,
        }
    for name, logits in leaky.items():
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        got = _within_docs(logp, position_ids)
        torch.testing.assert_close(got[:first], expected[:first], atol=ATOL, rtol=0)   # doc 1 sees only itself
        assert (got[first:] - expected[first:]).abs().max() > 1e-3, name              # docs 2, 3 see doc 1


def test_packed_hidden_under_ddp_wraps_the_decoder(model, tokenizer, tmp_path):
    input_ids, position_ids, _ = _packed(DOC_LENGTHS, len(tokenizer), seed=0)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        with torch.no_grad():
            wrapped = nn.parallel.DistributedDataParallel(model.base_model)
            calls = []
            wrapped.register_forward_pre_hook(lambda *_: calls.append(1))   # only calls through DDP sync
            torch.testing.assert_close(packed_hidden(wrapped, input_ids, position_ids),
                                       packed_hidden(model, input_ids, position_ids), atol=0, rtol=0)
            assert calls == [1]                                   # the wrapper itself ran the decoder
            with pytest.raises(TypeError, match="wrap `model.base_model`"):
                packed_hidden(nn.parallel.DistributedDataParallel(model), input_ids, position_ids)
    finally:
        torch.distributed.destroy_process_group()


def test_packed_shapes_must_match(model):
    with pytest.raises(ValueError, match=r"\[batch, tokens\]"):
        packed_hidden(model, torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))


def test_packed_rows_must_be_two_dimensional(model):
    """One row given as a 1-D tensor is refused with the same message, not handed to the model."""
    with pytest.raises(ValueError, match=r"input_ids \(5,\) and position_ids \(5,\) must both be \[batch, tokens\]"):
        packed_hidden(model, torch.zeros(5, dtype=torch.long), torch.arange(5))


# ---------------------------------------------------------------------------- flash-attention varlen
def test_document_starts_agree_with_transformers_packing_detection():
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3], [3, 4, 0, 1, 2, 3, 4, 5, 0, 1]])
    ours = document_starts(position_ids).long().cumsum(-1) - 1
    assert torch.equal(ours, find_packed_sequence_indices(position_ids))


@pytest.mark.parametrize("position_ids, cu, longest", [
    ([[0, 1, 2, 0, 1, 0, 1, 2, 3]], [0, 3, 5, 9], 4),
    ([[0, 1, 2, 3], [0, 1, 0, 1]], [0, 4, 6, 8], 4),
    ([[0, 1, 2, 3, 4], [5, 6, 0, 1, 2]], [0, 5, 7, 10], 5),      # row 2 continues a document: still a new segment
    ([[0, 0, 0]], [0, 1, 2, 3], 1),
    ([[0, 1, 2, 3, 4, 5]], [0, 6], 6),
])
def test_cu_seq_lens_by_hand(position_ids, cu, longest):
    got_cu, got_longest = cu_seq_lens(torch.tensor(position_ids))
    assert got_cu.dtype == torch.int32 and got_cu.tolist() == cu
    assert isinstance(got_longest, int) and got_longest == longest
    kwargs = flash_varlen_kwargs(torch.tensor(position_ids))
    assert kwargs["cu_seq_lens_q"] is kwargs["cu_seq_lens_k"] and kwargs["cu_seq_lens_q"].tolist() == cu
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == longest


def _varlen_reference_attention(module, query, key, value, attention_mask, scaling, dropout=0.0,
                                cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None,
                                **kwargs):
    """flash_attn semantics on CPU: causal attention within each cu_seq_lens segment of a flattened
    batch, and plain causal attention over each row when no cu_seq_lens are given (as flash does)."""
    query, key, value = (t.float() for t in (query, key, value))                 # [B, H, T, Dh]
    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    if cu_seq_lens_q is None:
        bounds = [(0, query.shape[2])]
    else:
        assert query.shape[0] == 1 and torch.equal(cu_seq_lens_q, cu_seq_lens_k)
        assert max_length_q == max_length_k == int(cu_seq_lens_q.diff().max())
        bounds = list(zip(cu_seq_lens_q[:-1].tolist(), cu_seq_lens_q[1:].tolist()))
    out = torch.cat([nn.functional.scaled_dot_product_attention(
        query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling) for a, b in bounds], dim=2)
    return out.transpose(1, 2), None                                              # [B, T, H, Dh]


def test_flash_code_path_flattens_rows_and_passes_cu_seq_lens(model, tokenizer):
    AttentionInterface.register("flash_varlen_cpu_reference", _varlen_reference_attention)
    row1 = _packed(DOC_LENGTHS, len(tokenizer), seed=0)
    row2 = _packed((10, 14), len(tokenizer), seed=1)
    input_ids, position_ids = torch.cat([row1[0], row2[0]]), torch.cat([row1[1], row2[1]])   # [2, 24]
    with torch.no_grad():
        expected = _docwise_logprobs(model, row1[2] + row2[2])
        model.config._attn_implementation = "flash_varlen_cpu_reference"
        seen = []
        model.model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs.get("use_cache")),
                                              with_kwargs=True)
        via_forward = packed_token_logprobs(model, input_ids, position_ids)
        via_head = _logprobs_from_hidden(packed_hidden(model, input_ids, position_ids), output_head(model), input_ids)
        dense = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    torch.testing.assert_close(_within_docs(via_forward, position_ids), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(_within_docs(via_head, position_ids), expected, atol=ATOL, rtol=0)
    leaky = torch.log_softmax(dense[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    assert (_within_docs(leaky, position_ids) - expected).abs().max() > 1e-3   # no cu_seq_lens: rows leak
    assert seen[:2] == [False, False]                     # DESIGN §5: no KV cache in the packed forward


# ---------------------------------------------------------------------------- output head
@pytest.mark.parametrize("make, field, value", [
    (lambda v: LlamaForCausalLM(LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=1, num_attention_heads=2)), None, None),
    (lambda v: Gemma2ForCausalLM(Gemma2Config(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                              num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                              final_logit_softcapping=0.5)), "softcap", 0.5),
    (lambda v: CohereForCausalLM(CohereConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                              num_attention_heads=2, logit_scale=0.25)), "logit_scale", 0.25),
    (lambda v: GraniteForCausalLM(GraniteConfig(vocab_size=v, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=2, logits_scaling=8.0)),
     "logit_scale", 0.125),
    (lambda v: HyperCLOVAXForCausalLM(HyperCLOVAXConfig(vocab_size=v, hidden_size=32, intermediate_size=64,
                                                        num_hidden_layers=1, num_attention_heads=2,
                                                        logits_scaling=4.0)), "logit_scale", 4.0),
    (lambda v: FalconH1ForCausalLM(FalconH1Config(vocab_size=v, hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                                  head_dim=16, mamba_d_ssm=32, mamba_n_heads=2, mamba_d_head=16,
                                                  mamba_d_state=8, mamba_chunk_size=8, lm_head_multiplier=0.5)),
     "logit_scale", 0.5),
], ids=["llama", "gemma2-softcap", "cohere-scale", "granite-divides", "hyperclovax-multiplies", "falcon-h1-multiplies"])
def test_output_head_reproduces_the_models_logits(make, field, value):
    torch.manual_seed(0)
    model = make(64).eval()
    input_ids, position_ids, _ = _packed(DOC_LENGTHS, 64, seed=0)
    head = output_head(model)
    assert isinstance(head, OutputHead) and head.weight is model.get_output_embeddings().weight
    if field is not None:
        assert getattr(head, field) == pytest.approx(value)
    with torch.no_grad():
        hidden = packed_hidden(model, input_ids, position_ids)
        logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
        torch.testing.assert_close(head.logits(hidden), logits, atol=1e-5, rtol=1e-5)
        if field is not None:                                     # the head's extra term matters
            assert (nn.functional.linear(hidden, head.weight) - logits).abs().max() > 1e-2


def test_a_head_that_is_no_linear_layer_is_refused(tokenizer):
    """The fused loss needs the head as a weight (and bias): any other module is a TypeError naming it."""
    model = build_model("micro", tokenizer)
    model.lm_head = nn.Sequential(model.lm_head)
    with pytest.raises(TypeError, match=r"^LlamaForCausalLM has no linear LM head \(got Sequential\)$"):
        output_head(model)


def test_output_head_scales_before_capping():
    """logits = softcap·tanh(logit_scale·(h·Wᵀ + b) / softcap), the order of the loss's formula,
    checked by hand in float64 with both terms present."""
    g = torch.Generator().manual_seed(0)
    weight, bias, hidden = torch.randn(9, 4, generator=g), torch.randn(9, generator=g), torch.randn(3, 4, generator=g)
    expected = 2.0 * torch.tanh(3.0 * (hidden.double() @ weight.double().T + bias.double()) / 2.0)
    got = OutputHead(weight, bias, softcap=2.0, logit_scale=3.0).logits(hidden)
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------- save / load
def test_atomic_save_load_round_trip(model, tokenizer, scheme, tmp_path):
    out = tmp_path / "ckpt"
    input_ids, position_ids, _ = _packed(DOC_LENGTHS, len(tokenizer), seed=0)
    with torch.no_grad():
        before = packed_token_logprobs(model, input_ids, position_ids)
    save_pretrained_atomic(model, tokenizer, scheme, out, extra=lambda d: (d / "state.json").write_text("{}"))
    assert (out / "model.safetensors").is_file() and (out / "scheme.json").is_file()
    assert (out / "state.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]     # no temp dirs left behind

    loaded, tok2, scheme2 = load_pretrained(out)
    assert scheme2 == scheme
    assert tokenizer_fingerprint(tok2) == tokenizer_fingerprint(tokenizer)
    assert tok2.pad_token_id == tokenizer.pad_token_id
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(packed_token_logprobs(loaded, input_ids, position_ids), before, atol=0, rtol=0)

    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)
    save_pretrained_atomic(model, tokenizer, scheme, out)                     # replaces the old checkpoint
    assert not (out / "state.json").exists()
    again, _, _ = load_pretrained(out, dtype=torch.bfloat16)
    assert again.dtype == torch.bfloat16
    torch.testing.assert_close(again.model.embed_tokens.weight.float(), model.model.embed_tokens.weight,
                               atol=1e-1, rtol=1e-2)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_load_pretrained_passes_trust_remote_code(model, tokenizer, scheme, tmp_path, monkeypatch):
    """A run started with --trust-remote-code resumes with it: the model and the tokenizer are
    reloaded with the flag (a remote-code model's saved config names its own classes)."""
    import transformers

    from rcond import modeling

    save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "m")
    seen = []
    real_model, real_tok = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(modeling.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **kw: seen.append(("model", kw.get("trust_remote_code"))) or real_model(*a, **kw))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *a, **kw: seen.append(("tokenizer", kw.get("trust_remote_code"))) or real_tok(*a, **kw))
    load_pretrained(tmp_path / "m", trust_remote_code=True)
    load_pretrained(tmp_path / "m")
    assert seen == [("tokenizer", True), ("model", True), ("tokenizer", False), ("model", False)]


def test_failed_save_leaves_the_old_checkpoint(model, tokenizer, scheme, tmp_path):
    out = tmp_path / "ckpt"
    save_pretrained_atomic(model, tokenizer, scheme, out)
    stamp = (out / "model.safetensors").read_bytes()

    def crash(_):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained_atomic(model, tokenizer, scheme, out, extra=crash)
    assert (out / "model.safetensors").read_bytes() == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_save_refuses_to_replace_a_foreign_directory(model, tokenizer, scheme, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing"):
        save_pretrained_atomic(model, tokenizer, scheme, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_load_errors_name_the_problem(model, tokenizer, scheme, tmp_path):
    with pytest.raises(ModelDirError, match="no such model directory"):
        load_pretrained(tmp_path / "nowhere")
    out = save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "ckpt")

    (out / "model.safetensors").rename(tmp_path / "weights")
    with pytest.raises(ModelDirError, match="missing model.safetensors"):
        load_pretrained(out)
    (tmp_path / "weights").rename(out / "model.safetensors")

    (out / "scheme.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="scheme.json"):
        load_pretrained(out)
    scheme.save(out)

    (out / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelDirError, match="cannot load the model"):
        load_pretrained(out)


def test_load_rejects_a_tokenizer_without_the_control_tokens(model, tokenizer, scheme, tmp_path, tokenizer_dir):
    """A saved tokenizer replaced by one without the control tokens: the error names the model
    directory (the scheme's own message does not) and the first missing token."""
    out = save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "ckpt")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_text((tokenizer_dir / name).read_text())
    with pytest.raises(ModelDirError, match=rf"^{out}: control token '<\|rlhf:on\|>' is not in the tokenizer"):
        load_pretrained(out)
    assert json.loads((out / "scheme.json").read_text())["num_bins"] == 4


@pytest.mark.parametrize("edit,problem", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
     r"GPT2LMHeadModel that its config.json describes: \d+ missing \(e.g. lm_head.weight, .*\); \d+ unexpected "
     r"\(e.g. model.embed_tokens.weight, "),
    ({"hidden_size": 128}, r"LlamaForCausalLM that its config.json describes: \d+ of another shape "
                           r"\(e.g. model.embed_tokens.weight, "),
])
def test_weights_that_do_not_fit_the_config_are_refused(model, tokenizer, scheme, tmp_path, edit, problem, monkeypatch):
    """Not loaded with the misfit tensors at random (the rest loaded), nor as a RuntimeError; the
    error names the directory and some keys, in place of transformers' loading report."""
    out = save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, **edit}))
    reports = []
    logged = logging.Handler()
    logged.emit = lambda record: reports.append(record.getMessage())
    monkeypatch.setattr(logging.getLogger("transformers"), "handlers", [logged])  # transformers does not propagate
    expected = rf"^{out}: the weights do not fit the {problem}.*; expected the config.json saved with these weights$"
    with pytest.raises(ModelDirError, match=expected):
        load_pretrained(out)
    with pytest.raises(ModelDirError, match=expected):
        build_model(str(out), tokenizer)
    assert not [r for r in reports if "LOAD REPORT" in r]


def test_save_into_an_existing_empty_folder(model, tokenizer, scheme, tmp_path):
    """An empty folder (made beforehand, e.g. by a job scheduler) is replaced like a saved model."""
    (tmp_path / "ckpt").mkdir()
    out = save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "ckpt")
    assert (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_save_refuses_to_replace_a_file(model, tokenizer, scheme, tmp_path):
    """A file where the model would go is not a saved model: refused, the file kept."""
    (tmp_path / "ckpt").write_text("mine")
    with pytest.raises(FileExistsError, match="ckpt: exists and is not a saved model directory"):
        save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "ckpt")
    assert (tmp_path / "ckpt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_failed_final_rename_puts_the_old_checkpoint_back(model, tokenizer, scheme, tmp_path, monkeypatch):
    """The new checkpoint's rename into place fails after the old one was moved aside (fault
    injected: no real way to make only that rename fail): the old checkpoint is renamed back,
    nothing else is left, and the error propagates."""
    import os

    out = save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "ckpt")
    stamp = (out / "model.safetensors").read_bytes()
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(src).startswith(".ckpt.tmp"):
            raise OSError("device went away")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="device went away"):
        save_pretrained_atomic(model, tokenizer, scheme, out)
    assert (out / "model.safetensors").read_bytes() == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_dropped_ctrl_c_keeps_the_old_checkpoint(model, tokenizer, scheme, tmp_path, monkeypatch):
    """A Ctrl-C that Python dropped (raised in a finalizer) during a command is honoured before the
    new checkpoint is put in place: KeyboardInterrupt, the old checkpoint intact, no temp folder."""
    from conftest import DropsACtrlC
    from rcond.atomic import recording_interrupts

    out = save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "ckpt")
    stamp = (out / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)
    monkeypatch.setattr(sys, "unraisablehook", lambda u: None)
    with recording_interrupts():
        DropsACtrlC()
        with pytest.raises(KeyboardInterrupt):
            save_pretrained_atomic(model, tokenizer, scheme, out)
    assert (out / "model.safetensors").read_bytes() == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_load_names_each_missing_file(model, tokenizer, scheme, tmp_path):
    """Every file a complete model directory holds is checked and named when absent (config.json
    too: transformers would otherwise report something about the weights)."""
    out = save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "ckpt")
    for name in ("config.json", "scheme.json", "tokenizer.json", "tokenizer_config.json"):
        (out / name).rename(tmp_path / name)
        with pytest.raises(ModelDirError, match=rf"^{out}: not a complete rcond model directory, missing {name} "):
            load_pretrained(out)
        (tmp_path / name).rename(out / name)
    (out / "config.json").unlink()
    (out / "tokenizer.json").unlink()
    with pytest.raises(ModelDirError, match="missing config.json, tokenizer.json "):
        load_pretrained(out)


def test_load_sharded_weights(model, tokenizer, scheme, tmp_path):
    """Weights saved in shards (model.safetensors.index.json and its files, as large models are)
    are a complete model directory and load to the same weights."""
    out = save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "ckpt")
    (out / "model.safetensors").unlink()
    model.save_pretrained(out, max_shard_size="1MB")
    assert (out / "model.safetensors.index.json").is_file()
    loaded, _, _ = load_pretrained(out)
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_load_keeps_the_saved_dtype_and_moves_to_the_device(tokenizer, scheme, tmp_path):
    """dtype=None keeps a bf16 checkpoint in bf16 (not widened to fp32); device moves the model
    ('meta' here, the one other device every machine has)."""
    model = build_model("micro", tokenizer, scheme, dtype=torch.bfloat16)
    out = save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "ckpt")
    loaded, _, _ = load_pretrained(out)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    moved, _, _ = load_pretrained(out, device="meta")
    assert {p.device.type for p in moved.parameters()} == {"meta"}


def test_load_rejects_a_broken_tokenizer_or_one_larger_than_the_embedding(model, tokenizer, scheme, tmp_path):
    """A tokenizer.json that does not parse is a ModelDirError naming the tokenizer; a tokenizer
    with a token more than the embedding has rows is refused, naming both sizes and the control ids."""
    out = save_pretrained_atomic(model, tokenizer, scheme, tmp_path / "ckpt")
    good = (out / "tokenizer.json").read_text()
    (out / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelDirError, match=f"^{out}: cannot load the tokenizer: "):
        load_pretrained(out)
    (out / "tokenizer.json").write_text(good)
    tokenizer.add_tokens(["extra"])
    tokenizer.save_pretrained(out)
    with pytest.raises(ModelDirError, match=rf"^{out}: the tokenizer has 129 tokens but the model's embedding only "
                                            rf"128 rows \(control token ids 122\.\.127\)$"):
        load_pretrained(out)


def test_load_refuses_a_file(tmp_path):
    """A file where a model directory is expected is no model directory (not a list of missing files)."""
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelDirError, match="model.safetensors: no such model directory$"):
        load_pretrained(tmp_path / "model.safetensors")
