"""Tests of rcond.sample and `rcond sample`: prompt layout, the KV-cached batched decode loop
(against one-by-one and full recompute), guidance endpoints, banned control tokens, the
sampling distribution, input/output files and the command end to end."""

import json
import math
import os

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import DropsACtrlC, write_jsonl
from rcond.atomic import OutputExistsError, OutputPathError
from rcond.cli import main
from rcond.conditioning import OFF_SLOT, ON_SLOT, RTG_SLOT, ConditionedStream, encodings
from rcond.content_encoder import ContentEncoder
from rcond.packing import PackOptions
from rcond.modeling import add_control_tokens, save_pretrained_atomic
from rcond.sample import (Condition, Prompt, Sample, SampleError, Sampler, SamplingParams, check_device,
                          check_out_file, conditions, conversations_note, empty_prompt_note, format_summary,
                          one_line_prompts_note, read_prompts, resolve_model_dir, write_jsonl_atomic)
from rcond.sources import Part, PartBatch, Record, SourceError
from rcond.tokens import ControlScheme, SchemeError

WORDS = [f"w{i}" for i in range(60)]
PROMPTS = ["w1 w2 w3", "w5", "", "w7 w8 w9 w10 w11 w12", "w20 w21"]


def make_tokenizer():
    """Word-level, eos id 0, and a post-processor that would add <bos>: prompts must be encoded without it."""
    vocab = {"<eos>": 0, "<bos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", bos_token="<bos>", pad_token="<eos>")


def make_model(tokenizer, scheme, *, seed=0, tied=True):
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=128, eos_token_id=0, pad_token_id=0,
                         bos_token_id=1, tie_word_embeddings=tied, initializer_range=0.3)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    add_control_tokens(model, tokenizer, scheme)
    return model.eval()


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is fastest, and immune to OpenMP threads spinning
    against each other on a loaded machine (seen here: 100x slower with 2 threads on 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def scheme():
    return ControlScheme(num_bins=4, edges=[-0.5, 0.0, 0.5])


@pytest.fixture
def sampler(scheme):
    tok = make_tokenizer()
    return Sampler(make_model(tok, scheme), tok, scheme)


@pytest.fixture
def stopping_sampler(scheme):
    """Greedy rows end at different steps: eos gets the output row of the token greedy picks most,
    and wins the exact tie (argmax takes the first index; eos is id 0)."""
    tok = make_tokenizer()
    model = make_model(tok, scheme, tied=False)
    s = Sampler(model, tok, scheme)
    rows = [s.prompt_ids(p, Condition("on", 1)) for p in PROMPTS]
    picked = [t for ids, _ in s.generate(rows, SamplingParams(max_new_tokens=12, temperature=0)) for t in ids]
    common = max(set(picked), key=picked.count)
    with torch.no_grad():
        model.lm_head.weight[0] = model.lm_head.weight[common]
    return s


def greedy(n=12, **kw):
    return SamplingParams(max_new_tokens=n, temperature=0, **kw)


# ---------------------------------------------------------------------------- prompts and conditions
def test_prompt_ids_are_control_ids_then_the_corpus_encoding(sampler, scheme):
    tok = sampler.tokenizer
    ids = scheme.token_ids(tok)
    prompt = "w3 w4 w5"
    batch = PartBatch.from_records([Record([Part(prompt, False, rtg=0.2), Part("w9", True)], "on", "t")])
    (_, offsets, flat), = encodings([batch], ContentEncoder(tok.backend_tokenizer))  # the corpus build's own encoding path
    corpus_prompt = flat[offsets[0]:offsets[1]].tolist()
    assert tok(prompt)["input_ids"][0] == tok.bos_token_id            # the tokenizer's own call adds <bos> ...
    assert corpus_prompt == [5, 6, 7]                                 # ... the corpus encoding does not
    assert sampler.prompt_ids(prompt, Condition("on", 2)) == [ids["<|rlhf:on|>"], ids["<|rtg:2|>"], *corpus_prompt]
    assert sampler.prompt_ids(prompt, Condition("off")) == [ids["<|rlhf:off|>"], *corpus_prompt]
    assert sampler.prompt_ids("", Condition("on", 0)) == [ids["<|rlhf:on|>"], ids["<|rtg:0|>"]]


@pytest.mark.parametrize("fmt", ["scored", "dialog"])
def test_prompt_layout_follows_the_corpus_format(fmt):
    """The on-mode input is the corpus's document up to where the response starts: a scored
    record's RTG token opens it, a dialog's sits right before the assistant turn."""
    tok = make_tokenizer()
    fmt_scheme = ControlScheme(num_bins=4, edges=[-0.5, 0.0, 0.5], options={"format": fmt})
    s = Sampler(make_model(tok, fmt_scheme), tok, fmt_scheme)
    prompt, response = "w3 w4", "w9"
    parts = ([Part(prompt, False, rtg=0.2), Part(response, True)] if fmt == "scored"
             else [Part(prompt, False), Part(response, True, rtg=0.2)])
    batch = PartBatch.from_records([Record(parts, "on", "t")])
    (_, offsets, flat), = encodings([batch], ContentEncoder(tok.backend_tokenizer))
    pool = ConditionedStream(tok.eos_token_id, PackOptions(uncond_fraction=0.0)).pool(batch, offsets, flat)
    document = pool.ids.tolist()                                      # placeholders for the control tokens
    ids = fmt_scheme.token_ids(tok)
    expected = {"scored": [ON_SLOT, RTG_SLOT, 5, 6], "dialog": [ON_SLOT, 5, 6, RTG_SLOT]}[fmt]
    assert document[:4] == expected and document[4] == 11             # then the response, w9
    slots = {ON_SLOT: ids["<|rlhf:on|>"], RTG_SLOT: ids["<|rtg:2|>"]}
    assert s.prompt_ids(prompt, Condition("on", 2)) == [slots.get(t, t) for t in expected]
    assert s.prompt_ids(prompt, Condition("off")) == [ids["<|rlhf:off|>"], 5, 6]


def scheme_sampler(options):
    """A sampler of make_model's tiny model whose scheme records ``options`` (the formats it learned)."""
    tok = make_tokenizer()
    scheme = ControlScheme(num_bins=4, edges=[-0.5, 0.0, 0.5], options=options)
    return Sampler(make_model(tok, scheme), tok, scheme)


def dialog_sampler():
    return scheme_sampler({"format": "dialog"})


def test_a_conversation_is_laid_out_as_its_dialog_corpus_laid_it_out():
    """A prompt of dialog turns given to a dialog-trained model is the corpus's document of that
    dialog up to its last RTG token: each turn encoded on its own (the contents joined would
    encode otherwise here: 'w4w9w5' is one unknown word), an RTG token before every assistant turn,
    all at the requested level; off mode is the corpus's unconditional document, no RTG token.
    A model of another format gets the joined text as one prompt."""
    s = dialog_sampler()
    tok, ids = s.tokenizer, s.scheme.token_ids(s.tokenizer)
    turns = [("user", "w3 w4"), ("assistant", "w9"), ("user", "w5")]
    parts = [Part("w3 w4", False), Part("w9", True, rtg=0.2), Part("w5", False), Part("w11", True, rtg=0.9)]
    batch = PartBatch.from_records([Record(parts, "on", "t")])
    (_, offsets, flat), = encodings([batch], ContentEncoder(tok.backend_tokenizer))
    documents = {}
    for fraction in (0.0, 1.0):
        pool = ConditionedStream(tok.eos_token_id, PackOptions(uncond_fraction=fraction)).pool(batch, offsets, flat)
        documents[fraction] = pool.ids.tolist()
    assert documents[0.0] == [ON_SLOT, 5, 6, RTG_SLOT, 11, 7, RTG_SLOT, 13, 0]       # hand-laid: w_i is i + 2
    assert documents[1.0] == [OFF_SLOT, 5, 6, 11, 7, 13, 0]
    prompt = Prompt.dialog(turns, "d.jsonl:1")
    assert prompt == "w3 w4w9w5" and prompt.turns == tuple(turns) and prompt.origin == "d.jsonl:1"
    for level in range(4):
        slots = {ON_SLOT: ids["<|rlhf:on|>"], RTG_SLOT: ids[f"<|rtg:{level}|>"]}
        assert s.prompt_ids(prompt, Condition("on", level)) == [slots.get(t, t) for t in documents[0.0][:7]]
    assert s.prompt_ids(prompt, Condition("off")) == [ids["<|rlhf:off|>"], *documents[1.0][1:5]]
    assert s.prompt_ids(Prompt.dialog(turns[:1]), Condition("on", 1)) == s.prompt_ids("w3 w4", Condition("on", 1))
    scored = ControlScheme(num_bins=4, edges=[-0.5, 0.0, 0.5], options={"format": "scored"})
    other = Sampler(make_model(tok, scored), tok, scored)
    assert other.prompt_ids(prompt, Condition("on", 2)) == other.prompt_ids("w3 w4w9w5", Condition("on", 2)) \
        == [ids["<|rlhf:on|>"], ids["<|rtg:2|>"], 5, 0]


@pytest.mark.parametrize("options,text_after", [
    ({"format": "scored", "formats": ["dialog", "scored"]}, False),   # a mixture, the scored corpus first
    ({"format": "dialog", "formats": ["dialog", "scored"]}, False),   # the same mixture, the dialog corpus first
    ({"format": "dialog", "formats": ["dialog", "text"]}, True),      # dialogs and plain text (off mode only)
    ({"format": "pairs", "formats": ["pairs", "text"]}, False),
    ({"format": "dialog", "formats": ["dialog", "pairs"]}, False),    # dialogs and preference pairs
    ({"format": "dialog"}, True),                                     # saved before formats were recorded
    ({"format": "scored"}, False)])
def test_each_prompt_is_laid_out_as_the_corpora_of_its_kind(options, text_after):
    """A model that learned a dialog corpus gets a prompt of turns as its dialog corpus laid
    dialogs out, whichever corpus its scheme came from; a prompt of text gets the RTG token
    before it wherever the model learned pairs or scored responses, after it where its only
    conditioned corpora were dialogs."""
    s = scheme_sampler(options)
    on, rtg = s.on_id, s.rtg_ids[1]
    learned_dialogs = "dialog" in options.get("formats", [options["format"]])
    conversation = Prompt.dialog([("user", "w3"), ("assistant", "w9"), ("user", "w5")])
    assert s.prompt_ids(conversation, Condition("on", 1)) == (
        [on, 5, rtg, 11, 7, rtg] if learned_dialogs else [on, rtg, 0])            # 'w3w9w5' is one unknown word
    assert s.prompt_ids("w3 w4", Condition("on", 1)) == ([on, 5, 6, rtg] if text_after else [on, rtg, 5, 6])
    got = [x.text for x in s.sample([conversation, "w3 w4"], [Condition("on", 1)], greedy(4))]
    rows = [s.prompt_ids(conversation, Condition("on", 1)), s.prompt_ids("w3 w4", Condition("on", 1))]
    assert got == s.tokenizer.batch_decode([ids for ids, _ in s.generate(rows, greedy(4))], skip_special_tokens=True)


def test_a_dialog_prompt_needs_turns_that_end_with_the_user_or_the_system():
    """Prompt.dialog takes (role, content) pairs or {role, content} objects (the prompts file's
    form), ending with a user or system turn; no turns is the empty prompt; anything else is
    refused, naming what it got."""
    pairs = [("user", "w1"), ("assistant", "w2"), ("system", "w3")]
    assert Prompt.dialog(pairs).turns == Prompt.dialog([{"role": r, "content": c} for r, c in pairs]).turns \
        == tuple(pairs)
    assert Prompt.dialog(pairs) == "w1w2w3" and Prompt.dialog([]) == "" and Prompt.dialog([]).turns == ()
    assert Prompt("w1").turns is None and Prompt.dialog(pairs).strip().__class__ is str   # str operations: plain str
    bad = r"^a dialog turn is a \(role, content\) pair or a \{'role', 'content'\} object with role 'user', 'system' or "
    for turns, message in [([("user", "w1"), ("assistant", "w2")], r"^a dialog prompt ends with a user or system "
                                                                   r"turn: the sample is the assistant's next turn$"),
                           ([("bot", "w1")], bad + r"'assistant' and a string content, got \('bot', str\)$"),
                           ([("user", 3)], r"got \('user', int\)$"),
                           ([{"role": "user"}], r"got \('user', NoneType\)$"),
                           (["user"], r"got \('user', NoneType\)$")]:
        with pytest.raises(ValueError, match=message):
            Prompt.dialog(turns)


def test_a_conversation_samples_as_its_ids_do():
    """Sampling a dialog prompt is sampling its laid-out ids: greedy continuations equal those of
    generate() on the prompt_ids by hand, at every level and off; guidance 1 is unguided and 0 is
    the off mode (the unconditional branch drops the earlier RTG tokens too); a prompt cut to the
    context keeps its last tokens, RTG tokens among them."""
    s = dialog_sampler()
    prompts = [Prompt.dialog([("user", "w3 w4"), ("assistant", "w9 w10"), ("user", "w5")]),
               Prompt.dialog([("system", "w1"), ("user", "w2"), ("assistant", "w6"), ("user", "w7 w8"),
                              ("assistant", "w12"), ("user", "w13")]), "w20 w21"]
    conds = [Condition("on", k) for k in range(4)] + [Condition("off")]
    got = [x.text for x in s.sample(prompts, conds, greedy(6), batch_size=3)]
    rows = [s.prompt_ids(p, c) for c in conds for p in prompts]
    want = s.tokenizer.batch_decode([ids for ids, _ in s.generate(rows, greedy(6))], skip_special_tokens=True)
    assert got == want
    levels = conds[:4]
    unguided = [x.text for x in s.sample(prompts, levels, greedy(6))]
    assert [x.text for x in s.sample(prompts, levels, greedy(6), guidance=1.0)] == unguided
    off = [x.text for x in s.sample(prompts, [Condition("off")] * 4, greedy(6))]
    assert [x.text for x in s.sample(prompts, levels, greedy(6), guidance=0.0)] == off
    on2 = s.prompt_ids(prompts[1], Condition("on", 2))   # on w1 w2 rtg w6 w7 w8 rtg w12 w13 rtg
    (cut,) = s.sample(prompts[1:2], [Condition("on", 2)], greedy(120), truncate_prompts=True)
    assert len(on2) == 11 and cut.prompt_tokens_cut == 3    # 8 of 128 left: on rtg w7 w8 rtg w12 w13 rtg
    (ref, _), = s.generate([[on2[0], on2[3]] + on2[5:]], greedy(120))   # on2[3]: the RTG token of level 2
    assert cut.text == s.tokenizer.decode(ref, skip_special_tokens=True)


def test_a_conversation_cut_to_the_context_opens_as_a_corpus_piece_and_counts_what_it_holds():
    """A conversation cut from the left opens as its dialog corpus's later pieces of a split dialog
    open, with the mode and the RTG token in force (the corpus builder's own piece, block size 6,
    is the model's input up to the reply's RTG token), or with the mode alone where what is kept
    opens with an RTG token; in off mode, which drops the earlier RTG tokens, only the content
    counts: 8 ids fit 120 new tokens in 128 uncut, and at 121 one content token is cut."""
    s = dialog_sampler()
    tok, ids = s.tokenizer, s.scheme.token_ids(s.tokenizer)
    turns = [("system", "w1"), ("user", "w2"), ("assistant", "w6"), ("user", "w7 w8"), ("assistant", "w12"),
             ("user", "w13")]
    parts = [Part("w1", False), Part("w2", False), Part("w6", True, rtg=0.2), Part("w7 w8", False),
             Part("w12", True, rtg=0.2), Part("w13", False), Part("w20", True, rtg=0.2)]
    batch = PartBatch.from_records([Record(parts, "on", "t")])
    (_, offsets, flat), = encodings([batch], ContentEncoder(tok.backend_tokenizer))
    pool = ConditionedStream(tok.eos_token_id, PackOptions(block_size=6, uncond_fraction=0.0)).pool(batch, offsets,
                                                                                                   flat)
    pieces = [pool.ids[a:a + n].tolist() for a, n in zip(pool.start.tolist(), pool.length.tolist())]
    assert pieces == [[ON_SLOT, 3, 4, RTG_SLOT, 8, 9], [ON_SLOT, RTG_SLOT, 10, RTG_SLOT, 14, 15],
                      [ON_SLOT, RTG_SLOT, 22, 0]]
    slots = {ON_SLOT: ids["<|rlhf:on|>"], RTG_SLOT: ids["<|rtg:2|>"]}
    conversation = Prompt.dialog(turns)
    (full,) = s.encode_prompts([conversation])
    (kept,) = s.cut_to_context([full], [Condition("on", 2)], 121, [conversation])   # 7 of 128 for the input
    assert s.input_ids(Condition("on", 2), kept, True, cut=True) == [slots[t] if t < 0 else t for t in pieces[1]] \
        + [ids["<|rtg:2|>"]]
    (kept,) = s.cut_to_context([full], [Condition("on", 2)], 123, [conversation])   # 5: the cut lands on a mark
    assert s.input_ids(Condition("on", 2), kept, True, cut=True) == [slots[t] for t in (ON_SLOT, RTG_SLOT)] \
        + [14, 15, ids["<|rtg:2|>"]]
    off = [Condition("off")]
    assert s.prompt_ids(conversation, off[0]) == [ids["<|rlhf:off|>"], 3, 4, 8, 9, 10, 14, 15]
    (whole,) = s.sample([conversation], off, greedy(120))
    (ref, _), = s.generate([s.prompt_ids(conversation, off[0])], greedy(120))
    assert whole.text == tok.decode(ref, skip_special_tokens=True) and whole.prompt_tokens_cut == 0
    with pytest.raises(SampleError, match=r"is 8 tokens with its 1 control token\(s\); with max_new_tokens=121"):
        list(s.sample([conversation], off, greedy(121)))
    (cut,) = s.sample([conversation], off, greedy(121), truncate_prompts=True)
    (ref, _), = s.generate([[ids["<|rlhf:off|>"], 4, 8, 9, 10, 14, 15]], greedy(121))
    assert cut.text == tok.decode(ref, skip_special_tokens=True) and cut.prompt_tokens_cut == 1
    for mode in ("on", "off"):   # the length check counts what input_ids builds, cut or not
        for k in range(len(full) + 1):
            cond = Condition(mode, 1 if mode == "on" else None)
            assert s.input_length(cond, full[k:], True, k > 0) == len(s.input_ids(cond, full[k:], True, k > 0))
    rtg1 = ids["<|rtg:1|>"]   # a kept part opening with an id that is an RTG token's but no mark: led as any other
    assert s.input_ids(Condition("on", 1), [rtg1, 5], True, cut=True) == [ids["<|rlhf:on|>"], rtg1, rtg1, 5, rtg1]
    assert s.input_length(Condition("on", 1), [rtg1, 5], True, cut=True) == 5


@pytest.mark.parametrize("options,text_after", [({"format": "dialog"}, True),
                                                ({"format": "scored", "formats": ["dialog", "scored"]}, False)])
def test_ids_given_without_a_layout_are_laid_out_as_a_prompt_of_text(options, text_after):
    """input_ids and input_length with no rtg_after, and cut_to_context with no prompts, lay ids out
    as a prompt of text: the RTG token after them for a model whose only conditioned corpus was a
    dialog corpus (a cut part then led by the RTG token in force too), before them for a mixture.
    Ten ids with 120 new tokens leave 8 of 128 for the input: 5 kept (on rtg 5 ids rtg) or 6 (on rtg
    6 ids)."""
    s = scheme_sampler(options)
    on, rtg, cond = s.on_id, s.rtg_ids[2], Condition("on", 2)
    assert s.rtg_after_prompt is text_after
    assert s.input_ids(cond, [5, 6]) == ([on, 5, 6, rtg] if text_after else [on, rtg, 5, 6])
    assert s.input_ids(cond, [5, 6], cut=True) == ([on, rtg, 5, 6, rtg] if text_after else [on, rtg, 5, 6])
    assert s.input_length(cond, [5, 6], cut=True) == (5 if text_after else 4)
    (kept,) = s.cut_to_context([list(range(3, 13))], [cond], 120)
    assert kept == (list(range(8, 13)) if text_after else list(range(7, 13)))


def test_a_conversation_cut_for_a_model_of_dialogs_and_scored_responses_is_laid_out_as_a_dialog():
    """A model that learned a dialog corpus beside scored responses lays a conversation out as its
    dialog corpus did, also where it is cut: the cut counts the RTG token in force that leads the
    kept part (7 of 128 left by 121 new tokens: on rtg w8 rtg w12 w13 rtg, 4 content tokens and one
    mark cut), while a prompt of text in the same request gets the RTG token before it, unled
    (on rtg w3..w7: its first 2 tokens cut)."""
    s = scheme_sampler({"format": "scored", "formats": ["dialog", "scored"]})
    on, rtg = s.on_id, s.rtg_ids[2]
    conversation = Prompt.dialog([("system", "w1"), ("user", "w2"), ("assistant", "w6"), ("user", "w7 w8"),
                                  ("assistant", "w12"), ("user", "w13")])
    text = "w1 w2 w3 w4 w5 w6 w7"
    assert s.encode_prompts([conversation, text]) == [[3, 4, -1, 8, 9, 10, -1, 14, 15], [3, 4, 5, 6, 7, 8, 9]]
    got = list(s.sample([conversation, text], [Condition("on", 2)], greedy(121), truncate_prompts=True))
    assert [x.prompt_tokens_cut for x in got] == [4, 2]
    rows = [[on, rtg, 10, rtg, 14, 15, rtg], [on, rtg, 5, 6, 7, 8, 9]]
    assert [x.text for x in got] == s.tokenizer.batch_decode([ids for ids, _ in s.generate(rows, greedy(121))],
                                                             skip_special_tokens=True)


def test_a_cut_that_can_keep_a_mark_and_no_more_opens_with_it_and_leaves_a_place_unused():
    """122 new tokens leave 6 of 128: a conversation (w1 w2 mark w6 w7 w8 mark w12 w13) keeps the
    mark and w12 w13, laid out on rtg w12 w13 rtg (5 tokens: the mark is the RTG token in force, never
    doubled), since keeping w8 too would need a leading RTG token (7 tokens)."""
    s = dialog_sampler()
    on, rtg, cond = s.on_id, s.rtg_ids[2], Condition("on", 2)
    conversation = Prompt.dialog([("system", "w1"), ("user", "w2"), ("assistant", "w6"), ("user", "w7 w8"),
                                  ("assistant", "w12"), ("user", "w13")])
    (full,) = s.encode_prompts([conversation])
    (kept,) = s.cut_to_context([full], [cond], 122, [conversation])
    assert kept == [-1, 14, 15]
    assert s.input_ids(cond, kept, True, cut=True) == [on, rtg, 14, 15, rtg]
    assert s.input_length(cond, kept, True, cut=True) == 5
    (cut,) = s.sample([conversation], [cond], greedy(122), truncate_prompts=True)
    assert cut.prompt_tokens_cut == 5   # w1 w2 w6 w7 w8; the mark before w6 is no content


def test_a_conversation_ending_with_a_system_turn_is_encoded_turn_by_turn():
    """A conversation whose last turn is the system's (the prompts file takes it whole) is encoded
    as any other: each turn on its own, a mark before the assistant turn, the system turn kept."""
    s = dialog_sampler()
    conversation = Prompt.dialog([("user", "w1"), ("assistant", "w2"), ("system", "w3 w4")])
    assert s.encode_prompts([conversation]) == [[3, -1, 4, 5, 6]]
    assert s.prompt_ids(conversation, Condition("on", 1)) == [s.on_id, 3, s.rtg_ids[1], 4, 5, 6, s.rtg_ids[1]]


def test_the_context_check_names_the_longest_input_not_the_most_encoded_ids():
    """In off mode a conversation's marks take no place: 'w1 w2 w3 w4' (5 tokens with the off
    token) is a longer input than a conversation of as many encoded ids (w1 mark w2 w3: 4), so with
    124 new tokens it is the one refused, whatever order the prompts come in."""
    s = dialog_sampler()
    conversation = Prompt.dialog([("user", "w1"), ("assistant", "w2"), ("user", "w3")])
    assert s.encode_prompts([conversation, "w1 w2 w3 w4"]) == [[3, -1, 4, 5], [3, 4, 5, 6]]
    assert len(list(s.sample([conversation], [Condition("off")], greedy(124)))) == 1      # 4 + 124 = 128
    for prompts, where in [([conversation, "w1 w2 w3 w4"], "prompt 2 of 2"), (["w1 w2 w3 w4", conversation],
                                                                              "prompt 1 of 2")]:
        with pytest.raises(SampleError, match=rf"^the longest prompt \({where}\) is 5 tokens with its 1 control "
                                              rf"token\(s\); with max_new_tokens=124 that makes 129"):
            list(s.sample(prompts, [Condition("off")], greedy(124)))


def test_the_conversations_note_follows_the_formats_the_model_learned():
    """The note on conversations (prompts of turns holding an assistant turn): a model that learned
    a dialog corpus beside scored responses gives their earlier assistant turns the requested level,
    as a dialog-only model does; one that learned none names every format it learned; the note is
    given wherever any condition is on mode, and not for off mode alone, openings or text."""
    conversation = Prompt.dialog([("user", "w1"), ("assistant", "w2"), ("user", "w3")])
    opening = Prompt.dialog([("user", "w1")])
    prompts, on = [conversation, opening, "w4", conversation], [Condition("on", 1)]
    mixture = scheme_sampler({"format": "scored", "formats": ["dialog", "scored"]})
    assert conversations_note(mixture, prompts, on) == (
        "note: 2 prompts are conversations with earlier assistant turns; each such turn is given the RTG token of "
        "the requested level, as its corpus's reward-to-go would be if the earlier turns' rewards were 0 at gamma 1 "
        "(rewards written on the turns are not read)")
    assert conversations_note(mixture, prompts, [Condition("off"), Condition("on", 1)]) == \
        conversations_note(mixture, prompts, on)
    assert conversations_note(mixture, prompts, [Condition("off")]) is None
    assert conversations_note(mixture, [opening, "w4"], on) is None
    no_dialog = scheme_sampler({"format": "scored", "formats": ["scored", "text"]})
    assert conversations_note(no_dialog, prompts, on) == (
        "note: 2 prompts are conversations with assistant turns, but this model learned no dialog corpus (formats "
        "['scored', 'text']): each is given as its turns' text joined as written, a prompt of text with no RTG token "
        "before its earlier assistant turns")


def test_a_hand_edited_formats_entry_is_read_as_the_trainer_reads_it():
    """A scheme.json whose formats is no list (hand-edited) is read as one saved before formats were
    recorded (its format: a dialog model here), not as a crash on a number or the letters of a
    string; with no format named either, the conversations note names none."""
    for formats in (5, "scored"):
        s = scheme_sampler({"format": "dialog", "formats": formats})
        assert s.dialog_turns and s.rtg_after_prompt
    conversation = Prompt.dialog([("user", "w1"), ("assistant", "w2"), ("user", "w3")])
    assert conversations_note(scheme_sampler({}), [conversation], [Condition("on", 1)]) == (
        "note: 1 prompts are conversations with assistant turns, but this model learned no dialog corpus: each is "
        "given as its turns' text joined as written, a prompt of text with no RTG token before its earlier assistant "
        "turns")


@pytest.mark.parametrize("options", [{"records": True, "prompts": True, "multiline_prompts": True},
                                     {"records": 10, "prompts": 6.0, "multiline_prompts": 5.5}])
def test_notes_read_only_integer_counts(options):
    """A scheme.json whose counts are booleans or floats (hand-edited) holds no counts: no note."""
    scheme = ControlScheme(num_bins=4, edges=[-0.5, 0.0, 0.5], options=options)
    assert empty_prompt_note(scheme) is None and one_line_prompts_note(scheme, "p.txt") is None


def test_a_level_the_scheme_does_not_have_is_refused_in_the_prompt(sampler):
    """A Condition built by hand with level -1 or 4 (4 levels) is an error, never the prompt of
    another level (-1 would index the top level's token)."""
    for level in (-1, 4):
        with pytest.raises(SchemeError, match=rf"level {level} does not exist: this scheme has levels 0\.\.3"):
            sampler.prompt_ids("w1", Condition("on", level))


def test_control_token_strings_in_a_prompt_are_text(sampler, scheme):
    """As in the corpus, a typed "<|rtg:3|>" is not the control token (here it is an unknown word,
    the word tokenizer's unk)."""
    ids = scheme.token_ids(sampler.tokenizer)
    assert sampler.prompt_ids("w1 <|rtg:3|>", Condition("off")) == [ids["<|rlhf:off|>"], 3, 0]
    assert sampler.tokenizer.backend_tokenizer.encode_special_tokens is False  # restored after


def test_a_prompt_is_not_truncated_or_padded_by_settings_the_tokenizer_carries(sampler, scheme):
    backend = sampler.tokenizer.backend_tokenizer
    backend.enable_truncation(max_length=1)
    backend.enable_padding(pad_id=0, pad_token="<eos>", length=6)
    try:
        assert sampler.encode(["w1 w2 w3", "w4"]) == [[3, 4, 5], [6]]
        assert backend.truncation["max_length"] == 1 and backend.padding["length"] == 6  # restored after
    finally:
        backend.no_truncation()
        backend.no_padding()


def test_conditions_from_levels_rewards_and_modes(scheme):
    assert conditions(scheme, level="all") == [Condition("on", k) for k in range(4)]
    assert conditions(scheme, level="2") == conditions(scheme, level=2) == [Condition("on", 2)]
    assert conditions(scheme, reward=0.1) == [Condition("on", scheme.bin_of(0.1), 0.1)] == [Condition("on", 2, 0.1)]
    assert conditions(scheme, reward=-9.0)[0].level == 0 and conditions(scheme, reward=9.0)[0].level == 3
    assert conditions(scheme, mode="off") == [Condition("off")]
    (whole,) = conditions(scheme, reward=1)          # an int reward is kept as a float: "reward": 1.0 in the output
    assert whole == Condition("on", 3, 1.0) and type(whole.reward) is float


@pytest.mark.parametrize("kw,message", [
    (dict(level=4), r"level 4 does not exist: this scheme has levels 0\.\.3"),
    (dict(level="-1"), r"level -1 does not exist: this scheme has levels 0\.\.3"),
    (dict(level="high"), r"level 'high' is neither a number \(0\.\.3\) nor 'all'"),
    (dict(reward=math.nan), r"reward nan is not a finite number"),
    (dict(reward=math.inf), r"reward inf is not a finite number"),
    (dict(), r"on mode needs a level \(0\.\.3 or 'all'\) or a reward"),
    (dict(level=1, mode="off"), r"off mode has no reward level"),
    (dict(level=1, mode="both"), r"mode must be 'on' or 'off'"),
    (dict(level=1, reward=0.3), r"give a level or a reward, not both"),
    (dict(reward=0.3, mode="off"), r"off mode has no reward level \(no RTG token\)"),
])
def test_bad_conditions_are_clear_errors(scheme, kw, message):
    with pytest.raises(SchemeError, match=message):
        conditions(scheme, **kw)


@pytest.mark.parametrize("kw,message", [
    (dict(max_new_tokens=0), r"max_new_tokens must be in \[1, 1048576\] \(and fit the model's context\), got 0"),
    (dict(max_new_tokens=10**11), r"max_new_tokens must be in \[1, 1048576\].*got 100000000000"),
    (dict(min_new_tokens=9, max_new_tokens=8), r"min_new_tokens must be in \[0, max_new_tokens=8\]"),
    (dict(min_new_tokens=-1), r"min_new_tokens must be in \[0, max_new_tokens=64\], got -1"),
    (dict(temperature=-0.1), r"temperature must be 0 \(greedy\) or in \[0.0001, 10000\].*got -0.1"),
    (dict(temperature=1e300), r"temperature must be 0 \(greedy\) or in \[0.0001, 10000\].*got 1e\+300"),
    (dict(temperature=1e-300), r"temperature must be 0 \(greedy\) or in \[0.0001, 10000\].*got 1e-300"),
    (dict(temperature=math.nan), r"temperature must be 0 \(greedy\) or in .*got nan"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
    (dict(top_k=-1), "top_k must be >= 0"),
    (dict(seed=-1), r"seed must be in \[0, 2\*\*63-1 = 9223372036854775807\], got -1"),
    (dict(seed=10**23), r"seed must be in \[0, 2\*\*63-1 = 9223372036854775807\], got 100000000000000000000000"),
])
def test_bad_sampling_params(kw, message):
    with pytest.raises(SampleError, match=message):
        SamplingParams(**kw)


@pytest.mark.parametrize("kw", [dict(temperature=1e-4), dict(temperature=1e4), dict(top_p=1e-300),
                                dict(seed=2**63 - 1), dict(max_new_tokens=2**20)])
def test_sampling_params_at_their_limits_are_taken(kw):
    """The ends of every documented range are valid settings, and torch takes the largest seed."""
    params = SamplingParams(**kw)
    assert torch.Generator().manual_seed(params.seed).initial_seed() == params.seed


# ---------------------------------------------------------------------------- the decode loop
@pytest.mark.parametrize("prune", [True, False], ids=["finished-rows-dropped", "finished-rows-kept"])
def test_greedy_batched_equals_one_by_one(stopping_sampler, monkeypatch, prune):
    if not prune:  # the path for caches whose rows cannot be dropped (e.g. recurrent layers)
        monkeypatch.setattr("rcond.sample.PRUNABLE_LAYERS", ())
    s = stopping_sampler
    conds = [Condition("on", k) for k in range(4)] + [Condition("off")]
    batched = list(s.sample(PROMPTS, conds, greedy(), batch_size=8))
    single = list(s.sample(PROMPTS, conds, greedy(), batch_size=1))
    assert [x.text for x in batched] == [x.text for x in single]
    assert [(x.num_tokens, x.finished) for x in batched] == [(x.num_tokens, x.finished) for x in single]
    lengths = {x.num_tokens for x in batched}
    assert any(x.finished for x in batched) and not all(x.finished for x in batched) and len(lengths) > 2


@pytest.mark.parametrize("prune", [True, False], ids=["finished-rows-dropped", "finished-rows-kept"])
def test_the_loop_runs_only_the_rows_still_running_and_stops_when_all_have_ended(stopping_sampler, monkeypatch,
                                                                                 prune):
    """Rows that end with eos at different steps (each generated alone first, for its length): every
    forward after the first runs only the rows that have not ended (all rows, where the cache cannot
    drop rows), and there is no forward after the last row's eos."""
    if not prune:
        monkeypatch.setattr("rcond.sample.PRUNABLE_LAYERS", ())
    s, n = stopping_sampler, 13
    rows = [s.prompt_ids(p, c) for p, c in [(PROMPTS[0], Condition("on", 1)), (PROMPTS[3], Condition("on", 1)),
                                            (PROMPTS[4], Condition("on", 1)), (PROMPTS[3], Condition("off"))]]
    alone = [s.generate([r], greedy(n))[0] for r in rows]
    assert all(done for _, done in alone)
    ends = [len(ids) + 1 for ids, _ in alone]                         # the step that chose each row's eos
    assert len(set(ends)) == len(rows) and max(ends) < n
    widths = []
    hook = s.model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape[0]),
                                             with_kwargs=True)
    try:
        assert s.generate(rows, greedy(n)) == alone
    finally:
        hook.remove()
    running = [sum(e > k for e in ends) for k in range(1, max(ends))] if prune else [len(rows)] * (max(ends) - 1)
    assert widths == [len(rows), *running]


def test_every_batch_is_padded_to_its_longest_prompt_and_a_full_control_prefix(sampler):
    """So that a row sees the same padded input in on mode, off mode and with guidance (the reason
    G = 1 and G = 0 reproduce unguided and off sampling on any kernels): the first forward of each
    batch is as wide as 2 control tokens + its longest prompt, whatever the mode."""
    prefills = []
    hook = sampler.model.register_forward_pre_hook(
        lambda m, a, kw: prefills.append(tuple(kw["input_ids"].shape)) if kw["input_ids"].shape[1] > 1 else None,
        with_kwargs=True)
    try:
        for conds, guidance in [([Condition("on", 1)], None), ([Condition("off")], None), ([Condition("on", 1)], 2.0)]:
            list(sampler.sample(PROMPTS, conds, greedy(2, min_new_tokens=2), batch_size=2, guidance=guidance))
    finally:
        hook.remove()
    # prompt lengths 3, 1 | 0, 6 | 2 tokens: widths 5, 8, 4; guidance runs every row twice
    assert prefills == [(2, 5), (2, 8), (1, 4)] * 2 + [(4, 5), (4, 8), (2, 4)]


def test_a_batch_of_a_cut_conversation_is_as_wide_as_its_led_on_mode_input():
    """A conversation cut to the context (121 new tokens: w8 mark w12 w13 kept) has an on-mode input
    of 7 tokens, the leading RTG token in force included (on rtg w8 rtg w12 w13 rtg); its off-mode row
    (off w8 w12 w13) is padded to those 7 too, as every batch is padded to its on-mode width."""
    s = dialog_sampler()
    conversation = Prompt.dialog([("system", "w1"), ("user", "w2"), ("assistant", "w6"), ("user", "w7 w8"),
                                  ("assistant", "w12"), ("user", "w13")])
    prefills = []
    hook = s.model.register_forward_pre_hook(
        lambda m, a, kw: prefills.append(tuple(kw["input_ids"].shape)) if kw["input_ids"].shape[1] > 1 else None,
        with_kwargs=True)
    try:
        got = list(s.sample([conversation], [Condition("on", 2), Condition("off")], greedy(121, min_new_tokens=2),
                            batch_size=1, truncate_prompts=True))
    finally:
        hook.remove()
    assert [x.prompt_tokens_cut for x in got] == [4, 4] and prefills == [(1, 7), (1, 7)]


def test_every_row_starts_at_position_zero_as_in_training(scheme):
    """A model with learned absolute positions (GPT-2) tells positions apart: left-padded rows of
    different lengths, decoded together with the cache, give what each row gives alone with no
    padding and no cache, where the model counts positions from 0 itself."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = make_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                       eos_token_id=0, bos_token_id=1, initializer_range=0.3))
    add_control_tokens(model, tok, scheme)
    s, n = Sampler(model.eval(), tok, scheme), 5
    rows = [s.prompt_ids(p, Condition("on", 2)) for p in PROMPTS]
    got = [ids for ids, _ in s.generate(rows, greedy(n, min_new_tokens=n))]
    want = []
    for r in rows:
        seq = list(r)
        for _ in range(n):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
            logits[s.banned] = -math.inf
            logits[s.eos_id] = -math.inf
            seq.append(int(logits.argmax()))
        want.append(seq[len(r):])
    assert got == want


@pytest.mark.parametrize("call,message", [
    (lambda s, r: s.generate(r, greedy(2), uncond_rows=r[:1], guidance=2.0),
     r"^guidance needs one unconditional row per conditioned row$"),
    (lambda s, r: s.generate(r, greedy(2), guidance=2.0), r"^guidance needs one unconditional row per conditioned row$"),
    (lambda s, r: s.generate([*r, []], greedy(2)), r"^every row needs at least one token \(its control ids\)$"),
])
def test_generate_refuses_rows_it_cannot_continue(sampler, call, message):
    rows = [sampler.prompt_ids(p, Condition("on", 1)) for p in PROMPTS[:2]]
    with pytest.raises(ValueError, match=message):
        call(sampler, rows)


def test_generate_with_no_rows_returns_none(sampler):
    assert sampler.generate([], greedy(2)) == []
    assert sampler.generate([], greedy(2), uncond_rows=[], guidance=2.0) == []


def test_a_model_without_logits_to_keep_samples_the_same(sampler):
    """A model whose forward has no logits_to_keep returns logits for every position: the loop takes
    the last one, and samples what the same weights sample with logits_to_keep."""
    class AllLogits(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    use_cache=None):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   past_key_values=past_key_values, use_cache=use_cache)

    model = AllLogits(sampler.model.config)
    model.load_state_dict(sampler.model.state_dict())
    plain = Sampler(model.eval(), sampler.tokenizer, sampler.scheme)
    assert not plain._keep_last and sampler._keep_last
    rows = [sampler.prompt_ids(p, Condition("on", 2)) for p in PROMPTS]
    assert plain.generate(rows, greedy(6, min_new_tokens=6)) == sampler.generate(rows, greedy(6, min_new_tokens=6))


def test_kv_cache_loop_equals_full_recompute(sampler):
    """Greedy with the cache == greedy recomputing every left-padded prefix from scratch, no cache."""
    s, n = sampler, 6
    rows = [s.prompt_ids(p, Condition("on", k % 4)) for k, p in enumerate(PROMPTS)]
    cached = [ids for ids, _ in s.generate(rows, greedy(n, min_new_tokens=n))]
    seqs = [list(r) for r in rows]
    for _ in range(n):
        width = max(map(len, seqs))
        ids = torch.tensor([[0] * (width - len(r)) + r for r in seqs])                      # [B, T]
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in seqs])          # [B, T]
        with torch.no_grad():
            logits = s.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                             use_cache=False).logits[:, -1]                                  # [B, V]
        logits[:, s.banned] = -math.inf
        logits[:, s.eos_id] = -math.inf
        for r, t in zip(seqs, logits.argmax(-1).tolist()):
            r.append(t)
    assert cached == [r[len(p):] for r, p in zip(seqs, rows)]
    assert all(len(c) == n for c in cached)


@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=10, seed=7),
                                    SamplingParams(max_new_tokens=10, temperature=0.8, top_p=0.9, top_k=20, seed=3)])
def test_guidance_one_is_unguided_and_zero_is_off(sampler, params):
    levels = [Condition("on", k) for k in range(4)]

    def texts(conds, **kw):
        return [x.text for x in sampler.sample(PROMPTS, conds, params, n=2, batch_size=4, **kw)]

    unguided = texts(levels)
    assert texts(levels, guidance=1.0) == unguided
    off = texts([Condition("off")] * 4)
    assert texts(levels, guidance=0.0) == off
    assert texts(levels, guidance=3.0) != unguided
    assert unguided != off


def test_guided_logits_are_the_lerp_of_both_branches(sampler):
    """One step by hand: the guided greedy token is argmax(l_off + G (l_on - l_off)) per row."""
    s, g = sampler, 2.5
    on = [s.prompt_ids(p, Condition("on", 3)) for p in PROMPTS]
    off = [s.prompt_ids(p, Condition("off")) for p in PROMPTS]
    got = [ids[0] for ids, _ in s.generate(on, greedy(1, min_new_tokens=1), uncond_rows=off, guidance=g)]
    want = []
    for a, b in zip(on, off):
        with torch.no_grad():
            la = s.model(input_ids=torch.tensor([a])).logits[0, -1]
            lb = s.model(input_ids=torch.tensor([b])).logits[0, -1]
        mixed = lb + g * (la - lb)
        mixed[s.banned] = -math.inf
        mixed[s.eos_id] = -math.inf
        want.append(int(mixed.argmax()))
    assert got == want


def test_control_tokens_are_never_generated_but_eos_is(scheme):
    """A head biased so that control tokens dominate, then eos, then the rest."""
    tok = make_tokenizer()
    model = make_model(tok, scheme, tied=False)
    control = sorted(scheme.token_ids(tok).values())
    head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[control] = 40.0
        head.bias[0] = 20.0
    model.lm_head = head
    s = Sampler(model, tok, scheme)
    rows = [s.prompt_ids(p, Condition("on", 1)) for p in PROMPTS]
    with torch.no_grad():
        raw = model(input_ids=torch.tensor([rows[0]])).logits[0, -1]
    assert int(raw.argmax()) in control
    out = s.generate(rows, SamplingParams(max_new_tokens=8, seed=1))
    assert out == [([], True)] * len(rows)                              # eos right away: allowed, and dominant
    forced = s.generate(rows, SamplingParams(max_new_tokens=8, min_new_tokens=5, temperature=2.0, seed=1))
    assert all(len(ids) == 5 and done for ids, done in forced)          # eos banned for 5 tokens, then taken
    assert not {t for ids, _ in forced for t in ids} & set(control)


def test_a_generated_special_token_is_not_written_into_the_text(scheme):
    """<bos> is not a control token, so a model may generate it; the text is decoded without special
    tokens (as the corpus's documents hold none), while num_tokens counts every generated token."""
    tok = make_tokenizer()
    model = make_model(tok, scheme, tied=False)
    with torch.no_grad():
        model.lm_head.weight[tok.bos_token_id] = model.lm_head.weight[tok.bos_token_id] * 0 + 5.0
    s = Sampler(model, tok, scheme)
    samples = list(s.sample(PROMPTS, [Condition("on", 1)], greedy(4, min_new_tokens=4)))
    assert all(x.num_tokens == 4 for x in samples)
    assert any(tok.bos_token_id in s.generate([s.prompt_ids(p, Condition("on", 1))], greedy(4, min_new_tokens=4))[0][0]
               for p in PROMPTS)
    assert not any("<bos>" in x.text for x in samples)


def test_choose_draws_from_the_filtered_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -math.inf])
    rows = 40000
    g = torch.Generator().manual_seed(0)

    def freq(params):
        picks = Sampler.choose(logits.expand(rows, -1), params, g)
        return torch.bincount(picks, minlength=6).double() / rows

    p = torch.softmax(logits / 0.7, -1).double()
    assert torch.allclose(freq(SamplingParams(temperature=0.7)), p, atol=0.01)
    top2 = torch.tensor([*torch.softmax(logits[:2] / 0.7, -1), 0, 0, 0, 0]).double()
    assert torch.allclose(freq(SamplingParams(temperature=0.7, top_k=2)), top2, atol=0.01)
    # p = [0.70, 0.17, 0.08, ...]: top_p 0.8 keeps the smallest set reaching 0.8, the first two tokens
    assert torch.allclose(freq(SamplingParams(temperature=0.7, top_p=0.8)), top2, atol=0.01)
    assert torch.equal(Sampler.choose(logits.expand(3, -1), SamplingParams(temperature=0), None), torch.zeros(3).long())


def test_top_p_keeps_the_tokens_that_reach_it_exactly():
    """Four equal tokens (p = 0.25 each, exact in float32): top_p 0.5 is reached by the first two, so
    the smallest set that reaches it has two tokens, drawn half and half, never a third."""
    picks = Sampler.choose(torch.zeros(4000, 4), SamplingParams(top_p=0.5), torch.Generator().manual_seed(0))
    counts = torch.bincount(picks, minlength=4)
    assert counts[2:].sum() == 0 and abs(int(counts[0]) - 2000) < 150


def test_choose_at_a_uniform_draw_of_exactly_zero_takes_an_allowed_token():
    """torch.rand draws exactly 0 once in 2**24 numbers: generator seed 146 does at its 18,556th.
    The inverse-cdf draw must then still land on a token of positive probability (here the last
    allowed one), not on a banned token at either end of the vocabulary or one past it."""
    g = torch.Generator().manual_seed(146)
    torch.rand(18555, generator=g)
    state = g.get_state()
    assert float(torch.rand(1, generator=g)) == 0.0                           # the draw this test is about
    g.set_state(state)
    logits = torch.tensor([[-math.inf, 1.0, 2.0, -math.inf]])
    assert Sampler.choose(logits, SamplingParams(), g).tolist() == [2]


@pytest.mark.parametrize("params", [SamplingParams(temperature=1e-4), SamplingParams(temperature=1e4),
                                    SamplingParams(top_p=1e-300), SamplingParams(temperature=1e-4, top_p=1e-300)],
                         ids=["t-min", "t-max", "p-tiny", "both"])
def test_choose_at_the_range_ends_draws_allowed_ids(params):
    """Extreme but valid settings keep the float32 arithmetic finite: ids come from the allowed tokens
    (a tiny top_p or temperature is greedy), never the banned one or one past the vocabulary."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -math.inf]).expand(2000, -1)
    picks = Sampler.choose(logits, params, torch.Generator().manual_seed(0))
    assert int(picks.max()) <= 4
    if params.temperature == 1e-4 or params.top_p < 1:
        assert torch.equal(picks, torch.zeros_like(picks))


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
def test_choose_refuses_a_distribution_that_is_not_finite(bad):
    """Logits with NaN or +inf (a broken model) would make the inverse-cdf draw return an id past the
    vocabulary: they are a SampleError naming the settings instead."""
    logits = torch.tensor([[2.0, 1.0, 0.0], [1.0, bad, 0.0]])
    with pytest.raises(SampleError, match=r"next-token distribution is not finite at temperature=0.5, top_p=0.9, "
                                          r"top_k=0: the model's logits \(after guidance, if any\) hold inf or NaN"):
        Sampler.choose(logits, SamplingParams(temperature=0.5, top_p=0.9), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("g", [3e38, -3e38, 1e308, 100.5, math.inf, math.nan])
def test_guidance_out_of_range_is_refused(sampler, g):
    with pytest.raises(SampleError, match=r"guidance must be in \[-100, 100\] \(1 = the conditioned model"):
        list(sampler.sample(["w1"], [Condition("on", 1)], greedy(2), guidance=g))


@pytest.mark.parametrize("g", [100.0, -100.0])
def test_guidance_at_the_limit_samples_in_vocabulary(sampler, g):
    out = list(sampler.sample(PROMPTS, [Condition("on", 3)], SamplingParams(max_new_tokens=4, seed=1), guidance=g))
    vocab = len(sampler.tokenizer)
    assert len(out) == len(PROMPTS)
    assert all(0 <= t < vocab for x in out for t in sampler.tokenizer(x.text, add_special_tokens=False)["input_ids"])


def test_prompt_and_new_tokens_must_fit_the_context(sampler, tmp_path):
    """make_model's context is 128 tokens: control ids + the longest prompt + max_new_tokens must fit."""
    conds = [Condition("on", 1)]
    assert len(list(sampler.sample(["w1 w2"], conds, greedy(124)))) == 1           # 2 + 2 + 124 = 128
    with pytest.raises(SampleError, match=r"^the longest prompt \(prompt 1 of 1\) is 4 tokens with its 2 control "
                                          r"token\(s\); with max_new_tokens=125 that makes 129, beyond the model's "
                                          r"context of 128 tokens \(config.max_position_embeddings\): use "
                                          r"max_new_tokens <= 124 or a shorter prompt \(or --truncate-prompts, "
                                          r"truncate_prompts=True: each prompt keeps its last tokens\)$"):
        list(sampler.sample(["w1 w2"], conds, greedy(125)))
    (tmp_path / "p.txt").write_text("w1\n\n" + " ".join(["w3"] * 200) + "\nw2\n")
    with pytest.raises(SampleError, match=rf"^the longest prompt \({tmp_path / 'p.txt'}:3\) is 202 tokens .* "
                                          rf"shorten that prompt to under 126 tokens \(or --truncate-prompts, "
                                          rf"truncate_prompts=True: each prompt keeps its last tokens\)$"):
        list(sampler.sample(read_prompts(tmp_path / "p.txt"), conds, greedy(3)))
    off = read_prompts(tmp_path / "p.txt")[:1] + ["w1 " * 126]                  # off mode: 1 control token
    with pytest.raises(SampleError, match=r"\(prompt 2 of 2\) is 127 tokens with its 1 control token\(s\); with "
                                          r"max_new_tokens=2 that makes 129.*use max_new_tokens <= 1"):
        list(sampler.sample(off, [Condition("off")], greedy(2)))


def test_context_check_edge_cases(sampler):
    """A mix of on and off conditions is checked with the longer control prefix (2 tokens); a prompt
    that fills the context by itself is told to shrink (no max_new_tokens could fit it)."""
    with pytest.raises(SampleError, match=r"is 4 tokens with its 2 control token\(s\); with max_new_tokens=125 "
                                          r"that makes 129"):
        list(sampler.sample(["w1 w2"], [Condition("off"), Condition("on", 1)], greedy(125)))
    with pytest.raises(SampleError, match=r"is 128 tokens with its 2 control token\(s\); .*: shorten that prompt "
                                          r"to under 126 tokens \(or --truncate-prompts"):
        list(sampler.sample(["w1 " * 126], [Condition("on", 1)], greedy(1)))


def test_truncate_prompts_keeps_each_long_prompts_last_tokens(sampler):
    """With truncate_prompts a prompt longer than context - control ids - max_new_tokens (128 - 2 - 6
    = 120 tokens here) keeps its last tokens: the same greedy continuation as those tokens given as
    the prompt, with and without guidance; a prompt that fits is untouched; each sample keeps the
    prompt as given and records how many tokens it lost; off mode (1 control id) keeps one more, a
    mix of modes the on mode's count."""
    words = [f"w{i * 7 % 59 + 1}" for i in range(150)]   # no period of 29, 30 or 31: a cut from either side differs
    long, short, kept = " ".join(words), "w1 w2", " ".join(words[-120:])
    conds = [Condition("on", 2)]
    out = list(sampler.sample([long, short], conds, greedy(6), truncate_prompts=True))
    ref = list(sampler.sample([kept, short], conds, greedy(6)))
    assert [x.text for x in out] == [x.text for x in ref] and [x.prompt for x in out] == [long, short]
    assert [x.prompt_tokens_cut for x in out] == [30, 0]
    assert out[0].to_dict()["prompt_tokens_cut"] == 30 and "prompt_tokens_cut" not in out[1].to_dict()
    guided = list(sampler.sample([long], conds, greedy(6), guidance=1.5, truncate_prompts=True))
    assert [x.text for x in guided] == [x.text for x in sampler.sample([kept], conds, greedy(6), guidance=1.5)]
    off = list(sampler.sample([long], [Condition("off")], greedy(6), truncate_prompts=True))
    assert [x.text for x in off] == [x.text for x in sampler.sample([" ".join(words[-121:])], [Condition("off")],
                                                                  greedy(6))]
    assert off[0].prompt_tokens_cut == 29
    mixed = sampler.sample([long], [Condition("off"), Condition("on", 2)], greedy(6), truncate_prompts=True)
    assert [x.prompt_tokens_cut for x in mixed] == [30, 30]
    assert [x.prompt_tokens_cut for x in sampler.sample([short], conds, greedy(126), truncate_prompts=True)] == [2]
    with pytest.raises(SampleError, match=r"^max_new_tokens=127 and 2 control token\(s\) leave no room for a prompt "
                                          r"in the model's context of 128 tokens \(config.max_position_embeddings\): "
                                          r"use max_new_tokens <= 126$"):
        list(sampler.sample([short], conds, greedy(127), truncate_prompts=True))
    with pytest.raises(SampleError, match=r"^max_new_tokens=127 and 2 control token\(s\) leave no room"):
        list(sampler.sample([short], [Condition("off"), *conds], greedy(127), truncate_prompts=True))  # on's 2 count


def test_an_empty_request_samples_nothing(sampler):
    """No prompts, or no conditions: no samples, and no error."""
    assert list(sampler.sample([], [Condition("on", 1)], greedy(3))) == []
    assert list(sampler.sample(PROMPTS, [], greedy(3))) == []
    assert list(sampler.sample(PROMPTS, [], greedy(3), truncate_prompts=True)) == []


@pytest.mark.parametrize("kw,error,message", [
    (dict(batch_size=0), SampleError, r"^n and batch_size must be at least 1, got n=1, batch_size=0$"),
    (dict(n=0), SampleError, r"^n and batch_size must be at least 1, got n=0, batch_size=32$"),
    (dict(guidance=2.0, conds=[Condition("on", 1), Condition("off")]), SchemeError,
     r"^guidance contrasts the on mode with the off mode; it needs --mode on$"),
])
def test_bad_sample_requests(sampler, kw, error, message):
    conds = kw.pop("conds", [Condition("on", 1)])
    with pytest.raises(error, match=message):
        list(sampler.sample(PROMPTS, conds, greedy(3), **kw))


def test_a_dropped_ctrl_c_stops_sampling_at_the_next_batch(sampler, monkeypatch):
    """A Ctrl-C whose KeyboardInterrupt Python drops in a finalizer is recorded; sampling stops
    before the next batch instead of running every batch to the end."""
    import sys

    from rcond.atomic import recording_interrupts

    monkeypatch.setattr(sys, "unraisablehook", lambda u: None)
    got = []
    with recording_interrupts(), pytest.raises(KeyboardInterrupt):
        for sample in sampler.sample(PROMPTS, [Condition("off")], greedy(3), batch_size=2):
            got.append(sample)
            if len(got) == 1:
                DropsACtrlC()  # dropped: the loop goes on to the end of this batch
    assert len(got) == 2  # the first batch of 2, not the 5 prompts


def test_same_seed_same_samples(sampler):
    conds = [Condition("on", 2)]

    def run(seed):
        return [x.text for x in sampler.sample(PROMPTS, conds, SamplingParams(max_new_tokens=8, seed=seed), n=3)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_a_zero_reward_and_a_zero_score_are_written(tmp_path):
    """A requested reward of 0.0 and a score of 0.0 are values, not missing: both are in the output
    line; only None leaves the field out."""
    (cond,) = conditions(ControlScheme(num_bins=4, edges=[-0.5, 0.0, 0.5]), reward=0.0)
    zero = Sample("p", "on", cond.level, cond.reward, None, "t", 1, True, score=0.0)
    assert zero.to_dict() == {"prompt": "p", "mode": "on", "level": 2, "guidance": None, "text": "t",
                              "num_tokens": 1, "finished": True, "reward": 0.0, "score": 0.0}
    assert set(Sample("p", "off", None, None, None, "t", 1, True).to_dict()) == {
        "prompt", "mode", "level", "guidance", "text", "num_tokens", "finished"}


def test_summary_per_condition_by_hand():
    """The summary's numbers, computed by hand: totals and speed, then per condition its label (the
    reward it came from, if any), count, mean length, share ended by eos, score mean and sample sd."""
    on = [Sample("p", "on", 0, None, None, "t", 4, True, score=1.0),
          Sample("p", "on", 0, None, None, "t", 2, False, score=0.0),
          Sample("p", "on", 0, None, None, "t", 3, True, score=0.5),
          Sample("p", "on", 2, 0.25, None, "t", 6, False, score=0.0)]
    conds = [Condition("on", 0), Condition("on", 2, 0.25), Condition("on", 3)]   # level 3: no samples, no line
    assert format_summary(on, conds, "s.jsonl", 0.5, "cpu", "vader").splitlines() == [
        "wrote 4 samples to s.jsonl; sampled in 0.5 s on cpu (8.0 samples/s, 30 tokens/s)",
        "  condition                     n   tokens    eos  score (vader)",
        "  level 0                       3      3.0    67%  +0.500 ± 0.500",     # sd over n - 1: sqrt(0.5 / 2)
        "  level 2 (reward 0.25)         1      6.0     0%  +0.000 ± 0.000"]
    off = [Sample("p", "off", None, None, None, "t", 5, True), Sample("p", "off", None, None, None, "t", 1, True)]
    assert format_summary(off, [Condition("off")], "o.jsonl", 2.0, "cpu", None).splitlines() == [
        "wrote 2 samples to o.jsonl; sampled in 2.0 s on cpu (1.0 samples/s, 3 tokens/s)",
        "  condition                     n   tokens    eos",
        "  off                           2      3.0   100%"]


def test_summary_says_how_many_prompts_were_cut_and_by_how_much():
    """The line on cut prompts counts the samples whose prompt was cut and gives the fewest and the
    most tokens left out (3 and 7 here, the uncut sample not counted); no line where none was cut."""
    samples = [Sample("p", "on", 1, None, None, "t", 2, True, prompt_tokens_cut=7),
               Sample("p", "on", 1, None, None, "t", 2, True),
               Sample("p", "on", 1, None, None, "t", 2, True, prompt_tokens_cut=3)]
    lines = format_summary(samples, [Condition("on", 1)], "s.jsonl", 1.0, "cpu", None).splitlines()
    assert lines[-1] == ("  prompts cut to fit the context: 2 of 3 samples kept only their prompt's last tokens "
                         "(3 to 7 left out; prompt_tokens_cut in the output)")
    assert "cut" not in format_summary(samples[1:2], [Condition("on", 1)], "s.jsonl", 1.0, "cpu", None)


# ---------------------------------------------------------------------------- files
def test_read_prompts(tmp_path):
    assert read_prompts(None) == [""]
    (tmp_path / "p.txt").write_text("w1 w2\n\nw3\n")
    assert read_prompts(tmp_path / "p.txt") == ["w1 w2", "w3"]
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "w1", "x": 1}, {"prompt": ""}])
    assert read_prompts(tmp_path / "p.jsonl") == ["w1", ""]
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "w1"}, {"text": "w2"}])
    with pytest.raises(SourceError, match=r"bad.jsonl:2: expected a string field 'prompt' \(or an HH-RLHF 'chosen' "
                                          r"dialogue, or a dialog's 'turns'\); fields present: \['text'\]"):
        read_prompts(tmp_path / "bad.jsonl")
    with pytest.raises(SourceError, match="no such"):
        read_prompts(tmp_path / "missing.txt")
    txt, jsonl = tmp_path / "p.txt", tmp_path / "p.jsonl"
    assert [p.origin for p in read_prompts(txt)] == [f"{txt}:1", f"{txt}:3"]     # file lines, blank ones counted
    assert [p.origin for p in read_prompts(jsonl)] == [f"{jsonl}:1", f"{jsonl}:2"]


def test_prompts_file_lines_are_split_at_newlines_only(tmp_path):
    """A line of a .txt is what ends in "\\n": a form feed or a Unicode line separator inside a prompt
    stays in it, and the origins count the file's lines; a row without 'prompt' lists its fields sorted."""
    (tmp_path / "p.txt").write_text("a\u2028b\nc\x0cd\n\ne\n", encoding="utf-8")
    assert [(str(p), p.origin) for p in read_prompts(tmp_path / "p.txt")] == [
        ("a\u2028b", f"{tmp_path / 'p.txt'}:1"), ("c\x0cd", f"{tmp_path / 'p.txt'}:2"), ("e", f"{tmp_path / 'p.txt'}:4")]
    write_jsonl(tmp_path / "bad.jsonl", [{"text": "w2", "id": 3}])
    with pytest.raises(SourceError, match=r"bad.jsonl:1: expected a string field 'prompt' \(or an HH-RLHF 'chosen' "
                                          r"dialogue, or a dialog's 'turns'\); fields present: \['id', 'text'\]$"):
        read_prompts(tmp_path / "bad.jsonl")


def test_hh_pairs_give_the_prompts_preprocess_trained_on(tmp_path):
    """A row without 'prompt' (or with a null one) whose 'chosen' is an HH-RLHF dialogue gives the
    prompt `rcond preprocess --format pairs` makes of it (through the last '\\n\\nAssistant:'),
    checked against the pairs reader's own records; a 'prompt' field wins over 'chosen', and a
    'chosen' with no Assistant turn is an error naming the row."""
    from rcond.sources import SourceReader

    chosen = ["\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like so",
              "\n\nHuman: a\n\nAssistant: b"]
    rows = [{"chosen": chosen[0], "rejected": chosen[0][:-7] + " no"},
            {"prompt": None, "chosen": chosen[1], "rejected": chosen[1][:-1] + "c"},
            {"prompt": "own", "chosen": chosen[1], "rejected": chosen[1][:-1] + "c"}]
    write_jsonl(tmp_path / "hh.jsonl", rows)
    prompts = read_prompts(tmp_path / "hh.jsonl")
    assert prompts == ["\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:", "\n\nHuman: a\n\nAssistant:",
                       "own"]
    (batch,) = SourceReader([str(tmp_path / "hh.jsonl")], "pairs").batches()
    firsts = [text for text, start in zip(batch.texts, batch.doc_start) if start]   # each record's prompt
    assert prompts == firsts[::2]   # the chosen sides': what the corpus's prompts were
    write_jsonl(tmp_path / "bad.jsonl", [{"chosen": "no turn here", "rejected": "x"}])
    with pytest.raises(SourceError, match=r"bad.jsonl:1 \(chosen\): no '\\n\\nAssistant:' turn in the dialogue"):
        read_prompts(tmp_path / "bad.jsonl")
    write_jsonl(tmp_path / "int.jsonl", [{"prompt": 7, "chosen": chosen[1]}])   # a prompt that is no string is wrong,
    with pytest.raises(SourceError, match=r"int.jsonl:1: field 'prompt' is int 7, expected a string$"):  # not absent
        read_prompts(tmp_path / "int.jsonl")


def test_dialogs_give_their_opening_turns_as_the_prompt(tmp_path):
    """A row with 'turns' and no 'prompt' (a dialog as --format dialog reads it) gives the turns
    before its first assistant turn, joined as written: for the toy world's dialogs (each ends
    with an assistant turn) exactly the text the dialog corpus put before its first RTG token
    (checked against the dialog reader's records); a system turn is kept, a row of user turns
    alone gives them all; a conversation that ends with a user turn after an assistant turn is
    taken whole, its turns kept for the sampler; a turn that is no role-and-content object, or
    has a role the corpus does not know, is named."""
    from rcond.sources import SourceReader
    from rcond.toyworld import generate

    world = generate(tmp_path / "world", seed=3, n_reviews=1, n_dialogs=40, n_text=1, progress=False)
    prompts = read_prompts(world["dialogs"])
    (batch,) = SourceReader([str(world["dialogs"])], "dialog").batches()
    openings, record = [], None
    for text, start, trained in zip(batch.texts, batch.doc_start, batch.trainable):
        if start:
            openings.append("")
            record = True
        if trained:
            record = False
        elif record:
            openings[-1] += text
    assert prompts == openings and len(prompts) == 40 and all(prompts)
    assert all(p.turns is not None and "assistant" not in dict(p.turns) for p in prompts)
    opening = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "Hi?"},
               {"role": "assistant", "content": "Hello.", "reward": 1}]
    rows = [{"turns": opening + [{"role": "user", "content": "Bye?"}, {"role": "assistant", "content": "Bye."}]},
            {"turns": [{"role": "user", "content": "a "}, {"role": "user", "content": "b"}]},
            {"prompt": None, "turns": [{"role": "assistant", "content": "x"}]},
            {"turns": opening + [{"role": "user", "content": "Bye?"}]}, {"turns": []},
            {"turns": opening + [{"role": "system", "content": "Be kind."}]}]
    write_jsonl(tmp_path / "d.jsonl", rows)
    got = read_prompts(tmp_path / "d.jsonl")
    assert got == ["Be brief. Hi?", "a b", "", "Be brief. Hi?Hello.Bye?", "", "Be brief. Hi?Hello.Be kind."]
    assert [p.turns for p in got] == [(("system", "Be brief. "), ("user", "Hi?")), (("user", "a "), ("user", "b")), (),
                                      (("system", "Be brief. "), ("user", "Hi?"), ("assistant", "Hello."),
                                       ("user", "Bye?")), (),
                                      (("system", "Be brief. "), ("user", "Hi?"), ("assistant", "Hello."),
                                       ("system", "Be kind."))]
    assert [p.origin for p in got] == [f"{tmp_path / 'd.jsonl'}:{i}" for i in range(1, 7)]
    for turn, message in [({"role": "user", "content": 3}, r"turn 2: expected an object with a string 'role' and "
                                                            r"'content'$"),
                          ({"role": "bot", "content": "b"}, r"turn 2: role must be 'user', 'system' or 'assistant', "
                                                            r"got 'bot'$")]:
        write_jsonl(tmp_path / "bad.jsonl", [{"turns": [{"role": "user", "content": "a"}, turn]}])
        with pytest.raises(SourceError, match=r"bad.jsonl:1 " + message):
            read_prompts(tmp_path / "bad.jsonl")


def test_dialog_rows_and_turns_that_are_refused(tmp_path):
    """A 'prompt' that is no string is an error even beside 'turns' (as beside 'chosen'); a turn
    that is no object (a bare string) is named as a SourceError, not a crash; Prompt.dialog refuses
    a role the corpus does not know ('tool') and a turn of three items, naming what it got."""
    turns = [{"role": "user", "content": "w1"}]
    for row, message in [({"prompt": 7, "turns": turns}, r"d.jsonl:1: field 'prompt' is int 7, expected a string$"),
                         ({"turns": ["w1"]}, r"d.jsonl:1 turn 1: expected an object with a string 'role' and "
                                             r"'content'$")]:
        write_jsonl(tmp_path / "d.jsonl", [row])
        with pytest.raises(SourceError, match=message):
            read_prompts(tmp_path / "d.jsonl")
    for turn, got in [(("tool", "w1"), r"\('tool', str\)"),
                      (("user", "w1", "x"), r"\(\('user', 'w1', 'x'\), NoneType\)")]:
        with pytest.raises(ValueError, match=rf"^a dialog turn is a \(role, content\) pair .* got {got}$"):
            Prompt.dialog([turn])


def test_prompts_that_are_not_a_prompts_file(tmp_path):
    """A folder (even one named .txt) or a .zip is a preprocess input, not a prompts file; the
    accepted list names only what read_prompts reads; a 'prompt' that is no string says what it is."""
    import gzip
    import zipfile

    accepted = (r"\.txt \(one prompt per line\), or \.jsonl, \.json, \.csv \(each optionally \.gz, \.bz2, \.xz, "
                r"\.zst\), \.parquet, \.arrow, a dataset saved by datasets' save_to_disk or a hub dataset id with a "
                r"string field 'prompt' per row \(or an HH-RLHF 'chosen' dialogue, whose prompt is taken as --format "
                r"pairs takes it, or 'turns', a dialog: a conversation ending with a user or system turn after an "
                r"assistant turn is taken whole, any other the turns before its first assistant turn\)$")
    folder = tmp_path / "dir.txt"
    folder.mkdir()
    (folder / "a.txt").write_text("w1\n")
    with pytest.raises(SourceError, match=rf"^{folder}: is a folder; --prompts takes one file: {accepted}"):
        read_prompts(folder)
    with zipfile.ZipFile(tmp_path / "t.zip", "w") as zf:
        zf.writestr("a.txt", "w1\n")
    (tmp_path / "p.md").write_text("w1\n")
    for name in ("t.zip", "p.md"):
        with pytest.raises(SourceError, match=rf"^{tmp_path / name}: not a prompts file type; expected {accepted}"):
            read_prompts(tmp_path / name)
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress(b"first\n\nsecond\n"))  # compressed, one prompt per line
    assert [(str(p), p.origin) for p in read_prompts(tmp_path / "t.txt.gz")] == [
        ("first", f"{tmp_path / 't.txt.gz'}:1"), ("second", f"{tmp_path / 't.txt.gz'}:3")]
    import datasets

    datasets.Dataset.from_list([{"prompt": "s1"}, {"prompt": "s2"}]).save_to_disk(str(tmp_path / "saved"))
    assert [(str(p), p.origin) for p in read_prompts(tmp_path / "saved")] == [
        ("s1", f"{tmp_path / 'saved'}:row 1"), ("s2", f"{tmp_path / 'saved'}:row 2")]  # a saved dataset is a rows file
    write_jsonl(tmp_path / "int.jsonl", [{"prompt": 7, "id": 1}])
    with pytest.raises(SourceError, match=r"int.jsonl:1: field 'prompt' is int 7, expected a string$"):
        read_prompts(tmp_path / "int.jsonl")


def test_a_run_without_its_model_yet_says_so(tmp_path):
    """--resume is suggested only where there is a checkpoint to resume from."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_config.json").write_text("{}")
    with pytest.raises(SampleError, match=r"run: a training run that saved no model and no checkpoint \(it stopped "
                                          r"before its first one\); there is nothing to sample or resume: start it "
                                          r"again with rcond train --out .*run and its --corpus or --config$"):
        resolve_model_dir(tmp_path / "run")
    (tmp_path / "run" / "checkpoint").mkdir()
    (tmp_path / "run" / "checkpoint" / "training_state.pt").write_bytes(b"")
    with pytest.raises(SampleError, match=r"run: a training run that has not saved its model yet .*--resume"):
        resolve_model_dir(tmp_path / "run")
    assert resolve_model_dir(tmp_path / "elsewhere") == tmp_path / "elsewhere"  # left to the loader to report


def test_a_run_under_the_home_directory_gives_its_model(tmp_path, monkeypatch):
    """--model ~/run finds the model a run saved in ~/run/model, as --model /home/.../run does."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "config.json").write_text("{}")
    assert resolve_model_dir("~/run") == tmp_path / "run" / "model"


def test_a_saved_model_is_taken_as_is_whatever_else_its_folder_holds(tmp_path):
    """A folder with its own config.json is the model, even with a model/ subfolder of another
    model inside or a rows.arrow and scheme.json beside it: only a folder without one is looked into."""
    model = tmp_path / "m"
    (model / "model").mkdir(parents=True)
    for f in ("config.json", "model/config.json", "scheme.json"):
        (model / f).write_text("{}")
    (model / "rows.arrow").write_bytes(b"")
    assert resolve_model_dir(model) == model


def test_a_corpus_is_not_a_model(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "tokenizer").mkdir(parents=True)
    (corpus / "scheme.json").write_text("{}")
    (corpus / "rows.arrow").write_bytes(b"")
    with pytest.raises(SampleError, match=rf"^{corpus}: is an rcond corpus \(scheme.json, rows.arrow, tokenizer/\), "
                                          rf"not a model; train on it \(rcond train --corpus {corpus} --out RUN\) "
                                          rf"and sample with --model RUN \(its model is in RUN/model\)$"):
        resolve_model_dir(corpus)


@pytest.mark.parametrize("spec,message", [
    ("meta", r"--device meta: meta tensors hold no values, so nothing can be sampled there"),
    ("bogus", r"--device 'bogus': not a device; use auto, cpu, cuda\[:N\] or mps"),
    pytest.param("mps", r"--device mps: MPS is not available here; use --device cpu",
                 marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")),
    pytest.param("cuda", r"--device cuda: CUDA is not available here; use --device cpu",
                 marks=pytest.mark.skipif(torch.accelerator.is_available(), reason="this machine has an accelerator")),
    pytest.param("cuda:99", r"--device cuda:99: this machine has \d+ cuda device\(s\), numbered from 0",
                 marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
])
def test_devices_torch_cannot_use_here_are_refused(spec, message):
    with pytest.raises(SampleError, match=f"^{message}"):
        check_device(spec)


def test_usable_devices_are_taken():
    assert check_device("cpu") == torch.device("cpu")
    assert check_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if torch.accelerator.is_available():
        here = torch.accelerator.current_accelerator().type
        assert check_device(f"{here}:0") == torch.device(here, 0)


def test_output_paths_that_cannot_be_written(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    with pytest.raises(OutputPathError, match="^the output path is empty; give a FILE.jsonl to write$"):
        check_out_file("", overwrite=True)
    with pytest.raises(OutputPathError, match=rf"^{tmp_path / 'adir'}: is a folder; the output is one file, e.g. "
                                              rf"{tmp_path / 'adir' / 'samples.jsonl'}$"):
        check_out_file(tmp_path / "adir", overwrite=True)
    with pytest.raises(OutputPathError, match=rf"^{tmp_path / 'afile' / 'x.jsonl'}: cannot create the output "
                                              rf"there: {tmp_path / 'afile'} is a file, not a folder$"):
        check_out_file(tmp_path / "afile" / "x.jsonl")
    with pytest.raises(OutputExistsError, match="already exists; pass --overwrite"):
        check_out_file(tmp_path / "afile")
    assert check_out_file(tmp_path / "afile", overwrite=True) == tmp_path / "afile"
    assert check_out_file(tmp_path / "new" / "s.jsonl") == tmp_path / "new" / "s.jsonl"
    with pytest.raises(OutputPathError, match="is a folder"):
        write_jsonl_atomic(tmp_path / "adir", [{"a": 1}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]       # no temp file left


def test_prompts_file_lines_bom_crlf_and_bad_utf8(tmp_path):
    good = tmp_path / "p.txt"
    good.write_bytes("\ufeffReview of X:\r\n\r\n  \nSay \u00e9\n".encode("utf-8"))
    assert read_prompts(good) == ["Review of X:", "Say \u00e9"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nab\xffc\n")
    with pytest.raises(SourceError, match=rf"^{bad}:2: not valid UTF-8 \(byte 3 of the line\)"):
        read_prompts(bad)


def test_write_jsonl_atomic(tmp_path):
    out = tmp_path / "s.jsonl"
    write_jsonl_atomic(out, [{"a": 1}, {"text": "é"}])
    assert out.read_text(encoding="utf-8") == '{"a": 1}\n{"text": "é"}\n'

    def failing():
        yield {"a": 2}
        raise RuntimeError("scorer died")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(out, failing())
    assert out.read_text(encoding="utf-8") == '{"a": 1}\n{"text": "é"}\n'     # the old file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"]            # no temp file left
    with pytest.raises(OutputPathError, match=f"^{out / 'x.jsonl'}: cannot create the output there"):
        write_jsonl_atomic(out / "x.jsonl", [{"a": 3}])                         # beside a file's child: no place


def test_a_prompts_file_without_a_prompt_is_refused(tmp_path):
    """Blank lines only, or no rows: a SourceError, not an empty run that writes no sample."""
    (tmp_path / "blank.txt").write_text("\n   \n\r\n")
    (tmp_path / "none.jsonl").write_text("")
    for name in ("blank.txt", "none.jsonl"):
        with pytest.raises(SourceError, match=rf"^{tmp_path / name}: no prompts in the file$"):
            read_prompts(tmp_path / name)


def test_output_paths_of_blanks_or_a_non_file_are_refused(tmp_path):
    """A path of spaces is as empty as ''; something that exists but is not a regular file (a named
    pipe) is not replaced without --overwrite either."""
    with pytest.raises(OutputPathError, match="^the output path is empty; give a FILE.jsonl to write$"):
        check_out_file("   ")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(OutputExistsError, match=rf"^{tmp_path / 'pipe'} already exists; pass --overwrite"):
        check_out_file(tmp_path / "pipe")


def test_the_output_file_gets_the_mode_open_would_give_it(tmp_path):
    """mkstemp makes its file private (0600); the samples file is then given the usual mode, 0666
    less the umask, as if written with open()."""
    umask = os.umask(0o022)
    os.umask(umask)
    write_jsonl_atomic(tmp_path / "s.jsonl", [{"a": 1}])
    (tmp_path / "plain").write_text("x")
    assert (tmp_path / "s.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask == (tmp_path / "plain").stat().st_mode & 0o777


def test_a_dropped_ctrl_c_while_writing_keeps_the_old_file(tmp_path, monkeypatch):
    """A Ctrl-C whose KeyboardInterrupt Python dropped while the lines were written stops the write
    before the rename: the earlier file stays, and no temp file is left."""
    import sys

    from rcond.atomic import recording_interrupts

    monkeypatch.setattr(sys, "unraisablehook", lambda u: None)
    out = tmp_path / "s.jsonl"
    out.write_text("old\n")

    def records():
        yield {"a": 1}
        DropsACtrlC()
        yield {"a": 2}

    with recording_interrupts(), pytest.raises(KeyboardInterrupt):
        write_jsonl_atomic(out, records())
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["s.jsonl"]


def test_a_failed_write_removes_the_folders_it_made(tmp_path):
    """As every output (README: an interrupted run leaves nothing half-written, nor the folders it
    made for it): a write that fails removes the folders it created for the file, and only those."""
    def failing():
        yield {"a": 1}
        raise RuntimeError("scorer died")

    (tmp_path / "have").mkdir()
    with pytest.raises(RuntimeError, match="scorer died"):
        write_jsonl_atomic(tmp_path / "have" / "new" / "sub" / "s.jsonl", failing())
    assert [p.name for p in tmp_path.iterdir()] == ["have"] and not any((tmp_path / "have").iterdir())


def test_a_temp_file_that_cannot_be_made_is_an_output_path_error(tmp_path, monkeypatch):
    """Injected (no real way here: the tests run as root, the disk is not full): the temp file's
    OSError names the output, not a temp name, and the folders made for it are gone."""
    import errno

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("tempfile.mkstemp", full)
    out = tmp_path / "new" / "s.jsonl"
    with pytest.raises(OutputPathError, match=rf"^{out}: cannot create the output there \(No space left on device\); "
                                              rf"choose a writable location$"):
        write_jsonl_atomic(out, [{"a": 1}])
    assert list(tmp_path.iterdir()) == []


def test_write_jsonl_atomic_takes_the_longest_file_name(tmp_path):
    """A file name of 255 bytes is valid; its hidden temp sibling (.NAME.XXXXXXXX.tmp) must not be
    longer than that, or a valid --out fails with "File name too long" (it did: the temp name
    carried the whole name)."""
    out = tmp_path / ("s" * 249 + ".jsonl")
    assert len(out.name.encode()) == 255
    write_jsonl_atomic(out, [{"a": 1}])
    assert out.read_text(encoding="utf-8") == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == [out.name]                   # no temp file left


# ---------------------------------------------------------------------------- the command
@pytest.fixture
def run_dir(tmp_path, scheme):
    tok = make_tokenizer()
    save_pretrained_atomic(make_model(tok, scheme), tok, scheme, tmp_path / "run" / "model")
    return tmp_path / "run"


def test_cli_end_to_end(tmp_path, run_dir, capsys):
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "w1 w2"}, {"prompt": "w3"}])
    (tmp_path / "score.py").write_text("def length(texts):\n    return [len(t.split()) for t in texts]\n")
    out = tmp_path / "out" / "samples.jsonl"
    rc = main(["sample", "--model", str(run_dir), "--level", "all", "--prompts", str(tmp_path / "prompts.jsonl"),
               "--n", "3", "--out", str(out), "--score-with", f"{tmp_path / 'score.py'}:length",
               "--max-new-tokens", "6", "--batch-size", "5", "--no-progress"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 * 2 * 3
    assert [r["level"] for r in rows] == [k for k in range(4) for _ in range(6)]
    assert {r["prompt"] for r in rows} == {"w1 w2", "w3"}
    for r in rows:
        assert set(r) == {"prompt", "mode", "level", "guidance", "text", "num_tokens", "finished", "score"}
        assert r["mode"] == "on" and r["guidance"] is None and r["score"] == len(r["text"].split())
        assert 0 <= r["num_tokens"] <= 6
    summary = capsys.readouterr().out
    assert f"wrote 24 samples to {out}; sampled in" in summary and "score (" in summary
    assert all(f"level {k}" in summary for k in range(4))
    assert sorted(p.name for p in out.parent.iterdir()) == ["samples.jsonl"]

    again = tmp_path / "reward.jsonl"
    assert main(["sample", "--model", str(run_dir / "model"), "--reward", "0.7", "--guidance", "1.5", "--out",
                 str(again), "--max-new-tokens", "4", "--no-progress"]) == 0
    (row,) = [json.loads(line) for line in again.read_text().splitlines()]
    assert (row["prompt"], row["level"], row["reward"], row["guidance"]) == ("", 3, 0.7, 1.5)


@pytest.mark.parametrize("options,noted", [
    ({"records": 10, "prompts": 6}, True),
    ({"records": 10, "prompts": 5}, False),  # half the records: an empty prompt is as common as a prompt
    ({"records": 10, "prompts": 10, "train_on_prompt": True}, False),  # it learned to write prompts
    ({"records": 10, "prompts": 10}, "all 10 of this model's training records opened with a prompt"),
    ({"records": 10, "prompts": 0}, False),
    ({}, False),  # a corpus built before the counts were recorded does not say
    ({"records": "10", "prompts": 6}, False),  # nor a hand-edited scheme.json that holds no counts
])
def test_cli_notes_an_empty_prompt_where_the_model_learned_responses_to_prompts(tmp_path, scheme, capsys, options,
                                                                                noted):
    """Without --prompts every sample starts from an empty prompt; a model most of whose training
    records opened with a prompt at loss weight 0 never saw that, and the command says so."""
    scheme.options.update(options)
    tok = make_tokenizer()
    save_pretrained_atomic(make_model(tok, scheme), tok, scheme, tmp_path / "m")
    args = ["sample", "--model", str(tmp_path / "m"), "--level", "1", "--max-new-tokens", "2", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a.jsonl")]) == 0
    err = capsys.readouterr().err
    assert ("note: no --prompts: every sample starts from an empty prompt" in err) == bool(noted)
    if noted:
        assert (noted if isinstance(noted, str) else
                "6 of this model's 10 training records opened with a prompt it was not trained to write") in err
    (tmp_path / "p.txt").write_text("w1\n")
    assert main([*args, "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "b.jsonl")]) == 0
    assert "note:" not in capsys.readouterr().err


def test_cli_truncate_prompts(tmp_path, run_dir, capsys):
    """--truncate-prompts: a prompt too long for the context (200 tokens; 128 - 2 - 4 = 122 fit) is
    refused without it, nothing written; with it, its sample records the 78 tokens left out and the
    summary says so; the prompt that fits has no such field."""
    (tmp_path / "p.txt").write_text(" ".join(["w3"] * 200) + "\nw1\n")
    out = tmp_path / "s.jsonl"
    args = ["sample", "--model", str(run_dir), "--level", "1", "--prompts", str(tmp_path / "p.txt"),
            "--max-new-tokens", "4", "--out", str(out), "--no-progress"]
    assert main(args) == 2
    assert "(or --truncate-prompts, truncate_prompts=True" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--truncate-prompts"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("prompt_tokens_cut") for r in rows] == [78, None] and rows[0]["prompt"] == " ".join(["w3"] * 200)
    assert ("prompts cut to fit the context: 1 of 2 samples kept only their prompt's last tokens (78 to 78 left out; "
            "prompt_tokens_cut in the output)") in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["dialog", "scored"])
def test_cli_notes_how_conversations_are_read(tmp_path, fmt, capsys):
    """Conversation rows (turns ending with the user's after an assistant turn) get a note: for a
    dialog model the level their earlier assistant turns are given, for another model that they are
    read as text; openings and prompts of text get none."""
    tok = make_tokenizer()
    scheme = ControlScheme(num_bins=4, edges=[-0.5, 0.0, 0.5], options={"format": fmt})
    save_pretrained_atomic(make_model(tok, scheme), tok, scheme, tmp_path / "run" / "model")
    conversation = [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2"},
                    {"role": "user", "content": "w3"}]
    write_jsonl(tmp_path / "c.jsonl", [{"turns": conversation}, {"turns": conversation[:2]}, {"prompt": "w4"},
                                       {"turns": conversation}])
    args = ["sample", "--model", str(tmp_path / "run"), "--level", "1", "--max-new-tokens", "2", "--no-progress"]
    assert main([*args, "--prompts", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "s.jsonl")]) == 0
    err = capsys.readouterr().err
    if fmt == "dialog":
        assert ("note: 2 prompts are conversations with earlier assistant turns; each such turn is given the RTG "
                "token of the requested level, as its corpus's reward-to-go would be if the earlier turns' rewards "
                "were 0 at gamma 1 (rewards written on the turns are not read)") in err
    else:
        assert ("note: 2 prompts are conversations with assistant turns, but this model learned no dialog corpus "
                "(formats ['scored']): each is given as its turns' text joined as written, a prompt of text with no "
                "RTG token before its earlier assistant turns") in err
    write_jsonl(tmp_path / "o.jsonl", [{"turns": conversation[:2]}, {"prompt": "w4"}])
    assert main([*args, "--prompts", str(tmp_path / "o.jsonl"), "--out", str(tmp_path / "o_s.jsonl")]) == 0
    assert "note:" not in capsys.readouterr().err
    off = ["sample", "--model", str(tmp_path / "run"), "--mode", "off", "--max-new-tokens", "2", "--no-progress"]
    assert main([*off, "--prompts", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "off.jsonl")]) == 0
    assert "note:" not in capsys.readouterr().err   # off mode: no RTG token anywhere


@pytest.mark.parametrize("options,noted", [
    ({"prompts": 10, "multiline_prompts": 6}, "6 of this model's 10 training prompts spanned several lines"),
    ({"prompts": 10, "multiline_prompts": 10}, "all 10 of this model's training prompts spanned several lines"),
    ({"prompts": 10, "multiline_prompts": 5}, None),  # half: one-line prompts are as common
    ({"prompts": 0, "multiline_prompts": 0}, None),
    ({"prompts": 10}, None),  # a corpus built before the count was recorded does not say
    ({"prompts": 10, "multiline_prompts": 6.0}, None),  # nor a hand-edited scheme.json that holds no counts
])
def test_cli_notes_one_line_prompts_where_the_model_learned_multi_line_ones(tmp_path, scheme, capsys, options, noted):
    """A .txt holds one prompt a line; a model most of whose training prompts held line breaks
    (every HH-RLHF prompt does) never saw one-line prompts, and the command says so, naming the
    file; prompts given as rows (which may span lines) get no note."""
    scheme.options.update(options)
    tok = make_tokenizer()
    save_pretrained_atomic(make_model(tok, scheme), tok, scheme, tmp_path / "m")
    args = ["sample", "--model", str(tmp_path / "m"), "--level", "1", "--max-new-tokens", "2", "--no-progress"]
    (tmp_path / "p.txt").write_text("w1\n")
    assert main([*args, "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "a.jsonl")]) == 0
    err = capsys.readouterr().err
    if noted:
        assert f"note: {tmp_path / 'p.txt'} holds one prompt per line, but {noted}" in err
        assert "Give such prompts as rows with a 'prompt' field (.jsonl), or give the HH-RLHF pairs themselves" in err
    else:
        assert "note:" not in err
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "w1"}])
    assert main([*args, "--prompts", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "b.jsonl")]) == 0
    assert "note:" not in capsys.readouterr().err


def test_cli_notes_one_line_prompts_of_a_compressed_txt(tmp_path, scheme, capsys):
    """A .txt.gz is a .txt (one prompt a line) read through gzip, so a model whose 10 training
    prompts all spanned lines gets the note for it as for a .txt, naming the file."""
    import gzip

    scheme.options.update(prompts=10, multiline_prompts=10)
    tok = make_tokenizer()
    save_pretrained_atomic(make_model(tok, scheme), tok, scheme, tmp_path / "m")
    with gzip.open(tmp_path / "p.txt.gz", "wt") as f:
        f.write("w1\nw2\n")
    assert main(["sample", "--model", str(tmp_path / "m"), "--level", "1", "--max-new-tokens", "2", "--no-progress",
                 "--prompts", str(tmp_path / "p.txt.gz"), "--out", str(tmp_path / "a.jsonl")]) == 0
    assert (f"note: {tmp_path / 'p.txt.gz'} holds one prompt per line, but all 10 of this model's training prompts "
            f"spanned several lines") in capsys.readouterr().err
    assert [json.loads(line)["prompt"] for line in (tmp_path / "a.jsonl").read_text().splitlines()] == ["w1", "w2"]


@pytest.mark.parametrize("args,message", [
    (["--level", "7"], "error: level 7 does not exist: this scheme has levels 0..3"),
    (["--reward", "nan"], "error: reward nan is not a finite number"),
    (["--level", "1", "--mode", "off"], "error: off mode has no reward level"),
    (["--mode", "off", "--guidance", "2"], "error: guidance contrasts the on mode with the off mode"),
    (["--level", "1", "--temperature", "-1"], "error: temperature must be 0 (greedy) or in [0.0001, 10000]"),
    (["--level", "1", "--n", "0"], "error: n and batch_size must be at least 1"),
    (["--level", "1", "--prompts", "nope.txt"], "error: nope.txt: no such prompts file"),
    (["--level", "1", "--temperature", "1e300"], "error: temperature must be 0 (greedy) or in [0.0001, 10000]"),
    (["--level", "1", "--guidance", "3e38"], "error: guidance must be in [-100, 100]"),
    (["--level", "1", "--guidance", "1e308"], "error: guidance must be in [-100, 100]"),
    (["--level", "1", "--max-new-tokens", "100000000000"], "error: max_new_tokens must be in [1, 1048576]"),
    (["--level", "1", "--max-new-tokens", "200"], "beyond the model's context of 128 tokens"),
    (["--level", "1", "--seed", "99999999999999999999999"], "error: seed must be in [0, 2**63-1"),
    (["--level", "1", "--device", "meta"], "error: --device meta: meta tensors hold no values"),
])
def test_cli_bad_input_exits_2(tmp_path, run_dir, capsys, args, message):
    out = tmp_path / "s.jsonl"
    assert main(["sample", "--model", str(run_dir), "--out", str(out), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_samples_at_a_tiny_top_p(tmp_path, run_dir):
    """top_p 1e-300 is 0 in float32; the most likely token stays, so it samples greedily."""
    args = ["sample", "--model", str(run_dir), "--level", "1", "--max-new-tokens", "3", "--no-progress"]
    assert main([*args, "--top-p", "1e-300", "--out", str(tmp_path / "p.jsonl")]) == 0
    assert main([*args, "--temperature", "0", "--out", str(tmp_path / "g.jsonl")]) == 0
    assert (json.loads((tmp_path / "p.jsonl").read_text())["text"]
            == json.loads((tmp_path / "g.jsonl").read_text())["text"])


def test_cli_refuses_a_folder_or_an_empty_path_as_output(tmp_path, run_dir, capsys):
    (tmp_path / "s").mkdir()
    args = ["sample", "--model", str(run_dir), "--level", "1", "--max-new-tokens", "2", "--no-progress", "--overwrite"]
    assert main([*args, "--out", str(tmp_path / "s")]) == 2
    assert f"error: {tmp_path / 's'}: is a folder; the output is one file" in capsys.readouterr().err
    assert main([*args, "--out", ""]) == 2
    assert "error: the output path is empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "s"] and not any((tmp_path / "s").iterdir())


def test_cli_refuses_existing_output_and_missing_model(tmp_path, run_dir, capsys):
    out = tmp_path / "s.jsonl"
    out.write_text("keep\n")
    assert main(["sample", "--model", str(run_dir), "--level", "0", "--out", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == "keep\n"
    assert main(["sample", "--model", str(run_dir), "--level", "0", "--out", str(out), "--overwrite",
                 "--max-new-tokens", "2", "--no-progress"]) == 0
    assert json.loads(out.read_text())["level"] == 0
    assert main(["sample", "--model", str(tmp_path / "none"), "--level", "0", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "no such model directory" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [False, True])
def test_cli_passes_trust_remote_code_to_the_loader(tmp_path, run_dir, monkeypatch, flag):
    """A model trained from a hub model with its own code is sampled with --trust-remote-code."""
    from rcond import modeling

    seen, real = [], modeling.load_pretrained
    monkeypatch.setattr(modeling, "load_pretrained",
                        lambda *a, **kw: seen.append(kw.get("trust_remote_code")) or real(*a, **kw))
    args = ["sample", "--model", str(run_dir), "--level", "1", "--max-new-tokens", "2",
            "--out", str(tmp_path / "s.jsonl"), "--no-progress"] + (["--trust-remote-code"] if flag else [])
    assert main(args) == 0 and seen == [flag]


def test_load_sampler_loads_onto_the_device_asked_for(run_dir, monkeypatch):
    """--device reaches the loader as the checked device (on a CPU-only machine only cpu can be
    shown, so the loader is watched rather than the model's place)."""
    from rcond import modeling
    from rcond.sample import load_sampler

    seen, real = [], modeling.load_pretrained
    monkeypatch.setattr(modeling, "load_pretrained", lambda *a, **kw: seen.append(kw.get("device")) or real(*a, **kw))
    assert load_sampler(run_dir, "cpu").device == torch.device("cpu")
    assert seen == [torch.device("cpu")]


def test_rtg_tokens_beyond_the_schemes_levels_are_banned_too(scheme):
    """A tokenizer reused from a corpus with more bins still holds <|rtg:4|> and <|rtg:5|>: control
    tokens the scheme (4 levels) does not name, never to be generated either."""
    tok = make_tokenizer()
    ControlScheme(num_bins=6, edges=[-1.0, -0.5, 0.0, 0.5, 1.0]).add_to_tokenizer(tok)
    s = Sampler(make_model(tok, scheme), tok, scheme)
    extra = [tok.convert_tokens_to_ids(t) for t in ("<|rtg:4|>", "<|rtg:5|>")]
    assert s.banned[extra].all()
    assert s.banned.sum() == len(scheme.control_tokens) + 2 + (len(s.banned) - len(tok))


def test_two_digit_rtg_tokens_beyond_the_schemes_levels_are_banned_too(scheme):
    """A tokenizer from a corpus with 12 bins holds <|rtg:10|> and <|rtg:11|>: two-digit levels are
    control tokens as much as one-digit ones."""
    tok = make_tokenizer()
    ControlScheme(num_bins=12, edges=[float(k) for k in range(11)]).add_to_tokenizer(tok)
    s = Sampler(make_model(tok, scheme), tok, scheme)
    extra = [tok.convert_tokens_to_ids(f"<|rtg:{k}|>") for k in range(4, 12)]
    assert s.banned[extra].all()
    assert s.banned.sum() == len(scheme.control_tokens) + 8


def test_embedding_rows_past_the_tokenizer_are_never_generated(scheme):
    """A model whose embedding is padded past the tokenizer (here to a multiple of 8) has rows no id
    of the tokenizer decodes to; even when they dominate the logits they are never drawn."""
    tok = make_tokenizer()
    model = make_model(tok, scheme, tied=False)
    model.resize_token_embeddings(len(tok), pad_to_multiple_of=8, mean_resizing=False)
    vocab = model.get_output_embeddings().weight.shape[0]
    assert vocab > len(tok)
    head = nn.Linear(model.config.hidden_size, vocab, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[len(tok):] = 40.0
    model.lm_head = head
    s = Sampler(model, tok, scheme)
    assert s.banned[len(tok):].all()
    out = s.generate([s.prompt_ids(p, Condition("on", 1)) for p in PROMPTS],
                     SamplingParams(max_new_tokens=6, min_new_tokens=6, temperature=2.0, seed=0))
    assert all(0 <= t < len(tok) for ids, _ in out for t in ids)


def test_a_tokenizer_without_eos_or_with_eos_as_a_control_token_is_refused(scheme):
    """Documents end with eos, so sampling needs one, and it must not be a control token (those are
    banned from generation, so no sample could ever end)."""
    tok = make_tokenizer()
    model = make_model(tok, scheme)
    tok.eos_token = "<|rlhf:off|>"
    with pytest.raises(SchemeError, match=r"^eos '<\|rlhf:off\|>' is also a control token$"):
        Sampler(model, tok, scheme)
    tok.eos_token = None
    with pytest.raises(ValueError, match=r"^the tokenizer has no eos token; rcond documents end with eos$"):
        Sampler(model, tok, scheme)
