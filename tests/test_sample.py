"""Tests of rcond.sample and `rcond sample`: prompt layout, the KV-cached batched decode loop
(against one-by-one and full recompute), guidance endpoints, banned control tokens, the
sampling distribution, input/output files and the command end to end."""

import json
import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import write_jsonl
from rcond.atomic import OutputPathError
from rcond.cli import main
from rcond.corpus import ON_SLOT, RTG_SLOT, ConditionedStream, PackOptions, encodings, flat_ids
from rcond.modeling import add_control_tokens, save_pretrained_atomic
from rcond.sample import (Condition, SampleError, Sampler, SamplingParams, conditions, read_prompts,
                          write_jsonl_atomic)
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
    (_, encoded, inverse), = encodings([batch], tok)                  # the corpus build's own encoding path
    offsets, flat = flat_ids(encoded, inverse)
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
    (_, encoded, inverse), = encodings([batch], tok)
    pool = ConditionedStream(tok.eos_token_id, PackOptions(uncond_fraction=0.0)).pool(batch, *flat_ids(encoded, inverse))
    document = pool.ids.tolist()                                      # placeholders for the control tokens
    ids = fmt_scheme.token_ids(tok)
    expected = {"scored": [ON_SLOT, RTG_SLOT, 5, 6], "dialog": [ON_SLOT, 5, 6, RTG_SLOT]}[fmt]
    assert document[:4] == expected and document[4] == 11             # then the response, w9
    slots = {ON_SLOT: ids["<|rlhf:on|>"], RTG_SLOT: ids["<|rtg:2|>"]}
    assert s.prompt_ids(prompt, Condition("on", 2)) == [slots.get(t, t) for t in expected]
    assert s.prompt_ids(prompt, Condition("off")) == [ids["<|rlhf:off|>"], 5, 6]


def test_control_token_strings_in_a_prompt_are_text(sampler, scheme):
    """As in the corpus, a typed "<|rtg:3|>" is not the control token (here it is an unknown word,
    the word tokenizer's unk)."""
    ids = scheme.token_ids(sampler.tokenizer)
    assert sampler.prompt_ids("w1 <|rtg:3|>", Condition("off")) == [ids["<|rlhf:off|>"], 3, 0]
    assert sampler.tokenizer.backend_tokenizer.encode_special_tokens is False  # restored after


def test_conditions_from_levels_rewards_and_modes(scheme):
    assert conditions(scheme, level="all") == [Condition("on", k) for k in range(4)]
    assert conditions(scheme, level="2") == conditions(scheme, level=2) == [Condition("on", 2)]
    assert conditions(scheme, reward=0.1) == [Condition("on", scheme.bin_of(0.1), 0.1)] == [Condition("on", 2, 0.1)]
    assert conditions(scheme, reward=-9.0)[0].level == 0 and conditions(scheme, reward=9.0)[0].level == 3
    assert conditions(scheme, mode="off") == [Condition("off")]


@pytest.mark.parametrize("kw,message", [
    (dict(level=4), r"level 4 does not exist: this scheme has levels 0\.\.3"),
    (dict(level="-1"), r"level -1 does not exist: this scheme has levels 0\.\.3"),
    (dict(level="high"), r"level 'high' is neither a number \(0\.\.3\) nor 'all'"),
    (dict(reward=math.nan), r"reward nan is not a finite number"),
    (dict(reward=math.inf), r"reward inf is not a finite number"),
    (dict(), r"on mode needs a level \(0\.\.3 or 'all'\) or a reward"),
    (dict(level=1, mode="off"), r"off mode has no reward level"),
    (dict(level=1, mode="both"), r"mode must be 'on' or 'off'"),
])
def test_bad_conditions_are_clear_errors(scheme, kw, message):
    with pytest.raises(SchemeError, match=message):
        conditions(scheme, **kw)


@pytest.mark.parametrize("kw,message", [
    (dict(max_new_tokens=0), "max_new_tokens must be at least 1"),
    (dict(min_new_tokens=9, max_new_tokens=8), r"min_new_tokens must be in \[0, max_new_tokens=8\]"),
    (dict(temperature=-0.1), "temperature must be a finite number >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_k=-1), "top_k must be >= 0"),
])
def test_bad_sampling_params(kw, message):
    with pytest.raises(SampleError, match=message):
        SamplingParams(**kw)


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


def test_same_seed_same_samples(sampler):
    conds = [Condition("on", 2)]

    def run(seed):
        return [x.text for x in sampler.sample(PROMPTS, conds, SamplingParams(max_new_tokens=8, seed=seed), n=3)]

    assert run(5) == run(5)
    assert run(5) != run(6)


# ---------------------------------------------------------------------------- files
def test_read_prompts(tmp_path):
    assert read_prompts(None) == [""]
    (tmp_path / "p.txt").write_text("w1 w2\n\nw3\n")
    assert read_prompts(tmp_path / "p.txt") == ["w1 w2", "w3"]
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "w1", "x": 1}, {"prompt": ""}])
    assert read_prompts(tmp_path / "p.jsonl") == ["w1", ""]
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "w1"}, {"text": "w2"}])
    with pytest.raises(SourceError, match=r"bad.jsonl:2: expected a string field 'prompt'; fields present: \['text'\]"):
        read_prompts(tmp_path / "bad.jsonl")
    with pytest.raises(SourceError, match="no such"):
        read_prompts(tmp_path / "missing.txt")


def test_a_run_without_its_model_yet_says_so(tmp_path):
    from rcond.sample import resolve_model_dir

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_config.json").write_text("{}")
    with pytest.raises(SampleError, match=r"run: a training run that has not saved its model yet .*--resume"):
        resolve_model_dir(tmp_path / "run")
    assert resolve_model_dir(tmp_path / "elsewhere") == tmp_path / "elsewhere"  # left to the loader to report


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


@pytest.mark.parametrize("args,message", [
    (["--level", "7"], "error: level 7 does not exist: this scheme has levels 0..3"),
    (["--reward", "nan"], "error: reward nan is not a finite number"),
    (["--level", "1", "--mode", "off"], "error: off mode has no reward level"),
    (["--mode", "off", "--guidance", "2"], "error: guidance contrasts the on mode with the off mode"),
    (["--level", "1", "--temperature", "-1"], "error: temperature must be a finite number >= 0"),
    (["--level", "1", "--n", "0"], "error: n and batch_size must be at least 1"),
    (["--level", "1", "--prompts", "nope.txt"], "error: nope.txt: no such prompts file"),
])
def test_cli_bad_input_exits_2(tmp_path, run_dir, capsys, args, message):
    out = tmp_path / "s.jsonl"
    assert main(["sample", "--model", str(run_dir), "--out", str(out), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


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
